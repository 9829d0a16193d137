//! Requests that confuse proxies never reach a target: HTTP/1.1 framing exactly per RFC 9112
//! (raw sockets), limits with the right status, and HTTP/2 abuse bounded per connection (a raw
//! h2 client), asserting both what the client sees and what the backend received.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(be: &Backend, server: &str) -> String {
    format!(
        "[server]\nadmin_bind = \"127.0.0.1:0\"\n{server}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_action = {{ forward = \"g\" }}\n[[target_groups]]\nname = \"g\"\ntargets = [\"{}\"]\n",
        be.addr
    )
}

/// Sends raw bytes, then reads until the server closes (bounded).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const SMUGGLING: &[(&str, &[u8])] = &[
    ("duplicate CL, different", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
    ("duplicate CL, same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
    ("CL then TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("TE then CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd"),
    ("CL not a number", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd"),
    ("TE not chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd"),
    ("TE chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("TE obfuscated", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bare CR in field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
    ("NUL in field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n"),
    ("control char in field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n"),
    ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
    ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("bad Host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    ("absolute-form disagrees", b"GET http://evil/ HTTP/1.1\r\nHost: good\r\n\r\n"),
    ("space in request target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_attacks_get_400_and_never_reach_a_target() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    let mut wrong = Vec::new();
    for (name, bytes) in SMUGGLING {
        let resp = raw(lb.addr("web"), bytes).await;
        let status = resp.get(9..12).unwrap_or("---").to_string();
        if status != "400" || resp.matches("HTTP/1.1").count() > 1 {
            wrong.push(format!("{name}: {:?}", resp.lines().next().unwrap_or("(closed without answer)")));
        }
    }
    assert!(wrong.is_empty(), "not a single 400 for:\n{}", wrong.join("\n"));
    assert_eq!(
        be.requests(),
        0,
        "nothing reached the target: {:?}",
        be.seen.lock().unwrap().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_smuggle_nothing() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    // The head is streamed to the target before the body is read; a body that turns out
    // malformed aborts the request: the client gets 400, the target an incomplete, cleanly
    // re-framed request and never the bytes after it as a second request.
    let cases: [&[u8]; 2] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for case in cases {
        let resp = raw(lb.addr("web"), case).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "one answer, connection closed: {resp:?}");
    }
    assert!(be.seen.lock().unwrap().iter().all(|s| s.uri != "/smuggled"), "nothing smuggled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_extensions_get_400_and_reach_no_target() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    // The head is fine and may already be streaming to the target; the stream is cut at the bad
    // size line, so the target never gets a complete request (the backend records an aborted body
    // as empty), and nothing after it.
    for ext in ["4;\r\n", "4;a b\r\n", "4;a=\"x\r\n", "4;a=b c\r\n", "4 \r\n", "4;a@b\r\n"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{ext}abcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let resp = raw(lb.addr("web"), req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{ext:?}: {resp:?}");
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "one answer, connection closed: {resp:?}");
    }
    let seen = be.seen.lock().unwrap();
    assert!(seen.iter().all(|s| s.uri != "/smuggled"), "nothing smuggled");
    assert!(
        seen.iter().all(|s| s.body.is_empty()),
        "no refused request reached the target complete: {:?}",
        seen.iter().map(|s| &s.body).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_framing_keeps_every_boundary_on_one_connection() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    // Well-formed framing the guard must pass untouched, pipelined on one connection and sent in
    // small pieces: bodies that look like heads, chunk extensions, trailers.
    let msgs: [(&str, &[u8]); 4] = [
        ("POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\n\r\nContent-Length: 1\r\nContent-Length: 2", b"Content-Length: 1\r\nContent-Length: 2"),
        ("POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a;b=c ; d=\"e \\\" f\"\r\nhello\r\n1 ;x=y\r\n!\r\n0\r\nX-T: 1\r\n\r\n", b"hello!"),
        ("GET /three HTTP/1.1\r\nHost: a\r\n\r\n", b""),
        ("POST /four HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", b"ok"),
    ];
    let all: Vec<u8> = msgs.iter().flat_map(|(m, _)| m.bytes()).collect();
    let mut s = TcpStream::connect(lb.addr("web")).await.unwrap();
    for piece in all.chunks(7) {
        s.write_all(piece).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("connection closed").unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 4, "four answers: {out}");
    let seen = be.seen.lock().unwrap();
    let got: Vec<(&str, &[u8])> = seen.iter().map(|s| (s.uri.as_str(), &s.body[..])).collect();
    let want: Vec<(&str, &[u8])> =
        ["/one", "/two", "/three", "/four"].into_iter().zip(msgs.iter().map(|m| m.1)).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_414_431_and_413() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_uri_bytes = 1024\nmax_headers = 20").replace(
        "default_action = { forward = \"g\" }",
        "max_request_body = 1000\ndefault_action = { forward = \"g\" }",
    ));
    let addr = lb.addr("web");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1100));
    assert!(raw(addr, long_uri.as_bytes()).await.starts_with("HTTP/1.1 414"));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(addr, format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    // Declared too large: refused before anything is forwarded.
    let resp =
        raw(addr, format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n{}", "x".repeat(5000)).as_bytes())
            .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert_eq!(be.requests(), 0);
    // Chunked past the limit: the stream is cut at the limit and the client gets 413.
    let chunks: String = (0..5).map(|_| format!("1f4\r\n{}\r\n", "y".repeat(500))).collect();
    let resp = raw(
        addr,
        format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert!(be.seen.lock().unwrap().iter().all(|s| s.body.len() <= 1000), "the target never got more than the limit");
    // Within the limit all is well.
    let resp = raw(addr, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
}

/// A minimal HTTP/2 frame writer, so tests control exactly which frames go out.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    /// HPACK literal header field without indexing, new name, no Huffman (lengths < 127).
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    }
    pub fn request_block() -> Vec<u8> {
        // :method GET (static 2), :scheme http (6), :path / (4), then :authority.
        let mut b = vec![0x82, 0x86, 0x84];
        b.extend(literal(":authority", "a"));
        b
    }
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    /// Reads frames until EOF or `within`; returns (type, payload) of each.
    pub async fn read_frames(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> (Vec<(u8, Vec<u8>)>, bool) {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        let mut closed = false;
        loop {
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = ((buf[i] as usize) << 16) | ((buf[i + 1] as usize) << 8) | buf[i + 2] as usize;
            if i + 9 + len > buf.len() {
                break;
            }
            frames.push((buf[i + 3], buf[i + 9..i + 9 + len].to_vec()));
            i += 9 + len;
        }
        (frames, closed)
    }
}

async fn h2_conn(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(h2raw::PREFACE).await.unwrap();
    s.write_all(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_limits_are_advertised_and_a_continuation_flood_is_cut() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_header_bytes = 16384"));
    let mut s = h2_conn(lb.addr("web")).await;
    let (frames, _) = read_frames(&mut s, Duration::from_millis(300)).await;
    let settings = &frames.iter().find(|(t, _)| *t == SETTINGS).expect("server SETTINGS").1;
    let setting = |id: u16| {
        settings
            .chunks(6)
            .find(|c| u16::from_be_bytes([c[0], c[1]]) == id)
            .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    };
    assert_eq!(setting(0x3), Some(256), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(0x6), Some(16384), "SETTINGS_MAX_HEADER_LIST_SIZE = max_header_bytes");

    // HEADERS without END_HEADERS, then CONTINUATION frames that never end (2 MiB offered).
    s.write_all(&frame(HEADERS, END_STREAM, 1, &request_block())).await.unwrap();
    let block: Vec<u8> = (0..100).flat_map(|i| literal(&format!("x-flood-{i:03}"), &"v".repeat(90))).collect();
    let mut sent = 0usize;
    for _ in 0..200 {
        if s.write_all(&frame(CONTINUATION, 0, 1, &block)).await.is_err() {
            break; // the server hung up on us: good
        }
        sent += block.len();
    }
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5)).await;
    assert!(closed || frames.iter().any(|(t, _)| *t == GOAWAY), "connection cut after {sent} bytes of headers");
    assert_eq!(be.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_bounded_with_goaway() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    let mut s = h2_conn(lb.addr("web")).await;
    // CVE-2023-44487: open and cancel streams as fast as possible, in one burst.
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &request_block()));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&burst).await;
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5)).await;
    let goaway = frames.iter().find(|(t, _)| *t == GOAWAY);
    assert!(goaway.is_some() || closed, "the connection must be shut down");
    if let Some((_, p)) = goaway {
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(code, 0xb, "GOAWAY ENHANCE_YOUR_CALM");
    }
    assert!(be.requests() < 5000, "bounded work: {} of 5000 cancelled requests reached the target", be.requests());
    // The balancer is fine for everyone else.
    let r = get(&h2c_client(), &lb.url("web", "/after")).await;
    assert_eq!(r.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_and_settings_floods_do_bounded_work() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    for (kind, payload) in [(PING, vec![0u8; 8]), (SETTINGS, Vec::new())] {
        let mut s = h2_conn(lb.addr("web")).await;
        let burst: Vec<u8> = (0..20_000).flat_map(|_| frame(kind, 0, 0, &payload)).collect();
        let _ = s.write_all(&burst).await;
        let (frames, closed) = read_frames(&mut s, Duration::from_secs(3)).await;
        let acks = frames.iter().filter(|(t, _)| *t == kind).count();
        // Never more than one answer per frame (plus the server's own SETTINGS and the ACK of
        // our preface SETTINGS): no amplification, no queue that grows faster than the input.
        assert!(closed || acks <= 20_002, "at most one answer per frame ({acks})");
        drop(s);
    }
    let r = get(&h2c_client(), &lb.url("web", "/after")).await;
    assert_eq!(r.status.as_u16(), 200, "the balancer keeps serving");
}
