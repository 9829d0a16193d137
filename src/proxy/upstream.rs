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
//! under the first one's address.

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
use super::proxy_protocol;
use crate::config::snapshot::Transport;
pub use crate::tls::client::Stream;
use crate::tls::client::{self, DialError};

/// Idle HTTP/1.1 connections kept per target and worker; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 512;
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
/// client endpoints the connection announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    target: u64,
    announced: Option<(SocketAddr, SocketAddr)>,
}

impl PoolKey {
    /// The key of a request from `client` (source, destination) to target `id` over
    /// `transport` (a client not known is announced as none: `LOCAL`).
    #[inline]
    pub fn new(id: u64, transport: &Transport, client: Option<(SocketAddr, SocketAddr)>) -> PoolKey {
        PoolKey { target: id, announced: transport.proxy_protocol.and(client) }
    }

    /// The PROXY header a new connection for this key starts with.
    fn preface(&self, transport: &Transport) -> Option<Vec<u8>> {
        transport.proxy_protocol.map(|v| proxy_protocol::encode(v, self.announced))
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
    h2: FxHashMap<PoolKey, http2::SendRequest<H2Body>>,
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
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push_back(Idle { io: conn.io, since: now });
        }
        if p.last_sweep.is_none_or(|t| now.duration_since(t) > SWEEP_EVERY) {
            p.last_sweep = Some(now);
            // Targets that get no more requests (removed, or idle) would keep their
            // connections until reused; drop what has aged out everywhere.
            p.idle.retain(|_, q| {
                q.retain(|c| now.duration_since(c.since) <= MAX_IDLE_AGE);
                !q.is_empty()
            });
        }
    });
}

/// Opens a connection to `addr` ([`client::dial`]) for traffic of `key`.
async fn open(addr: SocketAddr, transport: &Transport, key: &PoolKey) -> Result<Stream, ProxyError> {
    let preface = key.preface(transport);
    client::dial(addr, transport.tls.as_deref(), transport.connect_timeout, preface.as_deref()).await.map_err(|e| {
        match e {
            DialError::Connect(source) => ProxyError::Connect { addr, source },
            DialError::Tls(source) => ProxyError::Tls { addr, source },
            DialError::Timeout => ProxyError::ConnectTimeout(addr),
        }
    })
}

/// A new HTTP/1.1 connection to `addr` for `key`.
pub async fn connect_h1(addr: SocketAddr, transport: &Transport, key: &PoolKey) -> Result<Conn, ProxyError> {
    let io = open(addr, transport, key).await?;
    Ok(Conn { io, reused: false, key: *key })
}

/// This worker's HTTP/2 connection for `key` at `addr`, opened when there is none (or it
/// closed).
pub async fn h2_sender(
    key: PoolKey,
    addr: SocketAddr,
    transport: &Transport,
) -> Result<http2::SendRequest<H2Body>, ProxyError> {
    let cached = POOL.with(|p| p.borrow().h2.get(&key).filter(|tx| !tx.is_closed()).cloned());
    if let Some(mut tx) = cached {
        if tx.ready().await.is_ok() {
            return Ok(tx);
        }
    }
    let tx = Box::pin(connect_h2(addr, transport, &key)).await?;
    POOL.with(|p| p.borrow_mut().h2.insert(key, tx.clone()));
    Ok(tx)
}

async fn connect_h2(
    addr: SocketAddr,
    transport: &Transport,
    key: &PoolKey,
) -> Result<http2::SendRequest<H2Body>, ProxyError> {
    let io = open(addr, transport, key).await?;
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
