//! The engine's client side: sending a request to an HTTP/1.1 target and reading its response.
//!
//! [`send`] picks a target, takes a pooled connection or opens one, writes the request (head
//! and the body bytes already at hand in one vectored write), then *pumps*: it sends the rest
//! of the body while watching the target for a response, so a target that answers early (a
//! 413 or 501 to a large upload) is heard, and its answer relayed, instead of being taken for a
//! reset. Retries (another target when connecting fails, or when a target closes or resets
//! before any response byte and the request can be sent again) and the keep-alive race (a
//! reused connection closed by the target as the request went out: once more on a fresh
//! connection, to the same target if need be) are decided here, never after a response byte.
//!
//! What the request is made of is an [`Outbound`]: an HTTP/1.1 client's head and body in the
//! session's read buffer ([`super::server`]), or an HTTP/2 client's request converted at the
//! seam ([`crate::proxy::h2`]). A target connection goes back to the worker's pool only when the
//! exchange ended cleanly: the request fully sent, the response read to its end, nothing left
//! over, no `Connection: close`.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::buf::Buf;
use super::io::Timer;
use super::parse::{parse_response, ResponseHead};
use crate::balance::group::{Busy, TargetSet};
use crate::balance::queue::QueueError;
use crate::balance::{InFlightGuard, Target};
use crate::config::snapshot::ForwardArm;
use crate::proxy::error::ProxyError;
use crate::proxy::upstream::{self, Conn, Stream};

/// Why sending a request body stopped.
#[derive(Debug)]
pub enum SendError {
    /// Writing to the target failed (it may have answered early and closed).
    Target(io::Error),
    /// The client's body failed: the request is refused with this error.
    Client(ProxyError),
}

/// A request on its way to a target: what the engine writes, attempt after attempt.
pub trait Outbound {
    /// Writes the head, and what of the body is at hand, from the start (an attempt).
    fn poll_head(&mut self, cx: &mut Context<'_>, target: &mut Stream) -> Poll<io::Result<()>>;
    /// Sends more of the body: `Ready(Ok(true))` once all is sent and flushed, `Ready(Ok(false))`
    /// after some progress.
    fn poll_body(&mut self, cx: &mut Context<'_>, target: &mut Stream) -> Poll<Result<bool, SendError>>;
    /// Whether body bytes remain to be sent after the head.
    fn body_pending(&self) -> bool;
    /// Whether the last `Pending` of [`Outbound::poll_body`] was waiting for the client.
    fn waiting_for_client(&self) -> bool;
    /// Gets ready to send the request again from its start; false when that is no longer
    /// possible (body bytes were sent that are not kept).
    fn rewind(&mut self) -> bool;
    /// Whether the method is idempotent (RFC 9110 section 9.2.2): such a request may be sent
    /// again after a target failed without answering.
    fn idempotent(&self) -> bool;
    /// Whether the request has a body.
    fn has_body(&self) -> bool;
}

/// Writes what is left of a body piece to the target, for [`Outbound::poll_body`]:
/// `Ok(Some(n))` bytes went, `Ok(None)` the target takes no more now (the task is woken when it
/// does).
pub fn poll_piece(
    cx: &mut Context<'_>,
    target: &mut Stream,
    slices: &[IoSlice<'_>],
) -> Result<Option<usize>, SendError> {
    match Pin::new(target).poll_write_vectored(cx, slices) {
        Poll::Ready(Ok(0)) => Err(SendError::Target(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(SendError::Target(e)),
        Poll::Pending => Ok(None),
    }
}

/// The body's last piece is written: flushes it (TLS keeps what it encrypted until flushed).
/// What [`Outbound::poll_body`] returns then; `moved`: progress was made in this poll.
pub fn poll_body_end(cx: &mut Context<'_>, target: &mut Stream, moved: bool) -> Poll<Result<bool, SendError>> {
    match Pin::new(target).poll_flush(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(true)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(SendError::Target(e))),
        Poll::Pending if moved => Poll::Ready(Ok(false)),
        Poll::Pending => Poll::Pending,
    }
}

/// Where sending the body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    Body,
    Done,
    /// The target stopped taking it (write failed): the connection is not reused.
    Aborted,
}

/// The limits and timeouts of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// The target's time to answer once the request is sent, and the longest silence in its
    /// response body.
    pub response_timeout: Duration,
    /// The longest silence from the client while its body is forwarded.
    pub client_idle: Duration,
}

/// What came back from the target after (part of) the request went out.
pub enum Got {
    Head(ResponseHead),
    /// Closed or reset before a complete head; `any`: some response bytes had arrived.
    Closed {
        any: bool,
    },
    /// The head is malformed or over the limits (a reason for the log).
    Bad(&'static str),
    TimedOut {
        waiting_for_client: bool,
    },
    /// The client's body failed.
    Client(ProxyError),
}

/// Reads the next response head from `target` while sending what is left of the body; the
/// deadlines count from `since` (when the request was written) and from the last progress of
/// the body. Bytes of the head itself do not move them: a target trickling its head gets
/// `response_timeout` in all, not per byte.
pub async fn next_head<O: Outbound>(
    out: &mut O,
    sending: &mut Sending,
    target: &mut Stream,
    tbuf: &mut Buf,
    limits: &Limits,
    timer: &mut Timer<'_>,
    since: Instant,
) -> Got {
    let mut last = since;
    poll_fn(|cx| loop {
        let (mut progressed, mut body_moved) = (false, false);
        if tbuf.spare() == 0 {
            let start = tbuf.start();
            tbuf.compact_to(0);
            if start == 0 && !tbuf.reserve(4096, limits.max_head_bytes + 4096) {
                return Poll::Ready(Got::Bad("response_head_too_large"));
            }
        }
        match tbuf.poll_read_from(target, cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Got::Closed { any: !tbuf.is_empty() }),
            Poll::Ready(Ok(_)) => {
                match parse_response(tbuf.data(), tbuf.start(), tbuf.end(), limits.max_head_bytes, limits.max_headers) {
                    Ok(Some(head)) => return Poll::Ready(Got::Head(head)),
                    Ok(None) => progressed = true,
                    Err(why) => return Poll::Ready(Got::Bad(why)),
                }
            }
            Poll::Pending => {}
        }
        if *sending == Sending::Body {
            match out.poll_body(cx, target) {
                Poll::Ready(Ok(done)) => {
                    if done {
                        *sending = Sending::Done;
                    }
                    (progressed, body_moved) = (true, true);
                }
                Poll::Ready(Err(SendError::Target(_))) => {
                    // Keep reading: the target may have answered before it closed.
                    *sending = Sending::Aborted;
                    (progressed, body_moved) = (true, true);
                }
                Poll::Ready(Err(SendError::Client(e))) => return Poll::Ready(Got::Client(e)),
                Poll::Pending => {}
            }
        }
        if body_moved {
            last = Instant::now();
        }
        if progressed {
            continue;
        }
        // Nothing moved: wait, within the deadline (re-armed lazily when progress moved it).
        let waiting_for_client = *sending == Sending::Body && out.waiting_for_client();
        let deadline = last + if waiting_for_client { limits.client_idle } else { limits.response_timeout };
        if timer.poll_expired(cx, deadline) {
            return Poll::Ready(Got::TimedOut { waiting_for_client });
        }
        return Poll::Pending;
    })
    .await
}

/// A request sent and answered: the response head and what is needed to relay its body.
pub struct Answered {
    pub target: Arc<Target>,
    /// Counts the request in flight on its target until the response body ends.
    pub guard: InFlightGuard,
    pub conn: Conn,
    /// The response bytes read so far (the head, maybe body bytes after it).
    pub tbuf: Buf,
    pub head: ResponseHead,
    pub sending: Sending,
    /// When the request was written (for `target_processing_time`).
    pub sent_at: Instant,
}

/// What happened on the way to a target, for logs and metrics.
#[derive(Debug, Default)]
pub struct Attempts<'a> {
    pub target: Option<std::net::SocketAddr>,
    pub count: u32,
    /// The target to try first (a sticky session's), when it takes traffic.
    pub preferred: Option<Arc<Target>>,
    /// The client, for target groups that announce it (PROXY headers).
    pub client: Option<&'a super::super::forward::ClientInfo>,
}

/// The first target of a request: the sticky one or a pick, claimed at once when a target has
/// room and nobody waits (Ok(None): every available target is at its cap, or requests are
/// waiting; the caller then waits in the queue with [`wait_in_queue`]). Not async, so a request
/// that finds a target pays no extra future.
#[inline]
pub fn claim_first(
    arm: &ForwardArm,
    set: &TargetSet,
    preferred: Option<&Arc<Target>>,
) -> Result<Option<(Arc<Target>, InFlightGuard)>, ProxyError> {
    let group = &arm.group;
    // While requests wait, a new one does not overtake them.
    if group.queue.as_ref().is_some_and(|q| q.depth() > 0) {
        return Ok(None);
    }
    match group.claim(set, &[], preferred) {
        Ok(c) => Ok(Some(c)),
        Err(Busy::NoTarget) => Err(ProxyError::NoTarget(group.name.clone())),
        Err(Busy::AtCap) => Ok(None),
    }
}

/// Waits in the group's queue, first come first served, at most its timeout, for a target
/// under the cap. 503 when the group has no queue, the queue is full, or the wait times out.
#[cold]
pub async fn wait_in_queue(
    arm: &ForwardArm,
    preferred: Option<&Arc<Target>>,
) -> Result<(Arc<Target>, InFlightGuard), ProxyError> {
    let (group, stats) = (&arm.group, &arm.group_stats);
    let Some(q) = &group.queue else {
        stats.queue_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ProxyError::QueueFull(group.name.clone()));
    };
    let since = Instant::now();
    // A group left without any target that takes traffic ends the wait (503 no_target).
    let got = q
        .wait(|| match group.claim(&group.targets(), &[], preferred) {
            Ok(c) => Some(Ok(c)),
            Err(Busy::NoTarget) => Some(Err(ProxyError::NoTarget(group.name.clone()))),
            Err(Busy::AtCap) => None,
        })
        .await;
    if !matches!(got, Err(QueueError::Full)) {
        stats.queue_wait.observe(since.elapsed());
    }
    got.map_err(|e| match e {
        QueueError::Full => {
            stats.queue_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ProxyError::QueueFull(group.name.clone())
        }
        QueueError::Timeout => {
            stats.queue_timeout.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ProxyError::QueueTimeout(group.name.clone())
        }
    })?
}

/// Pooled connections found closed by the time a request was written: not the target's
/// fault and not counted as retries, but bounded.
const MAX_STALE: u32 = 3;

/// Sends `out` to a target of `arm`'s group and reads the response head (the first one: it may
/// be interim). Retries as the module docs say. `head_at`: when the request head was complete
/// (the first attempt goes out then: no second clock read for it).
pub async fn send<O: Outbound>(
    arm: &ForwardArm,
    out: &mut O,
    limits: &Limits,
    attempts: &mut Attempts<'_>,
    timer: &mut Timer<'_>,
    head_at: Instant,
) -> Result<Answered, ProxyError> {
    let group = &arm.group;
    let settings = &*arm.transport;
    let set = group.targets();
    let mut tried: Vec<Arc<Target>> = Vec::new();
    let mut last_err: Option<ProxyError> = None;
    let (mut stale, mut raced, mut failures) = (0, false, 0);
    // The same target again, keeping its slot (a cap is never exceeded): after a stale pooled
    // connection, or (`fresh`) a keep-alive race.
    let mut again: Option<(Arc<Target>, bool, InFlightGuard)> = None;
    // The request waited in the queue: its clocks start when it leaves it.
    let mut queued = false;
    loop {
        let (target, fresh_only, guard) = match again.take() {
            Some(same) => same,
            None if attempts.count == 0 => {
                let preferred = attempts.preferred.take();
                let (t, g) = match claim_first(arm, &set, preferred.as_ref())? {
                    Some(claimed) => claimed,
                    None => {
                        queued = true;
                        wait_in_queue(arm, preferred.as_ref()).await?
                    }
                };
                (t, false, g)
            }
            None => {
                if failures > settings.retries {
                    break;
                }
                let Ok((t, g)) = group.claim(&set, &tried, None) else { break };
                (t, false, g)
            }
        };
        attempts.count += 1;
        attempts.target = Some(target.addr);
        let now = if attempts.count == 1 && !queued { head_at } else { Instant::now() };
        let pooled = if fresh_only {
            None
        } else {
            upstream::checkout(&upstream::PoolKey::new(target.id, settings, attempts.client), now)
        };
        let (mut conn, sent_at) = match pooled {
            Some(c) => (c, now),
            // Boxed: opening a connection (TCP, TLS) is rare on a warm pool, and its state would
            // otherwise sit in every request's future.
            None => match Box::pin(upstream::connect_h1(target.id, target.addr, settings, attempts.client)).await {
                Ok(c) => (c, Instant::now()),
                Err(e) => {
                    tracing::debug!(target: "pilotfish::proxy", error = %e, "connect failed");
                    arm.group_stats.target_connection_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    passive_failure(arm, &target);
                    last_err = Some(e);
                    tried.push(target);
                    failures += 1;
                    // Nothing was sent: the request goes elsewhere as it is.
                    continue;
                }
            },
        };
        let wrote = poll_fn(|cx| out.poll_head(cx, &mut conn.io)).await;
        let mut sending = if out.body_pending() { Sending::Body } else { Sending::Done };
        let mut tbuf = Buf::take();
        let got = match wrote {
            Ok(()) => next_head(out, &mut sending, &mut conn.io, &mut tbuf, limits, timer, sent_at).await,
            Err(_) => Got::Closed { any: false },
        };
        match got {
            Got::Head(head) => {
                target.record_passive_success();
                return Ok(Answered { target, guard, conn, tbuf, head, sending, sent_at });
            }
            Got::Closed { any: false } => {
                let replay = out.rewind();
                if conn.reused && replay && wrote.is_err() && stale < MAX_STALE {
                    // The pooled connection was already closed: not the target's doing.
                    stale += 1;
                    again = Some((target, false, guard));
                    continue;
                }
                if conn.reused && replay && !raced && (!out.has_body() || out.idempotent()) {
                    // The keep-alive race: the target closed its idle connection as the request
                    // went out. Once more, on a fresh connection (to this target if need be).
                    raced = true;
                    again = Some((target, true, guard));
                    continue;
                }
                tracing::debug!(target: "pilotfish::proxy", addr = %target.addr, "target closed before responding");
                passive_failure(arm, &target);
                last_err = Some(ProxyError::TargetReset(target.addr));
                if !(replay && out.idempotent()) {
                    break;
                }
                tried.push(target);
                failures += 1;
            }
            Got::Closed { any: true } => {
                passive_failure(arm, &target);
                return Err(ProxyError::BadResponse { addr: target.addr, reason: "response_head_truncated" });
            }
            Got::Bad(reason) => {
                tracing::debug!(target: "pilotfish::proxy", addr = %target.addr, reason, "malformed response from target");
                return Err(ProxyError::BadResponse { addr: target.addr, reason });
            }
            Got::TimedOut { waiting_for_client: true } => return Err(ProxyError::RequestTimeout),
            Got::TimedOut { waiting_for_client: false } => {
                passive_failure(arm, &target);
                return Err(ProxyError::ResponseTimeout(target.addr));
            }
            Got::Client(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoTarget(group.name.clone())))
}

/// A transport failure on live traffic counts as a failed health check at once (outlier
/// ejection). Only with active checks configured: they are what brings a target back.
pub fn passive_failure(arm: &ForwardArm, target: &Target) {
    if let Some(hc) = &arm.group.settings.health_check {
        if target.record_passive_failure(hc.unhealthy_threshold) {
            tracing::warn!(target_group = %arm.group.name, target = %target.addr, "target ejected after failures on live traffic");
        }
    }
}

/// Whether a method is idempotent (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

/// Room to read more response bytes into (the bytes before `start` are no longer needed).
pub fn make_room(tbuf: &mut Buf) {
    tbuf.reset_if_empty();
    if tbuf.spare() == 0 {
        tbuf.compact_to(0);
        tbuf.reserve(1024, tbuf.len() + super::buf::BUF_SIZE);
    }
}

/// Reads more of a response from `target` into `tbuf` (0 at EOF), failing when the target is
/// silent for `idle` (the clock is read only if the read has to wait).
pub async fn read_more(
    target: &mut Stream,
    tbuf: &mut Buf,
    timer: &mut Timer<'_>,
    idle: Duration,
) -> io::Result<usize> {
    make_room(tbuf);
    let mut deadline = None;
    poll_fn(|cx| poll_read_more(cx, target, tbuf, &mut deadline, timer, idle)).await
}

/// One poll of [`read_more`] (after [`make_room`]); `deadline` is kept between polls.
pub fn poll_read_more(
    cx: &mut Context<'_>,
    target: &mut Stream,
    tbuf: &mut Buf,
    deadline: &mut Option<Instant>,
    timer: &mut Timer<'_>,
    idle: Duration,
) -> Poll<io::Result<usize>> {
    match tbuf.poll_read_from(target, cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let d = *deadline.get_or_insert_with(|| Instant::now() + idle);
            if timer.poll_expired(cx, d) {
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            } else {
                Poll::Pending
            }
        }
    }
}
