//! Shared state between the planes: the published [`Snapshot`] behind an `ArcSwap`, metrics, and
//! process flags. The data plane only loads; the control plane is the only writer, through
//! [`SharedState::publish`].

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::Snapshot;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// State shared by every connection and the control thread.
#[derive(Debug)]
pub struct SharedState {
    snapshot: ArcSwap<Snapshot>,
    /// How many snapshots were published, counted after each is stored (connections compare it
    /// to the count they hold: [`crate::proxy::service::Current`]). A count, not the config
    /// generation: two reloads racing each other could publish the same generation twice.
    published: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// The access log sink (None when `format = "off"` at start-up).
    pub access_log: Option<AccessLog>,
    /// Client connections allowed at once (`server.max_connections`; a reload resizes it).
    pub connection_permits: Arc<Semaphore>,
    /// Permits still to withdraw after `max_connections` was lowered below the connections
    /// open: taken back as those connections close.
    permit_debt: AtomicUsize,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Turns true when shutdown starts: every connection then closes gracefully.
    drain: tokio::sync::watch::Sender<bool>,
    /// The generation of the published snapshot, for control tasks that follow reloads.
    generation: tokio::sync::watch::Sender<u64>,
    /// Per discovered target group: what the last refresh found and when (control plane writes).
    pub discovery: dashmap::DashMap<Arc<str>, DiscoveryStatus>,
}

/// The state of one target group's discovery, for `/targets` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStatus {
    /// Unix milliseconds of the last successful refresh.
    pub last_refresh_unix_ms: Option<u64>,
    /// The error of the current failure streak, if failing.
    pub last_error: Option<String>,
}

impl SharedState {
    /// State around the first snapshot.
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, access_log: Option<AccessLog>) -> Self {
        metrics.generation.store(first.generation, Ordering::Relaxed);
        SharedState {
            connection_permits: Arc::new(Semaphore::new(first.server.max_connections)),
            permit_debt: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            access_log,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain: tokio::sync::watch::channel(false).0,
            generation: tokio::sync::watch::channel(0).0,
            discovery: dashmap::DashMap::new(),
        }
    }

    /// Applies a new `max_connections` (it was `from`). Raising it adds permits at once (after
    /// paying back what an earlier lowering still owes); lowering it withdraws the free permits
    /// at once and the rest as open connections close (see [`SharedState::owes_permit`]): no
    /// connection is cut, and none is accepted until the count is under the new cap (an accept
    /// loop that took its permit as the change lands admits that one connection).
    pub fn resize_connections(&self, from: usize, to: usize) {
        if to >= from {
            let mut more = to - from;
            let mut owed = self.permit_debt.load(Ordering::Relaxed);
            while owed > 0 && more > 0 {
                let paid = owed.min(more);
                match self.permit_debt.compare_exchange(owed, owed - paid, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => more -= paid,
                    Err(now) => owed = now,
                }
            }
            self.connection_permits.add_permits(more);
        } else {
            // Owed first, so that a permit freed meanwhile is withheld too; then the free ones
            // are withdrawn against the debt (any withdrawn beyond it go back).
            let fewer = from - to;
            self.permit_debt.fetch_add(fewer, Ordering::Relaxed);
            let gone = self.connection_permits.forget_permits(fewer);
            let mut owed = self.permit_debt.load(Ordering::Relaxed);
            loop {
                let paid = owed.min(gone);
                match self.permit_debt.compare_exchange(owed, owed - paid, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        self.connection_permits.add_permits(gone - paid);
                        break;
                    }
                    Err(now) => owed = now,
                }
            }
        }
    }

    /// Whether a permit just acquired must be withdrawn instead of admitting a connection
    /// (`max_connections` was lowered below the connections then open): the accept loop then
    /// forgets it. One relaxed load per accepted connection when nothing is owed.
    pub fn owes_permit(&self) -> bool {
        self.permit_debt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1)).is_ok()
    }

    /// How many snapshots were published (one load; each snapshot is stored before it counts).
    #[inline]
    pub fn published_count(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// The current snapshot; a request keeps the one it started with.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot (control plane only).
    pub fn publish(&self, snap: Snapshot) {
        let generation = snap.generation;
        self.metrics.generation.store(generation, Ordering::Relaxed);
        self.snapshot.store(Arc::new(snap));
        self.published.fetch_add(1, Ordering::Release);
        self.generation.send_replace(generation);
    }

    /// A receiver that changes whenever a new snapshot is published.
    pub fn generation_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether every listener is bound and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Marks the listeners bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Marks the process as shutting down: `/readyz` turns 503 and every open connection is told
    /// to finish its in-flight requests and close (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.send_replace(true);
    }

    /// A receiver that turns true when shutdown starts.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
