//! The HTTP/1.1 engine through a real listener: targets that misbehave in every way a proxy
//! must not pass on (each followed by a clean request that must get a clean answer), early
//! answers to uploads, the keep-alive race, interim responses, pipelining, HTTP/1.0, what the
//! balancer answers itself, its access log lines, and the HTTP/2 seams. Raw sockets on both
//! sides where the exact bytes matter.

mod common;

use std::time::{Duration, Instant};

use common::raw::{exchange, read_response, read_to_close, Reply, Scripted, Then};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(target: std::net::SocketAddr, group: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
retries = 0
targets = ["{target}"]
{group}
"#
    )
}

const GET_CLOSE: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// After a bad exchange, a new client gets the clean answer, on a new target connection.
async fn clean_after(lb: &Lb, target: &Scripted, case: &str) {
    let before = target.seen.lock().unwrap().last().map(|s| s.0);
    let resp = exchange(lb.addr("web"), GET_CLOSE).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("\r\n\r\nok"), "{case}: next client got {resp:?}");
    let after = target.seen.lock().unwrap().last().map(|s| s.0);
    assert_ne!(before, after, "{case}: the target connection was reused after a bad response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_never_reach_the_client() {
    let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "x".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("differing Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ("invalid Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nhello".to_vec()),
        ("bad status line", b"HTTP/1.1 2x0 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("HTTP/2.0 status line", b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("bare CR", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("NUL", b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("head over the limit", huge.into_bytes()),
        ("Transfer-Encoding: gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bhello".to_vec()),
        (
            "Transfer-Encoding: xchunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "unsolicited 101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhello".to_vec(),
        ),
    ];
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, ""));
    let mut wrong = Vec::new();
    for (case, bytes) in &cases {
        target.push(Reply::raw(bytes, Then::KeepOpen));
        let resp = exchange(lb.addr("web"), GET_CLOSE).await;
        if !resp.starts_with("HTTP/1.1 502") || resp.matches("HTTP/").count() != 1 || resp.contains("hello") {
            wrong.push(format!("{case}: {resp:?}"));
        }
        clean_after(&lb, &target, case).await;
    }
    assert!(wrong.is_empty(), "relayed instead of 502:\n{}", wrong.join("\n"));
    // Each is counted and logged with its reason.
    assert!(eventually(Duration::from_secs(5), || lb.log.lines().len() >= 2 * cases.len()).await);
    let reasons: Vec<String> = lb
        .log
        .lines()
        .iter()
        .filter(|l| l["status"] == 502)
        .map(|l| l["error"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reasons.len(), cases.len(), "{reasons:?}");
    for want in [
        "content_length_and_transfer_encoding",
        "duplicate_content_length",
        "transfer_encoding_not_chunked",
        "unsolicited_101",
        "invalid_chunk_size",
        "response_head_too_large",
    ] {
        assert!(reasons.iter().any(|r| r == want), "{want} not in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_bodies_never_look_complete_and_extra_bytes_are_never_relayed() {
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, "response_timeout = \"500ms\""));
    let addr = lb.addr("web");

    // A Content-Length body cut short: the relayed length is more than what arrives, and the
    // connection closes.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", Then::Close));
    let resp = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("Content-Length: 10\r\n") && resp.ends_with("\r\n\r\nabc"),
        "{resp:?}"
    );
    clean_after(&lb, &target, "cut Content-Length").await;

    // A chunked body cut short: no last chunk reaches the client.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", Then::Close));
    let resp = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(resp.contains("transfer-encoding: chunked\r\n") && resp.ends_with("5\r\nhello\r\n"), "{resp:?}");
    clean_after(&lb, &target, "cut chunked").await;

    // A target that stalls mid-body is cut after response_timeout.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", Then::Stall));
    let started = Instant::now();
    let resp = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(resp.ends_with("\r\n\r\nabc"), "{resp:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "the stalled body was cut: {:?}", started.elapsed());
    clean_after(&lb, &target, "stalled").await;

    // A body delimited by close is complete at the close: re-framed as chunked for HTTP/1.1.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\n\r\nall of it", Then::Close));
    let resp = exchange(addr, GET_CLOSE).await;
    assert!(
        resp.contains("transfer-encoding: chunked\r\n") && resp.ends_with("\r\n\r\n9\r\nall of it\r\n0\r\n\r\n"),
        "{resp:?}"
    );

    // Bytes after a complete response: the client gets the response, and no later client ever
    // gets the extra bytes (the connection is not reused).
    target.push(Reply::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        Then::KeepOpen,
    ));
    let resp = exchange(addr, GET_CLOSE).await;
    assert!(resp.ends_with("\r\n\r\nok"), "{resp:?}");
    clean_after(&lb, &target, "extra bytes").await;
    for _ in 0..3 {
        let resp = exchange(addr, GET_CLOSE).await;
        assert!(resp.ends_with("\r\n\r\nok") && !resp.contains("smuggled"), "{resp:?}");
    }

    // A body on a response to HEAD, and on a 204: not relayed, connection not reused.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Then::KeepOpen));
    let resp = exchange(addr, b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(resp.contains("Content-Length: 5\r\n") && resp.ends_with("\r\n\r\n"), "{resp:?}");
    clean_after(&lb, &target, "HEAD with a body").await;
    target.push(Reply::raw(b"HTTP/1.1 204 No Content\r\n\r\nhello", Then::KeepOpen));
    let resp = exchange(addr, GET_CLOSE).await;
    assert!(resp.starts_with("HTTP/1.1 204") && resp.ends_with("\r\n\r\n"), "{resp:?}");
    clean_after(&lb, &target, "204 with a body").await;
    let seen = target.seen.lock().unwrap();
    assert!(seen.iter().all(|(_, r)| !r.starts_with(b"HTTP")), "a target saw response bytes as a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_reach_http11_clients() {
    let target = Scripted::start(
        vec![
            Reply::raw(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Then::KeepOpen),
            Reply::raw(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Then::KeepOpen),
        ],
        false,
    )
    .await;
    let lb = Lb::start(&config(target.addr, ""));
    let resp = exchange(lb.addr("web"), GET_CLOSE).await;
    assert!(
        resp.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{resp:?}"
    );
    // HTTP/1.0 clients do not understand 1xx: they get the final response only.
    let resp = exchange(lb.addr("web"), b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_works_end_to_end() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(be.addr, ""));
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    s.write_all(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("100 Continue").unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert_eq!(&be.last().body[..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_answers_a_large_upload_early_is_heard() {
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, ""));
    for i in 0..6 {
        let mut early = Reply::raw(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
            Then::Close,
        );
        early.read_body = false;
        target.push(early);
        let s = TcpStream::connect(lb.addr("web")).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let upload = tokio::spawn(async move {
            wr.write_all(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: 200000000\r\n\r\n").await?;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..3000 {
                wr.write_all(&chunk).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        let resp = String::from_utf8_lossy(&out);
        assert!(resp.starts_with("HTTP/1.1 413 Payload Too Large") && resp.ends_with("big!"), "try {i}: {resp:?}");
        upload.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_race_is_retried_on_a_fresh_connection() {
    // One target that closes every reused connection as the next request arrives on it.
    let target = Scripted::start(Vec::new(), true).await;
    let lb = Lb::start(&config(target.addr, ""));
    let c = client();
    for i in 0..20 {
        let r = get(&c, &lb.url("web", "/")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"), "GET {i}");
    }
    assert_eq!(target.requests(), 20);
    // A POST with a body is not idempotent: never sent twice.
    let r = send(&c, http::Request::post(lb.url("web", "/")).body("x".into()).unwrap()).await;
    assert_eq!(r.status.as_u16(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let target = Scripted::start(
        vec![
            Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", Then::KeepOpen),
            Reply::raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n", Then::KeepOpen),
            Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree", Then::KeepOpen),
        ],
        false,
    )
    .await;
    let lb = Lb::start(&config(target.addr, ""));
    let resp = exchange(
        lb.addr("web"),
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (one, two, three) =
        (resp.find("one").unwrap(), resp.find("3\r\ntwo\r\n0\r\n\r\n").unwrap(), resp.find("three").unwrap());
    assert!(one < two && two < three, "{resp:?}");
    let paths: Vec<String> =
        target.seen.lock().unwrap().iter().map(|(_, r)| String::from_utf8_lossy(&r[..7]).into_owned()).collect();
    assert_eq!(paths, ["GET /1 ", "POST /2", "GET /3 "]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_and_connection_close_both_ways() {
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, ""));
    let addr = lb.addr("web");

    // HTTP/1.0 without Host: forwarded as valid HTTP/1.1, with the address the client reached.
    let resp = exchange(addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    let seen = target.last();
    assert!(seen.starts_with("GET /old HTTP/1.1\r\n"), "{seen:?}");
    assert!(seen.contains(&format!("\r\nhost: {addr}\r\n")), "{seen:?}");

    // HTTP/1.0 keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("connection: keep-alive\r\n"), "{resp:?}");
    }

    // A chunked response to an HTTP/1.0 client: decoded, delimited by close.
    target.push(Reply::raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Then::KeepOpen,
    ));
    let resp = exchange(addr, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(resp.ends_with("connection: close\r\n\r\nhello") && !resp.contains("chunked"), "{resp:?}");

    // The target's Connection: close: its connection is not reused, the client's stays open.
    target.push(Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", Then::KeepOpen));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200") && !resp.to_ascii_lowercase().contains("connection:"), "{resp:?}");
    let first = target.seen.lock().unwrap().last().unwrap().0;
    s.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let resp = read_to_close(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("connection: close\r\n"), "{resp:?}");
    assert_ne!(target.seen.lock().unwrap().last().unwrap().0, first, "a connection the target closed was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_target_can_accept_get_a_4xx_and_are_logged() {
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, ""));
    let addr = lb.addr("web");
    for (bytes, status) in [
        (&b"GET /empty HTTP/1.1\r\nHost:\r\n\r\n"[..], "400"),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "405"),
        (b"GET /nohost HTTP/1.1\r\n\r\n", "400"),
    ] {
        let resp = exchange(addr, bytes).await;
        assert_eq!(resp.get(9..12), Some(status), "{:?} -> {resp:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(target.requests(), 0);
    // What is forwarded is valid HTTP/1.1: OPTIONS * as it is, absolute form as origin form.
    exchange(addr, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(target.last().starts_with("OPTIONS * HTTP/1.1\r\nHost: a\r\n"), "{}", target.last());
    exchange(addr, b"GET http://b.example/p?q HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(target.last().starts_with("GET /p?q HTTP/1.1\r\nhost: b.example\r\n"), "{}", target.last());
    // Refused requests are logged with what could be read of them.
    assert!(eventually(Duration::from_secs(5), || lb.log.lines().len() >= 6).await);
    let lines = lb.log.lines();
    let nohost = lines.iter().find(|l| l["path"] == "/nohost").expect("a line for the refused request");
    assert_eq!(
        (nohost["method"].as_str(), nohost["status"].as_u64(), nohost["error"].as_str()),
        (Some("GET"), Some(400), Some("missing_host"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_grpc_status_from_the_balancer() {
    let lb = Lb::start(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_action = { forward = \"g\" }\n[[target_groups]]\nname = \"g\"\ntargets = []\n",
    );
    for c in [h2c_client(), client()] {
        let r = send(
            &c,
            http::Request::post(lb.url("web", "/pkg.Svc/Call"))
                .header("content-type", "application/grpc")
                .body(Default::default())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.header("grpc-status"), r.body.as_str()),
            (200, Some("14"), ""),
            "{:?}",
            r.version
        );
        assert_eq!(r.header("content-type"), Some("application/grpc"));
    }
    // Others get the text answer.
    assert_eq!(get(&client(), &lb.url("web", "/")).await.status.as_u16(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_reach_http1_targets_with_bodies_both_ways() {
    let target = Scripted::start(
        vec![Reply::raw(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-T: 1\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
            Then::KeepOpen,
        )],
        false,
    )
    .await;
    let lb = Lb::start(&config(target.addr, ""));
    let r = send(&h2c_client(), http::Request::post(lb.url("web", "/up")).body("payload".into()).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.body.as_str(), r.header("x-t")), (201, "abcdef", Some("1")));
    let seen = target.last();
    assert!(seen.starts_with("POST /up HTTP/1.1\r\n"), "{seen:?}");
    assert!(seen.ends_with("payload") || seen.ends_with("7\r\npayload\r\n0\r\n\r\n"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_end_of_the_drain_is_logged() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&format!("[server]\nshutdown_drain = \"300ms\"\n{}", config(be.addr, "")));
    let log = lb.log.clone();
    let c = client();
    let url = lb.url("web", "/slow");
    let slow = tokio::spawn(async move {
        let r = c.request(http::Request::get(url).header("x-delay-ms", "5000").body(Default::default()).unwrap());
        tokio::time::timeout(Duration::from_secs(20), r).await
    });
    assert!(eventually(Duration::from_secs(5), || be.requests() == 1).await);
    let cut = tokio::task::spawn_blocking(move || lb.server.shutdown()).await.unwrap();
    assert_eq!(cut, 1);
    let lines = log.lines();
    let line = lines.iter().find(|l| l["path"] == "/slow").expect("the cut request has a log line");
    assert_eq!(line["error"], "shutdown_drain_elapsed");
    let _ = slow.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_closing_idle_connections_costs_no_request() {
    // The target closes connections idle for 20 ms; the gaps between requests straddle it.
    let target = Scripted::closing_idle(Duration::from_millis(20)).await;
    let lb = Lb::start(&config(target.addr, ""));
    let c = client();
    for i in 0..200u64 {
        let r = get(&c, &lb.url("web", "/")).await;
        assert_eq!(r.status.as_u16(), 200, "GET {i}");
        tokio::time::sleep(Duration::from_millis(15 + i % 10)).await; // around the target's idle timeout, on purpose
    }
}

/// The body of a chunked message, de-chunked (panics on bad framing: the test fails).
fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = b.split_once("\r\n").expect("a chunk-size line");
        let n = usize::from_str_radix(size, 16).expect("a hex size");
        if n == 0 {
            assert_eq!(rest, "\r\n", "the chunked body ends cleanly");
            return out;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].strip_prefix("\r\n").expect("CRLF after the chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chunks_in_one_read_are_all_relayed_at_once() {
    // 40 chunks in one write, then the target waits: everything buffered must reach the client
    // without another read from the target (which would wait for response_timeout and cut).
    let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut want = String::new();
    for i in 0..40 {
        let piece = format!("piece{i:02};");
        reply.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
        want.push_str(&piece);
    }
    reply.extend_from_slice(b"0\r\n\r\n");
    let target = Scripted::start(vec![Reply::raw(&reply, Then::KeepOpen)], false).await;
    let lb = Lb::start(&config(target.addr, "response_timeout = \"2s\""));
    let resp = exchange(lb.addr("web"), GET_CLOSE).await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(dechunk(body), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_with_its_head_reaches_the_target_whatever_the_heads_shape() {
    // Dropped fields between kept ones make the forwarded head one more slice each, so some
    // count of them fills the vectored write exactly: the body must still go out after it.
    let target = Scripted::start(Vec::new(), false).await;
    let lb = Lb::start(&config(target.addr, ""));
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    // (At most 45 pairs: 3 + 2 x 45 fields stay under max_headers.)
    for n in 0..=45 {
        let mut req = format!("POST /up/{n} HTTP/1.1\r\nHost: a\r\nConnection: x-drop\r\nContent-Length: 11\r\n");
        for i in 0..n {
            req.push_str(&format!("X-Keep-{i}: v\r\nX-Drop: d\r\n"));
        }
        req.push_str("\r\nbody-of-11");
        req.push('!');
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{n} pairs: {resp:?}");
        let seen = target.last();
        assert!(seen.starts_with(&format!("POST /up/{n} ")), "{seen:?}");
        assert!(seen.ends_with("\r\n\r\nbody-of-11!") && !seen.contains("X-Drop"), "{n} pairs: {seen:?}");
        assert_eq!(seen.matches("X-Keep-").count(), n, "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_counts_from_the_request_sent_not_from_a_slow_head_or_a_trickling_answer() {
    // A client that takes longer than response_timeout to send its head still gets the answer.
    let target = Scripted::start(Vec::new(), false).await;
    // One worker: the second client connection finds the target connection the first pooled.
    let cfg = config(target.addr, "response_timeout = \"400ms\"");
    let lb = Lb::start(&format!("[server]\nworker_threads = 1\n{cfg}"));
    // A pooled target connection, so the request goes out without a connect.
    assert!(exchange(lb.addr("web"), GET_CLOSE).await.starts_with("HTTP/1.1 200"));
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    for piece in [&b"GET /slow HTTP/1.1\r\n"[..], b"Host: a\r\n", b"X-A: 1\r\n", b"\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the slow client under test
    }
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert_eq!(target.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "the pooled connection was used");

    // A target that trickles its head a byte at a time gets response_timeout in all.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut c, _)) = listener.accept().await else { return };
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).await;
        for &b in b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".iter() {
            if c.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // the trickling target under test
        }
    });
    let lb = Lb::start(&config(addr, "response_timeout = \"400ms\""));
    let resp = exchange(lb.addr("web"), GET_CLOSE).await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp:?}");
}

/// Reads from `s` into `got` until `done(got)` (bounded by 5 s: the test then fails on `got`).
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let read = async {
        while !done(got) {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
}

/// A target that sends its response head as soon as a request head is in, then echoes each body
/// byte as it arrives (a 10-byte `Content-Length` body), as chunks: full duplex, as streaming
/// services do.
async fn echo_target() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                assert!(String::from_utf8_lossy(&buf[..head_end])
                    .to_ascii_lowercase()
                    .contains("content-length: 10\r\n"));
                let mut left = 10usize;
                // One exchange per connection (said, so pilotfish does not pool it).
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if c.write_all(head).await.is_err() {
                    return;
                }
                let mut body = buf[head_end..].to_vec();
                loop {
                    if !body.is_empty() {
                        left -= body.len();
                        let chunk = format!("{:x}\r\n{}\r\n", body.len(), String::from_utf8_lossy(&body));
                        if c.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        body.clear();
                    }
                    if left == 0 {
                        let _ = c.write_all(b"0\r\n\r\n").await;
                        break;
                    }
                    let mut chunk = [0u8; 4096];
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut rest = [0u8; 16];
                let _ = c.read(&mut rest).await; // stay until pilotfish is done with the connection
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_answers_first_and_reads_the_body_after_gets_all_of_it() {
    let lb = Lb::start(&config(echo_target().await, "response_timeout = \"5s\""));
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello").await.unwrap();
    // The first half comes back before the second is sent: the target answered, then read on.
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |g| String::from_utf8_lossy(g).contains("\r\nhello\r\n")).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("\r\nhello\r\n"), "{text:?}");
    s.write_all(b"world").await.unwrap();
    read_until(&mut s, &mut got, |g| g.ends_with(b"\r\n0\r\n\r\n")).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(dechunk(body), "helloworld", "{text:?}");

    // A client whose body breaks off meanwhile ends the exchange: the target would wait for the
    // rest for ever (the response is cut, and logged as the client's doing).
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    s.write_all(b"POST /broken HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello").await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |g| String::from_utf8_lossy(g).contains("\r\nhello\r\n")).await;
    s.shutdown().await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(!text.contains("\r\n0\r\n\r\n"), "a cut response never looks complete: {text:?}");
    let logged = |l: &serde_json::Value| {
        l["path"] == "/broken" && l["error"] == "request_body_incomplete" && l["bytes_out"] == 5
    };
    assert!(eventually(Duration::from_secs(3), || lb.log.lines().iter().any(logged)).await, "{:?}", lb.log.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_streams_to_a_target_that_answers_first() {
    use http_body_util::BodyExt;
    let lb = Lb::start(&config(echo_target().await, "response_timeout = \"5s\""));
    let tcp = TcpStream::connect(lb.addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>>(4);
    let frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }));
    let req = http::Request::post(format!("http://{}/echo", lb.addr("web")))
        .header("content-length", "10")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"hello")))).await.unwrap();
    let within = Duration::from_secs(5);
    let resp = tokio::time::timeout(within, sender.send_request(req)).await.expect("a response head").unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(within, body.frame()).await.expect("the first echo").unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hello", "echoed before the rest was sent");
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"world")))).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(within, body.collect()).await.expect("the rest");
    let rest = rest.unwrap_or_else(|e| panic!("{e:?} {:?}", lb.log.lines())).to_bytes();
    assert_eq!(rest, "world");
}
