//! The body of every response the HTTP/2 server sends: fixed bytes (an [`super::answer::Answer`]),
//! an HTTP/2 target's body streamed through, or an HTTP/1.1 target's body read from its
//! connection by the engine's decoder (the version seam). A relayed body owns the request's
//! in-flight guard; an HTTP/1.1 target connection goes back to the worker's pool only when its
//! body was read to a clean end. The access log line rides along and is written when the body
//! ends, or with `error` set when it is dropped before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::h1::body::{Decoder, Event};
use super::h1::buf::Buf;
use super::h1::client::{Outbound, SendError};
use super::service::RequestLog;
use super::upstream::{self, Conn};
use crate::balance::InFlightGuard;
use crate::telemetry::metrics::ListenerStats;

/// The error type of relayed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

enum Kind {
    Full(Option<Bytes>),
    H2 { inner: Incoming, guard: Option<InFlightGuard> },
    H1(Box<H1Source>),
}

/// A response body for the HTTP/2 server.
pub struct RespBody {
    kind: Kind,
    log: RequestLog,
    /// Where body bytes are counted (ProcessedBytes).
    stats: Option<Arc<ListenerStats>>,
}

/// An HTTP/1.1 target's response body, read from its connection.
pub struct H1Source {
    conn: Option<Conn>,
    tbuf: Buf,
    dec: Decoder,
    guard: Option<InFlightGuard>,
    /// The connection may be pooled if the body ends cleanly.
    reusable: bool,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// What is left of the request body when the target answered before it was all sent: it
    /// keeps going to the target while the response is read (full duplex).
    rest: Option<Box<dyn Outbound + Send>>,
}

impl H1Source {
    /// The body after the head: `tbuf` holds what was read past the head; `rest`, the request
    /// body still to send.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: Conn,
        tbuf: Buf,
        dec: Decoder,
        guard: InFlightGuard,
        reusable: bool,
        idle: Duration,
        rest: Option<Box<dyn Outbound + Send>>,
    ) -> Self {
        H1Source { conn: Some(conn), tbuf, dec, guard: Some(guard), reusable, idle, timer: None, rest }
    }

    /// Sends what the client has of the rest of the request body, as far as it goes without
    /// waiting. A target that stops taking it only ends this (the connection is then not
    /// reused); a body that breaks off on the client's side is an error: the target would wait
    /// for the rest for ever.
    fn pump(&mut self, cx: &mut Context<'_>) -> Result<(), &'static str> {
        let (Some(out), Some(conn)) = (self.rest.as_mut(), self.conn.as_mut()) else { return Ok(()) };
        let moved = match out.poll_body(cx, &mut conn.io) {
            Poll::Ready(Ok(done)) => {
                if done {
                    self.rest = None;
                }
                true
            }
            Poll::Pending => false,
            Poll::Ready(Err(SendError::Target(_))) => {
                self.rest = None;
                self.reusable = false;
                false
            }
            Poll::Ready(Err(SendError::Client(_))) => return Err("request_body_incomplete"),
        };
        if moved {
            // The target is reading what it is sent: it has not gone silent.
            self.timer = None;
        }
        Ok(())
    }

    /// The body ended cleanly: the connection goes back to the pool when nothing is left over.
    fn finish(&mut self) {
        self.guard = None;
        if let Some(conn) = self.conn.take() {
            // A request body not sent to its end leaves the connection mid-message.
            if self.reusable && self.rest.is_none() && self.tbuf.is_empty() {
                upstream::checkin(conn, tokio::time::Instant::now());
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.conn.is_none() {
                return Poll::Ready(None);
            }
            let filled = self.tbuf.filled();
            let (used, ev) = match self.dec.next(filled) {
                Ok(x) => x,
                Err(why) => return Poll::Ready(Some(Err(self.fail(why)))),
            };
            match ev {
                Event::Data(r) => {
                    let b = Bytes::copy_from_slice(&filled[r]);
                    self.tbuf.consume(used);
                    self.timer = None;
                    if self.dec.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Event::Trailers(r) => {
                    let map = trailer_map(&filled[r]);
                    self.tbuf.consume(used);
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Event::End => {
                    self.tbuf.consume(used);
                    self.finish();
                    return Poll::Ready(None);
                }
                // Framing decided so far (a chunk's CRLF) is consumed even when no data follows.
                Event::More => self.tbuf.consume(used),
            }
            self.tbuf.reset_if_empty();
            if self.tbuf.spare() == 0 {
                self.tbuf.compact_to(0);
            }
            if let Err(why) = self.pump(cx) {
                return Poll::Ready(Some(Err(self.fail(why))));
            }
            let conn = self.conn.as_mut().expect("checked above");
            match self.tbuf.poll_read_from(&mut conn.io, cx) {
                Poll::Ready(Ok(0)) => match self.dec.at_eof() {
                    Ok(()) => {
                        self.reusable = false;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Err(why) => return Poll::Ready(Some(Err(self.fail(why)))),
                },
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.fail_io(e)))),
                Poll::Pending => {}
            }
            let idle = self.idle;
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(self.fail("target_read_timeout"))));
            }
            return Poll::Pending;
        }
    }

    fn fail(&mut self, why: &'static str) -> BoxError {
        self.conn = None;
        self.guard = None;
        why.into()
    }

    fn fail_io(&mut self, e: std::io::Error) -> BoxError {
        self.conn = None;
        self.guard = None;
        e.into()
    }
}

/// A trailer section's fields (already checked by the decoder) as a header map.
fn trailer_map(section: &[u8]) -> HeaderMap {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut map = HeaderMap::new();
    if let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields) {
        for f in fields {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) {
                map.append(n, v);
            }
        }
    }
    map
}

impl RespBody {
    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RespBody { kind: Kind::Full((!b.is_empty()).then_some(b)), log: RequestLog::default(), stats: None }
    }

    /// An HTTP/2 target's body.
    pub fn h2(inner: Incoming, guard: InFlightGuard) -> Self {
        let mut b = RespBody { kind: Kind::H2 { inner, guard: Some(guard) }, log: RequestLog::default(), stats: None };
        if let Kind::H2 { inner, guard } = &mut b.kind {
            if inner.is_end_stream() {
                *guard = None;
            }
        }
        b
    }

    /// An HTTP/1.1 target's body.
    pub fn h1(source: H1Source) -> Self {
        RespBody { kind: Kind::H1(Box::new(source)), log: RequestLog::default(), stats: None }
    }

    /// Writes `log` when this body ends (bytes sent and the time it took filled in).
    pub fn log_on_end(&mut self, log: RequestLog) {
        self.log = log;
    }

    /// Counts this body's bytes into `stats` (ProcessedBytes).
    pub fn count_into(&mut self, stats: Arc<ListenerStats>) {
        self.stats = Some(stats);
    }

    fn count(&mut self, n: usize) {
        self.log.add_bytes_out(n as u64);
        if let Some(s) = &self.stats {
            s.processed_bytes.add(n as u64);
        }
    }

    fn end_log(&mut self, error: Option<&'static str>) {
        std::mem::take(&mut self.log).finish(error);
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if self.log.is_on() {
            let done = self.is_end_stream();
            self.end_log((!done).then_some("response_incomplete"));
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::H2 { inner, guard } => {
                let r = Pin::new(&mut *inner).poll_frame(cx).map_err(BoxError::from);
                match &r {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => *guard = None,
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => *guard = None,
                    _ => {}
                }
                r
            }
            Kind::H1(src) => src.poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len());
                this.count(n);
                if this.is_end_stream() {
                    this.end_log(None);
                }
            }
            Poll::Ready(None) => this.end_log(None),
            Poll::Ready(Some(Err(_))) => this.end_log(Some("response_incomplete")),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::H2 { inner, .. } => inner.is_end_stream(),
            Kind::H1(src) => src.conn.is_none() || src.dec.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::H2 { inner, .. } => inner.size_hint(),
            Kind::H1(src) => match src.dec {
                Decoder::Length(n) => SizeHint::with_exact(n),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}
