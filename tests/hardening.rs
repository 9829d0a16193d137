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

/// A minimal HTTP/2 peer, so tests control exactly which frames go out.
mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// Error codes (RFC 9113 section 7).
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix, the bits above it set to `flags`.
    fn int(flags: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// HPACK literal header field without indexing, new name, no Huffman.
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00];
        int(0, 7, name.len(), &mut b);
        b.extend_from_slice(name.as_bytes());
        int(0, 7, value.len(), &mut b);
        b.extend_from_slice(value.as_bytes());
        b
    }

    /// GET / on authority "a", then `extra` fields.
    pub fn request_block(extra: &[(&str, &str)]) -> Vec<u8> {
        // :method GET (static 2), :scheme http (6), :path / (4), then :authority.
        let mut b = vec![0x82, 0x86, 0x84];
        b.extend(literal(":authority", "a"));
        for (k, v) in extra {
            b.extend(literal(k, v));
        }
        b
    }

    /// A whole request (END_STREAM) on `stream`: HEADERS, and CONTINUATION frames if the block
    /// is larger than the default maximum frame size (16 KiB).
    pub fn request(stream: u32, block: &[u8]) -> Vec<u8> {
        let pieces: Vec<&[u8]> = block.chunks(16384).collect();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let end = if i + 1 == pieces.len() { END_HEADERS } else { 0 };
            let (kind, flags) = if i == 0 { (HEADERS, END_STREAM | end) } else { (CONTINUATION, end) };
            out.extend(frame(kind, flags, stream, piece));
        }
        out
    }

    /// One frame read from the server.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn code(&self) -> u32 {
            let at = if self.kind == GOAWAY { 4 } else { 0 };
            u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
        }
    }

    /// Reads frames (acknowledging the server's SETTINGS) until `last` holds for one, the
    /// connection ends, or 5 s pass; returns them all, and whether `last` was reached.
    pub async fn read_until(s: &mut TcpStream, last: impl Fn(&Frame) -> bool) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let read = async {
            loop {
                let mut head = [0u8; 9];
                s.read_exact(&mut head).await.ok()?;
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                s.read_exact(&mut payload).await.ok()?;
                if head[3] == SETTINGS && head[4] & 0x1 == 0 {
                    s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.ok()?;
                }
                let f = Frame { kind: head[3], stream, payload };
                let done = last(&f);
                frames.push(f);
                if done {
                    return Some(());
                }
            }
        };
        let reached = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok().flatten().is_some();
        (frames, reached)
    }

    /// The `:status` a response header block starts with: an indexed static entry (RFC 7541
    /// appendix A) or a literal with the indexed name `:status`, raw or Huffman-coded (digits).
    pub fn status(block: &[u8]) -> Option<u16> {
        let static_status = [200, 204, 206, 304, 400, 404, 500];
        match *block.first()? {
            b @ 0x88..=0x8e => return Some(static_status[usize::from(b - 0x88)]),
            0x48 | 0x08 | 0x18 => {}
            _ => return None,
        }
        let (huffman, len) = (block.get(1)? & 0x80 != 0, usize::from(block.get(1)? & 0x7f));
        let value = block.get(2..2 + len)?;
        let text = if huffman {
            // Digits have 5-bit ('0'..'2') or 6-bit ('3'..'9') codes; the padding is all ones.
            let bits: Vec<bool> = value.iter().flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1)).collect();
            let (mut out, mut i) = (String::new(), 0);
            while i + 5 <= bits.len() {
                let code = |n: usize| bits[i..i + n].iter().fold(0u8, |a, &b| a << 1 | u8::from(b));
                if code(5) <= 2 {
                    out.push(char::from(b'0' + code(5)));
                    i += 5;
                } else if i + 6 <= bits.len() && (0x19..=0x1f).contains(&code(6)) {
                    out.push(char::from(b'3' + code(6) - 0x19));
                    i += 6;
                } else {
                    break;
                }
            }
            out
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        text.parse().ok()
    }
}

async fn h2_conn(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(h2raw::PREFACE).await.unwrap();
    s.write_all(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// The HTTP/2 bounds below are pilotfish's settings, each different from what hyper and h2 would
/// use by themselves (hyper: 200 concurrent streams, a 16 KiB header list, 1024 locally reset
/// streams; h2: 20 pending-accept reset streams), so each test fails if pilotfish stops setting
/// it. Bounds that h2 keeps whatever it is told (one PONG queued at a time, a cap on
/// CONTINUATION frames) are h2's to test, not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_limits_are_max_header_bytes() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "max_header_bytes = 40000"));
    let mut s = h2_conn(lb.addr("web")).await;
    let (frames, _) = read_until(&mut s, |f| f.kind == SETTINGS).await;
    let settings = &frames.iter().find(|f| f.kind == SETTINGS).expect("server SETTINGS").payload;
    let setting = |id: u16| {
        settings
            .chunks(6)
            .find(|c| u16::from_be_bytes([c[0], c[1]]) == id)
            .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    };
    assert_eq!(setting(0x3), Some(256), "SETTINGS_MAX_CONCURRENT_STREAMS (hyper alone: 200)");
    assert_eq!(setting(0x6), Some(40000), "SETTINGS_MAX_HEADER_LIST_SIZE = max_header_bytes (hyper alone: 16384)");

    // A 30 KB header list: over hyper's own limit, within max_header_bytes; served whole.
    let value = "v".repeat(2000);
    let fields: Vec<(String, &str)> = (0..15).map(|i| (format!("x-big-{i:02}"), value.as_str())).collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    s.write_all(&request(1, &request_block(&fields))).await.unwrap();
    let (frames, _) = read_until(&mut s, |f| f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM)).await;
    let answer = frames.iter().find(|f| f.stream == 1).map(|f| (f.kind, status(&f.payload)));
    assert_eq!(answer, Some((HEADERS, Some(200))), "{frames:?}");
    let seen = be.last();
    assert!((0..15).all(|i| seen.headers[format!("x-big-{i:02}").as_str()] == value.as_str()), "every field arrived");

    // 45 KB: over max_header_bytes. Refused with 431; the connection lives on.
    let fields: Vec<(String, &str)> = (0..22).map(|i| (format!("x-big-{i:02}"), value.as_str())).collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    s.write_all(&request(3, &request_block(&fields))).await.unwrap();
    let (frames, _) = read_until(&mut s, |f| f.stream == 3 && f.kind == HEADERS).await;
    let answer = frames.iter().find(|f| f.stream == 3 && f.kind == HEADERS).map(|f| status(&f.payload));
    assert_eq!(answer, Some(Some(431)), "{frames:?}");
    assert_eq!(be.requests(), 1, "the refused request never reached the target");
    s.write_all(&request(5, &request_block(&[]))).await.unwrap();
    let (frames, _) = read_until(&mut s, |f| f.stream == 5 && f.kind == HEADERS).await;
    assert_eq!(frames.last().map(|f| (f.stream, status(&f.payload))), Some((5, Some(200))), "{frames:?}");
}

/// `pairs` streams opened and cancelled at once (CVE-2023-44487), then `then`.
fn rapid_reset(pairs: u32, then: &[u8]) -> Vec<u8> {
    use h2raw::*;
    let mut burst = Vec::new();
    for i in 0..pairs {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &request_block(&[])));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    burst.extend_from_slice(then);
    burst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_cut_with_goaway_past_100_cancelled_streams() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    // One write, so the server reads every frame before it accepts any stream: all 100 are
    // cancelled while pending. pilotfish allows 100 (h2 alone: 20), so the request after them is
    // answered.
    let mut s = h2_conn(lb.addr("web")).await;
    s.write_all(&rapid_reset(100, &request(201, &request_block(&[])))).await.unwrap();
    let (frames, answered) = read_until(&mut s, |f| f.kind == GOAWAY || (f.stream == 201 && f.kind == HEADERS)).await;
    assert!(answered, "{frames:?}");
    let last = frames.last().unwrap();
    assert_eq!((last.kind, last.stream, status(&last.payload)), (HEADERS, 201, Some(200)), "no GOAWAY at 100");

    // 150 in one write: past the bound, the connection is shut down as too eager.
    let mut s = h2_conn(lb.addr("web")).await;
    s.write_all(&rapid_reset(150, &[])).await.unwrap();
    let (frames, cut) = read_until(&mut s, |f| f.kind == GOAWAY).await;
    assert!(cut, "GOAWAY after 150 cancelled streams: {frames:?}");
    assert_eq!(frames.last().unwrap().code(), ENHANCE_YOUR_CALM, "GOAWAY ENHANCE_YOUR_CALM");
    // The balancer is fine for everyone else.
    let r = get(&h2c_client(), &lb.url("web", "/after")).await;
    assert_eq!(r.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_the_server_must_reset_are_bounded_at_100_per_connection() {
    use h2raw::*;
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, ""));
    // A request whose Content-Length does not parse is malformed: the server resets its stream
    // (PROTOCOL_ERROR) itself, which costs it work the client chose ("MadeYouReset",
    // CVE-2025-8671). h2 counts these per connection and never forgets them; pilotfish allows
    // 100 (hyper alone: 1024).
    let malformed = |id: u32| frame(HEADERS, END_STREAM | END_HEADERS, id, &request_block(&[("content-length", "x")]));
    let mut s = h2_conn(lb.addr("web")).await;
    let mut burst: Vec<u8> = (0..100).flat_map(|i| malformed(1 + 2 * i)).collect();
    burst.extend(request(201, &request_block(&[])));
    s.write_all(&burst).await.unwrap();
    let (frames, answered) = read_until(&mut s, |f| f.kind == GOAWAY || (f.stream == 201 && f.kind == HEADERS)).await;
    assert!(answered, "{frames:?}");
    let resets: Vec<(u32, u32)> =
        frames.iter().filter(|f| f.kind == RST_STREAM).map(|f| (f.stream, f.code())).collect();
    assert_eq!(resets, (0..100).map(|i| (1 + 2 * i, PROTOCOL_ERROR)).collect::<Vec<_>>());
    let last = frames.last().unwrap();
    assert_eq!((last.kind, status(&last.payload)), (HEADERS, Some(200)), "no GOAWAY at 100");
    assert_eq!(be.requests(), 1, "only the well-formed request reached the target");

    // The 101st on the same connection: GOAWAY.
    s.write_all(&malformed(203)).await.unwrap();
    let (frames, cut) = read_until(&mut s, |f| f.kind == GOAWAY).await;
    assert!(cut, "GOAWAY at the 101st reset: {frames:?}");
    assert_eq!(frames.last().unwrap().code(), ENHANCE_YOUR_CALM, "GOAWAY ENHANCE_YOUR_CALM");
    assert_eq!(be.requests(), 1);
}
