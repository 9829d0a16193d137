//! The pilotfish binary run as a real process.
//!
//! Every listener and the admin API should bind port 0: pilotfish logs the address it got
//! (`listening listener=NAME local=ADDR`, `pilotfish is serving admin=ADDR`), and the harness
//! reads it from the log, for as long as the process runs (a reload that binds a listener logs
//! it the same way; one that removes it logs `listener closed listener=NAME`). No port is ever
//! picked by the test and handed over, which would race with every other process on the host.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::poll_until;

/// What the log said so far: the listeners bound now (by name), and whether stderr ended.
#[derive(Default)]
struct Log {
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    ended: bool,
}

/// `pilotfish run` as a child process; killed by its PID on drop.
pub struct Proc {
    pub child: Child,
    pub admin: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of field `key` (`key=value`) in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Proc {
    /// Runs `pilotfish run` and waits (bounded) until it is serving; the bound addresses come
    /// from its log. stderr is kept beside the config (`*.stderr.log`).
    pub async fn run(config: &std::path::Path) -> Proc {
        Proc::run_with(&[std::ffi::OsStr::new("-c"), config.as_os_str()], &[], &config.with_extension("stderr.log"))
            .await
    }

    /// Runs `pilotfish run ARGS` with `env` added; stderr goes to `log_path`.
    pub async fn run_with(args: &[&std::ffi::OsStr], env: &[(&str, &str)], log_path: &std::path::Path) -> Proc {
        let config = log_path;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pilotfish"))
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        // Reads stderr for the process's whole life (so it never blocks on a full pipe), keeping
        // the listener table current.
        let (l, log_path) = (log.clone(), log_path.to_path_buf());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let mut log = l.lock().unwrap();
                let name = field(&line, "listener").map(str::to_string);
                if line.split_whitespace().any(|w| w == "listening") {
                    if let (Some(name), Some(local)) = (name, field(&line, "local")) {
                        log.listeners.insert(name, local.parse().expect("listening local=ADDR"));
                    }
                } else if line.contains("listener closed") {
                    if let Some(name) = name {
                        log.listeners.remove(&name);
                    }
                } else if line.contains("pilotfish is serving") {
                    log.admin = field(&line, "admin").map(|a| a.parse().expect("serving admin=ADDR"));
                }
            }
            l.lock().unwrap().ended = true;
        });
        let up = poll_until(Duration::from_secs(20), Duration::from_millis(10), || {
            let log = log.lock().unwrap();
            std::future::ready(log.admin.is_some() || log.ended)
        })
        .await;
        let admin = log.lock().unwrap().admin;
        let Some(admin) = admin else {
            let _ = child.kill();
            let _ = child.wait();
            let why = if up { "pilotfish exited before serving" } else { "pilotfish was not serving within 20 s" };
            panic!("{why}; see {}", config.display());
        };
        Proc { child, admin, log }
    }

    /// The address listener `name` is bound to now, as logged.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.log.lock().unwrap().listeners.get(name).copied()
    }

    /// The address of listener `name`, which must be bound.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listener(name).unwrap_or_else(|| panic!("listener {name:?} is not bound"))
    }

    /// Sends `signal` (e.g. "HUP") by PID.
    pub fn signal(&self, signal: &str) {
        let ok =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap().success();
        assert!(ok, "kill -{signal}");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut status = None;
        let exited = poll_until(within, Duration::from_millis(20), || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        assert!(exited, "pilotfish did not exit within {within:?}");
        status.unwrap().code()
    }
}
