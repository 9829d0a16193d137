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

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::RespBody;
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
    // Every step is boxed with its own size: the connection's task holds only the largest of
    // what it awaits inline, and it lives as long as the connection. The first two (waiting for
    // the first bytes, the TLS handshake) are freed once done.
    match &listener.tls {
        None => {
            if let Some(version) = Box::pin(first_bytes(&stream, &state, stop.clone(), server.idle_timeout)).await {
                Box::pin(serve_http(ctx("http"), &server, stream, version, stop)).await;
            }
        }
        Some(tls) => {
            // The handshake is bounded like a request head: a client that stalls it is cut. Its
            // result (the TLS session, kilobytes) is moved into the boxed connection future in a
            // block of its own, so this future does not reserve room for it.
            let serve = {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let handshake =
                    Box::pin(tokio::time::timeout(server.header_read_timeout, acceptor.accept(stream))).await;
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        // HTTP/2 over TLS is negotiated with ALPN (RFC 9113 section 3.2); without
                        // it, HTTP/1.1 (as nginx and HAProxy do).
                        let version = match tls_stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Version::Http2,
                            _ => Version::Http1,
                        };
                        Some(Box::pin(serve_http(ctx("https"), &server, tls_stream, version, stop)))
                    }
                    Ok(Err(e)) => {
                        stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                        // rustls errors describe the failure, never the client's bytes.
                        tracing::debug!(listener = %name, client = %peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = %name, client = %peer, "TLS handshake timed out");
                        None
                    }
                }
            };
            if let Some(serve) = serve {
                serve.await;
            }
        }
    }
    stats.active_connections.fetch_sub(1, Ordering::Relaxed);
}

/// The HTTP version a client connection speaks, when known before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    /// HTTP/2: the connection preface (h2c prior knowledge) or ALPN `h2`.
    Http2,
    /// Not known yet (a plaintext client's first segment was a strict prefix of the preface):
    /// hyper-util's auto builder reads the first bytes and decides.
    Unknown,
}

/// Tells HTTP/1.1 from HTTP/2 prior knowledge by the first bytes, without consuming them
/// (`None` at EOF). hyper-util's auto builder would read them itself and hand them back in front
/// of the stream: hyper's first read would then be a partial head and its read buffer would
/// double to 16 KiB on every connection.
async fn sniff(stream: &TcpStream) -> io::Result<Option<Version>> {
    let mut first = [0u8; PREFACE_START.len()];
    let n = stream.peek(&mut first).await?;
    Ok((n > 0).then(|| version_from(&first[..n])))
}

/// Waits for a plaintext client's first bytes and tells its HTTP version; `None` if it closes,
/// stays silent for `idle`, or the listener drains first (an idle connection goes at once).
async fn first_bytes(
    stream: &TcpStream,
    state: &SharedState,
    stop: watch::Receiver<bool>,
    idle: Duration,
) -> Option<Version> {
    tokio::select! {
        r = tokio::time::timeout(idle, sniff(stream)) => r.ok().and_then(Result::ok).flatten(),
        () = closing(state.drain_signal(), stop) => None,
    }
}

/// Completes when the process drains or this listener is stopped (removed or re-bound by a
/// reload).
async fn closing(mut drain: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = drain.wait_for(|d| *d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

fn version_from(first: &[u8]) -> Version {
    if first.len() >= PREFACE_START.len() && first.starts_with(PREFACE_START) {
        Version::Http2
    } else if PREFACE_START.starts_with(first) {
        Version::Unknown
    } else {
        Version::Http1
    }
}

// One set of hyper settings for the builders used directly and inside the auto builder (the
// method names are the same, the types are not).
macro_rules! http1_settings {
    ($builder:expr, $server:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .max_headers($server.max_headers)
            .max_buf_size($server.max_header_bytes)
    };
}

macro_rules! http2_settings {
    ($builder:expr, $server:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size($server.max_header_bytes as u32)
            .max_pending_accept_reset_streams(100)
            .max_local_error_reset_streams(100)
    };
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a connection to its end. Shutdown, or a reload that removed or re-bound this listener:
/// finish what is in flight, then close (idle HTTP/1.1 connections at once, busy ones after their
/// response with `Connection: close`; HTTP/2 with GOAWAY).
async fn drive<C>(conn: C, drain: watch::Receiver<bool>, stop: watch::Receiver<bool>) -> Result<(), ConnError>
where
    C: GracefulConnection,
    C::Error: Into<ConnError>,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = closing(drain, stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(Into::into)
}

/// hyper's service for one client connection. The request future is boxed: hyper keeps one
/// future of the service's type allocated per connection for the connection's whole life, so an
/// unboxed one (over a kilobyte) would be held by every idle keep-alive connection; boxed, it
/// costs an allocation per request instead (see `per_connection_futures_stay_small`).
#[derive(Clone)]
struct Handler(Arc<ConnCtx>);

type HandlerFuture = Pin<Box<dyn Future<Output = Result<hyper::Response<RespBody>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Handler {
    type Response = hyper::Response<RespBody>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> HandlerFuture {
        Box::pin(handle(self.0.clone(), req))
    }
}

/// The connection for `version`, boxed with its own size. The builders are dropped before it
/// runs, so it does not keep one (auto's holds both).
fn connection<S>(
    version: Version,
    server: &ServerSettings,
    io: TokioIo<TimedIo<S>>,
    handler: Handler,
    drain: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = Result<(), ConnError>> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match version {
        Version::Http1 => {
            let mut builder = http1::Builder::new();
            http1_settings!(builder, server);
            Box::pin(drive(builder.serve_connection(io, handler), drain, stop))
        }
        Version::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            http2_settings!(builder, server);
            Box::pin(drive(builder.serve_connection(io, handler), drain, stop))
        }
        Version::Unknown => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            http1_settings!(builder.http1(), server);
            http2_settings!(builder.http2(), server);
            Box::pin(drive(builder.serve_connection(io, handler).into_owned(), drain, stop))
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an accepted (and, for https, decrypted) client stream.
async fn serve_http<S>(
    ctx: Arc<ConnCtx>,
    server: &ServerSettings,
    stream: S,
    version: Version,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (state, name, listener, peer) =
        (ctx.state.clone(), ctx.listener.clone(), ctx.accepted_with.clone(), ctx.client.addr);
    let outcome: Arc<AtomicU8> = Arc::default();
    // Made in one statement and moved straight into the boxed connection: a named local would
    // keep its room (the stream, for TLS kilobytes) in this future for the connection's life.
    let conn = connection(
        version,
        server,
        TokioIo::new(TimedIo::new(stream, ctx.conn.clone(), server, version, outcome.clone())),
        Handler(ctx),
        state.drain_signal(),
        stop,
    );
    let result = conn.await;

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
    /// HTTP/2 connections are framed: only the idle timeout applies. `Unknown` until the first
    /// bytes show whether the client sent the HTTP/2 preface.
    version: Version,
    /// How many bytes of [`PREFACE_START`] the client has sent so far while the version is
    /// unknown (a client may send the preface in pieces).
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
    /// `version`: the protocol if already known (`Unknown`: found from the first bytes).
    /// `outcome` receives how the connection ended, when TimedIo or the guard decided.
    fn new(
        inner: S,
        shared: Arc<ConnShared>,
        server: &ServerSettings,
        version: Version,
        outcome: Arc<AtomicU8>,
    ) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            shared,
            idle: server.idle_timeout,
            header: server.header_read_timeout,
            last_activity: now,
            head_since: None,
            head_seq: 0,
            version,
            sniffed: 0,
            timer: Box::pin(tokio::time::sleep_until(now + server.idle_timeout)),
            guard: FramingGuard::default(),
            cut: None,
            outcome,
        }
    }

    /// Notes a read: activity, the protocol (from the first bytes) and the head timer. Returns
    /// the bytes read before this call that the framing guard has not seen yet (a prefix of
    /// [`PREFACE_START`] sent in pieces that turned out not to be HTTP/2).
    fn on_read(&mut self, bytes: &[u8]) -> &'static [u8] {
        let now = Instant::now();
        self.last_activity = now;
        let mut unseen: &'static [u8] = &[];
        if self.version == Version::Unknown {
            // What the client sent so far is a prefix of the preface: judge it with these bytes.
            let seen = usize::from(self.sniffed);
            let n = bytes.len().min(PREFACE_START.len() - seen);
            let mut first = *PREFACE_START;
            first[seen..seen + n].copy_from_slice(&bytes[..n]);
            self.version = version_from(&first[..seen + n]);
            match self.version {
                Version::Http1 => unseen = &PREFACE_START[..seen],
                Version::Http2 => self.head_since = None,
                Version::Unknown => self.sniffed += n as u8,
            }
        }
        // Until the preface is complete the client may be slowly sending an HTTP/1.1 head.
        if self.version != Version::Http2 {
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
                    if this.version == Version::Http1 && !this.guard.is_off() {
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

    fn serve_http_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn forward_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_version_is_told_from_the_first_bytes() {
        use super::{version_from, Version};
        for (first, want) in [
            (&b"PRI "[..], Version::Http2),
            (b"GET ", Version::Http1),
            (b"POST", Version::Http1),
            (b"PRX", Version::Http1),
            (b"x", Version::Http1),
            (b"P", Version::Unknown),
            (b"PR", Version::Unknown),
            (b"PRI", Version::Unknown),
        ] {
            assert_eq!(version_from(first), want, "{:?}", String::from_utf8_lossy(first));
        }
    }

    /// Memory per idle connection: the connection task holds `serve_connection`'s future inline
    /// and `serve_http`'s boxed for the connection's life. They were 8 KiB (a TLS session's room
    /// in every connection), then 2.9 KiB and 0.7 KiB (moved-from locals keep their room in an
    /// async fn's state); keep them small. The request and forwarding futures are boxed per
    /// request; bound them too (forwarding held a TLS connect's state inline: 2.8 KiB).
    /// `tests/memory.rs` measures the whole heap per idle connection.
    #[test]
    fn per_connection_futures_stay_small() {
        let conn = future_size(super::serve_connection);
        let http = serve_http_size(super::serve_http::<tokio::net::TcpStream>);
        let handler = handler_size(crate::proxy::service::handle);
        assert!(conn <= 512, "serve_connection future is {conn} bytes");
        assert!(http <= 256, "serve_http future is {http} bytes");
        // Under 1 KiB: mimalloc's fast path for small objects ends there.
        assert!(handler <= 960, "handle future is {handler} bytes");
        let forward = forward_size(crate::proxy::forward::forward);
        assert!(forward <= 1536, "forward future is {forward} bytes");
    }
}
