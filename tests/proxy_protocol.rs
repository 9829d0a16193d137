//! The PROXY protocol through real sockets: headers written by the test (v1, v2 over IPv4 and
//! IPv6, LOCAL) before real HTTP/1.1 requests and a real TLS handshake; the header's source is
//! the client everywhere (X-Forwarded-For, X-Forwarded-Port, a `source_ip` rule, the access
//! log); trusted peers that send none or a broken one, and untrusted peers that send one, are
//! closed and counted. `send_proxy_protocol` is read by a target that parses the header itself
//! (an independent reading of the specification, not pilotfish's parser), health checks
//! included.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::read_response;
use common::tls::{Ca, ECDSA};
use common::*;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header (command 1) for TCP from `src` to `dst`, with `tlv` appended.
fn v2(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    let mut block = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&dst.port().to_be_bytes());
    block.extend_from_slice(tlv);
    h.extend_from_slice(&[0x21, fam]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// A v2 LOCAL header (an NLB health check).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

fn config(backend: SocketAddr, trusted: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
proxy_protocol = {{ trusted = [{trusted}] }}
default_action = {{ forward = "app" }}

[[rules]]
name = "partner"
listeners = ["edge"]
priority = 1
source_ip = ["203.0.113.0/24"]
fixed_response = {{ status = 200, body = "partner network" }}

[[target_groups]]
name = "app"
targets = ["{backend}"]
"#
    )
}

/// Sends `header` then one GET on a new connection; the response text, read until the server
/// closes (empty if it closed without answering; a server that never closes fails the test).
async fn request_after(addr: SocketAddr, header: &[u8], path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes());
    let _ = s.write_all(&bytes).await;
    until_closed(&mut s).await
}

/// Everything the server sends until it closes the connection (bounded: 10 s, then a failure).
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!("the server did not close the connection; sent {:?}", String::from_utf8_lossy(&out)),
    }
}

fn errors(metrics: &str, listener: &str, reason: &str) -> u64 {
    let key = format!("pilotfish_proxy_protocol_errors_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_names_the_client_everywhere() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(be.addr, r#""127.0.0.0/8""#));
    let addr = lb.addr("edge");

    // v1 over IPv4: the client is the header's source; the port it reached, the header's.
    let r = request_after(addr, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n", "/v1").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = be.last();
    assert_eq!(seen.uri, "/v1");
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.10");
    assert_eq!(seen.headers["x-forwarded-port"], "443");

    // v2 over IPv4, with an NLB-style VPC endpoint TLV.
    let tlv = [&[0xEA, 0, 9, 1][..], b"vpce-123"].concat();
    let h = v2("192.0.2.20:50000".parse().unwrap(), "198.51.100.1:80".parse().unwrap(), &tlv);
    let r = request_after(addr, &h, "/v2").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(be.last().headers["x-forwarded-for"], "192.0.2.20");
    assert_eq!(be.last().headers["x-forwarded-port"], "80");

    // v2 carrying IPv6 addresses over an IPv4 connection.
    let h = v2("[2001:db8::5]:1234".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap(), &[]);
    let r = request_after(addr, &h, "/v6").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(be.last().headers["x-forwarded-for"], "2001:db8::5");

    // A source_ip rule sees the header's address.
    let r = request_after(addr, b"PROXY TCP4 203.0.113.7 198.51.100.1 1 443\r\n", "/").await;
    assert!(r.ends_with("partner network"), "{r}");
    let r = request_after(addr, b"PROXY TCP4 192.0.2.1 198.51.100.1 1 443\r\n", "/").await;
    assert!(!r.contains("partner network") && r.starts_with("HTTP/1.1 200"), "{r}");

    // LOCAL (an NLB health check that sends a request): the connection's own address.
    let r = request_after(addr, &v2_local(), "/local").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(be.last().headers["x-forwarded-for"], "127.0.0.1");
    let r = request_after(addr, b"PROXY UNKNOWN\r\n", "/unknown").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(be.last().headers["x-forwarded-for"], "127.0.0.1");

    // A keep-alive connection: every request on it is the header's client.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 7 443\r\n").await.unwrap();
    for i in 0..3 {
        s.write_all(format!("GET /ka{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(be.last().headers["x-forwarded-for"], "2001:db8::9");
    }
    drop(s);

    // The access log names the header's client.
    assert!(
        eventually(Duration::from_secs(5), || lb
            .log
            .lines()
            .iter()
            .any(|l| l["client"].as_str() == Some("192.0.2.10:40000")))
        .await,
        "{:?}",
        lb.log.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_without_a_valid_header_are_closed_and_counted() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(be.addr, r#""127.0.0.1""#));
    let addr = lb.addr("edge");
    let cases: [(&str, Vec<u8>); 6] = [
        ("missing", Vec::new()),
        ("malformed", b"PROXY TCP4 192.0.2.1 198.51.100.1 01 443\r\n".to_vec()),
        ("malformed", b"PROXY TCP4 2001:db8::1 198.51.100.1 1 443\r\n".to_vec()),
        ("oversized", [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat()),
        ("unsupported", {
            let mut h = v2("192.0.2.1:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap(), &[]);
            h[13] = 0x12; // UDP over IPv4
            h
        }),
        ("malformed", {
            let mut h = v2("192.0.2.1:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap(), &[0xEA, 0, 9]);
            h[12] = 0x23; // command 3
            h
        }),
    ];
    for (reason, header) in &cases {
        let r = request_after(addr, header, "/").await;
        assert_eq!(r, "", "{reason}: no answer, the connection is closed");
    }
    // Truncated: half a v2 header, then the client closes.
    let h = v2("192.0.2.1:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap(), &[]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&h[..20]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(until_closed(&mut s).await, "");
    // A header that never completes is cut at header_read_timeout.
    let slow = Lb::start(&format!("[server]\nheader_read_timeout = \"300ms\"\n{}", config(be.addr, r#""127.0.0.1""#)));
    let mut s = TcpStream::connect(slow.addr("edge")).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
    assert_eq!(until_closed(&mut s).await, "");

    assert_eq!(be.requests(), 0, "nothing reached the target");
    let m = get(&client(), &lb.admin("/metrics")).await.body;
    assert_eq!(errors(&m, "edge", "missing"), 1, "{m}");
    assert_eq!(errors(&m, "edge", "malformed"), 3, "{m}");
    assert_eq!(errors(&m, "edge", "oversized"), 1, "{m}");
    assert_eq!(errors(&m, "edge", "unsupported"), 1, "{m}");
    assert_eq!(errors(&m, "edge", "truncated"), 1, "{m}");
    let m = get(&client(), &slow.admin("/metrics")).await.body;
    assert_eq!(errors(&m, "edge", "timeout"), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_is_served_as_itself_and_never_believed() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(be.addr, r#""10.0.0.0/8", "2001:db8::/32""#));
    let addr = lb.addr("edge");
    // Plain requests from a peer outside `trusted` are served, as that peer.
    for method in ["GET", "POST", "PUT", "PATCH"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{method} / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let r = until_closed(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{method}: {r}");
        assert_eq!(be.last().headers["x-forwarded-for"], "127.0.0.1");
    }
    // A PROXY header from it (either version, even split over two writes) closes the connection.
    assert_eq!(request_after(addr, b"PROXY TCP4 203.0.113.7 198.51.100.1 1 443\r\n", "/").await, "");
    let h = v2("203.0.113.7:1".parse().unwrap(), "198.51.100.1:443".parse().unwrap(), &[]);
    assert_eq!(request_after(addr, &h, "/").await, "");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"PRO").await.unwrap();
    s.write_all(b"XY TCP4 203.0.113.7 198.51.100.1 1 443\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(until_closed(&mut s).await, "");
    let before = be.requests();
    assert_eq!(before, 4, "only the four plain requests reached the target");
    let m = get(&client(), &lb.admin("/metrics")).await.body;
    assert_eq!(errors(&m, "edge", "untrusted"), 3, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_read_the_header_before_the_handshake() {
    let dir = std::env::temp_dir().join(format!("pilotfish-pp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("pp CA");
    let (cert, key) = ca.issue(&["app.test"], &ECDSA).write(&dir, "app");
    let be = Backend::start("be").await;
    let lb = Lb::start(&format!(
        r#"
[[certificates]]
name = "app"
cert = "{cert}"
key = "{key}"

[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["app"]
proxy_protocol = {{ trusted = ["127.0.0.0/8"] }}
default_action = {{ forward = "app" }}

[[target_groups]]
name = "app"
targets = ["{}"]
"#,
        be.addr
    ));
    let addr = lb.addr("tls");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&v2("[2001:db8::77]:999".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap(), &[])).await.unwrap();
    let mut tls = connector.connect("app.test".try_into().unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET /secure HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = be.last();
    assert_eq!(seen.headers["x-forwarded-for"], "2001:db8::77");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // An NLB TCP health check: LOCAL, then close, without a ClientHello — not a handshake error.
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&v2_local()).await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(until_closed(&mut s).await, "");
    }
    // A TLS client that skips the header is refused.
    assert!(connector.connect("app.test".try_into().unwrap(), TcpStream::connect(addr).await.unwrap()).await.is_err());
    let m = get(&client(), &lb.admin("/metrics")).await.body;
    assert!(m.contains("pilotfish_tls_handshake_errors_total{listener=\"tls\"} 0"), "{m}");
    assert_eq!(errors(&m, "tls", "missing"), 1, "{m}");
}

/// One connection as the PROXY-reading target saw it: the header line (v1) or its decoded form
/// (v2: `v2 PROXY src dst` / `v2 LOCAL`), and the request paths it carried.
#[derive(Debug, Clone)]
struct Announced {
    header: String,
    paths: Vec<String>,
}

/// A target that requires a PROXY header on every connection, decodes it with its own reading
/// of the specification, then serves HTTP/1.1 or h2c (hyper), answering with the header it got.
struct ProxyTarget {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Announced>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProxyTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_header(s: &mut TcpStream) -> Option<String> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    if first[0] == b'P' {
        let mut line = vec![b'P'];
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            line.push(b[0]);
            if line.len() > 107 {
                return None;
            }
        }
        return String::from_utf8(line[..line.len() - 2].to_vec()).ok();
    }
    let mut rest = [0u8; 15];
    s.read_exact(&mut rest).await.ok()?;
    let fixed: Vec<u8> = [&first[..], &rest[..]].concat();
    if &fixed[..12] != V2_SIG {
        return None;
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut block = vec![0u8; len];
    s.read_exact(&mut block).await.ok()?;
    Some(match (fixed[12], fixed[13]) {
        (0x20, _) => "v2 LOCAL".to_string(),
        (0x21, 0x11) => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            format!(
                "v2 PROXY {}:{} {}:{}",
                ip(&block[0..4]),
                port(&block[8..10]),
                ip(&block[4..8]),
                port(&block[10..12])
            )
        }
        (0x21, 0x21) => {
            let ip = |b: &[u8]| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            format!(
                "v2 PROXY [{}]:{} [{}]:{}",
                ip(&block[0..16]),
                port(&block[32..34]),
                ip(&block[16..32]),
                port(&block[34..36])
            )
        }
        other => format!("v2 unexpected {other:?}"),
    })
}

impl ProxyTarget {
    async fn start() -> ProxyTarget {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Announced>>> = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let Some(header) = read_header(&mut s).await else { return };
                    let i = {
                        let mut c = c.lock().unwrap();
                        c.push(Announced { header: header.clone(), paths: Vec::new() });
                        c.len() - 1
                    };
                    // HTTP/1.1 or h2c after the header, by hyper; each answer is the header.
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        c.lock().unwrap()[i].paths.push(req.uri().path().to_string());
                        let body = http_body_util::Full::new(bytes::Bytes::from(header.clone()));
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        ProxyTarget { addr, conns, task }
    }

    fn conns(&self) -> Vec<Announced> {
        self.conns.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_told_the_client_and_health_checks_say_local() {
    let t1 = ProxyTarget::start().await;
    let t2 = ProxyTarget::start().await;
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
proxy_protocol = {{ trusted = ["127.0.0.0/8"] }}

[[listeners]]
name = "direct"
bind = "127.0.0.1:0"

[[rules]]
name = "v1"
listeners = ["edge", "direct"]
priority = 1
path = ["/v1/*"]
forward = "v1"

[[rules]]
name = "v2"
listeners = ["edge", "direct"]
priority = 2
path = ["/v2/*"]
forward = "v2"

[[target_groups]]
name = "v1"
send_proxy_protocol = "v1"
targets = ["{}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2 }}

[[target_groups]]
name = "v2"
send_proxy_protocol = "v2"
targets = ["{}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2 }}
"#,
        t1.addr, t2.addr
    ));
    let edge = lb.addr("edge");
    for (g, t) in [("v1", &t1), ("v2", &t2)] {
        assert!(wait_state(&lb, g, t.addr, "healthy", Duration::from_secs(10)).await, "{g}");
    }

    // Two clients behind the NLB, each on a keep-alive connection, both to the v1 group: each
    // target connection announces one client and carries only that client's requests.
    let mut a = TcpStream::connect(edge).await.unwrap();
    a.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.1 1111 80\r\n").await.unwrap();
    let mut b = TcpStream::connect(edge).await.unwrap();
    b.write_all(b"PROXY TCP6 2001:db8::2 2001:db8::1 2222 80\r\n").await.unwrap();
    for i in 0..3 {
        for (s, who) in [
            (&mut a, "PROXY TCP4 192.0.2.1 198.51.100.1 1111 80"),
            (&mut b, "PROXY TCP6 2001:db8::2 2001:db8::1 2222 80"),
        ] {
            s.write_all(format!("GET /v1/{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes()).await.unwrap();
            let r = read_response(s).await;
            assert!(r.starts_with("HTTP/1.1 200") && r.ends_with(who), "{r}");
        }
    }
    let traffic: Vec<Announced> =
        t1.conns().into_iter().filter(|c| c.paths.iter().any(|p| p.starts_with("/v1/"))).collect();
    for c in &traffic {
        assert!(
            c.paths.iter().all(|p| p.starts_with("/v1/"))
                && (c.header.contains("192.0.2.1") || c.header.contains("2001:db8::2")),
            "{c:?}"
        );
    }
    let by = |who: &str| traffic.iter().filter(|c| c.header.contains(who)).flat_map(|c| c.paths.clone()).count();
    assert_eq!((by("192.0.2.1"), by("2001:db8::2")), (3, 3), "{traffic:?}");
    assert!(traffic.len() <= 4, "connections are reused per client: {traffic:?}");

    // v2 to the target: the client's address in binary, over IPv4 and IPv6.
    let r = request_after(edge, b"PROXY TCP4 192.0.2.9 198.51.100.1 9999 443\r\n", "/v2/x").await;
    assert!(r.ends_with("v2 PROXY 192.0.2.9:9999 198.51.100.1:443"), "{r}");
    let r = request_after(edge, b"PROXY TCP6 2001:db8::9 2001:db8::1 9 443\r\n", "/v2/y").await;
    assert!(r.ends_with("v2 PROXY [2001:db8::9]:9 [2001:db8::1]:443"), "{r}");
    // A client that came in directly: its own address, to the listener's.
    let direct = lb.addr("direct");
    let r = request_after(direct, b"", "/v2/z").await;
    assert!(r.contains("v2 PROXY 127.0.0.1:") && r.ends_with(&format!("127.0.0.1:{}", direct.port())), "{r}");

    // Health checks: no client to name — v1's PROXY UNKNOWN, v2's LOCAL.
    for (t, header) in [(&t1, "PROXY UNKNOWN"), (&t2, "v2 LOCAL")] {
        assert!(
            eventually(Duration::from_secs(10), || t
                .conns()
                .iter()
                .any(|c| c.header == header && c.paths == ["/health"]))
            .await,
            "{:?}",
            t.conns()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_targets_get_one_announced_connection_per_client() {
    let t = ProxyTarget::start().await;
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
proxy_protocol = {{ trusted = ["127.0.0.0/8"] }}
default_action = {{ forward = "h2" }}

[[target_groups]]
name = "h2"
protocol = "http2"
send_proxy_protocol = "v2"
targets = ["{}"]
"#,
        t.addr
    ));
    let edge = lb.addr("edge");
    let mut a = TcpStream::connect(edge).await.unwrap();
    a.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.1 1111 80\r\n").await.unwrap();
    let mut b = TcpStream::connect(edge).await.unwrap();
    b.write_all(b"PROXY TCP4 192.0.2.2 198.51.100.1 2222 80\r\n").await.unwrap();
    for i in 0..3 {
        for (s, who) in
            [(&mut a, "v2 PROXY 192.0.2.1:1111 198.51.100.1:80"), (&mut b, "v2 PROXY 192.0.2.2:2222 198.51.100.1:80")]
        {
            s.write_all(format!("GET /h2/{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes()).await.unwrap();
            let r = read_response(s).await;
            assert!(r.starts_with("HTTP/1.1 200") && r.ends_with(who), "{r}");
        }
    }
    let conns = t.conns();
    for who in ["192.0.2.1:1111", "192.0.2.2:2222"] {
        let mine: Vec<_> = conns.iter().filter(|c| c.header.contains(who)).collect();
        assert!(!mine.is_empty() && mine.len() <= 2, "one multiplexed connection per client and worker: {conns:?}");
        assert_eq!(mine.iter().map(|c| c.paths.len()).sum::<usize>(), 3, "{conns:?}");
    }
}
