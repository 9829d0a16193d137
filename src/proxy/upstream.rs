//! Connections to targets: a per-target pool of idle HTTP/1.1 connections and one shared
//! multiplexed HTTP/2 (h2c) connection, with connect timeouts. The pool is sharded per worker
//! ([`super::workers`]): a target connection is driven by the runtime that opened it, so a request
//! only ever uses connections of its own worker (no cross-thread wake-ups).
//!
//! Idle HTTP/1.1 connections are reused last-in, first-out (as nginx's upstream keepalive cache
//! does): the connection used most recently is the one least likely to be closing on the target's
//! keep-alive timeout, and after a burst the connections it no longer needs age out at the other
//! end instead of being kept warm in rotation. Each shard holds only as many entries as it has idle
//! connections (a `Mutex<VecDeque>` touched by one worker, so never contended), not a fixed-size
//! queue per target and worker.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use rustls::pki_types::ServerName;

use super::error::ProxyError;
use super::workers::current_index;
use crate::balance::GroupSettings;
use crate::config::file::UpstreamProtocol;
use crate::tls::client::UpstreamTls;

/// The body type sent to targets: the client's body (within the listener's body limit), or
/// nothing (a replayed request).
pub type UpBody = Either<Limited<Incoming>, Empty<Bytes>>;

/// Idle HTTP/1.1 connections kept per target and worker; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 512;
/// Idle connections older than this are not reused: many servers close idle keep-alive
/// connections after 60 s or less, and reusing one as it closes costs a retry.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

struct IdleConn {
    tx: http1::SendRequest<UpBody>,
    since: Instant,
}

/// A connection ready to take one request.
pub enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// Connections to one target, one shard per worker (made on first use).
pub struct Pool {
    shards: Box<[OnceLock<Box<Shard>>]>,
}

/// One worker's connections to one target.
struct Shard {
    /// Oldest first: returned connections go to the back and are taken from the back.
    idle: Mutex<VecDeque<IdleConn>>,
    h2: ArcSwapOption<http2::SendRequest<UpBody>>,
}

impl Shard {
    fn idle(&self) -> MutexGuard<'_, VecDeque<IdleConn>> {
        // Nothing panics while holding it; if something did, the queue is still consistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pool shards: one per CPU. Pools exist before the workers start (the first configuration is
/// compiled first), so this does not follow `worker_threads`; more workers than CPUs share shards.
static SHARDS: LazyLock<usize> = LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.idle_len()).finish()
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Pool { shards: (0..*SHARDS).map(|_| OnceLock::new()).collect() }
    }

    /// Idle HTTP/1.1 connections currently pooled (all workers).
    pub fn idle_len(&self) -> usize {
        self.shards.iter().filter_map(OnceLock::get).map(|s| s.idle().len()).sum()
    }

    /// The calling worker's shard.
    fn shard(&self) -> &Shard {
        self.shards[current_index() % self.shards.len()]
            .get_or_init(|| Box::new(Shard { idle: Mutex::new(VecDeque::new()), h2: ArcSwapOption::empty() }))
    }

    /// A connection to `addr` ready for a request: a pooled one when possible, else a new one.
    pub async fn checkout(&self, addr: SocketAddr, settings: &GroupSettings) -> Result<Sender, ProxyError> {
        let shard = self.shard();
        match settings.protocol {
            UpstreamProtocol::Http1 => {
                loop {
                    let Some(mut c) = shard.idle().pop_back() else { break };
                    if c.since.elapsed() > MAX_IDLE_AGE {
                        // The newest is too old, so are all the others.
                        shard.idle().clear();
                        break;
                    }
                    // Ready at once unless the connection closed meanwhile (then Err).
                    if c.tx.ready().await.is_ok() {
                        return Ok(Sender::H1(c.tx));
                    }
                }
                // Boxed: opening a connection (TCP, TLS) is rare on a warm pool, and its state
                // would otherwise sit in every request's forwarding future (kilobytes for TLS).
                Ok(Sender::H1(Box::pin(connect_h1(addr, settings)).await?))
            }
            UpstreamProtocol::Http2 => {
                if let Some(tx) = shard.h2.load().as_deref() {
                    if !tx.is_closed() {
                        let mut tx = tx.clone();
                        if tx.ready().await.is_ok() {
                            return Ok(Sender::H2(tx));
                        }
                    }
                }
                let tx = Box::pin(connect_h2(addr, settings)).await?;
                shard.h2.store(Some(Arc::new(tx.clone())));
                Ok(Sender::H2(tx))
            }
        }
    }

    /// Returns an HTTP/1.1 connection whose response has been read in full.
    pub fn checkin(&self, tx: http1::SendRequest<UpBody>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.shard().idle();
        // Drop from the old end what has aged out or was closed by the target meanwhile.
        let stale = idle.iter().take_while(|c| c.tx.is_closed() || now.duration_since(c.since) > MAX_IDLE_AGE).count();
        if stale > 0 {
            idle.drain(..stale);
            let (len, cap) = (idle.len(), idle.capacity());
            if cap > 16 && len < cap / 4 {
                idle.shrink_to(len * 2);
            }
        }
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push_back(IdleConn { tx, since: now });
        }
    }
}

/// A byte stream to a target: plain TCP or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a connection to `addr`: TCP within `timeout`, then TLS when `tls` is set (the whole
/// handshake within the same budget). Used for traffic and for health checks.
pub async fn open(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<TokioIo<Box<dyn Io>>, ProxyError> {
    let work = async {
        let stream = TcpStream::connect(addr).await.map_err(|source| ProxyError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else { return Ok(Box::new(stream) as Box<dyn Io>) };
        let name = tls.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let s = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, stream)
            .await
            .map_err(|source| ProxyError::Tls { addr, source })?;
        Ok(Box::new(s) as Box<dyn Io>)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(ProxyError::ConnectTimeout(addr)),
        Ok(r) => r.map(TokioIo::new),
    }
}

async fn connect_h1(addr: SocketAddr, settings: &GroupSettings) -> Result<http1::SendRequest<UpBody>, ProxyError> {
    let io = open(addr, settings.tls.as_deref(), settings.connect_timeout).await?;
    let (tx, conn) =
        http1::Builder::new().handshake(io).await.map_err(|source| ProxyError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "pilotfish::upstream", %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}

async fn connect_h2(addr: SocketAddr, settings: &GroupSettings) -> Result<http2::SendRequest<UpBody>, ProxyError> {
    let io = open(addr, settings.tls.as_deref(), settings.connect_timeout).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(settings.connect_timeout.max(Duration::from_secs(5)))
        .handshake(io)
        .await
        .map_err(|source| ProxyError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "pilotfish::upstream", %addr, error = %e, "upstream h2 connection ended");
        }
    });
    Ok(tx)
}
