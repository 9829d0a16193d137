//! Writing with progress deadlines, and the stream trait client connections implement.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Writes every slice, then flushes (TLS buffers what it encrypts). Fails with `TimedOut` when
/// the peer accepts nothing for `idle`.
pub async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
    idle: Duration,
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *w).poll_write_vectored(cx, slices));
        // The write usually completes at once: only a blocked one pays for a timer.
        let n = match tokio::time::timeout(idle, n).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    match tokio::time::timeout(idle, w.flush()).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes one buffer (see [`write_all`]).
pub async fn write_bytes<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8], idle: Duration) -> io::Result<()> {
    write_all(w, &mut [IoSlice::new(bytes)], idle).await
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
