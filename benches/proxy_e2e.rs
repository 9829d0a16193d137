//! End-to-end load bench: two backends and pilotfish in-process on loopback, driven by Rust
//! clients over keep-alive connections. Reports requests/s, p50 and p99 for HTTP/1.1, h2c and
//! HTTPS (ECDSA P-256), and full TLS handshakes per second.
//!
//! `cargo bench --bench proxy_e2e` (or `make bench`). Environment:
//!   PILOTFISH_E2E_URL    load-test this http:// URL instead (your own deployment; HTTP/1.1)
//!   PILOTFISH_E2E_CONNS  connections (default 64)
//!   PILOTFISH_E2E_SECS   seconds per mode (default 5)
//!   PILOTFISH_E2E_MODES  comma list of h1,h2c,https,handshake (default all)
//!   PILOTFISH_E2E_WORKERS pilotfish worker threads (default 1)
//! Without `--bench` (as `cargo test` runs it) it does a short smoke run and checks every request
//! succeeded. The client shares the machine with the proxy: compare figures from the same run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pilotfish::server::{ConfigSource, Options, Server};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    H1,
    H2c,
    Https,
    Handshake,
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Whether a response arrived with 200 and its body was read in full.
async fn complete(r: Result<Response<hyper::body::Incoming>, hyper::Error>) -> bool {
    match r {
        Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// One connection's loop: requests back to back until `stop`; returns latencies in µs.
async fn client_loop(t: Arc<Target>, mode: Mode, stop: Arc<AtomicBool>) -> (Vec<u32>, u64) {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let req = || Request::get(&t.path).header("host", &t.host).body(Empty::<Bytes>::new()).unwrap();
    match mode {
        Mode::Handshake => {
            let cfg = t.tls.clone().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = async {
                    let tcp = TcpStream::connect(t.addr).await.ok()?;
                    let _ = tcp.set_nodelay(true);
                    let s = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(ServerName::try_from("bench.test").unwrap(), tcp)
                        .await
                        .ok()?;
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
                    tokio::spawn(conn);
                    let r = tx.send_request(req()).await.ok()?;
                    r.into_body().collect().await.ok()?;
                    Some(())
                }
                .await;
                match ok {
                    Some(()) => lat.push(start.elapsed().as_micros() as u32),
                    None => errors += 1,
                }
            }
        }
        Mode::H2c => {
            let tcp = TcpStream::connect(t.addr).await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (mut tx, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            let uri = format!("http://{}{}", t.host, t.path);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let r = tx.send_request(Request::get(&uri).body(Empty::<Bytes>::new()).unwrap()).await;
                if complete(r).await {
                    lat.push(start.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
        }
        Mode::H1 | Mode::Https => {
            let tcp = TcpStream::connect(t.addr).await.unwrap();
            let _ = tcp.set_nodelay(true);
            let io = match &t.tls {
                Some(cfg) if mode == Mode::Https => pilotfish::proxy::upstream::Stream::Tls(Box::new(
                    tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(ServerName::try_from("bench.test").unwrap(), tcp)
                        .await
                        .unwrap(),
                )),
                _ => pilotfish::proxy::upstream::Stream::Tcp(tcp),
            };
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if complete(tx.send_request(req()).await).await {
                    lat.push(start.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
        }
    }
    (lat, errors)
}

async fn run(t: Arc<Target>, mode: Mode, conns: u64, secs: f64) -> (f64, f64, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..conns).map(|_| tokio::spawn(client_loop(t.clone(), mode, stop.clone()))).collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64
            / 1000.0
    };
    (all.len() as f64 / elapsed, pct(0.50), pct(0.99), errors)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let conns = env("PILOTFISH_E2E_CONNS", if bench { 64 } else { 4 });
    let secs = if bench { env("PILOTFISH_E2E_SECS", 5) as f64 } else { 0.3 };
    let modes: Vec<Mode> = std::env::var("PILOTFISH_E2E_MODES")
        .unwrap_or_else(|_| "h1,h2c,https,handshake".into())
        .split(',')
        .filter_map(|m| match m.trim() {
            "h1" => Some(Mode::H1),
            "h2c" => Some(Mode::H2c),
            "https" => Some(Mode::Https),
            "handshake" => Some(Mode::Handshake),
            _ => None,
        })
        .collect();
    // The load generator's own runtime (2 threads: one per core of the box).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    if let Ok(url) = std::env::var("PILOTFISH_E2E_URL") {
        let uri: http::Uri = url.parse().expect("PILOTFISH_E2E_URL");
        let host = uri.authority().expect("URL with host").to_string();
        let addr = rt.block_on(tokio::net::lookup_host(uri.authority().unwrap().as_str())).unwrap().next().unwrap();
        let t =
            Arc::new(Target { addr, host, path: uri.path_and_query().map_or("/", |p| p.as_str()).into(), tls: None });
        let (rps, p50, p99, errors) = rt.block_on(run(t, Mode::H1, conns, secs));
        println!(
            "{url}: {conns} connections, {secs}s: {rps:.0} req/s, p50 {p50:.3} ms, p99 {p99:.3} ms, errors {errors}"
        );
        return;
    }

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()]).unwrap().self_signed(&key).unwrap();
    let dir = std::env::temp_dir().join(format!("pilotfish-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let (b1, b2) = rt.block_on(async { (backend().await, backend().await) });
    let config = format!(
        r#"[server]
worker_threads = {workers}
admin_bind = "127.0.0.1:0"
[access_log]
format = "off"
[[certificates]]
name = "c"
cert = "{dir}/c.pem"
key = "{dir}/k.pem"
[[listeners]]
name = "http"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}
[[listeners]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["c"]
alpn = ["http/1.1"]
default_action = {{ forward = "g" }}
[[target_groups]]
name = "g"
targets = ["{b1}", "{b2}"]
"#,
        workers = env("PILOTFISH_E2E_WORKERS", 1),
        dir = dir.display()
    );
    let server = Server::start(Options {
        config: ConfigSource::Text { name: "e2e".into(), text: config },
        access_log: None,
        signals: false,
        poll: None,
    })
    .expect("pilotfish starts");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Full handshakes: no session cache, so every connection does the whole exchange.
    let mut no_resume = tls.clone();
    no_resume.resumption = rustls::client::Resumption::disabled();
    println!(
        "pilotfish proxy_e2e: {conns} connections, {secs}s per mode, {} worker thread(s)",
        env("PILOTFISH_E2E_WORKERS", 1)
    );
    println!("{:<28} {:>10} {:>10} {:>10} {:>8}", "mode", "req/s", "p50 ms", "p99 ms", "errors");
    for mode in modes {
        let (listener, cfg, name) = match mode {
            Mode::H1 => ("http", None, "http/1.1 keep-alive"),
            Mode::H2c => ("http", None, "h2c (1 stream/conn)"),
            Mode::Https => ("https", Some(Arc::new(tls.clone())), "https keep-alive (ECDSA)"),
            Mode::Handshake => ("https", Some(Arc::new(no_resume.clone())), "TLS full handshake/request"),
        };
        let addr = server.listener_addr(listener).unwrap();
        let t = Arc::new(Target { addr, host: addr.to_string(), path: "/".into(), tls: cfg });
        let (rps, p50, p99, errors) = rt.block_on(run(t, mode, conns, secs));
        println!("{name:<28} {rps:>10.0} {p50:>10.3} {p99:>10.3} {errors:>8}");
        assert_eq!(errors, 0, "{name}: every request must succeed");
        assert!(rps > 0.0, "{name}: no request completed");
    }
    server.shutdown();
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
