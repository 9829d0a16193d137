//! Starting and stopping the process: compile the first configuration, start the data-plane
//! workers ([`crate::proxy::workers`]) and the control thread ([`crate::control::thread`]), and
//! the graceful shutdown. `main` and the integration tests both start pilotfish through
//! [`Server`].

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::material::{self, Material};
use crate::config::{self, CompileInput, Diagnostics};
use crate::control::material::Cache;
pub use crate::control::source::ConfigSource;
use crate::control::source::Document;
use crate::control::thread::ControlThread;
use crate::control::Control;
use crate::proxy::workers::WorkerThreads;
use crate::state::SharedState;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// How to start.
pub struct Options {
    pub config: ConfigSource,
    /// Where access log lines go (None: stdout).
    pub access_log: Option<Box<dyn Write + Send>>,
    /// Install SIGHUP (reload) and SIGTERM/SIGINT (shutdown) handlers on the control thread.
    pub signals: bool,
    /// `--poll`: how often the source is checked for a new version (None: the source's
    /// default, [`ConfigSource::default_poll`]; zero: never).
    pub poll: Option<Duration>,
}

/// Reads `source` and fetches what it reads from AWS (waiting for the network): the inputs of
/// a first compile (start-up, `pilotfish check`).
pub fn load(source: &ConfigSource, metrics: &Metrics) -> Result<(Document, Material, Cache), Diagnostics> {
    let doc = match source {
        ConfigSource::File(p) => Document {
            name: source.location(),
            version: crate::control::source::file_version(p),
            text: config::read(p)?,
        },
        ConfigSource::Text { name, text } => Document { name: name.clone(), text: text.clone(), version: None },
        _ => crate::control::block_on(crate::control::source::read(source))?,
    };
    let wanted = material::wanted(&doc.name, &doc.text);
    let cache = Mutex::new(Cache::default());
    let material = if wanted.is_empty() {
        Material::default()
    } else {
        crate::control::block_on(crate::control::material::fetch(&wanted, &cache, metrics))
    };
    Ok((doc, material, cache.into_inner().unwrap_or_default()))
}

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(Diagnostics),
    /// Listeners that cannot bind, each as `FILE:LINE:COL: listener "x": cannot bind ...` (at
    /// its `bind` key).
    #[error("{}", .0.join("\n"))]
    Bind(Vec<String>),
    #[error("admin API: cannot bind {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running pilotfish.
pub struct Server {
    control: Arc<Control>,
    admin_addr: SocketAddr,
    runtime: Option<WorkerThreads>,
    control_thread: Option<ControlThread>,
}

impl Server {
    /// Compiles the configuration, binds every listener and the admin API, and starts serving.
    pub fn start(opts: Options) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::default());
        let (doc, material, cache) = load(&opts.config, &metrics).map_err(StartError::Config)?;
        let (snap, warnings) = config::compile(CompileInput {
            name: &doc.name,
            text: &doc.text,
            previous: None,
            metrics: &metrics,
            generation: 1,
            base_dir: opts.config.base_dir(),
            material: &material,
        })
        .map_err(StartError::Config)?;
        for w in warnings.warnings() {
            tracing::warn!("{w}");
        }
        let workers = match snap.server.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let admin_bind = snap.server.admin_bind;
        let access_log = (snap.access_log == config::snapshot::AccessLogFormat::Json)
            .then(|| AccessLog::start(metrics.clone(), opts.access_log.unwrap_or_else(|| Box::new(std::io::stdout()))));
        let state = Arc::new(SharedState::new(snap, metrics, access_log));

        let runtime = WorkerThreads::start(workers).map_err(StartError::Runtime)?;
        let poll = opts.poll.or_else(|| opts.config.default_poll());
        let name = doc.name.clone();
        let control = Arc::new(Control::new(state.clone(), opts.config, doc, cache, runtime.workers()));
        control
            .start_listeners(&name)
            .map_err(|errors| StartError::Bind(errors.iter().map(ToString::to_string).collect()))?;

        let admin =
            std::net::TcpListener::bind(admin_bind).map_err(|source| StartError::Admin { addr: admin_bind, source })?;
        admin.set_nonblocking(true).map_err(|source| StartError::Admin { addr: admin_bind, source })?;
        let admin_addr = admin.local_addr().unwrap_or(admin_bind);

        let control_thread =
            ControlThread::start(control.clone(), admin, opts.signals, poll).map_err(StartError::Runtime)?;
        tracing::info!(admin = %admin_addr, workers, "pilotfish is serving");
        Ok(Server { control, admin_addr, runtime: Some(runtime), control_thread: Some(control_thread) })
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.control.listener_addr(name)
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The control plane (reloads).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Blocks until SIGTERM or SIGINT (with `signals`).
    pub fn wait_for_shutdown_signal(&self) {
        if let Some(t) = &self.control_thread {
            t.wait_for_shutdown_signal();
        }
    }

    /// Graceful stop: readiness turns 503, listeners stop accepting, requests in flight to targets
    /// get up to `server.shutdown_drain` to finish. Returns how many were still running when
    /// the budget ran out.
    pub fn shutdown(mut self) -> u64 {
        let state = &self.control.state;
        state.set_draining();
        self.control.stop_all();
        let budget = state.load().server.shutdown_drain;
        let deadline = Instant::now() + budget;
        let in_flight = || -> u64 {
            let snap = state.load();
            snap.target_groups()
                .map(|g| g.targets().targets().iter().map(|t| u64::from(t.in_flight())).sum::<u64>())
                .sum()
        };
        // Connections close themselves once their in-flight requests are done (set_draining told
        // them); wait for that, within the budget.
        while state.metrics.open_connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cut = in_flight();
        if cut > 0 {
            tracing::warn!(requests = cut, "shutdown_drain elapsed with requests still in flight; cutting them");
        }
        self.stop();
        cut
    }

    fn stop(&mut self) {
        if let Some(t) = self.control_thread.take() {
            t.stop();
        }
        if let Some(rt) = self.runtime.take() {
            // Requests still running are dropped with their runtime; their access log lines
            // (error "shutdown_drain_elapsed") are written before the process goes.
            rt.stop();
            if let Some(log) = &self.control.state.access_log {
                log.flush(Duration::from_secs(1));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.control.stop_all();
        self.stop();
    }
}
