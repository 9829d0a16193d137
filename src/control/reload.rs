//! Reloading: read → fetch from AWS → validate → compile → bind new listeners → publish →
//! start/stop accept loops. Any failure before publishing leaves the running snapshot and
//! listeners untouched. Listeners whose name and bind address are unchanged keep their socket
//! and their connections. A certificate refresh ([`Control::refresh_certificates`]) rebuilds the
//! text in force with the new certificate the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::material::{self as fetch, Cache, Clients};
use super::source::{ConfigSource, Document};
use crate::config::material::{self, Fetched, Material, Wanted};
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
    /// Where the configuration is read from on reload.
    pub source: ConfigSource,
    /// The configuration in force: what a certificate refresh rebuilds, `/config` describes.
    in_force: Mutex<InForce>,
    /// The last good copy of everything read from AWS.
    cache: Mutex<Cache>,
    workers: Arc<Workers>,
    /// Only the control thread (and start-up) touches this; never the request path.
    listeners: Mutex<HashMap<Arc<str>, Running>>,
    next_generation: AtomicU64,
    /// The dashboard's history ([`super::stats`]).
    pub stats: Mutex<super::stats::Ring>,
    /// Reloads and their outcomes, newest last.
    pub reloads: super::stats::Reloads,
}

/// The configuration in force.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    pub doc: Document,
    /// What it reads from AWS.
    pub wanted: Wanted,
    pub generation: u64,
}

/// What an install is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A new configuration (counted in `pilotfish_config_reloads_total`).
    Reload,
    /// The configuration in force with refreshed certificates.
    Refresh,
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
    /// `doc` is the configuration the state was compiled from, `cache` what was fetched for it.
    pub fn new(
        state: Arc<SharedState>,
        source: ConfigSource,
        doc: Document,
        cache: Cache,
        workers: Arc<Workers>,
    ) -> Control {
        let generation = state.load().generation;
        let wanted = material::wanted(&doc.name, &doc.text);
        Control {
            state,
            source,
            in_force: Mutex::new(InForce { doc, wanted, generation }),
            cache: Mutex::new(cache),
            workers,
            listeners: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(generation + 1),
            stats: Mutex::default(),
            reloads: super::stats::Reloads::default(),
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

    /// The configuration in force.
    pub fn in_force(&self) -> InForce {
        self.in_force.lock().expect("in force").clone()
    }

    /// The version of the configuration in force at its source.
    pub fn in_force_version(&self) -> Option<String> {
        self.in_force.lock().expect("in force").doc.version.clone()
    }

    /// Re-reads the configuration's source and applies it (SIGHUP, `POST /reload`).
    pub async fn reload(&self) -> ReloadOutcome {
        if let ConfigSource::Text { .. } = self.source {
            return self.fail(vec![ConfigError {
                file: "<none>".into(),
                line: 1,
                col: 1,
                message: "this process was not started from a configuration file; nothing to reload".into(),
                severity: Severity::Error,
            }]);
        }
        match super::source::read(&self.source).await {
            Ok(doc) => self.apply(doc).await,
            Err(d) => self.fail(d.0),
        }
    }

    /// Applies configuration `doc`: fetches what it reads from AWS, then compiles and publishes.
    pub async fn apply(&self, doc: Document) -> ReloadOutcome {
        let wanted = material::wanted(&doc.name, &doc.text);
        let material = fetch::fetch(&wanted, &self.cache, &self.state.metrics).await;
        self.install(doc, wanted, material, Kind::Reload)
    }

    /// Applies configuration `text` (called `name` in messages), from any thread (tests).
    pub fn reload_text(&self, name: &str, text: &str) -> ReloadOutcome {
        let doc = Document { name: name.into(), text: text.into(), version: None };
        let wanted = material::wanted(name, text);
        let material = if wanted.is_empty() {
            Material::default()
        } else {
            super::block_on(fetch::fetch(&wanted, &self.cache, &self.state.metrics))
        };
        self.install(doc, wanted, material, Kind::Reload)
    }

    /// Reads certificates `names` of the snapshot in force again; when one changed, rebuilds the
    /// configuration in force with it (new handshakes get it; open connections keep theirs). A
    /// failed read or rebuild keeps the certificate in force, counted per certificate.
    pub async fn refresh_certificates(&self, names: &[Arc<str>]) {
        let InForce { doc, wanted, generation } = self.in_force();
        let snap = self.state.load();
        let clients = Clients::new(&wanted.aws).await;
        let mut renewed = Vec::new();
        for name in names {
            let Some(src) = snap.certificates.iter().find(|c| &c.name == name).and_then(|c| c.source.clone()) else {
                continue;
            };
            let cached = self.cache.lock().expect("material cache").certificate(&src);
            match fetch::certificate(&clients, &src, cached.as_deref()).await {
                Ok(p) if cached.as_deref() == Some(&p) => {}
                Ok(p) => renewed.push((name.clone(), src, Arc::new(p))),
                Err(e) => {
                    self.state.metrics.certificate_refresh_error(name);
                    tracing::error!(certificate = %name, source = %src, error = %e, "certificate refresh failed; the certificate in force keeps serving");
                }
            }
        }
        if renewed.is_empty() {
            return;
        }
        if self.in_force.lock().expect("in force").generation != generation {
            return; // a reload landed meanwhile, and read every certificate itself
        }
        let mut material = self.cache.lock().expect("material cache").material(&wanted);
        for (_, src, p) in &renewed {
            material.certificates.insert(src.clone(), Fetched::Fresh(p.clone()));
        }
        let out = self.install(doc, wanted, material, Kind::Refresh);
        let names: Vec<Arc<str>> = renewed.iter().map(|(n, _, _)| n.clone()).collect();
        if out.ok() {
            let mut cache = self.cache.lock().expect("material cache");
            for (_, src, p) in renewed {
                cache.put_certificate(src, p);
            }
            tracing::info!(certificates = ?names, generation = out.generation, "certificates refreshed");
        } else {
            for n in &names {
                self.state.metrics.certificate_refresh_error(n);
            }
            for e in &out.errors {
                tracing::error!("certificate refresh rejected, the certificate in force keeps serving: {e}");
            }
        }
    }

    /// Reads trust stores and CRLs kept in AWS (`srcs`) again; when one changed, rebuilds the
    /// configuration in force with it (new handshakes verify against it). A failed read keeps
    /// the copy in force (counted in `pilotfish_trust_store_refresh_errors_total`).
    pub async fn refresh_trust(&self, srcs: &[material::AwsSecret]) {
        if srcs.is_empty() {
            return;
        }
        let InForce { doc, wanted, generation } = self.in_force();
        let clients = Clients::new(&wanted.aws).await;
        let mut changed = Vec::new();
        for src in srcs {
            let cached = self.cache.lock().expect("material cache").secret(src);
            match fetch::secret(&clients, src).await {
                Ok(b) if cached.as_deref() == Some(&b) => {}
                Ok(b) => changed.push((src.clone(), Arc::new(b))),
                Err(e) => {
                    self.state.metrics.trust_store_refresh_error(&src.to_string());
                    tracing::error!(source = %src, error = %e, "trust store refresh failed; the copy in force keeps verifying");
                }
            }
        }
        if changed.is_empty() || self.in_force.lock().expect("in force").generation != generation {
            return;
        }
        let mut material = self.cache.lock().expect("material cache").material(&wanted);
        for (src, b) in &changed {
            material.secrets.insert(src.clone(), Fetched::Fresh(b.clone()));
        }
        let out = self.install(doc, wanted, material, Kind::Refresh);
        if out.ok() {
            let mut cache = self.cache.lock().expect("material cache");
            for (src, b) in &changed {
                cache.put_secret(src.clone(), b.clone());
            }
            tracing::info!(generation = out.generation, "trust stores refreshed");
        } else {
            for (src, _) in &changed {
                self.state.metrics.trust_store_refresh_error(&src.to_string());
            }
            for e in &out.errors {
                tracing::error!("trust store refresh rejected, the copy in force keeps verifying: {e}");
            }
        }
    }

    /// Compiles `doc` with `material` and publishes it.
    fn install(&self, doc: Document, wanted: Wanted, material: Material, kind: Kind) -> ReloadOutcome {
        let prev = self.state.load();
        let generation = self.next_generation.load(Ordering::Relaxed);
        let compiled = config::compile(CompileInput {
            name: &doc.name,
            text: &doc.text,
            previous: Some(&prev),
            metrics: &self.state.metrics,
            generation,
            base_dir: self.source.base_dir(),
            material: &material,
        });
        let (snap, warnings) = match compiled {
            Ok(x) => x,
            Err(d) if kind == Kind::Refresh => {
                return ReloadOutcome { generation: prev.generation, errors: d.0, warnings: vec![] }
            }
            Err(d) => return self.fail(d.0),
        };
        let bound = match self.bind_new(&snap, &doc.name) {
            Ok(b) => b,
            Err(errors) => {
                // The compile's warnings are reported with the bind errors.
                return self.fail(errors.into_iter().chain(warnings.warnings().cloned()).collect());
            }
        };
        self.next_generation.fetch_add(1, Ordering::Relaxed);
        let keep: Vec<Arc<str>> = snap.listeners.iter().map(|l| l.name.clone()).collect();
        self.state.resize_connections(prev.server.max_connections, snap.server.max_connections);
        *self.in_force.lock().expect("in force") = InForce { doc, wanted, generation };
        self.state.publish(snap);
        self.start(bound);
        self.stop_except(&keep);
        for w in warnings.warnings() {
            tracing::warn!("{w}");
        }
        if kind == Kind::Reload {
            self.state.metrics.reloads_success.fetch_add(1, Ordering::Relaxed);
            self.reloads.record(generation, true, Vec::new());
            tracing::info!(generation, "configuration reloaded");
        }
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
        let generation = self.state.load().generation;
        self.reloads.record(generation, false, errors.iter().map(|e| e.to_string()).collect());
        ReloadOutcome { generation, errors, warnings }
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
        f.debug_struct("Control").field("source", &self.source.location()).finish_non_exhaustive()
    }
}
