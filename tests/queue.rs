//! Per-target concurrency and the queue through a real listener, for HTTP/1.1 and HTTP/2
//! clients: a target capped at 2 never sees more than 2 requests at once (the backend counts),
//! queued requests reach it in arrival order, a full queue and an expired wait answer 503 with
//! their reasons and counters, a group capped without a queue refuses at once, and a target
//! that turns healthy takes a waiting request while the others stay full.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// A backend that holds every request until the test releases it (one permit per request),
/// counting how many it holds at once and recording each request's `x-seq` in arrival order.
/// `GET /health` answers at once with `health` (200 or 503).
struct Gate {
    addr: SocketAddr,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    order: Arc<Mutex<Vec<u32>>>,
    permits: Arc<Semaphore>,
    health: Arc<std::sync::atomic::AtomicU16>,
    task: JoinHandle<()>,
}

impl Gate {
    async fn start(name: &'static str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let permits = Arc::new(Semaphore::new(0));
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let shared = (now.clone(), most.clone(), order.clone(), permits.clone(), health.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (now, most, order, permits, health) = shared.clone();
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(name)));
                            if req.uri().path() == "/health" {
                                *r.status_mut() = StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
                                return Ok::<_, Infallible>(r);
                            }
                            let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(held, Ordering::SeqCst);
                            let seq = req.headers().get("x-seq").and_then(|v| v.to_str().ok()?.parse().ok());
                            order.lock().unwrap().push(seq.unwrap_or(u32::MAX));
                            permits.acquire().await.unwrap().forget();
                            now.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Gate { addr, now, most, order, permits, health, task }
    }

    fn holding(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn arrived(&self) -> Vec<u32> {
        self.order.lock().unwrap().clone()
    }

    /// Lets one held request answer.
    fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Held requests answer, so nothing waits on a backend that is gone.
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
        self.task.abort();
    }
}

fn config(targets: &[SocketAddr], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "app" }}

[[target_groups]]
name = "app"
targets = [{}]
{extra}
"#,
        targets.join(", ")
    )
}

/// Sends `GET /` with `x-seq: seq` in a task of its own.
fn spawn_get(c: &HttpClient, lb: &Lb, seq: u32) -> JoinHandle<Got> {
    let (c, url) = (c.clone(), lb.url("web", "/"));
    tokio::spawn(async move { get_with(&c, &url, &[("x-seq", &seq.to_string())]).await })
}

/// The queue of group `app` as `/targets` shows it.
async fn queue_of(lb: &Lb) -> serde_json::Value {
    let body = get(&client(), &lb.admin("/targets")).await.body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["target_groups"][0]["queue"].clone()
}

async fn wait_depth(lb: &Lb, depth: u64) -> bool {
    poll_until(Duration::from_secs(10), Duration::from_millis(5), || async { queue_of(lb).await["depth"] == depth })
        .await
}

async fn wait_for(what: impl Fn() -> bool) -> bool {
    eventually(Duration::from_secs(10), what).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_target_never_sees_more_than_its_cap_and_the_queue_keeps_arrival_order() {
    for (proto, c) in [("http/1.1", client()), ("h2c", h2c_client())] {
        let gate = Gate::start("slow").await;
        let lb =
            Lb::start(&config(&[gate.addr], "max_requests_per_target = 2\nqueue = { size = 10, timeout = \"20s\" }"));
        let q = queue_of(&lb).await;
        assert_eq!((q["size"].as_u64(), q["timeout"].as_str()), (Some(10), Some("20s")), "{proto}: {q}");

        let mut replies = vec![spawn_get(&c, &lb, 0)];
        assert!(wait_for(|| gate.holding() == 1).await, "{proto}: the first goes straight in");
        replies.push(spawn_get(&c, &lb, 1));
        assert!(wait_for(|| gate.holding() == 2).await, "{proto}: so does the second");
        // Six more line up, each after the one before it is in the queue.
        for seq in 2..8 {
            replies.push(spawn_get(&c, &lb, seq));
            assert!(wait_depth(&lb, u64::from(seq) - 1).await, "{proto}: request {seq} waits");
        }
        assert!(
            wait_metric(&lb, "pilotfish_queue_depth{target_group=\"app\"} 6", Duration::from_secs(5)).await,
            "{proto}: /metrics shows the depth"
        );
        assert_eq!(gate.holding(), 2, "{proto}: the target is not sent more than its cap");
        // One answer at a time: each frees the slot the head of the line takes.
        for arrived in 3..=8 {
            gate.release(1);
            assert!(wait_for(|| gate.arrived().len() == arrived).await, "{proto}: a waiter was sent on");
        }
        gate.release(2);
        for r in replies {
            assert_eq!(r.await.unwrap().status, StatusCode::OK, "{proto}");
        }
        assert_eq!(gate.arrived(), (0..8).collect::<Vec<_>>(), "{proto}: first come, first served");
        assert_eq!(gate.most.load(Ordering::SeqCst), 2, "{proto}: never more than 2 at once");
        assert!(wait_depth(&lb, 0).await);
        let metrics = get(&client(), &lb.admin("/metrics")).await.body;
        assert!(
            metrics.lines().any(|l| l == "pilotfish_queue_wait_seconds_count{target_group=\"app\"} 6"),
            "{proto}: six requests waited\n{metrics}"
        );
        assert!(metrics.contains("pilotfish_requests_total{listener=\"web\",target_group=\"app\",code=\"200\"} 8"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_an_expired_wait_answer_503_with_their_reasons() {
    for (proto, c) in [("http/1.1", client()), ("h2c", h2c_client())] {
        let gate = Gate::start("slow").await;
        let lb =
            Lb::start(&config(&[gate.addr], "max_requests_per_target = 1\nqueue = { size = 1, timeout = \"2s\" }"));
        let held = spawn_get(&c, &lb, 0);
        assert!(wait_for(|| gate.holding() == 1).await);
        let waiting = spawn_get(&c, &lb, 1);
        assert!(wait_depth(&lb, 1).await, "{proto}: the second request waits");
        let full = get_with(&c, &lb.url("web", "/"), &[("x-seq", "2")]).await;
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{proto}: the queue holds one");
        // Refused at once as full, while the other still waits (its 2 s are not over).
        let metrics = get(&client(), &lb.admin("/metrics")).await.body;
        for line in [
            "pilotfish_queue_rejected_total{target_group=\"app\",reason=\"queue_full\"} 1",
            "pilotfish_queue_rejected_total{target_group=\"app\",reason=\"queue_timeout\"} 0",
            "pilotfish_queue_depth{target_group=\"app\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{proto}: missing {line}\n{metrics}");
        }
        let timed_out = waiting.await.unwrap();
        assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE, "{proto}: no slot within 2s");
        gate.release(1);
        assert_eq!(held.await.unwrap().status, StatusCode::OK);
        assert_eq!(gate.arrived(), [0], "{proto}: refused requests never reach the target");

        let metrics = get(&client(), &lb.admin("/metrics")).await.body;
        for line in [
            "pilotfish_queue_rejected_total{target_group=\"app\",reason=\"queue_full\"} 1",
            "pilotfish_queue_rejected_total{target_group=\"app\",reason=\"queue_timeout\"} 1",
            "pilotfish_queue_wait_seconds_count{target_group=\"app\"} 1",
            "pilotfish_requests_total{listener=\"web\",target_group=\"app\",code=\"503\"} 2",
            "pilotfish_requests_total{listener=\"web\",target_group=\"app\",code=\"200\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{proto}: missing {line}\n{metrics}");
        }
        assert!(wait_for(|| lb.log.lines().len() >= 3).await);
        let errors: Vec<_> = lb.log.lines().iter().map(|l| l["error"].as_str().unwrap_or("").to_string()).collect();
        for want in ["queue_full", "queue_timeout"] {
            assert!(errors.iter().any(|e| e == want), "{proto}: {want} not logged: {errors:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_without_a_queue_refuses_at_once_and_a_target_that_turns_healthy_takes_a_waiter() {
    // No queue: the request over the cap is answered 503 queue_full at once.
    let gate = Gate::start("slow").await;
    let lb = Lb::start(&config(&[gate.addr], "max_requests_per_target = 1"));
    let c = client();
    let held = spawn_get(&c, &lb, 0);
    assert!(wait_for(|| gate.holding() == 1).await);
    assert_eq!(get(&c, &lb.url("web", "/")).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(queue_of(&lb).await.is_null(), "no queue configured");
    gate.release(1);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let again = spawn_get(&c, &lb, 1);
    assert!(wait_for(|| gate.arrived().len() == 2).await, "the freed slot takes the next request");
    gate.release(1);
    assert_eq!(again.await.unwrap().status, StatusCode::OK);
    drop(lb);

    // A waiting request goes to the target that turns healthy while the other stays full.
    let (busy, fresh) = (Gate::start("busy").await, Gate::start("fresh").await);
    fresh.health.store(503, Ordering::SeqCst);
    let lb = Lb::start(&config(
        &[busy.addr, fresh.addr],
        "max_requests_per_target = 1\nqueue = { size = 5, timeout = \"20s\" }\nhealth_check = { path = \"/health\", interval = \"100ms\", timeout = \"50ms\", healthy_threshold = 1, unhealthy_threshold = 1 }",
    ));
    assert!(wait_state(&lb, "app", busy.addr, "healthy", Duration::from_secs(10)).await);
    assert!(wait_state(&lb, "app", fresh.addr, "unhealthy", Duration::from_secs(10)).await);
    let c = h2c_client();
    let held = spawn_get(&c, &lb, 0);
    assert!(wait_for(|| busy.holding() == 1).await);
    let waiter = spawn_get(&c, &lb, 1);
    assert!(wait_depth(&lb, 1).await);
    fresh.health.store(200, Ordering::SeqCst);
    assert!(wait_for(|| fresh.holding() == 1).await, "the waiter went to the target that turned healthy");
    assert_eq!((busy.holding(), fresh.arrived()), (1, vec![1]));
    fresh.release(1);
    assert_eq!(waiter.await.unwrap().body, "fresh");
    busy.release(1);
    assert_eq!(held.await.unwrap().body, "busy");
}
