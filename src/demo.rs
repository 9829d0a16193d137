//! `pilotfish demo`: two in-process HTTP backends and a configuration that shows routing,
//! balancing, a redirect and a fixed response, on 127.0.0.1:8080 (admin 127.0.0.1:9901).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Starts a backend that answers every request with its name, the path, and the forwarding
/// headers it received (on the current runtime). Returns its address.
pub async fn start_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
                    let body = format!(
                        "hello from {name}: {} {} (x-forwarded-for: {}, x-request-id: {})\n",
                        req.method(),
                        req.uri(),
                        h("x-forwarded-for"),
                        h("x-request-id")
                    );
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(r)
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// The demo configuration for backends `a` and `b`.
pub fn config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"# pilotfish demo configuration (generated)
[server]
admin_bind = "127.0.0.1:9901"

[access_log]
format = "json"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_action = {{ fixed_response = {{ status = 404, content_type = "text/plain", body = "no route matched\n" }} }}

[[rules]]
name = "api"
listeners = ["web"]
priority = 10
path = ["/api/*"]
forward = "api"

[[rules]]
name = "canary"
listeners = ["web"]
priority = 20
headers = {{ "x-canary" = ["on"] }}
forward = [{{ target_group = "api", weight = 1 }}, {{ target_group = "b-only", weight = 1 }}]

[[rules]]
name = "old-docs"
listeners = ["web"]
priority = 30
path = ["/docs/*"]
redirect = {{ protocol = "https", host = "docs.example.com", path = "/", status = 302 }}

[[rules]]
name = "everything-else"
listeners = ["web"]
priority = 100
path = ["/*"]
forward = "api"

[[target_groups]]
name = "api"
algorithm = "round_robin"
targets = ["{a}", "{b}"]

[[target_groups]]
name = "b-only"
algorithm = "least_outstanding_requests"
targets = ["{b}"]
"#
    )
}

/// The lines the demo prints for the user to try.
pub const TRY: &str = "\
pilotfish demo is running: backends a and b behind http://127.0.0.1:8080 (admin http://127.0.0.1:9901)

  curl -i http://127.0.0.1:8080/api/hello           # round-robin: run it twice, see x-backend alternate
  curl -i -H 'x-canary: on' http://127.0.0.1:8080/  # weighted split between two target groups
  curl -i http://127.0.0.1:8080/docs/intro          # 302 redirect
  curl -i --http2-prior-knowledge http://127.0.0.1:8080/api/h2   # h2c on the same port
  curl -s http://127.0.0.1:9901/targets             # targets, state, in-flight
  curl -s http://127.0.0.1:9901/metrics | grep pilotfish_requests_total

Access log lines (JSON) follow on stdout. Ctrl-C stops.
";
