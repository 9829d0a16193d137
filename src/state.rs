//! Shared state between the planes: the published [`Snapshot`] behind an `ArcSwap`, metrics, and
//! process flags. The data plane only loads; the control plane is the only writer, through
//! [`SharedState::publish`].

use std::sync::atomic::{AtomicBool, Ordering};
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
    pub metrics: Arc<Metrics>,
    /// The access log sink (None when `format = "off"` at start-up).
    pub access_log: Option<AccessLog>,
    /// Client connections allowed at once (`server.max_connections`, fixed at start-up).
    pub connection_permits: Arc<Semaphore>,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl SharedState {
    /// State around the first snapshot.
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, access_log: Option<AccessLog>) -> Self {
        metrics.generation.store(first.generation, Ordering::Relaxed);
        SharedState {
            connection_permits: Arc::new(Semaphore::new(first.server.max_connections)),
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            access_log,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The current snapshot; a request keeps the one it started with.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot (control plane only).
    pub fn publish(&self, snap: Snapshot) {
        self.metrics.generation.store(snap.generation, Ordering::Relaxed);
        self.snapshot.store(Arc::new(snap));
    }

    /// Whether every listener is bound and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Marks the listeners bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Marks the process as shutting down (`/readyz` turns 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
