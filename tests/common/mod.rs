//! Test harness: real backends on 127.0.0.1:0 that report what they received, pilotfish started
//! in-process on 127.0.0.1:0 listeners, and real HTTP clients. Everything stops on drop.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pilotfish::server::{ConfigSource, Options, Server};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod aws;
pub mod browser;
pub mod dns;
pub mod process;
pub mod raw;
pub mod tls;

/// A byte stream the test servers speak over: TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Which of the backend's connections carried it (0 = the first accepted).
    pub conn: usize,
}

/// A real HTTP server (HTTP/1.1 and h2c) that answers with its name and records requests.
/// `x-delay-ms: N` makes it wait N ms before answering; `x-status: N` sets the status;
/// `x-reply-header: name=value` adds that field to the response.
/// `GET /health` answers `health_status` (200 by default) and is counted apart, not recorded.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub health_status: Arc<AtomicU16>,
    /// Health checks answered with a passing (2xx) / failing status.
    pub health_passes: Arc<AtomicUsize>,
    pub health_fails: Arc<AtomicUsize>,
    kill: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Self::start_with(name, None).await
    }

    /// A backend that speaks TLS (with ALPN h2 and http/1.1).
    pub async fn start_tls(name: &'static str, cert_pem: &str, key_pem: &str) -> Backend {
        Self::start_with(name, Some(tls::acceptor(cert_pem, key_pem))).await
    }

    async fn start_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health_status = Arc::new(AtomicU16::new(200));
        let (health_passes, health_fails) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (kill, kill_rx) = tokio::sync::watch::channel(false);
        let (c, s) = (connections.clone(), seen.clone());
        let health = (health_status.clone(), health_passes.clone(), health_fails.clone());
        let mut stop = kill_rx.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let health = health.clone();
                let mut stop = kill_rx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        let health = health.clone();
                        async move {
                            if req.uri().path() == "/health" {
                                let status = health.0.load(Ordering::SeqCst);
                                let counter = if (200..300).contains(&status) { &health.1 } else { &health.2 };
                                counter.fetch_add(1, Ordering::SeqCst);
                                let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                return Ok::<_, Infallible>(r);
                            }
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let delay = parts
                                .headers
                                .get("x-delay-ms")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(0);
                            let status = parts
                                .headers
                                .get("x-status")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(200);
                            s.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                                body: body.clone(),
                                conn,
                            });
                            if delay > 0 {
                                // The slow target a test asked for (`x-delay-ms`): the behaviour
                                // under test, not a wait.
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let mut r = Response::new(Full::new(Bytes::from(name)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            r.headers_mut().insert("x-backend", name.parse().unwrap());
                            r.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
                            r.headers_mut().insert("x-hop", "must-not-reach-client".parse().unwrap());
                            // `x-reply-header: name=value` asks for that response field.
                            for v in parts.headers.get_all("x-reply-header") {
                                if let Some((n, v)) = v.to_str().ok().and_then(|v| v.split_once('=')) {
                                    r.headers_mut().append(
                                        http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                                        v.parse().unwrap(),
                                    );
                                }
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        },
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    // Killing the backend drops its connections mid-request, like a crashed process.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Backend { name, addr, connections, seen, health_status, health_passes, health_fails, kill, task }
    }

    /// Stops the server like a crash: the port refuses, open connections are dropped.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
    }

    /// Makes `/health` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("backend saw a request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.kill.send(true);
        self.task.abort();
    }
}

/// An address nothing listens on, for as long as the value lives: its port is bound but never
/// listened on, so connections are refused, and no other socket can take the port meanwhile (as
/// one could a port bound and closed again). Prints as the address.
pub struct DeadAddr {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl std::fmt::Display for DeadAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub fn dead_addr() -> DeadAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    DeadAddr { addr, _socket: socket }
}

/// A cloneable in-memory sink for access log lines.
#[derive(Clone, Default)]
pub struct LogSink(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).expect("access log line is JSON")).collect()
    }
}

/// pilotfish running in-process.
pub struct Lb {
    pub server: Server,
    pub log: LogSink,
}

impl Lb {
    /// Starts pilotfish with `config` (listeners should bind 127.0.0.1:0; the admin API is put
    /// on 127.0.0.1:0 unless the config sets `admin_bind`: tests run in parallel, and the default
    /// port would collide).
    pub fn start(config: &str) -> Lb {
        let text = if config.contains("admin_bind") {
            config.to_string()
        } else if config.contains("[server]") {
            config.replacen("[server]", "[server]\nadmin_bind = \"127.0.0.1:0\"", 1)
        } else {
            format!("[server]\nadmin_bind = \"127.0.0.1:0\"\n{config}")
        };
        let log = LogSink::default();
        let server = Server::start(Options {
            config: ConfigSource::Text { name: "test.toml".into(), text },
            access_log: Some(Box::new(log.clone())),
            signals: false,
            poll: None,
        })
        .unwrap_or_else(|e| panic!("pilotfish failed to start:\n{e}"));
        Lb { server, log }
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.server.listener_addr(listener).expect("listener bound"), path)
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.server.listener_addr(listener).expect("listener bound")
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.server.admin_addr(), path)
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: Version,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 keep-alive client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends a request built by `f` and reads the whole response.
pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Got {
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("response within 20s")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

pub async fn get(c: &HttpClient, url: &str) -> Got {
    send(c, Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn get_with(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

/// Polls the async condition `f` every `every` until it holds (true) or `within` passes (false):
/// the one bounded wait every test uses instead of sleeping.
pub async fn poll_until<F, Fut>(within: Duration, every: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_until(within, Duration::from_millis(10), || std::future::ready(f())).await
}

/// The admin `/targets` entry of `addr` in group `group`.
pub async fn target_entry(lb: &Lb, group: &str, addr: SocketAddr) -> Option<serde_json::Value> {
    let body = get(&client(), &lb.admin("/targets")).await.body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["target_groups"].as_array()?.iter().find(|g| g["name"] == group)?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["address"] == addr.to_string())
        .cloned()
}

/// The admin `/targets` entries of group `group` that take traffic (not draining).
pub async fn live_targets(lb: &Lb, group: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&get(&client(), &lb.admin("/targets")).await.body).unwrap();
    let g = v["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == group).cloned();
    let targets = g.map(|g| g["targets"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
    targets.into_iter().filter(|t| t["state"] != "draining").collect()
}

/// GET `path` of the admin API at `admin`, with `Authorization: Bearer TOKEN` when given.
pub async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> Got {
    let url = format!("http://{admin}{path}");
    match token {
        Some(t) => get_with(&client(), &url, &[("authorization", &format!("Bearer {t}"))]).await,
        None => get(&client(), &url).await,
    }
}

/// Polls `/targets` until `addr` in `group` is in `state` (true) or `within` passes (false).
pub async fn wait_state(lb: &Lb, group: &str, addr: SocketAddr, state: &str, within: Duration) -> bool {
    poll_until(within, Duration::from_millis(5), || async {
        target_entry(lb, group, addr).await.is_some_and(|t| t["state"] == state)
    })
    .await
}

/// Polls `/metrics` until it has a line equal to `line` (true) or `within` passes (false).
pub async fn wait_metric(lb: &Lb, line: &str, within: Duration) -> bool {
    wait_metric_at(lb.server.admin_addr(), line, within).await
}

/// [`wait_metric`] for the admin API at `admin` (e.g. of a [`process::Proc`]).
pub async fn wait_metric_at(admin: SocketAddr, line: &str, within: Duration) -> bool {
    wait_metrics_at(admin, within, |l| l == line).await
}

/// Polls the `/metrics` of the admin API at `admin` until one of its lines satisfies `f` (true)
/// or `within` passes (false).
pub async fn wait_metrics_at(admin: SocketAddr, within: Duration, f: impl Fn(&str) -> bool) -> bool {
    let url = format!("http://{admin}/metrics");
    let f = &f;
    poll_until(within, Duration::from_millis(10), || async { get(&client(), &url).await.body.lines().any(f) }).await
}

/// The marker before a README example that reads AWS: `tests/aws_sources.rs` checks it against
/// moto; the offline check of the other examples skips it.
pub const README_AWS_MARKER: &str = "<!-- this example is checked against moto_server by tests/aws_sources.rs -->\n";

/// Every ```toml block of the README and deploy/README.md, each with whether it is marked as
/// reading AWS.
pub fn readme_toml_blocks() -> Vec<(bool, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut blocks = Vec::new();
    for doc in ["README.md", "deploy/README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let mut parts = text.split("```toml\n");
        let mut before = parts.next().unwrap_or_default();
        for part in parts {
            let block = part.split("\n```").next().unwrap();
            blocks.push((before.ends_with(README_AWS_MARKER), block.to_string()));
            before = part;
        }
    }
    blocks
}
