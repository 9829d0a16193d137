//! The control thread: its own OS thread with a current-thread tokio runtime, running every
//! background task (admin API, health checks, discovery, certificate refresh, `--poll`,
//! CloudWatch, autoscaling) and the signal
//! handlers (SIGHUP reloads; SIGTERM/SIGINT start the shutdown). The data plane never waits on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Control;

/// The running control thread.
pub struct ControlThread {
    thread: std::thread::JoinHandle<()>,
    stop: oneshot::Sender<()>,
    shutdown: std::sync::mpsc::Receiver<()>,
}

impl ControlThread {
    /// Starts the thread with the admin API on `admin` (and the signal handlers with `signals`);
    /// returns once they are installed: "serving" means signals are handled too (a SIGHUP before
    /// the handler exists would terminate the process, the default action).
    pub fn start(
        control: Arc<Control>,
        admin: std::net::TcpListener,
        signals: bool,
        poll: Option<Duration>,
    ) -> std::io::Result<ControlThread> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("pilotfish-control".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("control runtime");
            rt.block_on(main(control, admin, signals, poll, stop_rx, shutdown_tx, started_tx));
        })?;
        if started_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            return Err(std::io::Error::other("the control thread did not start"));
        }
        Ok(ControlThread { thread, stop: stop_tx, shutdown: shutdown_rx })
    }

    /// Blocks until SIGTERM or SIGINT (when signals are handled).
    pub fn wait_for_shutdown_signal(&self) {
        let _ = self.shutdown.recv();
    }

    /// Stops every control task and joins the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

async fn main(
    control: Arc<Control>,
    admin: std::net::TcpListener,
    signals: bool,
    poll: Option<Duration>,
    stop: oneshot::Receiver<()>,
    shutdown_tx: std::sync::mpsc::Sender<()>,
    started: std::sync::mpsc::Sender<()>,
) {
    // Installed here, synchronously, before start-up is reported complete.
    let signals = if signals { Signals::install() } else { None };
    let admin = match tokio::net::TcpListener::from_std(admin) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "admin API listener failed");
            return;
        }
    };
    tokio::spawn(super::admin::serve(admin, control.clone()));
    tokio::spawn(super::health::run(control.state.clone()));
    tokio::spawn(super::discovery::supervise(control.state.clone()));
    tokio::spawn(super::cloudwatch::run(control.state.clone()));
    tokio::spawn(super::autoscale::supervise(control.state.clone()));
    tokio::spawn(super::certificates::run(control.clone()));
    tokio::spawn(crate::auth::jwks::run(control.state.clone()));
    tokio::spawn(super::stats::run(control.clone()));
    if let Some(every) = poll.filter(|d| !d.is_zero()) {
        tokio::spawn(super::source::poll(control.clone(), control.source.clone(), every));
    }
    if let Some(s) = signals {
        tokio::spawn(s.run(control.clone(), shutdown_tx));
    }
    let _ = started.send(());
    let _ = stop.await;
}

/// The process's signal handlers: SIGHUP reloads, SIGTERM/SIGINT start the shutdown.
struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(hup), Ok(term), Ok(int)) => Some(Signals { hup, term, int }),
            _ => {
                tracing::error!("cannot install signal handlers");
                None
            }
        }
    }

    #[cfg(not(unix))]
    fn install() -> Option<Signals> {
        Some(Signals {})
    }

    #[cfg(unix)]
    async fn run(mut self, control: Arc<Control>, shutdown_tx: std::sync::mpsc::Sender<()>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    control.reload().await;
                }
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutdown signal received");
        let _ = shutdown_tx.send(());
    }

    #[cfg(not(unix))]
    async fn run(self, _control: Arc<Control>, shutdown_tx: std::sync::mpsc::Sender<()>) {
        let _ = tokio::signal::ctrl_c().await;
        let _ = shutdown_tx.send(());
    }
}
