//! Target lifecycle through real listeners and backends whose health endpoint can be switched:
//! initial state, thresholds, matchers, fail-open, recovery, passive ejection under load, slow
//! start, draining, and state surviving a reload.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn group(algorithm: &str, targets: &[&Backend], extra: &str, hc: &str) -> String {
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

[target_groups.health_check]
path = "/health"
{hc}
"#,
        targets.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ")
    )
}

const FAST: &str = "interval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 3\nunhealthy_threshold = 2";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_targets_wait_for_a_pass_and_thresholds_count_exactly() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_health(503);
    let lb = Lb::start(&group("round_robin", &[&a, &b], "", FAST));
    let c = client();
    // Before any check passes nothing is routable: 503, and the targets say why.
    let t = target_entry(&lb, "g", a.addr).await.unwrap();
    if t["state"] == "initial" {
        assert_eq!(t["reason"], "Elb.InitialHealthChecking");
        assert_eq!(get(&c, &lb.url("web", "/")).await.status.as_u16(), 503);
    }
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    // One pass made "a" healthy; "b" needed exactly unhealthy_threshold failures.
    assert!(wait_state(&lb, "g", b.addr, "unhealthy", WAIT).await);
    assert_eq!(b.health_fails.load(Ordering::SeqCst), 2, "initial -> unhealthy after exactly 2 failures");
    let tb = target_entry(&lb, "g", b.addr).await.unwrap();
    assert_eq!(tb["reason"], "Target.ResponseCodeMismatch");
    assert_eq!(tb["last_check"], "fail");
    for _ in 0..20 {
        assert_eq!(get(&c, &lb.url("web", "/")).await.backend(), "a");
    }
    assert_eq!(b.requests(), 0, "an unhealthy target gets no traffic while another is healthy");

    // Recovery: exactly healthy_threshold passes.
    let passes_before = b.health_passes.load(Ordering::SeqCst);
    b.set_health(200);
    assert!(wait_state(&lb, "g", b.addr, "healthy", WAIT).await);
    assert_eq!(
        b.health_passes.load(Ordering::SeqCst) - passes_before,
        3,
        "unhealthy -> healthy after exactly 3 passes"
    );
    let seen: std::collections::HashSet<String> =
        futures_collect(&c, &lb.url("web", "/"), 10).await.into_iter().collect();
    assert!(seen.contains("a") && seen.contains("b"), "{seen:?}");

    let m = get(&c, &lb.admin("/metrics")).await.body;
    assert!(m.contains("pilotfish_health_checks_total{target_group=\"g\",result=\"pass\"}"), "{m}");
    assert!(m.contains("pilotfish_health_checks_total{target_group=\"g\",result=\"fail\"}"), "{m}");
    assert!(m.contains("pilotfish_targets{target_group=\"g\",state=\"healthy\"} 2"), "{m}");
}

async fn futures_collect(c: &HttpClient, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(c, url).await.backend().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matcher_ranges_decide_health() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.set_health(302);
    b.set_health(204);
    let lb = Lb::start(&group("round_robin", &[&a, &b], "", &format!("{FAST}\nmatcher = \"200-299\"")));
    assert!(wait_state(&lb, "g", b.addr, "healthy", WAIT).await, "204 is in 200-299");
    assert!(wait_state(&lb, "g", a.addr, "unhealthy", WAIT).await, "302 is not");

    let lb2 = Lb::start(&group("round_robin", &[&a], "", &format!("{FAST}\nmatcher = \"200,300-302\"")));
    assert!(wait_state(&lb2, "g", a.addr, "healthy", WAIT).await, "302 is in 300-302");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_unhealthy_fails_open() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&group("round_robin", &[&a, &b], "", FAST));
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    assert!(wait_state(&lb, "g", b.addr, "healthy", WAIT).await);
    a.set_health(500);
    b.set_health(500);
    assert!(wait_state(&lb, "g", a.addr, "unhealthy", WAIT).await);
    assert!(wait_state(&lb, "g", b.addr, "unhealthy", WAIT).await);
    let c = client();
    let seen = futures_collect(&c, &lb.url("web", "/"), 20).await;
    assert!(seen.iter().any(|s| s == "a") && seen.iter().any(|s| s == "b"), "fail-open routes to all: {seen:?}");
    let m = get(&c, &lb.admin("/metrics")).await.body;
    assert!(m.contains("pilotfish_target_group_fail_open{target_group=\"g\"} 1"), "{m}");
    a.set_health(200);
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    assert!(get(&c, &lb.admin("/metrics"))
        .await
        .body
        .contains("pilotfish_target_group_fail_open{target_group=\"g\"} 0"));
    for _ in 0..10 {
        assert_eq!(get(&c, &lb.url("web", "/")).await.backend(), "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_loses_no_get_and_is_marked_unhealthy() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // Slow active checks: the ejection must come from live traffic (passive checks).
    let hc = "interval = \"5s\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 2";
    let lb = Lb::start(&group("round_robin", &[&a, &b], "retries = 1", hc));
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    assert!(wait_state(&lb, "g", b.addr, "healthy", WAIT).await);
    let url = lb.url("web", "/");
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0, Vec::new());
            while Instant::now() < stop_at {
                let r = get_with(&c, &url, &[("x-delay-ms", "2")]).await;
                if r.status.as_u16() == 200 {
                    ok += 1;
                } else {
                    bad.push((r.status.as_u16(), r.body));
                }
            }
            (ok, bad)
        }));
    }
    assert!(eventually(Duration::from_secs(5), || b.requests() > 50).await);
    b.kill();
    let mut total = 0;
    for w in workers {
        let (ok, bad) = w.await.unwrap();
        assert!(bad.is_empty(), "failed requests: {bad:?}");
        total += ok;
    }
    assert!(total > 100, "the load ran: {total}");
    let t = target_entry(&lb, "g", b.addr).await.unwrap();
    assert_eq!(t["state"], "unhealthy", "{t}");
    assert_eq!(t["reason"], "Target.PassiveFailures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_targets_share_with_least_outstanding_requests() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_health(503);
    let hc = "interval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let lb = Lb::start(&group("least_outstanding_requests", &[&a, &b], "slow_start = \"2s\"", hc));
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    assert!(wait_state(&lb, "g", b.addr, "unhealthy", WAIT).await);
    // "a" ramps too after its first pass; wait until it is done so only "b" is new.
    let a_ramped = poll_until(WAIT, Duration::from_millis(20), || async {
        target_entry(&lb, "g", a.addr).await.unwrap()["slow_start_share"].is_null()
    })
    .await;
    assert!(a_ramped, "a never left slow start");
    b.set_health(200);
    assert!(wait_state(&lb, "g", b.addr, "healthy", WAIT).await);
    let share = target_entry(&lb, "g", b.addr).await.unwrap()["slow_start_share"].as_f64().unwrap();
    assert!((0.1..0.3).contains(&share), "b starts its ramp at ~10%: {share}");
    // Four windows of 0.5 s: the expected share of b is (0.1 + 0.9 t/2s) / 2 at the window's middle.
    let c = client();
    let url = lb.url("web", "/");
    let start = Instant::now();
    let mut buckets = [(0u32, 0u32); 5];
    while start.elapsed() < Duration::from_millis(2500) {
        let i = (start.elapsed().as_millis() / 500) as usize;
        let r = get(&c, &url).await;
        buckets[i.min(4)].0 += 1;
        if r.backend() == "b" {
            buckets[i.min(4)].1 += 1;
        }
    }
    let shares: Vec<f64> = buckets.iter().map(|(n, b)| *b as f64 / (*n).max(1) as f64).collect();
    assert!(buckets.iter().all(|(n, _)| *n >= 50), "enough requests per window: {buckets:?}");
    assert!(shares[0] < 0.2, "starts near 5-16%: {shares:?}");
    for w in shares.windows(2).take(3) {
        assert!(w[1] >= w[0] - 0.05, "ramp must be monotonic within tolerance: {shares:?}");
    }
    assert!(shares[4] > 0.4, "after the window b gets its full half: {shares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_lets_in_flight_finish_while_new_requests_avoid_the_target() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = |targets: &[&Backend]| {
        format!(
            "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_action = {{ forward = \"g\" }}\n[[target_groups]]\nname = \"g\"\nalgorithm = \"least_outstanding_requests\"\nderegistration_delay = \"10s\"\ntargets = [{}]\n",
            targets.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ")
        )
    };
    let lb = Lb::start(&cfg(&[&a, &b]));
    let c = client();
    // Hold a slow request on each target, so "b" has one in flight. One after the other: two
    // picks at the same instant on two workers may both see two idle targets and choose the same.
    let url = lb.url("web", "/");
    let mut slow = Vec::new();
    for want in 1..=2 {
        let (c, url) = (c.clone(), url.clone());
        slow.push(tokio::spawn(async move { get_with(&c, &url, &[("x-delay-ms", "1500")]).await }));
        assert!(eventually(Duration::from_secs(5), || a.requests() + b.requests() == want).await);
    }
    assert_eq!((a.requests(), b.requests()), (1, 1), "least outstanding spreads the two slow requests");

    let out = lb.server.control().reload_text("test.toml", &cfg(&[&a]));
    assert!(out.ok(), "{:?}", out.errors);
    let t = target_entry(&lb, "g", b.addr).await.expect("b is still listed while draining");
    assert_eq!((t["state"].as_str(), t["in_flight"].as_u64()), (Some("draining"), Some(1)));
    assert_eq!(t["reason"], "Target.DeregistrationInProgress");
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.backend(), "a", "new requests avoid the draining target");
    }
    for h in slow {
        assert_eq!(h.await.unwrap().status.as_u16(), 200, "in-flight requests finish");
    }
    let removed =
        poll_until(WAIT, Duration::from_millis(10), || async { target_entry(&lb, "g", b.addr).await.is_none() }).await;
    assert!(removed, "b is removed once idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_state_survives_an_unrelated_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_health(500);
    let hc = "interval = \"200ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 5\nunhealthy_threshold = 2";
    let cfg = |body: &str| {
        format!("{}\n[[rules]]\nname = \"r\"\nlisteners = [\"web\"]\npriority = 1\npath = [\"/fixed\"]\nfixed_response = {{ status = 200, body = \"{body}\" }}\n", group("round_robin", &[&a, &b], "", hc))
    };
    let lb = Lb::start(&cfg("one"));
    assert!(wait_state(&lb, "g", a.addr, "healthy", WAIT).await);
    assert!(wait_state(&lb, "g", b.addr, "unhealthy", WAIT).await);
    b.set_health(200); // b now needs 5 passes (1 s): a reload must not reset it to initial or healthy
    let out = lb.server.control().reload_text("test.toml", &cfg("two"));
    assert!(out.ok(), "{:?}", out.errors);
    assert_eq!(get(&client(), &lb.url("web", "/fixed")).await.body, "two");
    let tb = target_entry(&lb, "g", b.addr).await.unwrap();
    assert_eq!(tb["state"], "unhealthy", "state kept across the reload: {tb}");
    assert_eq!(target_entry(&lb, "g", a.addr).await.unwrap()["state"], "healthy");
}
