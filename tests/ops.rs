//! Operations through the real binary: a SIGHUP reload storm under concurrent keep-alive load
//! (rules changed, a listener added and removed, a certificate replaced) with zero failed
//! requests; bad reloads keep the old config and say why; SIGTERM drains.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::Proc;
use common::tls::{Ca, ECDSA};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-ops-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config: "web", `/version` answering `version`, an https listener, and optionally an
/// "extra" listener. Every listener binds port 0 and the test learns the port from the log
/// ([`Proc::addr`]): a port picked by the test and handed over could be taken by another process
/// in between. A reload keeps a listener whose bind is unchanged (`127.0.0.1:0` included), so
/// "web" keeps its port and its clients their connections.
fn config(extra: bool, version: u32, be: &Backend) -> String {
    let extra = if extra { "[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n" } else { "" };
    format!(
        r#"[server]
admin_bind = "127.0.0.1:0"
shutdown_drain = "10s"

[access_log]
format = "off"

[[certificates]]
name = "app"
cert = "app.crt"
key = "app.key"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[listeners]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["app"]
default_action = {{ forward = "g" }}

{extra}
[[rules]]
name = "version"
listeners = ["web", "https"]
priority = 1
path = ["/version"]
fixed_response = {{ status = 200, body = "v{version}" }}

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        be.addr
    )
}

fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

async fn generation(admin: SocketAddr) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&get(&client(), &format!("http://{admin}/config")).await.body).unwrap();
    v["generation"].as_u64().unwrap()
}

async fn wait_generation(admin: SocketAddr, want: u64) {
    let held =
        poll_until(Duration::from_secs(20), Duration::from_millis(5), || async { generation(admin).await == want })
            .await;
    assert!(held, "generation {want} never became active");
}

fn write_cert(dir: &Path, ca: &Ca) -> Vec<u8> {
    let pem = ca.issue(&["app.test"], &ECDSA);
    pem.write(dir, "app");
    pem.der()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sighup_reloads_under_keepalive_load_fail_no_request() {
    let be = Backend::start("be").await;
    let d = dir("storm");
    let ca = Ca::new("ca");
    write_cert(&d, &ca);
    let cfg = d.join("pilotfish.toml");
    std::fs::write(&cfg, config(false, 0, &be)).unwrap();
    let p = Proc::run(&cfg).await;
    let (web, https) = (p.addr("web"), p.addr("https"));

    // Eight keep-alive clients hammer both a fixed response and the backend.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let url = format!("http://{web}{}", if i % 2 == 0 { "/version" } else { "/app" });
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    c.request(http::Request::get(&url).body(Default::default()).unwrap()),
                )
                .await
                {
                    Ok(Ok(r)) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }

    let mut served_cert = Vec::new();
    // Where "extra" was bound after the previous reload (None while it was not configured).
    let mut extra: Option<SocketAddr> = None;
    for n in 1..=100u32 {
        let with_extra = (n % 10) < 5; // "extra" comes and goes every five reloads
        if n % 25 == 0 {
            served_cert = write_cert(&d, &ca); // a certificate replaced on disk
        }
        std::fs::write(&cfg, config(with_extra, n, &be)).unwrap();
        p.signal("HUP");
        wait_generation(p.admin, u64::from(n) + 1).await;
        let v = get(&client(), &format!("http://{web}/version")).await.body;
        assert_eq!(v, format!("v{n}"), "responses switch to the new config");
        assert_eq!(p.listener("web"), Some(web), "reload {n}: an unchanged listener is kept, not re-bound");
        // The listener table is logged just after the new generation is published: wait for it.
        let before = extra;
        let settled = poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
            let now = p.listener("extra");
            std::future::ready(match (with_extra, now) {
                (true, Some(a)) => accepts(a),
                // Removed: out of the table, and its socket closed.
                (false, None) => before.is_none_or(|a| !accepts(a)),
                _ => false,
            })
        })
        .await;
        assert!(settled, "reload {n}: the extra listener is bound only while configured ({:?})", p.listener("extra"));
        extra = p.listener("extra");
        if let (Some(before), Some(now)) = (before, extra) {
            assert_eq!(now, before, "reload {n}: extra stayed configured, so it keeps its socket");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    assert!(failed.is_empty(), "{} failed requests, e.g. {:?}", failed.len(), failed.first());
    assert!(ok.load(Ordering::Relaxed) > 500, "the load ran: {}", ok.load(Ordering::Relaxed));
    assert_eq!(p.listener("https"), Some(https), "the certificate was replaced on the running listener");
    assert_eq!(common::tls::served_leaf(https, Some("app.test"), false).await, served_cert);
    let m = get(&client(), &format!("http://{}/metrics", p.admin)).await.body;
    assert!(m.contains("pilotfish_config_reloads_total{result=\"success\"} 100"), "{m}");
    assert!(m.contains("pilotfish_config_generation 101"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_config_and_reports_why() {
    let be = Backend::start("be").await;
    let d = dir("bad");
    let ca = Ca::new("ca");
    write_cert(&d, &ca);
    let cfg = d.join("pilotfish.toml");
    std::fs::write(&cfg, config(false, 1, &be)).unwrap();
    let p = Proc::run(&cfg).await;
    let web = p.addr("web");
    let c = client();

    let bad = config(false, 2, &be).replace("priority = 1", "priority = \"high\"");
    let line = bad.lines().position(|l| l.starts_with("priority = ")).unwrap() + 1;
    std::fs::write(&cfg, &bad).unwrap();
    let r = send(&c, http::Request::post(format!("http://{}/reload", p.admin)).body(Default::default()).unwrap()).await;
    assert_eq!(r.status.as_u16(), 422);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["result"], "failure");
    assert_eq!(v["generation"], 1);
    let err = v["errors"][0].as_str().unwrap();
    assert!(err.starts_with(&format!("{}:{line}:12: invalid type", cfg.display())), "{err}");
    assert_eq!(get(&c, &format!("http://{web}/version")).await.body, "v1");

    p.signal("HUP"); // the same bad file through the signal path
    let line = "pilotfish_config_reloads_total{result=\"failure\"} 2";
    assert!(wait_metric_at(p.admin, line, Duration::from_secs(10)).await, "{line} never appeared");
    assert_eq!(get(&c, &format!("http://{web}/version")).await.body, "v1");

    std::fs::write(&cfg, config(false, 3, &be)).unwrap();
    let r = send(&c, http::Request::post(format!("http://{}/reload", p.admin)).body(Default::default()).unwrap()).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!((r.status.as_u16(), v["result"].as_str(), v["generation"].as_u64()), (200, Some("success"), Some(2)));
    assert_eq!(get(&c, &format!("http://{web}/version")).await.body, "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_closes_idle_keepalive_and_reports_cut_requests() {
    let be = Backend::start("be").await;
    let d = dir("term");
    let ca = Ca::new("ca");
    write_cert(&d, &ca);
    let cfg = d.join("pilotfish.toml");
    std::fs::write(&cfg, config(false, 1, &be)).unwrap();
    let mut p = Proc::run(&cfg).await;
    let web = p.addr("web");
    let c = client();

    // An idle keep-alive connection, and a slow request in flight.
    let mut idle = tokio::net::TcpStream::connect(web).await.unwrap();
    idle.write_all(b"GET /version HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { get_with(&c, &format!("http://{web}/slow"), &[("x-delay-ms", "1500")]).await })
    };
    assert!(eventually(Duration::from_secs(5), || be.requests() == 1).await);

    p.signal("TERM");
    let readyz = std::cell::RefCell::new(None);
    let (cr, readyz_ref, url) = (&c, &readyz, format!("http://{}/readyz", p.admin));
    let draining = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let url = url.clone();
        async move {
            let r = get(cr, &url).await;
            let draining = r.status.as_u16() == 503;
            *readyz_ref.borrow_mut() = Some(r);
            draining
        }
    })
    .await;
    let readyz = readyz.into_inner().unwrap();
    assert!(draining, "readyz never turned 503: {readyz:?}");
    assert_eq!(readyz.body, "draining\n");
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("idle connection closed promptly")
        .unwrap();
    assert_eq!(n, 0, "the idle keep-alive connection is closed");
    assert!(eventually(Duration::from_secs(5), || !accepts(web)).await, "no longer accepting");
    assert_eq!(slow.await.unwrap().status.as_u16(), 200, "the in-flight request finished");
    assert_eq!(p.wait_exit(Duration::from_secs(15)).await, Some(0));

    // A drain budget too short for a slow request: the process says so with its exit code.
    std::fs::write(&cfg, config(false, 1, &be).replace("shutdown_drain = \"10s\"", "shutdown_drain = \"300ms\""))
        .unwrap();
    let mut p = Proc::run(&cfg).await;
    let web = p.addr("web");
    let before = be.requests();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = c.request(
                http::Request::get(format!("http://{web}/slow"))
                    .header("x-delay-ms", "5000")
                    .body(Default::default())
                    .unwrap(),
            );
            tokio::time::timeout(Duration::from_secs(20), r).await
        })
    };
    assert!(eventually(Duration::from_secs(5), || be.requests() == before + 1).await);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(15)).await, Some(1), "exit 1 when requests had to be cut");
    let _ = slow.await;
}
