//! Listeners: binding (SO_REUSEADDR, TCP_NODELAY), the accept loop with the connection limit,
//! and each connection's lifecycle, including the two client timeouts hyper does not give us as
//! we need them:
//!
//! - `header_read_timeout` (slowloris guard): from the first byte of a request head to its end.
//!   A client that is too slow gets `408 Request Timeout` and the connection is closed. (hyper's
//!   own timer also runs while a keep-alive connection is merely idle and closes without a 408.)
//! - `idle_timeout` (ALB's): a connection with no request in progress and no bytes moving for
//!   this long is closed.
//!
//! Both are one lazily re-armed timer per connection inside [`TimedIo`]: the hot path only
//! stamps `Instant::now()` on reads and writes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::forward::ClientInfo;
use super::framing::{FramingGuard, Violation};
use super::service::{handle, ConnCtx, ConnShared};
use super::workers::{current_index, Workers};
use crate::config::snapshot::ServerSettings;
use crate::state::SharedState;
use crate::telemetry::access_log::Record;

/// Binds a listening socket with `SO_REUSEADDR` (restarts do not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Accepts connections on `listener` until `stop` turns true, each served on the least busy worker.
pub async fn accept_loop(
    state: Arc<SharedState>,
    workers: Arc<Workers>,
    name: Arc<str>,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register listener with the runtime");
            return;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        // Above max_connections, stop accepting (the kernel backlog holds new clients).
        let permit = tokio::select! {
            p = state.connection_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state = state.clone();
                let name = name.clone();
                let stop = stop.clone();
                let (worker, handle, open) = workers.assign();
                if worker == current_index() {
                    tokio::spawn(async move {
                        serve_connection(state, name, port, stream, peer, stop).await;
                        drop((permit, open));
                    });
                    continue;
                }
                // Another worker's runtime: move the socket over to its reactor.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(listener = %name, error = %e, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                handle.spawn(async move {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        serve_connection(state, name, port, stream, peer, stop).await;
                    }
                    drop((permit, open));
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    state: Arc<SharedState>,
    name: Arc<str>,
    port: u16,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let snap = state.load();
    let Some(listener) = snap.listener(&name).cloned() else { return };
    let server = snap.server.clone();
    drop(snap);
    let stats = listener.stats.clone();
    stats.connections_total.fetch_add(1, Ordering::Relaxed);
    stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let ctx = |proto| {
        Arc::new(ConnCtx {
            state: state.clone(),
            listener: name.clone(),
            accepted_with: listener.clone(),
            client: ClientInfo::new(peer, proto, port),
            conn: Arc::new(ConnShared::default()),
        })
    };
    match &listener.tls {
        // Each branch's future is boxed with its own size, so a plaintext connection does not
        // carry the space of a TLS session (the task would otherwise hold the larger of the two).
        None => Box::pin(serve_http(ctx("http"), &server, stream, stop)).await,
        Some(tls) => {
            // The handshake is bounded like a request head: a client that stalls it is cut.
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            match tokio::time::timeout(server.header_read_timeout, Box::pin(acceptor.accept(stream))).await {
                Ok(Ok(tls_stream)) => Box::pin(serve_http(ctx("https"), &server, tls_stream, stop)).await,
                Ok(Err(e)) => {
                    stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                    // rustls errors describe the failure, never the client's bytes.
                    tracing::debug!(listener = %name, client = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(listener = %name, client = %peer, "TLS handshake timed out");
                }
            }
        }
    }
    stats.active_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Serves HTTP/1.1 or HTTP/2 on an accepted (and, for https, decrypted) client stream.
async fn serve_http<S>(ctx: Arc<ConnCtx>, server: &ServerSettings, stream: S, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (state, name, listener, peer) =
        (ctx.state.clone(), ctx.listener.clone(), ctx.accepted_with.clone(), ctx.client.addr);
    let io = TimedIo::new(stream, ctx.conn.clone(), server.idle_timeout, server.header_read_timeout);
    let outcome = io.outcome.clone();

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(server.max_headers)
        .max_buf_size(server.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(server.max_header_bytes as u32)
        .max_pending_accept_reset_streams(100)
        .max_local_error_reset_streams(100);
    let svc = service_fn(move |req| handle(ctx.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Shutdown, or a reload that removed or re-bound this listener: finish what is in flight,
    // then close (idle HTTP/1.1 connections at once, busy ones after their response with
    // `Connection: close`; HTTP/2 with GOAWAY).
    let mut drain = state.drain_signal();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { tokio::select! { _ = drain.wait_for(|d| *d) => {}, _ = stop.wait_for(|s| *s) => {} } } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };

    let outcome = outcome.load(Ordering::Relaxed);
    let refused = Violation::from_u8(outcome);
    let code = if outcome == TIMED_OUT {
        Some(408)
    } else if refused.is_some() {
        Some(400)
    } else if let Err(e) = &result {
        match e.downcast_ref::<hyper::Error>() {
            Some(he) if he.is_parse_too_large() => Some(431),
            Some(he) if he.is_parse() => Some(400),
            _ => None,
        }
    } else {
        None
    };
    if let Some(code) = code {
        // hyper (or TimedIo) already answered; count and log it like every balancer answer.
        listener.own_codes.inc(code);
        let reason = match (code, refused) {
            (408, _) => "header_read_timeout",
            (431, _) => "header_too_large",
            (_, Some(v)) => v.as_str(),
            _ => "malformed_request",
        };
        if let Some(v) = refused {
            tracing::debug!(listener = %name, client = %peer, reason = v.as_str(), "request refused: framing");
        }
        if let Some(log) = state.access_log.as_ref() {
            log.log(Record {
                time: SystemTime::now(),
                client: peer,
                listener: name.clone(),
                rule: None,
                target_group: None,
                target: None,
                method: String::new(),
                host: String::new(),
                path: String::new(),
                status: code,
                request_processing_time: 0.0,
                target_processing_time: None,
                response_processing_time: 0.0,
                bytes_in: 0,
                bytes_out: 0,
                user_agent: None,
                request_id: None,
                error: Some(reason),
            });
        }
    }
}

/// A client stream (TCP or TLS) with the idle and header-read timeouts (see the module docs).
pub struct TimedIo<S> {
    inner: S,
    shared: Arc<ConnShared>,
    idle: Duration,
    header: Duration,
    last_activity: Instant,
    /// When the first byte of the current, not yet complete, request head arrived.
    head_since: Option<Instant>,
    /// `shared.started` when `head_since` was set.
    head_seq: u64,
    /// HTTP/2 connections are framed: only the idle timeout applies. `None` until the first bytes
    /// show whether the client sent the HTTP/2 preface.
    h2: Option<bool>,
    /// How many bytes of [`PREFACE_START`] the client has sent so far while `h2` is undecided
    /// (a client may send the preface in pieces).
    sniffed: u8,
    timer: Pin<Box<Sleep>>,
    /// Strict HTTP/1.1 framing on the raw bytes (see [`super::framing`]).
    guard: FramingGuard,
    /// After the guard cut the stream: the poisoned bytes still to hand hyper; the client's
    /// socket is not read again.
    cut: Option<&'static [u8]>,
    /// How the connection ended, when TimedIo or the guard decided: [`TIMED_OUT`] or a
    /// [`Violation`] code; 0 otherwise.
    outcome: Arc<AtomicU8>,
}

const TIMED_OUT: u8 = u8::MAX;

/// The start of the HTTP/2 connection preface (`PRI * HTTP/2.0...`); no HTTP/1.1 method is `PRI`.
const PREFACE_START: &[u8; 4] = b"PRI ";

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 20\r\nconnection: close\r\n\r\n408 Request Timeout\n";

impl<S: AsyncWrite + Unpin> TimedIo<S> {
    fn new(inner: S, shared: Arc<ConnShared>, idle: Duration, header: Duration) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            shared,
            idle,
            header,
            last_activity: now,
            head_since: None,
            head_seq: 0,
            h2: None,
            sniffed: 0,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            guard: FramingGuard::default(),
            cut: None,
            outcome: Arc::default(),
        }
    }

    /// Notes a read: activity, the protocol (from the first bytes) and the head timer. Returns
    /// the bytes read before this call that the framing guard has not seen yet (a prefix of
    /// [`PREFACE_START`] sent in pieces that turned out not to be HTTP/2).
    fn on_read(&mut self, bytes: &[u8]) -> &'static [u8] {
        let now = Instant::now();
        self.last_activity = now;
        let mut unseen: &'static [u8] = &[];
        if self.h2.is_none() {
            let seen = usize::from(self.sniffed);
            let n = bytes.len().min(PREFACE_START.len() - seen);
            if bytes[..n] != PREFACE_START[seen..seen + n] {
                self.h2 = Some(false);
                unseen = &PREFACE_START[..seen];
            } else if seen + n == PREFACE_START.len() {
                self.h2 = Some(true);
                self.head_since = None;
            } else {
                self.sniffed += n as u8;
            }
        }
        // Until the preface is complete the client may be slowly sending an HTTP/1.1 head.
        if self.h2 != Some(true) {
            let started = self.shared.started.load(Ordering::Relaxed);
            if self.shared.active.load(Ordering::Relaxed) > 0 {
                self.head_since = None;
            } else if self.head_since.is_none() || started != self.head_seq {
                self.head_since = Some(now);
                self.head_seq = started;
            }
        }
        unseen
    }

    /// Called when a read would block: fires or arms the timer.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.shared.active.load(Ordering::Relaxed) > 0 {
                return Poll::Pending;
            }
            let head_deadline = self
                .head_since
                .filter(|_| self.shared.started.load(Ordering::Relaxed) == self.head_seq)
                .map(|t| t + self.header);
            let idle_deadline = self.last_activity + self.idle;
            let deadline = head_deadline.map_or(idle_deadline, |h| h.min(idle_deadline));
            if Instant::now() >= deadline {
                if head_deadline == Some(deadline) {
                    // Best effort and non-blocking: the send buffer is empty, the client is just slow.
                    let _ = Pin::new(&mut self.inner).poll_write(cx, TIMEOUT_408);
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                    self.outcome.store(TIMED_OUT, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head read timeout")));
                }
                // Idle: report EOF so the connection closes cleanly.
                return Poll::Ready(Ok(()));
            }
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(pending) = self.cut {
            if pending.is_empty() {
                // hyper answers the poisoned head and closes; until then only the timers run.
                return self.poll_timers(cx);
            }
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            self.cut = Some(&pending[n..]);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let this = &mut *self;
                    let filled = &buf.filled()[before..];
                    let unseen = this.on_read(filled);
                    if this.h2 == Some(false) && !this.guard.is_off() {
                        // Part of a method token: nothing the guard can refuse yet.
                        let early = this.guard.scan(unseen);
                        debug_assert!(early.is_none());
                        if let Some(cut) = this.guard.scan(filled) {
                            if let Some(v) = this.guard.violation() {
                                this.outcome.store(v as u8, Ordering::Relaxed);
                            }
                            // Drop the refused message's bytes; hand hyper the poison instead
                            // (at least one byte fits: the one it replaces).
                            buf.set_filled(before + cut.at);
                            let n = cut.inject.len().min(buf.remaining());
                            buf.put_slice(&cut.inject[..n]);
                            this.cut = Some(&cut.inject[n..]);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_timers(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.last_activity = Instant::now();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.last_activity = Instant::now();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, D, E, G, F>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn handler_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Memory per idle connection: the connection task holds its future inline, and hyper keeps
    /// one handler future allocated per connection. Both were 8 KiB and 4 KiB before the TLS
    /// branch, the TLS handshake and the forwarding state were boxed; keep them small.
    #[test]
    fn per_connection_futures_stay_small() {
        let conn = future_size(super::serve_connection);
        let handler = handler_size(crate::proxy::service::handle);
        assert!(conn <= 2048, "serve_connection future is {conn} bytes");
        assert!(handler <= 1536, "handle future is {handler} bytes");
    }
}
