//! Heap held per idle keep-alive client connection, counted by this test binary's allocator
//! through the real path: a real listener, a real backend, raw client sockets that each sent one
//! request and read its response, then stay open. (The backend is a plain hyper server that keeps
//! nothing: the shared test backend records every request, which would be counted too.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The system allocator, counting the bytes currently allocated (and those in blocks of 8 KiB
/// or more: read buffers, which an idle connection must not hold).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static LIVE_LARGE: AtomicIsize = AtomicIsize::new(0);

fn count(size: usize, sign: isize) {
    LIVE.fetch_add(sign * size as isize, Ordering::Relaxed);
    if size >= 8192 {
        LIVE_LARGE.fetch_add(sign * size as isize, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One keep-alive request on a fresh blocking socket; returns the open socket.
fn one_request(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let mut got = 0;
    // The backend answers "be" (2 bytes), so the whole response fits one small buffer.
    while !buf[..got].ends_with(b"\r\n\r\nbe") {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&buf[..got]));
        got += n;
    }
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    s
}

/// A keep-alive HTTP/1.1 server answering `be` that keeps nothing per request; returns its
/// address and how many connections it accepted.
async fn plain_backend() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"be"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_little_heap() {
    const CONNS: usize = 1000;
    let (be_addr, be_connections) = plain_backend().await;
    let lb = Lb::start(&format!(
        r#"
[server]
admin_bind = "127.0.0.1:0"
worker_threads = 1
idle_timeout = "600s"

[access_log]
format = "off"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        be_addr
    ));
    let addr = lb.addr("web");
    let (per_conn, large_per_conn) = tokio::task::spawn_blocking(move || {
        // Warm up: the upstream connection, the pool shard, lazily made statics.
        drop(one_request(addr));
        let (live, large) = (LIVE.load(Ordering::Relaxed), LIVE_LARGE.load(Ordering::Relaxed));
        let open: Vec<_> = (0..CONNS).map(|_| one_request(addr)).collect();
        let per = |now: isize, then: isize| (now - then) / CONNS as isize;
        let r = (per(LIVE.load(Ordering::Relaxed), live), per(LIVE_LARGE.load(Ordering::Relaxed), large));
        drop(open);
        r
    })
    .await
    .unwrap();
    eprintln!("heap per idle connection: {per_conn} B ({large_per_conn} B in blocks of 8 KiB or more)");
    assert_eq!(be_connections.load(Ordering::SeqCst), 1, "every request used the one pooled target connection");
    assert!(per_conn > 0, "the counter sees the connections");
    // No read buffer: it went back to the worker's pool when the response was written. What is
    // left is the connection's task (its future: see `per_connection_futures_stay_small`), its
    // context and the socket's registration.
    assert_eq!(large_per_conn, 0, "an idle connection holds a buffer");
    assert!(per_conn <= 2048, "{per_conn} B of heap per idle connection");
}
