//! Connections to targets, owned by the worker that uses them: a pool of idle HTTP/1.1
//! connections and one multiplexed HTTP/2 connection per target, keyed by the target's stable id
//! ([`crate::balance::Target::id`]), in a thread-local map. A connection is only ever used by the
//! worker (thread) that opened it, so the pool needs no lock and no atomics, and `balance` knows
//! nothing about connections.
//!
//! Idle HTTP/1.1 connections are reused last-in, first-out (as nginx's upstream keepalive cache
//! does): the one used most recently is the least likely to be closing on the target's keep-alive
//! timeout, and after a burst the ones no longer needed age out at the other end instead of being
//! kept warm in rotation. A connection enters the pool only with nothing unread and nothing owed
//! (see [`super::h1::client`]); taking one out checks, without a system call when nothing
//! arrived, that the target has neither closed it nor sent bytes since: bytes no request asked
//! for never reach a client. An idle connection holds no buffer.
//!
//! A target group with `send_proxy_protocol` starts every connection with a PROXY header naming
//! one client, so its connections are pooled by target *and* announced endpoints
//! ([`PoolKey`]): a connection is only reused for requests of the same client connection (as
//! HAProxy keeps `send-proxy` connections private), never to carry another client's request
//! under the first one's address. A client needs few of them ([`MAX_IDLE_PER_CLIENT`]) and they
//! are useless once it has gone: idle ones age out as all do, and an HTTP/2 connection of a
//! client not seen for [`MAX_IDLE_AGE`] is dropped by the sweep (unannounced HTTP/2 connections
//! are one per target and stay).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, ReadBuf};

use super::error::ProxyError;
use super::forward::ClientInfo;
use super::proxy_protocol;
use crate::config::snapshot::Transport;
pub use crate::tls::client::Stream;
use crate::tls::client::{self, DialError};

/// Idle HTTP/1.1 connections kept per target and worker; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 512;
/// Idle HTTP/1.1 connections kept per target and announced client (`send_proxy_protocol`).
const MAX_IDLE_PER_CLIENT: usize = 4;
/// Idle connections older than this are not reused: many servers close idle keep-alive
/// connections after 60 s or less, and reusing one as it closes costs a retry.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);
/// How often a worker drops aged-out connections of targets it no longer sends to.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The request body type sent to HTTP/2 targets.
pub type H2Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An HTTP/1.1 connection to a target, ready for one request.
pub struct Conn {
    pub io: Stream,
    /// Taken from the pool (it carried earlier requests): a close before any response byte may
    /// be the target's keep-alive timeout racing this request.
    pub reused: bool,
    /// Where it goes back to.
    pub key: PoolKey,
}

/// What a pooled connection is for: a target and, when its group sends PROXY headers, the
/// client connection it announced ([`ClientInfo::conn_id`]; 0: none). Two words, hashed as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKey {
    target: u64,
    client: u64,
}

impl std::hash::Hash for PoolKey {
    // One word to hash, not two: on every request. Equal targets with different clients mix
    // apart; a collision only costs a comparison.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.target ^ self.client.rotate_left(32));
    }
}

impl PoolKey {
    /// The key of a request from `client` to target `id` over `transport`: the client counts
    /// only when the group announces it.
    #[inline]
    pub fn new(id: u64, transport: &Transport, client: Option<&ClientInfo>) -> PoolKey {
        let client = match (transport.proxy_protocol, client) {
            (Some(_), Some(c)) => c.conn_id,
            _ => 0,
        };
        PoolKey { target: id, client }
    }
}

struct Idle {
    io: Stream,
    since: Instant,
}

/// One worker's connections.
#[derive(Default)]
struct Pool {
    idle: FxHashMap<PoolKey, VecDeque<Idle>>,
    /// With when each was opened or, announced ones, last handed out.
    h2: FxHashMap<PoolKey, (http2::SendRequest<H2Body>, Instant)>,
    last_sweep: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Whether an idle connection is still clean: not closed by the target, nothing unread. Polls
/// once with a no-op waker; the stream's cached readiness makes this free unless bytes (or a
/// FIN) arrived since it was last read to exhaustion.
fn still_clean(io: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    let mut cx = Context::from_waker(Waker::noop());
    let mut rb = ReadBuf::new(&mut probe);
    matches!(Pin::new(io).poll_read(&mut cx, &mut rb), Poll::Pending)
}

/// An idle connection for `key` from this worker's pool, newest first; `None` if there is no
/// clean one.
pub fn checkout(key: &PoolKey, now: Instant) -> Option<Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let idle = p.idle.get_mut(key)?;
        while let Some(mut c) = idle.pop_back() {
            if now.saturating_duration_since(c.since) > MAX_IDLE_AGE {
                // The newest is too old, so are all the others.
                idle.clear();
                break;
            }
            if still_clean(&mut c.io) {
                return Some(Conn { io: c.io, reused: true, key: *key });
            }
        }
        None
    })
}

/// Returns a connection whose exchange ended cleanly (response read to its end, nothing left
/// over, no `Connection: close`) to this worker's pool; `now` is about the time it became idle.
pub fn checkin(conn: Conn, now: Instant) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let idle = p.idle.entry(conn.key).or_default();
        // Drop from the old end what has aged out.
        let stale = idle.iter().take_while(|c| now.duration_since(c.since) > MAX_IDLE_AGE).count();
        if stale > 0 {
            idle.drain(..stale);
            let (len, cap) = (idle.len(), idle.capacity());
            if cap > 16 && len < cap / 4 {
                idle.shrink_to(len * 2);
            }
        }
        let cap = if conn.key.client != 0 { MAX_IDLE_PER_CLIENT } else { MAX_IDLE_PER_TARGET };
        if idle.len() < cap {
            idle.push_back(Idle { io: conn.io, since: now });
        }
        p.sweep(now);
    });
}

impl Pool {
    /// Every [`SWEEP_EVERY`]: targets that get no more requests (removed, or idle) would keep
    /// their connections until reused, and announced clients that left would keep theirs; drop
    /// what has aged out everywhere.
    #[inline]
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_none_or(|t| now.duration_since(t) > SWEEP_EVERY) {
            self.sweep_now(now);
        }
    }

    #[cold]
    #[inline(never)]
    fn sweep_now(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        self.idle.retain(|_, q| {
            q.retain(|c| now.duration_since(c.since) <= MAX_IDLE_AGE);
            !q.is_empty()
        });
        // Dropping the last sender closes the connection once its streams end.
        self.h2.retain(|k, (tx, used)| !tx.is_closed() && (k.client == 0 || now.duration_since(*used) <= MAX_IDLE_AGE));
    }
}

/// Opens a connection to `addr` ([`client::dial`]), starting with the PROXY header naming
/// `announce` when the group sends them.
async fn open(
    addr: SocketAddr,
    transport: &Transport,
    announce: Option<(SocketAddr, SocketAddr)>,
) -> Result<Stream, ProxyError> {
    let preface = transport.proxy_protocol.map(|v| proxy_protocol::encode(v, announce));
    client::dial(addr, transport.tls.as_deref(), transport.connect_timeout, preface.as_deref()).await.map_err(|e| {
        match e {
            DialError::Connect(source) => ProxyError::Connect { addr, source },
            DialError::Tls(source) => ProxyError::Tls { addr, source },
            DialError::Timeout => ProxyError::ConnectTimeout(addr),
        }
    })
}

/// A new HTTP/1.1 connection to target `id` at `addr` for requests of `client` (announced to
/// the target when its group sends PROXY headers).
pub async fn connect_h1(
    id: u64,
    addr: SocketAddr,
    transport: &Transport,
    client: Option<&ClientInfo>,
) -> Result<Conn, ProxyError> {
    let key = PoolKey::new(id, transport, client);
    let io = open(addr, transport, client.map(ClientInfo::endpoints)).await?;
    Ok(Conn { io, reused: false, key })
}

/// This worker's HTTP/2 connection to target `id` at `addr` for requests of `client`, opened
/// when there is none (or it closed).
pub async fn h2_sender(
    id: u64,
    addr: SocketAddr,
    transport: &Transport,
    client: Option<&ClientInfo>,
) -> Result<http2::SendRequest<H2Body>, ProxyError> {
    let key = PoolKey::new(id, transport, client);
    let cached = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // Only announced connections age out (one per client): only they note when last used.
        if key.client != 0 {
            let now = Instant::now();
            p.sweep(now);
            if let Some((_, used)) = p.h2.get_mut(&key) {
                *used = now;
            }
        }
        p.h2.get(&key).filter(|(tx, _)| !tx.is_closed()).map(|(tx, _)| tx.clone())
    });
    if let Some(mut tx) = cached {
        if tx.ready().await.is_ok() {
            return Ok(tx);
        }
    }
    let tx = Box::pin(connect_h2(addr, transport, client.map(ClientInfo::endpoints))).await?;
    POOL.with(|p| p.borrow_mut().h2.insert(key, (tx.clone(), Instant::now())));
    Ok(tx)
}

async fn connect_h2(
    addr: SocketAddr,
    transport: &Transport,
    announce: Option<(SocketAddr, SocketAddr)>,
) -> Result<http2::SendRequest<H2Body>, ProxyError> {
    let io = open(addr, transport, announce).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(transport.connect_timeout.max(Duration::from_secs(5)))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ProxyError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "pilotfish::upstream", %addr, error = %e, "upstream h2 connection ended");
        }
    });
    Ok(tx)
}
