//! Reloading: read → validate → compile → bind new listeners → publish → start/stop accept loops.
//! Any failure before publishing leaves the running snapshot and listeners untouched. Listeners
//! whose name and bind address are unchanged keep their socket and their connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{self, CompileInput, ConfigError, Severity, Snapshot};
use crate::proxy::listener;
use crate::proxy::workers::Workers;
use crate::state::SharedState;

/// A freshly bound listener: name, configured address, one socket per worker.
type Bound = (Arc<str>, SocketAddr, Vec<std::net::TcpListener>);

struct Running {
    bind: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// The control plane's handle on the process: the only place that changes shared state.
pub struct Control {
    pub state: Arc<SharedState>,
    /// Where the configuration is read from on reload (None: started from text, e.g. the demo).
    pub config_path: Option<PathBuf>,
    workers: Arc<Workers>,
    /// Only the control thread (and start-up) touches this; never the request path.
    listeners: Mutex<HashMap<Arc<str>, Running>>,
    next_generation: AtomicU64,
}

/// The result of one reload, as `POST /reload` reports it.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl ReloadOutcome {
    /// Whether the new configuration is now serving.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Control {
    /// Wraps the running state; `workers` run the accept loops and the connections.
    pub fn new(state: Arc<SharedState>, config_path: Option<PathBuf>, workers: Arc<Workers>) -> Control {
        let generation = state.load().generation;
        Control {
            state,
            config_path,
            workers,
            listeners: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(generation + 1),
        }
    }

    /// The data-plane workers.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().expect("listener table").get(name).map(|r| r.local)
    }

    /// Binds every listener of the current snapshot and starts accepting (start-up). `file`
    /// names the configuration in bind errors.
    pub fn start_listeners(&self, file: &str) -> Result<(), Vec<ConfigError>> {
        let snap = self.state.load();
        let bound = self.bind_new(&snap, file)?;
        self.start(bound);
        self.state.set_ready();
        Ok(())
    }

    /// Re-reads the configuration file and applies it.
    pub fn reload(&self) -> ReloadOutcome {
        let Some(path) = &self.config_path else {
            return self.fail(vec![ConfigError {
                file: "<none>".into(),
                line: 1,
                col: 1,
                message: "this process was not started from a configuration file; nothing to reload".into(),
                severity: Severity::Error,
            }]);
        };
        match config::read(path) {
            Ok(text) => self.reload_text(&path.display().to_string(), &text),
            Err(d) => self.fail(d.0),
        }
    }

    /// Applies configuration `text` (called `name` in messages).
    pub fn reload_text(&self, name: &str, text: &str) -> ReloadOutcome {
        let prev = self.state.load();
        let generation = self.next_generation.load(Ordering::Relaxed);
        let compiled = config::compile(CompileInput {
            name,
            text,
            previous: Some(&prev),
            metrics: &self.state.metrics,
            generation,
            base_dir: self.config_path.as_deref().and_then(|p| p.parent()),
        });
        let (snap, warnings) = match compiled {
            Ok(x) => x,
            Err(d) => return self.fail(d.0),
        };
        let bound = match self.bind_new(&snap, name) {
            Ok(b) => b,
            Err(errors) => {
                // The compile's warnings are reported with the bind errors.
                return self.fail(errors.into_iter().chain(warnings.warnings().cloned()).collect());
            }
        };
        self.next_generation.fetch_add(1, Ordering::Relaxed);
        let keep: Vec<Arc<str>> = snap.listeners.iter().map(|l| l.name.clone()).collect();
        self.state.resize_connections(prev.server.max_connections, snap.server.max_connections);
        self.state.publish(snap);
        self.start(bound);
        self.stop_except(&keep);
        self.state.metrics.reloads_success.fetch_add(1, Ordering::Relaxed);
        for w in warnings.warnings() {
            tracing::warn!("{w}");
        }
        tracing::info!(generation, "configuration reloaded");
        ReloadOutcome { generation, errors: vec![], warnings: warnings.warnings().cloned().collect() }
    }

    /// A rejected reload: `diags` holds its errors and the warnings found with them (reported
    /// as warnings: they did not cause the rejection).
    fn fail(&self, diags: Vec<ConfigError>) -> ReloadOutcome {
        self.state.metrics.reloads_failure.fetch_add(1, Ordering::Relaxed);
        let (warnings, errors): (Vec<_>, Vec<_>) = diags.into_iter().partition(|d| d.severity == Severity::Warning);
        for e in &errors {
            tracing::error!("reload rejected, the previous configuration keeps serving: {e}");
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        ReloadOutcome { generation: self.state.load().generation, errors, warnings }
    }

    /// Binds the listeners of `snap` that are not running with the same address. Nothing is
    /// kept if any bind fails; each failure is reported at the listener's `bind` key in `file`.
    fn bind_new(&self, snap: &Snapshot, file: &str) -> Result<Vec<Bound>, Vec<ConfigError>> {
        let running = self.listeners.lock().expect("listener table");
        let mut bound = Vec::new();
        let mut errors = Vec::new();
        for l in &snap.listeners {
            if running.get(&l.name).is_some_and(|r| r.bind == l.bind) {
                continue;
            }
            match listener::bind(l.bind, self.workers.len()) {
                Ok(sock) => bound.push((l.name.clone(), l.bind, sock)),
                Err(e) => {
                    let (line, col) = l.bind_at.unwrap_or((1, 1));
                    errors.push(ConfigError {
                        file: file.into(),
                        line,
                        col,
                        message: format!("listener {:?}: cannot bind {}: {e}", l.name, l.bind),
                        severity: Severity::Error,
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(bound)
        } else {
            Err(errors)
        }
    }

    fn start(&self, bound: Vec<Bound>) {
        let mut running = self.listeners.lock().expect("listener table");
        for (name, bind, sockets) in bound {
            let local = sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or(bind);
            let (stop, stop_rx) = watch::channel(false);
            for (sock, worker) in sockets.into_iter().zip(self.workers.handles()) {
                let accept = listener::accept_loop(
                    self.state.clone(),
                    self.workers.clone(),
                    name.clone(),
                    sock,
                    stop_rx.clone(),
                );
                worker.spawn(accept);
            }
            tracing::info!(listener = %name, %local, "listening");
            if let Some(old) = running.insert(name, Running { bind, local, stop }) {
                let _ = old.stop.send(true);
            }
        }
    }

    fn stop_except(&self, keep: &[Arc<str>]) {
        let mut running = self.listeners.lock().expect("listener table");
        running.retain(|name, r| {
            let k = keep.contains(name);
            if !k {
                let _ = r.stop.send(true);
                tracing::info!(listener = %name, "listener closed");
            }
            k
        });
    }

    /// Stops accepting on every listener (shutdown).
    pub fn stop_all(&self) {
        self.stop_except(&[]);
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}
