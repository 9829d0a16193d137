//! Listener rules through a real listener: every condition kind, their combination, priority
//! order, the default action, redirects and fixed responses.

mod common;

use common::*;

fn config(b: &[&Backend]) -> String {
    let tg = |name: &str, be: &Backend| format!("[[target_groups]]\nname = \"{name}\"\ntargets = [\"{}\"]\n", be.addr);
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ fixed_response = {{ status = 418, content_type = "text/plain", body = "default\n" }} }}

[[rules]]
name = "host-exact"
listeners = ["web"]
priority = 10
host = ["API.example.com"]
forward = "host"

[[rules]]
name = "host-wild"
listeners = ["web"]
priority = 11
host = ["*.example.org", "app-?.example.net"]
forward = "wild"

[[rules]]
name = "path"
listeners = ["web"]
priority = 20
path = ["/v1/*", "/exact"]
forward = "path"

[[rules]]
name = "method"
listeners = ["web"]
priority = 30
method = ["DELETE"]
forward = "method"

[[rules]]
name = "header"
listeners = ["web"]
priority = 40
headers = {{ "X-Canary" = ["on", "y*"] }}
forward = "header"

[[rules]]
name = "query"
listeners = ["web"]
priority = 50
query = {{ "version" = ["v2*"] }}
forward = "query"

[[rules]]
name = "source"
listeners = ["web"]
priority = 60
source_ip = ["10.0.0.0/8"]
forward = "source"

[[rules]]
name = "combo"
listeners = ["web"]
priority = 5
host = ["combo.test"]
path = ["/c/*"]
method = ["POST"]
source_ip = ["127.0.0.0/8"]
forward = "combo"

[[rules]]
name = "shadowed"
listeners = ["web"]
priority = 70
path = ["/v1/*"]
forward = "source"

[[rules]]
name = "redirect-https"
listeners = ["web"]
priority = 80
path = ["/old/*"]
redirect = {{ protocol = "https", status = 301 }}

[[rules]]
name = "redirect-full"
listeners = ["web"]
priority = 81
path = ["/moved"]
redirect = {{ host = "new.example.com", port = 8443, path = "/landing", query = "from=old", status = 308 }}

[[rules]]
name = "fixed"
listeners = ["web"]
priority = 90
path = ["/teapot"]
fixed_response = {{ status = 503, content_type = "application/json", body = "{{\"down\":true}}" }}

{}{}{}{}{}{}{}{}"#,
        tg("host", b[0]),
        tg("wild", b[1]),
        tg("path", b[2]),
        tg("method", b[3]),
        tg("header", b[4]),
        tg("query", b[5]),
        tg("source", b[6]),
        tg("combo", b[7]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_condition_kind_priority_and_default() {
    let names = ["host", "wild", "path", "method", "header", "query", "source", "combo"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = Lb::start(&config(&refs));
    let c = client();
    let base = lb.url("web", "");

    // host: case-insensitive, port ignored; wildcards * and ?.
    let r = get_with(&c, &format!("{base}/x"), &[("host", "api.EXAMPLE.com:1234")]).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "host"));
    assert_eq!(get_with(&c, &format!("{base}/x"), &[("host", "a.b.example.org")]).await.backend(), "wild");
    assert_eq!(get_with(&c, &format!("{base}/x"), &[("host", "app-7.example.net")]).await.backend(), "wild");
    assert_eq!(get_with(&c, &format!("{base}/x"), &[("host", "app-77.example.net")]).await.status.as_u16(), 418);

    // path: glob, case-sensitive, query not part of the path.
    assert_eq!(get(&c, &format!("{base}/v1/users?x=1")).await.backend(), "path");
    assert_eq!(get(&c, &format!("{base}/exact")).await.backend(), "path");
    assert_eq!(get(&c, &format!("{base}/V1/users")).await.status.as_u16(), 418);
    assert_eq!(get(&c, &format!("{base}/exact/more")).await.status.as_u16(), 418);

    // method
    let del = http::Request::delete(format!("{base}/anything")).body(Default::default()).unwrap();
    assert_eq!(send(&c, del).await.backend(), "method");

    // headers: name case-insensitive, value wildcards.
    assert_eq!(get_with(&c, &format!("{base}/h"), &[("x-canary", "yes")]).await.backend(), "header");
    assert_eq!(get_with(&c, &format!("{base}/h"), &[("x-canary", "off")]).await.status.as_u16(), 418);

    // query: percent-decoded values.
    assert_eq!(get(&c, &format!("{base}/q?a=1&version=v2.3")).await.backend(), "query");
    assert_eq!(get(&c, &format!("{base}/q?version=v%32")).await.backend(), "query");
    assert_eq!(get(&c, &format!("{base}/q?version=v1")).await.status.as_u16(), 418);

    // source_ip: the client is 127.0.0.1, not in 10/8.
    assert_eq!(get(&c, &format!("{base}/s")).await.status.as_u16(), 418);

    // combination (AND across kinds) with the lowest priority number winning over "path".
    let post = |path: &str, host: &str| {
        http::Request::post(format!("{base}{path}")).header("host", host).body(Default::default()).unwrap()
    };
    assert_eq!(send(&c, post("/c/1", "combo.test")).await.backend(), "combo");
    let get_combo =
        http::Request::get(format!("{base}/c/1")).header("host", "combo.test").body(Default::default()).unwrap();
    assert_eq!(send(&c, get_combo).await.status.as_u16(), 418, "method condition must also hold");
    assert_eq!(send(&c, post("/c/1", "other.test")).await.status.as_u16(), 418);

    // priority: "path" (20) shadows "shadowed" (70) for /v1/*.
    assert_eq!(get(&c, &format!("{base}/v1/z")).await.backend(), "path");
    assert_eq!(backends[6].requests(), 0, "the shadowed rule's group never received a request");

    // default action
    let d = get(&c, &format!("{base}/nothing")).await;
    assert_eq!((d.status.as_u16(), d.body.as_str()), (418, "default\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_fixed_responses() {
    let mut backends = Vec::new();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = Lb::start(&config(&refs));
    let c = client();
    let base = lb.url("web", "");

    let r = get_with(&c, &format!("{base}/old/page?id=7"), &[("host", "shop.example.com:8080")]).await;
    assert_eq!(r.status.as_u16(), 301);
    assert_eq!(r.header("location"), Some("https://shop.example.com/old/page?id=7"));

    let r = get_with(&c, &format!("{base}/moved?ignored=1"), &[("host", "shop.example.com")]).await;
    assert_eq!(r.status.as_u16(), 308);
    assert_eq!(r.header("location"), Some("http://new.example.com:8443/landing?from=old"));

    let r = get(&c, &format!("{base}/teapot")).await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, "{\"down\":true}");
    assert!(backends.iter().all(|b| b.requests() == 0), "redirects and fixed responses never reach a target");
}
