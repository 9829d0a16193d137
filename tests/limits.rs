//! What the balancer answers itself, through raw sockets: 400 for malformed requests, 431 for
//! oversized heads, 408 for slow heads (slowloris), the idle timeout, and the connection limit.
//! None of these requests may reach a target.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(be: &Backend, server: &str) -> String {
    format!(
        r#"
[server]
admin_bind = "127.0.0.1:0"
{server}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        be.addr
    )
}

/// Sends raw bytes and reads until the server closes (bounded by 10 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_a_target() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    let addr = lb.addr("web");
    let cases: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\n\r\n",                                          // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                    // duplicate Host
        b"GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n", // absolute-form disagrees
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",              // space in a field name
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",                             // invalid Host
    ];
    for case in cases {
        let resp = raw(addr, case).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{:?} -> {resp:?}", String::from_utf8_lossy(case));
    }
    assert_eq!(be.requests(), 0);
    // A good request on the same listener still works.
    let ok = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_header_bytes = 8192"));
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "x".repeat(10_000));
    let resp = raw(lb.addr("web"), big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert_eq!(be.requests(), 0);
    // Counted when the server side of the connection ends, which may trail the client's read.
    let line = "pilotfish_requests_total{listener=\"web\",target_group=\"\",code=\"431\"} 1";
    assert!(wait_metric(&lb, line, Duration::from_secs(5)).await, "{line} never appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_but_idle_keepalive_is_not_cut_by_it() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "header_read_timeout = \"300ms\"\nidle_timeout = \"3s\""));
    let addr = lb.addr("web");

    // Slowloris: half a head, then silence.
    let started = Instant::now();
    let resp = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "408 must come from header_read_timeout, not idle_timeout");
    assert_eq!(be.requests(), 0);

    // A keep-alive connection idle for longer than header_read_timeout stays usable.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(800)).await; // idle on purpose: longer than the head timeout
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "second request on the idle connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "idle_timeout = \"400ms\""));
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let n =
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed within 10s").unwrap_or(0);
    assert_eq!(n, 0, "server closes the idle connection");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_pauses_accepting() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_connections = 1"));
    let addr = lb.addr("web");
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    // The second connection completes the TCP handshake (kernel backlog) but is not served...
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(waited.is_err(), "second connection must wait while the first is open");
    // ...until the first one closes.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("served after the first closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
