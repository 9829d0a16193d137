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
