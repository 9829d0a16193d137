//! Header modification and rule transforms through a real listener, for HTTP/1.1 and HTTP/2
//! clients and HTTP/1.1 and HTTP/2 targets: the target receives the rewritten host, path and
//! request headers, the client gets the set and removed response headers (the listener's and the
//! rule's, on forwarded responses and on the balancer's own answers), routing is decided on the
//! original request, and a rewrite that makes an invalid path answers 500.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

fn config(api: &Backend, other: &Backend) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
response_headers = {{ "strict-transport-security" = "max-age=31536000; includeSubDomains", "x-frame-options" = "DENY" }}
server_header = false

[[rules]]
name = "api"
listeners = ["web"]
priority = 10
host = ["api.example.com", "h2api.example.com"]
path = ["/api/*"]
transforms = {{ host = {{ regex = '^(h2)?api\.(.+)$', replace = 'www.$2' }}, url = {{ regex = '^/api/(.*)$', replace = '/$1' }} }}
request_headers = {{ set = {{ "x-tenant" = "shop" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "cache-control" = "no-store", "x-frame-options" = "SAMEORIGIN" }}, remove = ["x-powered-by"] }}
forward = "api"

[[rules]]
name = "api-h2"
listeners = ["web"]
priority = 11
host = ["h2api.example.com"]
forward = "api2"

[[rules]]
name = "orders"
listeners = ["web"]
priority = 20
path = ["/orders*"]
forward = "other"

[[rules]]
name = "broken"
listeners = ["web"]
priority = 30
path = ["/bad/*"]
transforms = {{ url = {{ regex = '^/bad/(.*)$', replace = '/with space/$1' }} }}
forward = "api"

[[rules]]
name = "teapot"
listeners = ["web"]
priority = 40
path = ["/tea"]
response_headers = {{ set = {{ "x-tea" = "earl grey" }} }}
fixed_response = {{ status = 418, body = "short and stout\n" }}

[[target_groups]]
name = "api"
targets = ["{api}"]

[[target_groups]]
name = "api2"
protocol = "http2"
targets = ["{api}"]

[[target_groups]]
name = "other"
targets = ["{other}"]
"#,
        api = api.addr,
        other = other.addr
    )
}

/// A request over HTTP/1.1 (hyper's client) or HTTP/2 (prior knowledge, the authority as given).
async fn request(lb: &Lb, h2: bool, authority: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let addr = lb.addr("web");
    if !h2 {
        let mut all = vec![("host", authority)];
        all.extend_from_slice(headers);
        return get_with(&client(), &format!("http://{addr}{path}"), &all).await;
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(format!("http://{authority}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = tx.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into(),
        version: parts.version,
    }
}

/// The host a backend saw: `Host` over HTTP/1.1, the URI's authority over HTTP/2.
fn seen_host(s: &Seen) -> String {
    match s.headers.get("host") {
        Some(h) => h.to_str().unwrap().to_string(),
        None => s.uri.parse::<http::Uri>().unwrap().authority().unwrap().to_string(),
    }
}

/// The path and query a backend saw.
fn seen_path(s: &Seen) -> String {
    s.uri.parse::<http::Uri>().unwrap().path_and_query().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_get_the_rewritten_request_and_clients_the_edited_response() {
    let (api, other) = (Backend::start("api").await, Backend::start("other").await);
    let lb = Lb::start(&config(&api, &other));
    // HTTP/1.1 and HTTP/2 clients; both hosts through the host regex's optional group.
    for h2 in [false, true] {
        for host in ["api.example.com", "h2api.example.com"] {
            let case = format!("h2 client: {h2}, host {host}");
            let before = api.requests();
            let got = request(
                &lb,
                h2,
                host,
                "/api/orders?page=2",
                &[
                    ("x-debug", "1"),
                    ("x-tenant", "forged"),
                    ("x-reply-header", "x-powered-by=php"),
                    ("x-reply-header", "server=app/1.0"),
                    ("x-reply-header", "x-frame-options=ALLOWALL"),
                    ("x-reply-header", "x-kept=yes"),
                ],
            )
            .await;
            assert_eq!(got.status, StatusCode::OK, "{case}");
            // Routing was decided on the original path: /orders would have gone to "other".
            assert_eq!(got.body, "api", "{case}: routed on the original request");
            assert_eq!(api.requests(), before + 1, "{case}");
            let seen = api.last();
            assert_eq!(seen_host(&seen), "www.example.com", "{case}: the host transform");
            assert_eq!(seen_path(&seen), "/orders?page=2", "{case}: the url transform keeps the query");
            assert_eq!(seen.headers.get_all("x-tenant").iter().collect::<Vec<_>>(), ["shop"], "{case}");
            assert!(seen.headers.get("x-debug").is_none(), "{case}: removed");
            assert!(seen.headers.get("x-forwarded-for").is_some(), "{case}");
            // The response: the listener's fields, the rule's after them, the target's removed.
            assert_eq!(got.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains"), "{case}");
            assert_eq!(got.header("cache-control"), Some("no-store"), "{case}");
            assert_eq!(got.headers.get_all("x-frame-options").iter().collect::<Vec<_>>(), ["SAMEORIGIN"], "{case}");
            assert!(got.header("x-powered-by").is_none() && got.header("server").is_none(), "{case}");
            assert_eq!(got.header("x-kept"), Some("yes"), "{case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_group_receives_the_rewritten_request() {
    let (api, other) = (Backend::start("api").await, Backend::start("other").await);
    // The same rule forwarding to the HTTP/2 group.
    let text = config(&api, &other).replacen("forward = \"api\"\n", "forward = \"api2\"\n", 1);
    let lb = Lb::start(&text);
    for h2 in [false, true] {
        let got = request(&lb, h2, "api.example.com:8080", "/api/x", &[("x-debug", "1")]).await;
        assert_eq!(got.status, StatusCode::OK, "h2 client: {h2}");
        let seen = api.last();
        assert_eq!(seen.version, http::Version::HTTP_2, "h2 client: {h2}");
        assert_eq!(seen_host(&seen), "www.example.com:8080", "h2 client: {h2}: the client's port is kept");
        assert_eq!(seen_path(&seen), "/x");
        assert_eq!(seen.headers.get("x-tenant").unwrap(), "shop");
        assert!(seen.headers.get("x-debug").is_none());
        assert_eq!(got.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_the_balancer_carry_the_edits_and_a_bad_rewrite_is_a_500() {
    let (api, other) = (Backend::start("api").await, Backend::start("other").await);
    let lb = Lb::start(&config(&api, &other));
    for h2 in [false, true] {
        // A fixed response: the listener's fields and the rule's.
        let tea = request(&lb, h2, "x.test", "/tea", &[]).await;
        assert_eq!(tea.status.as_u16(), 418);
        assert_eq!(tea.header("x-tea"), Some("earl grey"));
        assert!(tea.header("strict-transport-security").is_some(), "h2: {h2}");
        // The default action: the listener's.
        let none = request(&lb, h2, "x.test", "/nothing", &[]).await;
        assert_eq!(none.status.as_u16(), 404);
        assert_eq!(none.header("x-frame-options"), Some("DENY"));
        // A rewrite to an invalid path never reaches the target.
        let before = api.requests();
        let bad = request(&lb, h2, "x.test", "/bad/x", &[]).await;
        assert_eq!(bad.status.as_u16(), 500, "h2: {h2}");
        assert_eq!(api.requests(), before, "the target never sees it");
        assert!(bad.header("strict-transport-security").is_some());
    }
    // A line is written when its response body has ended, which may be just after the client
    // read it.
    let count = || lb.log.lines().iter().filter(|l| l["error"] == "rewrite_invalid_path").count();
    eventually(Duration::from_secs(5), || count() == 2).await;
    let logged = lb.log.lines();
    let errors: Vec<_> = logged.iter().filter(|l| l["error"] == "rewrite_invalid_path").collect();
    assert_eq!(errors.len(), 2, "logged with its reason: {logged:#?}");
    assert!(errors.iter().all(|l| l["status"] == 500 && l["rule"] == "broken"));
    let metrics = get(&client(), &lb.admin("/metrics")).await.body;
    assert!(
        metrics.contains("pilotfish_requests_total{listener=\"web\",target_group=\"api\",code=\"500\"} 2"),
        "counted: {metrics}"
    );
}
