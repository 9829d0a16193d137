//! The response body type of every response the balancer sends: a fixed buffer, or a target's
//! body streamed through. The streamed variant owns the request's in-flight guard and, for
//! HTTP/1.1, the upstream connection, which goes back to the pool only when the body was read to
//! its end (a half-read connection cannot be reused).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::upstream::UpBody;
use crate::balance::InFlightGuard;

/// A response body: fixed bytes or a relayed target body.
pub enum RespBody {
    Full(Option<Bytes>),
    Proxied(ProxiedBody),
}

impl RespBody {
    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RespBody::Full((!b.is_empty()).then_some(b))
    }

    /// An empty body.
    pub fn empty() -> Self {
        RespBody::Full(None)
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
        match &mut *self {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied(p) => {
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Proxied(p) => p.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Proxied(p) => p.inner.size_hint(),
        }
    }
}
