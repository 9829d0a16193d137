//! pilotfish's own HTTP/1.1 engine, for both sides of the proxy: client connections
//! ([`server`]) and target connections ([`client`]).
//!
//! Why not hyper here (it still serves HTTP/2 on both sides): hyper is a general-purpose
//! HTTP library, and a proxy built as layers over it paid for that generality on every request
//! — a shadow parser in front of hyper's for the RFC 9112 checks hyper does not make, an
//! `http::HeaderMap` built, cloned for retries and re-encoded, a channel and a task per target
//! connection — measured at twice nginx's user CPU per proxied request and 16 KiB+ of buffers
//! held by every idle keep-alive connection (hyper's buffers live as long as the connection).
//! No maintained crate offers what a proxy needs instead:
//!
//! - **one parse per head** ([`parse`]): httparse finds the lines, one pass over the fields
//!   gathers every fact and applies every check; the head keeps offsets into its read buffer;
//! - **heads forwarded from the bytes read** ([`encode`]): kept lines are written as they
//!   arrived, with one vectored write and the first body bytes when buffered;
//! - **bodies re-framed with validated sizes** ([`body`]), streamed with backpressure;
//! - **buffers from a per-worker pool** ([`buf`]), held only while a message is read or
//!   written: an idle connection holds none;
//! - **strict responses**: a malformed or ambiguous response from a target never reaches a
//!   client, and a connection with bytes no request asked for is never reused;
//! - **full duplex**: a target may answer before it has the whole request body; the rest keeps
//!   going to it while the response is relayed;
//! - **upgrades** (WebSocket) become a byte tunnel after the target's 101.

pub mod body;
pub mod buf;
pub mod client;
pub mod encode;
pub mod io;
pub mod parse;
pub mod server;

/// How the engine judges `bytes` as one message (a request, or a response to a GET) when they
/// arrive in reads of `step` bytes: where the head ends or why it is refused, then the body bytes
/// and how the message ends. The same bytes must get the same verdict whatever the reads; the
/// property tests and the fuzz targets check it.
#[doc(hidden)]
pub fn verdict_in_reads(bytes: &[u8], step: usize, response: bool) -> String {
    use body::{Decoder, Event};
    use parse::{parse_request, parse_response, BodyLen, Limits};
    const LIMITS: Limits = Limits { max_head_bytes: 8192, max_headers: 64, max_uri_bytes: 4096 };
    let step = step.max(1);
    let mut avail = 0;
    let (end, len) = loop {
        avail = (avail + step).min(bytes.len());
        let r = if response {
            parse_response(bytes, 0, avail, 8192, 64).map(|h| h.map(|h| (h.end as usize, h.body_len(false))))
        } else {
            parse_request(bytes, 0, avail, &LIMITS).map(|h| h.map(|h| (h.end as usize, h.body))).map_err(|e| e.reason)
        };
        match r {
            Ok(Some(x)) => break x,
            Ok(None) if avail == bytes.len() => return "incomplete head".into(),
            Ok(None) => {}
            Err(e) => return format!("refused: {e}"),
        }
    };
    let mut d = Decoder::new(len);
    let (mut pos, mut body) = (end, Vec::new());
    loop {
        let (used, ev) = match d.next(&bytes[pos..avail]) {
            Ok(x) => x,
            Err(e) => return format!("head {end}, body refused after {body:?}: {e}"),
        };
        match ev {
            Event::Data(r) | Event::Trailers(r) => body.extend_from_slice(&bytes[pos + r.start..pos + r.end]),
            Event::End => return format!("head {end}, body {body:?}, ends at {}", pos + used),
            Event::More if avail == bytes.len() => {
                let how = if len == BodyLen::Close { "until close" } else { "cut short" };
                return format!("head {end}, body {body:?}, {how}");
            }
            Event::More => avail = (avail + step).min(bytes.len()),
        }
        pos += used;
    }
}
