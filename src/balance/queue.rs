//! A target group's request queue (HAProxy's `maxconn` + queue; ALB's Target Optimizer): with
//! `max_requests_per_target`, a request that finds every available target at its cap waits here,
//! first come first served, for the first slot that frees up, at most `timeout`; a full queue
//! refuses at once.
//!
//! Order: the waiters line up on tokio's fair (FIFO) async mutex, and only the one at the head
//! of the line holds it and watches for a free slot: it is woken when any request of the group
//! ends ([`Queue::freed`], from the in-flight guard) and re-checks every [`RECHECK`] besides, so
//! a target that turns healthy or joins the group never sits idle while a request waits. A new
//! request does not overtake the line: it claims a slot directly only while nobody waits. This
//! is the data plane's one lock, and it is taken only by a request that would otherwise be
//! refused; a request that finds a slot never touches it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex as Line, Notify};

/// How often the waiter at the head of the line looks for a slot without being woken.
pub const RECHECK: Duration = Duration::from_millis(100);

/// Why a request left the queue without a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue already held `size` requests (or the group has no queue).
    Full,
    /// No slot freed up within `timeout`.
    Timeout,
}

/// The waiting requests of one target group.
#[derive(Debug)]
pub struct Queue {
    pub size: usize,
    pub timeout: Duration,
    waiting: AtomicUsize,
    line: Line<()>,
    freed: Notify,
}

/// Leaves the queue's count when dropped (a waiter served, timed out or cancelled).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Queue {
    pub fn new(size: usize, timeout: Duration) -> Arc<Queue> {
        Arc::new(Queue { size, timeout, waiting: AtomicUsize::new(0), line: Line::new(()), freed: Notify::new() })
    }

    /// Requests waiting now.
    #[inline]
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A slot may be free (a request of the group ended, or its targets changed): the waiter
    /// at the head of the line, if any, looks again.
    #[inline]
    pub fn freed(&self) {
        if self.depth() > 0 {
            self.freed.notify_one();
        }
    }

    /// Waits in line until `claim` gives a slot, at most `timeout`. `claim` is tried at the head
    /// of the line, each time a slot may have freed up.
    pub async fn wait<T>(&self, mut claim: impl FnMut() -> Option<T>) -> Result<T, QueueError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.size {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueError::Full);
        }
        let _leave = Leave(&self.waiting);
        let served = async {
            let _head = self.line.lock().await;
            loop {
                // Registered before the check: a slot freed between the two is not missed.
                let freed = self.freed.notified();
                let mut freed = std::pin::pin!(freed);
                freed.as_mut().enable();
                if let Some(t) = claim() {
                    return t;
                }
                let _ = tokio::time::timeout(RECHECK, freed).await;
            }
        };
        timeout(self.timeout, served).await.ok_or(QueueError::Timeout)
    }
}

async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(d, f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Yields until `cond` holds, for at most 5 s.
    async fn until<F: Future<Output = bool>>(cond: impl Fn() -> F) {
        let waited = timeout(Duration::from_secs(5), async {
            while !cond().await {
                tokio::task::yield_now().await;
            }
        });
        assert!(waited.await.is_some(), "the condition did not hold within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_are_served_in_arrival_order_and_a_full_queue_refuses() {
        let q = Queue::new(3, Duration::from_secs(5));
        let slots = Arc::new(AtomicU32::new(0));
        let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (line, slots, order) = (q.clone(), slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let got = line
                    .wait(|| slots.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok())
                    .await;
                order.lock().await.push(i);
                got
            }));
            // Each waiter is in line before the next arrives.
            until(|| async { q.depth() == i + 1 }).await;
        }
        assert_eq!(q.wait(|| Some(())).await, Err(QueueError::Full), "three wait: the fourth is refused");
        for served in 1..=3 {
            slots.fetch_add(1, Ordering::AcqRel);
            q.freed();
            until(|| async { order.lock().await.len() == served }).await;
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(*order.lock().await, [0, 1, 2]);
        assert_eq!(q.depth(), 0);
        let short = Queue::new(1, Duration::from_millis(50));
        assert_eq!(short.wait(|| None::<()>).await, Err(QueueError::Timeout));
        assert_eq!(short.depth(), 0, "a waiter that timed out left");
    }
}
