//! Forwarding through a real listener to real backends: balancing algorithms, weighted forward,
//! errors the balancer answers (502/503/504), retries, forwarding headers, protocol bridging
//! and keep-alive reuse to targets.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::Version;

fn one_group(algorithm: &str, targets: &[String], extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
algorithm = "{algorithm}"
targets = [{}]
{extra}
"#,
        targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
    )
}

async fn count_backends(c: &HttpClient, url: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(c, url).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        *seen.entry(r.backend().to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even() {
    let (a, b, c3) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let targets = [a.addr.to_string(), b.addr.to_string(), c3.addr.to_string()];
    // One worker: strictly in turn.
    let lb = Lb::start(&format!("[server]\nworker_threads = 1\n{}", one_group("round_robin", &targets, "")));
    let seen = count_backends(&client(), &lb.url("web", "/"), 300).await;
    assert_eq!(seen.get("a"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("c"), Some(&100), "{seen:?}");
    drop(lb);
    // Two workers, each with its own cursor (as nginx's workers): however the requests split
    // between them, each worker's share is in turn, so no target is more than one request per
    // worker away from an even third.
    let lb = Lb::start(&format!("[server]\nworker_threads = 2\n{}", one_group("round_robin", &targets, "")));
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(client()); // several client connections, spread over both workers
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let r = get(&conns[i % conns.len()], &lb.url("web", "/")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        *seen.entry(r.backend().to_string()).or_default() += 1;
    }
    for t in ["a", "b", "c"] {
        let n = seen.get(t).copied().unwrap_or(0);
        assert!((98..=102).contains(&n), "{t}: {n} of 300: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_forward_splits_between_groups() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[rules]]
name = "split"
listeners = ["web"]
priority = 1
path = ["/*"]
forward = [{{ target_group = "blue", weight = 90 }}, {{ target_group = "green", weight = 10 }}]

[[target_groups]]
name = "blue"
targets = ["{}"]

[[target_groups]]
name = "green"
targets = ["{}"]
"#,
        a.addr, b.addr
    ));
    let seen = count_backends(&client(), &lb.url("web", "/"), 2000).await;
    let green = *seen.get("b").unwrap_or(&0);
    // 10% of 2000 = 200; binomial sd ≈ 13.4, so ±60 is > 4 sd.
    assert!((140..=260).contains(&green), "green got {green} of 2000: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_random_follows_target_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
algorithm = "weighted_random"
targets = [{{ address = "{}", weight = 3 }}, {{ address = "{}", weight = 1 }}]
"#,
        a.addr, b.addr
    );
    let lb = Lb::start(&cfg);
    let seen = count_backends(&client(), &lb.url("web", "/"), 1000).await;
    let heavy = *seen.get("a").unwrap_or(&0);
    assert!((680..=820).contains(&heavy), "a should get ~750 of 1000: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_avoids_a_target_holding_slow_requests() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&one_group("least_outstanding_requests", &[a.addr.to_string(), b.addr.to_string()], ""));
    let url = lb.url("web", "/");
    // Park slow requests until both targets hold some; LOR keeps them balanced (2 + 2).
    let c = client();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let (c, url) = (c.clone(), url.clone());
        slow.push(tokio::spawn(async move { get_with(&c, &url, &[("x-delay-ms", "1500")]).await }));
        let want = slow.len();
        assert!(eventually(Duration::from_secs(5), || a.requests() + b.requests() == want).await);
    }
    assert_eq!((a.requests(), b.requests()), (2, 2), "slow requests spread evenly");
    // Now make a hold one more: it stays busier until it finishes.
    let ta = a.requests();
    let extra = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { get_with(&c, &url, &[("x-delay-ms", "1500")]).await })
    };
    assert!(eventually(Duration::from_secs(5), || a.requests() + b.requests() == 5).await);
    let busier_is_a = a.requests() > ta;
    // Fast requests must all go to the less loaded target while the slow ones run.
    for _ in 0..20 {
        let r = get(&c, &url).await;
        assert_eq!(r.backend(), if busier_is_a { "b" } else { "a" });
    }
    for h in slow {
        assert_eq!(h.await.unwrap().status.as_u16(), 200);
    }
    assert_eq!(extra.await.unwrap().status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_errors_502_503_504() {
    let slow = Backend::start("slow").await;
    let dead = dead_addr();
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[rules]]
name = "refused"
listeners = ["web"]
priority = 1
path = ["/refused"]
forward = "refused"

[[rules]]
name = "empty"
listeners = ["web"]
priority = 2
path = ["/empty"]
forward = "empty"

[[rules]]
name = "slow"
listeners = ["web"]
priority = 3
path = ["/slow"]
forward = "slow"

[[target_groups]]
name = "refused"
retries = 0
targets = ["{dead}"]

[[target_groups]]
name = "empty"
targets = []

[[target_groups]]
name = "slow"
response_timeout = "300ms"
targets = ["{}"]
"#,
        slow.addr
    ));
    let c = client();
    let r = get(&c, &lb.url("web", "/refused")).await;
    assert_eq!(r.status.as_u16(), 502);
    assert!(r.body.starts_with("502"), "{}", r.body);
    let r = get(&c, &lb.url("web", "/empty")).await;
    assert_eq!(r.status.as_u16(), 503);
    let r = get_with(&c, &lb.url("web", "/slow"), &[("x-delay-ms", "3000")]).await;
    assert_eq!(r.status.as_u16(), 504);

    // Every balancer answer is counted and logged with a reason.
    let metrics = get(&c, &lb.admin("/metrics")).await.body;
    for (tg, code) in [("refused", 502), ("empty", 503), ("slow", 504)] {
        let line = format!("pilotfish_requests_total{{listener=\"web\",target_group=\"{tg}\",code=\"{code}\"}} 1");
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    assert!(eventually(Duration::from_secs(5), || lb.log.lines().len() >= 3).await);
    let reasons: Vec<_> = lb.log.lines().iter().map(|l| l["error"].as_str().unwrap_or("").to_string()).collect();
    for want in ["target_connect_failed", "no_target", "target_response_timeout"] {
        assert!(reasons.iter().any(|r| r == want), "{want} not in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_a_dead_target_makes_every_get_succeed() {
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let lb = Lb::start(&one_group("round_robin", &[dead.to_string(), live.addr.to_string()], "retries = 1"));
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &lb.url("web", "/")).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "live"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop_stripping() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&one_group("round_robin", &[be.addr.to_string()], ""));
    let c = client();
    let port = lb.addr("web").port();
    let r = get_with(
        &c,
        &lb.url("web", "/p?q=1"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let seen = be.last();
    let h = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(seen.uri, "/p?q=1");
    assert_eq!(h("host").as_deref(), Some("shop.example.com"), "Host passes unchanged");
    assert_eq!(h("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-port"), Some(port.to_string()));
    let id = h("x-request-id").expect("x-request-id added");
    assert!(id.starts_with("1-") && id.len() == 35, "{id}");
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization", "te"] {
        assert!(h(gone).is_none(), "{gone} must be stripped");
    }
    assert_eq!(h("x-keep").as_deref(), Some("yes"));
    // The client sees the target's response without its hop-by-hop headers.
    assert!(r.header("x-hop").is_none(), "connection-named response header must be stripped");

    // An existing x-request-id is kept.
    get_with(&c, &lb.url("web", "/"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(be.last().headers.get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_http1_target_and_http1_client_to_h2c_target() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[rules]]
name = "to-h2"
listeners = ["web"]
priority = 1
path = ["/h2/*"]
forward = "h2"

[[rules]]
name = "to-h1"
listeners = ["web"]
priority = 2
path = ["/*"]
forward = "h1"

[[target_groups]]
name = "h1"
protocol = "http1"
targets = ["{0}"]

[[target_groups]]
name = "h2"
protocol = "http2"
targets = ["{0}"]
"#,
        be.addr
    ));
    let r = get(&h2c_client(), &lb.url("web", "/plain")).await;
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_2));
    let seen = be.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers.get("host").unwrap().to_str().unwrap(), lb.addr("web").to_string(), "Host from :authority");

    let r = send(&client(), http::Request::post(lb.url("web", "/h2/x")).body("payload".into()).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_11));
    let seen = be.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri, format!("http://{}/h2/x", lb.addr("web")));
    assert_eq!(&seen.body[..], b"payload");

    // An upgrade cannot cross to HTTP/2: it is forwarded as a plain request.
    let r = get_with(&client(), &lb.url("web", "/h2/ws"), &[("upgrade", "websocket"), ("connection", "upgrade")]).await;
    assert_eq!(r.status.as_u16(), 200);
    let seen = be.last();
    assert_eq!(
        (seen.version, seen.uri.as_str()),
        (Version::HTTP_2, format!("http://{}/h2/ws", lb.addr("web")).as_str())
    );
    assert!(seen.headers.get("upgrade").is_none() && seen.headers.get("connection").is_none(), "{:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_to_targets_are_reused() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&one_group("round_robin", &[be.addr.to_string()], ""));
    let c = client();
    for i in 0..200 {
        let r = send(&c, http::Request::post(lb.url("web", "/")).body(format!("body {i}").into()).unwrap()).await;
        assert_eq!(r.status.as_u16(), 200);
    }
    assert_eq!(be.requests(), 200);
    let conns = be.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns <= 3, "200 sequential requests used {conns} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recently_used_target_connection_is_reused_first() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&format!(
        "[server]\nadmin_bind = \"127.0.0.1:0\"\nworker_threads = 1\n{}",
        one_group("round_robin", &[be.addr.to_string()], "")
    ));
    // Four requests at once open four connections to the target; all go back to the pool.
    let c = client();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), lb.url("web", "/slow"));
            tokio::spawn(async move { get_with(&c, &url, &[("x-delay-ms", "800")]).await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || be.requests() == 4).await, "all four in flight together");
    for h in slow {
        assert_eq!(h.await.unwrap().status.as_u16(), 200);
    }
    assert_eq!(be.connections.load(std::sync::atomic::Ordering::SeqCst), 4);
    let burst_conns: std::collections::HashSet<usize> = be.seen.lock().unwrap().iter().map(|s| s.conn).collect();
    assert_eq!(burst_conns.len(), 4);
    // Sequential requests then all take the connection returned last (a FIFO pool would rotate
    // through all four and keep every one of them warm).
    let before = be.requests();
    for _ in 0..8 {
        assert_eq!(get(&c, &lb.url("web", "/")).await.status.as_u16(), 200);
    }
    let seen = be.seen.lock().unwrap();
    let used: std::collections::HashSet<usize> = seen[before..].iter().map(|s| s.conn).collect();
    assert_eq!(used.len(), 1, "sequential requests used target connections {used:?}");
    assert_eq!(be.connections.load(std::sync::atomic::Ordering::SeqCst), 4, "no new connection was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_workers_and_each_serves_its_own() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let be = Backend::start("be").await;
    let cfg = format!(
        "[server]\nadmin_bind = \"127.0.0.1:0\"\nworker_threads = 4\n{}",
        one_group("round_robin", &[be.addr.to_string()], "")
    );
    let lb = Lb::start(&cfg);
    // Eight keep-alive client connections, each proxying requests and left open.
    let mut conns = Vec::new();
    for i in 0..8 {
        let mut s = tokio::net::TcpStream::connect(lb.addr("web")).await.unwrap();
        for j in 0..3 {
            s.write_all(format!("GET /c{i}/{j} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
            // One response: the head, then its two-byte body ("be").
            let mut got = Vec::new();
            while got.windows(4).position(|w| w == b"\r\n\r\n").is_none_or(|p| got.len() < p + 6) {
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            let resp = String::from_utf8_lossy(&got).into_owned();
            assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("\r\n\r\nbe"), "{resp:?}");
        }
        conns.push(s);
    }
    assert_eq!(be.requests(), 24);
    // Each worker accepts on its own SO_REUSEPORT socket and the kernel hashes connections over
    // them: every connection is counted on the worker serving it, and the eight do not all
    // land on one worker (a chance of 4 in 4^8 if the spread were uniform).
    let per_worker = |text: &str| -> Vec<u64> {
        (0..4)
            .map(|w| {
                let key = format!("pilotfish_worker_connections{{worker=\"{w}\"}} ");
                text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok()).unwrap_or(0)
            })
            .collect()
    };
    let spread = poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        per_worker(&get(&client(), &format!("http://{}/metrics", lb.server.admin_addr())).await.body)
            .iter()
            .sum::<u64>()
            == 8
    })
    .await;
    let counts = per_worker(&get(&client(), &format!("http://{}/metrics", lb.server.admin_addr())).await.body);
    assert!(spread, "every open connection is counted on a worker: {counts:?}");
    assert!(counts.iter().filter(|&&n| n > 0).count() > 1, "the connections all went to one worker: {counts:?}");
    drop(conns);
    for w in 0..4 {
        let line = format!("pilotfish_worker_connections{{worker=\"{w}\"}} 0");
        assert!(wait_metric(&lb, &line, Duration::from_secs(5)).await, "{line}");
    }
}
