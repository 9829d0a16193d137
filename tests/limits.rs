//! What the balancer answers itself, through raw sockets: 400 for malformed requests, 431 for
//! oversized heads, 408 for slow heads (slowloris), the idle timeout, and the connection limit.
//! None of these requests may reach a target.

mod common;

use std::net::SocketAddr;
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
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

/// Connects and sends `pieces` so that the server reads each one on its own: a piece is written
/// only once the server has read every byte before it (see [`read_by_server`]), so no read can
/// return bytes of two pieces.
async fn send_in_reads(addr: SocketAddr, pieces: &[&[u8]]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            assert!(read_by_server(&s).await, "the server never read {:?}", String::from_utf8_lossy(pieces[i - 1]));
        }
        s.write_all(piece).await.unwrap();
    }
    s
}

/// Waits (bounded) until everything written on `s` has been read by the application at the
/// other end: the kernel acknowledged all of it (our send queue is empty) and the server's
/// socket has nothing left to read (its receive queue is empty). Both queues are in
/// `/proc/net/tcp` (Linux), which lists the server's end of the connection too.
async fn read_by_server(s: &TcpStream) -> bool {
    let (ours, theirs) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
        let q = (tcp_queues(ours, theirs), tcp_queues(theirs, ours));
        std::future::ready(matches!(q, (Some((0, _)), Some((_, 0)))))
    })
    .await
}

/// The (send, receive) queue lengths of the IPv4 socket `local` connected to `remote`.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    // The kernel prints an address as its 32 bits in host order, then the port.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port()),
        SocketAddr::V6(_) => unreachable!("the tests listen on 127.0.0.1"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?))
    })
}

/// Reads until the server closes (bounded by 10 s).
async fn read_to_close(s: &mut TcpStream) -> String {
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

/// One request on `s`: whether a response came (within 10 s).
async fn served(s: &mut TcpStream) -> bool {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.ok().and_then(|r| r.ok()).unwrap_or(0) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_max_connections_live() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_connections = 1"));
    let control = lb.server.control().clone();
    let addr = lb.addr("web");
    let mut buf = vec![0u8; 4096];
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(served(&mut first).await);
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await.is_err(),
        "over the cap: waits"
    );

    // Raised to 2: the waiting client is served at once, the first still open.
    let out = control.reload_text("t.toml", &config(&be, "max_connections = 2"));
    assert!(out.ok(), "{:?}", out.errors);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("served after the raise")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Lowered to 1 with two open: nobody is cut, and a new client waits until both have closed.
    let out = control.reload_text("t.toml", &config(&be, "max_connections = 1"));
    assert!(out.ok(), "{:?}", out.errors);
    assert!(served(&mut first).await && served(&mut second).await, "open connections keep being served");
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    drop(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await.is_err(),
        "one connection open is the new cap: the third waits"
    );
    drop(second);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served under the cap")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Reads HTTP/2 frames (acknowledging the server's SETTINGS) until a HEADERS frame on `stream`;
/// returns its first header block byte, or None if the connection ended first (bounded by 5 s).
async fn h2_response_start(s: &mut TcpStream, stream: u32) -> Option<u8> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            if kind == 0x4 && flags & 0x1 == 0 {
                s.write_all(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]).await.ok()?;
            }
            if kind == 0x1 && id == stream {
                return payload.first().copied();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_sent_in_pieces_is_http2_and_a_slow_first_byte_is_a_slow_head() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "header_read_timeout = \"300ms\"\nidle_timeout = \"5s\""));
    let addr = lb.addr("web");

    // An h2c client whose first read is two bytes of the preface (the split is the point: the
    // protocol is decided on too few bytes to tell), idle longer than the head timeout before its
    // first request: HTTP/2 is framed, only the idle timeout applies to it.
    let mut s = send_in_reads(addr, &[b"PR", b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"]).await;
    // Idle on purpose (the behaviour under test): twice the head timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // HEADERS, stream 1, END_STREAM | END_HEADERS: :method GET, :scheme http, :path / (static table).
    s.write_all(&[0, 0, 3, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84]).await.unwrap();
    assert_eq!(h2_response_start(&mut s, 1).await, Some(0x88), ":status 200 on stream 1");
    assert_eq!(be.requests(), 1);

    // An HTTP/1.1 head whose first read is a byte that could start the preface is still
    // checked, and from its first byte: refused when malformed, forwarded with its method whole.
    let mut s =
        send_in_reads(addr, &[b"P", b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"])
            .await;
    let resp = read_to_close(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert_eq!(be.requests(), 1, "the refused request never reached the target");
    let mut s =
        send_in_reads(addr, &[b"P", b"OST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"])
            .await;
    let resp = read_to_close(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    let seen = be.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str(), &seen.body[..]), ("POST", "/p", &b"x"[..]));

    // One byte that could start the preface, then silence: a slow head, not an HTTP/2 connection.
    let started = Instant::now();
    let resp = raw(addr, b"P").await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "408 must come from header_read_timeout");
}
