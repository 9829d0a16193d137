//! The response body type of every response the balancer sends: a fixed buffer, or a target's
//! body streamed through. The streamed variant owns the request's in-flight guard and, for
//! HTTP/1.1, the upstream connection, which goes back to the pool only when the body was read to
//! its end (a half-read connection cannot be reused). The access log record rides along and is
//! written when the body ends or is dropped, with the bytes sent and the time it took.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::upstream::UpBody;
use crate::balance::InFlightGuard;
use crate::telemetry::access_log::{secs, AccessLog, Record};
use crate::telemetry::metrics::ListenerStats;
use std::sync::Arc;

enum Kind {
    Full(Option<Bytes>),
    Proxied(ProxiedBody),
}

/// A response body: fixed bytes or a relayed target body, plus the pending access log line.
pub struct RespBody {
    kind: Kind,
    log: Option<Box<PendingLog>>,
    /// Where body bytes are counted (ProcessedBytes).
    stats: Option<Arc<ListenerStats>>,
}

struct PendingLog {
    log: AccessLog,
    record: Record,
    head_sent: Instant,
}

impl RespBody {
    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RespBody { kind: Kind::Full((!b.is_empty()).then_some(b)), log: None, stats: None }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RespBody { kind: Kind::Full(None), log: None, stats: None }
    }

    /// A target's body.
    pub fn proxied(p: ProxiedBody) -> Self {
        RespBody { kind: Kind::Proxied(p), log: None, stats: None }
    }

    /// Writes `record` to `log` when this body ends (bytes_out and response time filled in).
    pub fn log_on_end(&mut self, log: AccessLog, record: Record) {
        self.log = Some(Box::new(PendingLog { log, record, head_sent: Instant::now() }));
    }

    /// Counts this body's bytes into `stats` (ProcessedBytes).
    pub fn count_into(&mut self, stats: Arc<ListenerStats>) {
        self.stats = Some(stats);
    }

    fn count(&mut self, n: usize) {
        if let Some(l) = &mut self.log {
            l.record.bytes_out += n as u64;
        }
        if let Some(s) = &self.stats {
            s.processed_bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn flush_log(&mut self, incomplete: bool) {
        if let Some(mut l) = self.log.take() {
            l.record.response_processing_time = secs(l.head_sent.elapsed());
            if incomplete && l.record.error.is_none() {
                l.record.error = Some("response_incomplete");
            }
            l.log.log(l.record);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let done = self.is_end_stream();
        self.flush_log(!done);
    }
}

/// A target's body on its way to the client.
pub struct ProxiedBody {
    inner: Incoming,
    guard: Option<InFlightGuard>,
    conn: Option<http1::SendRequest<UpBody>>,
}

impl ProxiedBody {
    /// Wraps `inner`; `conn` is returned to the guard's target pool at the end of the body.
    pub fn new(inner: Incoming, guard: InFlightGuard, conn: Option<http1::SendRequest<UpBody>>) -> Self {
        let mut b = ProxiedBody { inner, guard: Some(guard), conn };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(guard) = self.guard.take() {
            if let Some(conn) = self.conn.take() {
                guard.target().pool.checkin(conn);
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Proxied(p) => {
                let r = Pin::new(&mut p.inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => p.finish(),
                    Poll::Ready(Some(Ok(_))) if p.inner.is_end_stream() => p.finish(),
                    Poll::Ready(Some(Err(_))) => {
                        p.conn = None;
                        p.guard = None;
                    }
                    _ => {}
                }
                r
            }
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len());
                this.count(n);
                if this.is_end_stream() {
                    this.flush_log(false);
                }
            }
            Poll::Ready(None) => this.flush_log(false),
            Poll::Ready(Some(Err(_))) => this.flush_log(true),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Proxied(p) => p.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Proxied(p) => p.inner.size_hint(),
        }
    }
}
