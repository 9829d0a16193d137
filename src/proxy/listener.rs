//! Listeners: binding (one `SO_REUSEPORT` socket per worker, so the kernel spreads new
//! connections over the workers and each is accepted where it is served), the accept loop with
//! the connection limit, and each connection's start: TLS (bounded by `header_read_timeout`), then the HTTP version —
//! ALPN for TLS, for plaintext the first bytes (the HTTP/2 preface is `PRI `, which no
//! HTTP/1.1 method is) — and the server for it: pilotfish's HTTP/1.1 engine
//! ([`super::h1::server`]) or hyper's HTTP/2 server ([`super::h2`]). Timeouts (idle,
//! header read) are the engine's; HTTP/2 connections get the idle timeout through hyper's
//! keep-alive settings and close gracefully (GOAWAY) on drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::forward::ClientInfo;
use super::h1::buf::Buf;
use super::h2::Handler;
use super::service::ConnCtx;
use super::workers::Workers;
use crate::state::SharedState;
use crate::telemetry::metrics::ListenerStats;

/// Binds `count` listening sockets on `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`: restarts
/// do not wait for TIME_WAIT), one per worker: the kernel hashes each new connection to one of
/// them. Another process of the same user that also sets `SO_REUSEPORT` could still join the
/// group once it listens (as with nginx's `reuseport`); one that does not cannot.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    // First a socket without SO_REUSEPORT: it cannot bind where anything listens (another
    // pilotfish, a second start, another listener of this one), so the group below never joins
    // sockets that are not its own (a bind conflict stays the EADDRINUSE it always was). It
    // also picks the port for port 0.
    let addr = bound(addr, false)?.local_addr()?.as_socket().unwrap_or(addr);
    (0..count.max(1))
        .map(|_| {
            let socket = bound(addr, true)?;
            socket.set_nonblocking(true)?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

/// A TCP socket bound to `addr` with `SO_REUSEADDR` (IPv6 only for an IPv6 address), and
/// `SO_REUSEPORT` when `shared`.
fn bound(addr: SocketAddr, shared: bool) -> io::Result<socket2::Socket> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Accepts connections on `listener`, this worker's socket of listener `name`, until `stop`
/// turns true, and serves each here. Above `max_connections` a loop holds the one connection
/// it accepted until a permit frees (it is not read, so to the client it is like waiting in
/// the backlog); accepting first means an idle worker's loop never sits on a permit that a
/// busy worker's clients are waiting for.
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
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = loop {
            let p = tokio::select! {
                p = state.connection_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.changed() => return,
            };
            if !state.owes_permit() {
                break p;
            }
            // max_connections was lowered: this permit is withdrawn, not used.
            p.forget();
        };
        let Some((ctx, tls)) = context(&state, &name, port, peer, &stream, &stop) else { continue };
        let held = Held { stats: ctx.accepted_with.stats.clone(), _permit: permit, _open: workers.open_here() };
        tokio::spawn(serve_connection(ctx, stream, tls, held));
    }
}

/// Client connections accepted by the process, for [`ClientInfo::conn_id`].
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a connection holds while it lives: its place under `max_connections`, its count on
/// its worker and on its listener.
struct Held {
    stats: Arc<ListenerStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: super::workers::OpenGuard,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The context of a connection accepted on listener `name`, and its TLS configuration
/// (`None` if a reload removed the listener meanwhile). Made before the connection's task is
/// spawned: a task keeps room for every value it moves, so it gets only what it needs.
fn context(
    state: &Arc<SharedState>,
    name: &Arc<str>,
    port: u16,
    peer: SocketAddr,
    stream: &TcpStream,
    stop: &watch::Receiver<bool>,
) -> Option<(Arc<ConnCtx>, Option<Arc<rustls::ServerConfig>>)> {
    let snap = state.load();
    let listener = snap.listener(name)?.clone();
    listener.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    listener.stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let tls = listener.tls.clone();
    let proto = if tls.is_some() { "https" } else { "http" };
    let mut client = ClientInfo::new(peer, proto, port);
    // Numbered whether or not a group announces clients now: a reload may make one do so
    // while this connection lives.
    client.conn_id = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    if snap.announces_clients {
        // What a PROXY header to a target names as the destination (a header from the
        // client's side replaces it).
        client.dst = stream.local_addr().ok();
    }
    let ctx = ConnCtx {
        state: state.clone(),
        listener: name.clone(),
        accepted_with: listener,
        server: (&snap.server).into(),
        client,
        stop: stop.clone(),
        local: None,
    };
    Some((Arc::new(ctx), tls))
}

async fn serve_connection(
    mut ctx: Arc<ConnCtx>,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    held: Held,
) {
    let _ = stream.set_nodelay(true);
    if let Some(trusted) = ctx.accepted_with.proxy_trusted.clone() {
        if !Box::pin(proxy_header(&stream, &trusted, &mut ctx)).await {
            return;
        }
    }
    let closing = closing(ctx.stop.clone());
    tokio::pin!(closing);
    // Each step is boxed with its own size: the connection's task holds only the largest of what
    // it awaits inline, and it lives as long as the connection.
    match tls {
        None => {
            if let Some((io, buf)) = Box::pin(super::h1::server::serve(stream, &ctx, true, closing.as_mut())).await {
                let local = io.local_addr().ok();
                Box::pin(serve_h2(Prefixed { first: Some(buf), inner: io }, ctx, local, closing.as_mut())).await;
            }
        }
        Some(tls) => Box::pin(serve_tls(stream, tls, ctx, closing.as_mut())).await,
    }
    drop(held);
}

/// The PROXY header of a connection on a listener with `proxy_protocol`: read from a trusted
/// peer (its source becomes the client's address everywhere: forwarding headers, rules, logs),
/// refused from any other. False: the connection is to be closed (counted and logged).
async fn proxy_header(stream: &TcpStream, trusted: &[ipnet::IpNet], ctx: &mut Arc<ConnCtx>) -> bool {
    use super::proxy_protocol::{read_header, refuse_untrusted, Addresses};
    let peer = ctx.client.addr.ip().to_canonical();
    let timeout = ctx.server.header_read_timeout;
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return match refuse_untrusted(stream, timeout).await {
            Ok(()) => true,
            Err(r) => refused(ctx, r),
        };
    }
    match read_header(stream, timeout).await {
        Ok(Addresses::Tcp { src, dst }) => {
            let c = &mut Arc::make_mut(ctx).client;
            // The listener port clients see is the balancer's in front (X-Forwarded-Port,
            // redirects), not this socket's.
            let mut client = ClientInfo::new(src, c.proto, dst.port());
            client.dst = Some(dst);
            client.conn_id = c.conn_id;
            *c = client;
            true
        }
        Ok(Addresses::Local) => {
            // An NLB's TCP health check: a LOCAL header, then the connection closes. Not a
            // failed handshake or request: it ends here, uncounted.
            let mut b = [0u8; 1];
            !matches!(tokio::time::timeout(timeout, stream.peek(&mut b)).await, Ok(Ok(0) | Err(_)))
        }
        Err(r) => refused(ctx, r),
    }
}

/// Counts and logs a connection closed over its PROXY header; false.
fn refused(ctx: &ConnCtx, r: super::proxy_protocol::Refused) -> bool {
    ctx.accepted_with.stats.proxy_protocol_error(r);
    tracing::debug!(listener = %ctx.listener, peer = %ctx.client.addr, reason = r.as_str(), "PROXY protocol header refused; connection closed");
    false
}

/// A TLS connection: the handshake (bounded like a request head: a client that stalls it is
/// cut), then HTTP/2 or HTTP/1.1 by ALPN (RFC 9113 section 3.2; without ALPN, HTTP/1.1, as
/// nginx and HAProxy do). Its own boxed future: the TLS session is kilobytes, and a plaintext
/// connection's task should not reserve room for it.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    mut ctx: Arc<ConnCtx>,
    closing: Pin<&mut (impl Future<Output = ()> + Send)>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = Box::pin(tokio::time::timeout(ctx.server.header_read_timeout, acceptor.accept(stream))).await;
    let stats = &ctx.accepted_with.stats;
    match handshake {
        Ok(Ok(tls_stream)) => {
            if let (Some(mode), Some(chain)) = (ctx.accepted_with.mtls, tls_stream.get_ref().1.peer_certificates()) {
                let cert = crate::tls::mtls::ClientCert::from_chain(mode, chain).map(Arc::new);
                Arc::make_mut(&mut ctx).client.cert = cert;
            }
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                let local = tls_stream.get_ref().0.local_addr().ok();
                serve_h2(tls_stream, ctx, local, closing).await;
            } else {
                super::h1::server::serve(tls_stream, &ctx, false, closing).await;
            }
        }
        Ok(Err(e)) => {
            stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            let failure = ctx.accepted_with.mtls.and_then(|_| crate::tls::mtls::Failure::of(&e));
            if let Some(f) = failure {
                stats.mtls_failure(f);
            }
            // rustls errors describe the failure, never the client's bytes.
            tracing::debug!(listener = %ctx.listener, client = %ctx.client.addr, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %ctx.listener, client = %ctx.client.addr, "TLS handshake timed out");
        }
    }
}

/// Completes when this listener is stopped: removed or re-bound by a reload, or every listener
/// at shutdown (which stops them all as it starts draining).
async fn closing(mut stop: watch::Receiver<bool>) {
    // The value only ever turns true, so any change is the one waited for.
    if !*stop.borrow_and_update() {
        let _ = stop.changed().await;
    }
}

/// Serves HTTP/2 with hyper until the connection ends; on drain or listener stop, GOAWAY and
/// finish what is in flight.
async fn serve_h2<S>(
    io: S,
    mut ctx: Arc<ConnCtx>,
    local: Option<SocketAddr>,
    closing: Pin<&mut (impl Future<Output = ()> + Send)>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(c) = Arc::get_mut(&mut ctx) {
        c.local = local;
    }
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(ctx.server.max_header_bytes as u32)
        .max_pending_accept_reset_streams(100)
        .max_local_error_reset_streams(100)
        .keep_alive_interval(Some(ctx.server.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(io), Handler(ctx));
    tokio::pin!(conn);
    let mut closing = closing;
    tokio::select! {
        _ = conn.as_mut() => return,
        () = closing.as_mut() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A stream whose first bytes were already read (the HTTP/2 preface, found by the HTTP/1.1
/// engine): they are handed out first.
struct Prefixed<S> {
    first: Option<Buf>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(first) = &mut self.first {
            let n = first.len().min(buf.remaining());
            buf.put_slice(&first.filled()[..n]);
            first.consume(n);
            if first.is_empty() {
                self.first = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn session_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Memory per idle connection: the connection's task holds `serve_connection`'s future
    /// inline and the HTTP/1.1 session's boxed for the connection's life; each request's work
    /// is boxed apart and freed when it ends. Keep the two small (`tests/memory.rs` measures the
    /// whole heap per idle connection).
    #[test]
    fn per_connection_futures_stay_small() {
        let conn = future_size(super::serve_connection);
        eprintln!("conn {conn}");
        assert!(conn <= 100000, "serve_connection future is {conn} bytes");
        let session = session_size(crate::proxy::h1::server::serve::<tokio::net::TcpStream, std::future::Pending<()>>);
        eprintln!("session {session}");
        assert!(session <= 100000, "HTTP/1.1 session future is {session} bytes");
    }
}
