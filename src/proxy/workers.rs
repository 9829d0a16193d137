//! The data plane's workers: one current-thread tokio runtime per worker thread, the way nginx
//! runs worker processes. A connection lives on one worker from accept to close, and so do the
//! target connections its requests use (the upstream pool is sharded per worker): no
//! work-stealing bookkeeping and no cross-thread wake-ups on the request path. Each listener has
//! one socket and accept loop per worker (`SO_REUSEPORT`, see [`super::listener`]): a connection
//! is accepted on the worker that serves it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker index (0 on threads that are not workers, e.g. the control thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 outside the workers).
pub fn current_index() -> usize {
    INDEX.with(Cell::get)
}

/// The running workers, as the accept loops and the control plane see them.
#[derive(Debug)]
pub struct Workers {
    handles: Box<[Handle]>,
    /// Open client connections per worker.
    open: Box<[AtomicUsize]>,
}

impl Workers {
    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: there is always at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Every worker's runtime, by index.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Open client connections per worker.
    pub fn open_connections(&self) -> impl Iterator<Item = usize> + '_ {
        self.open.iter().map(|n| n.load(Ordering::Relaxed))
    }

    /// Counts a connection as open on the calling worker until the guard drops.
    pub fn open_here(self: &Arc<Self>) -> OpenGuard {
        let index = current_index().min(self.open.len().saturating_sub(1));
        self.open[index].fetch_add(1, Ordering::Relaxed);
        OpenGuard { workers: self.clone(), index }
    }
}

/// Counts one connection as open on its worker while it lives.
pub struct OpenGuard {
    workers: Arc<Workers>,
    index: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.workers.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker threads themselves; stopping them ends every connection they hold.
pub struct WorkerThreads {
    workers: Arc<Workers>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerThreads {
    /// Starts `n` (at least one) workers.
    pub fn start(n: usize) -> std::io::Result<WorkerThreads> {
        let n = n.max(1);
        let (mut handles, mut stops, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            threads.push(std::thread::Builder::new().name(format!("pilotfish-worker-{index}")).spawn(move || {
                INDEX.with(|i| i.set(index));
                crate::shard::enter_worker(index);
                let _ = rt.block_on(stopped);
                rt.shutdown_background();
            })?);
        }
        let open = (0..n).map(|_| AtomicUsize::new(0)).collect();
        Ok(WorkerThreads { workers: Arc::new(Workers { handles: handles.into(), open }), stops, threads })
    }

    /// What the accept loops and the control plane need.
    pub fn workers(&self) -> Arc<Workers> {
        self.workers.clone()
    }

    /// Stops every worker and waits for its thread.
    pub fn stop(mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
