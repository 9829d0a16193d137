//! A connection's timer, writing with progress deadlines, closing, and the stream trait client
//! connections implement.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A client connection the engine serves: TCP or TLS over it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The local address the client connected to (for a `Host` when the request has none).
    fn local_addr(&self) -> Option<SocketAddr>;
}

impl ClientIo for TcpStream {
    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn local_addr(&self) -> Option<SocketAddr> {
        self.get_ref().0.local_addr().ok()
    }
}

/// A client connection's one timer. Every wait on the connection (the next request, the rest of
/// a head, a target's answer, a slow peer) has a deadline, and the timer is kept armed at or
/// before the nearest one: it is moved only when a deadline is earlier than where it is armed,
/// or when it fires for a deadline that has since moved on. With the default timeouts (idle
/// and response both 60 s) a keep-alive connection moves its timer about once a minute instead
/// of registering and cancelling timers on every request.
pub struct Timer<'a>(Pin<&'a mut Sleep>);

impl<'a> Timer<'a> {
    /// The timer over `sleep` (armed wherever it is).
    pub fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        Timer(sleep)
    }

    /// Whether `deadline` has passed; otherwise the task is woken when it does (or earlier).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        if self.0.deadline() > deadline {
            self.0.as_mut().reset(deadline);
        }
        loop {
            match self.0.as_mut().poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(()) if self.0.deadline() >= deadline => return true,
                // Fired for an earlier deadline: on to this one.
                Poll::Ready(()) => self.0.as_mut().reset(deadline),
            }
        }
    }
}

/// Runs `fut` until `deadline` (`None` if it passes first).
pub async fn within<F: Future>(timer: &mut Timer<'_>, deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if timer.poll_expired(cx, deadline) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Writes every slice, then flushes (TLS buffers what it encrypts). Fails with `TimedOut` when
/// the peer accepts nothing for `idle`; the clock is read only when a write has to wait.
pub async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
    timer: &mut Timer<'_>,
    idle: Duration,
) -> io::Result<()> {
    let mut deadline = None;
    poll_fn(|cx| poll_write_all(cx, w, &mut slices, &mut deadline, timer, idle)).await
}

/// One poll of [`write_all`]: writes as far as `w` takes, advancing `slices`; `deadline` is the
/// state kept between polls (when the peer last stopped taking bytes, plus `idle`).
pub fn poll_write_all<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    w: &mut W,
    slices: &mut &mut [IoSlice<'_>],
    deadline: &mut Option<Instant>,
    timer: &mut Timer<'_>,
    idle: Duration,
) -> Poll<io::Result<()>> {
    loop {
        let r = if slices.is_empty() {
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending => None,
            }
        } else {
            match Pin::new(&mut *w).poll_write_vectored(cx, slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => Some(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => None,
            }
        };
        match r {
            Some(n) => {
                IoSlice::advance_slices(slices, n);
                *deadline = None;
            }
            None => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + idle);
                if timer.poll_expired(cx, d) {
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                return Poll::Pending;
            }
        }
    }
}

/// Writes one buffer (see [`write_all`]).
pub async fn write_bytes<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bytes: &[u8],
    timer: &mut Timer<'_>,
    idle: Duration,
) -> io::Result<()> {
    write_all(w, &mut [IoSlice::new(bytes)], timer, idle).await
}

/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so that closing with unread bytes does not reset the connection before the client has read
/// the last response (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// Ends a client connection after a final response: shuts the write side down, then reads and
/// discards until the client closes (at most [`LINGER`] and [`LINGER_BYTES`]) when it may still
/// be sending.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(io: &mut S, linger: bool) {
    let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
    if !linger {
        return;
    }
    let mut sink = super::buf::Buf::take();
    let drain = async {
        let mut total = 0;
        loop {
            sink.consume(sink.len());
            sink.reset_if_empty();
            match sink.read_from(io).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    if total >= LINGER_BYTES {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
