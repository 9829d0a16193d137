//! The pilotfish binary run as a real process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `pilotfish run` as a child process; killed by its PID on drop.
pub struct Proc {
    pub child: Child,
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Runs `pilotfish run` and reads the bound addresses (of the first listener and the admin API) from its log.
    pub fn run(config: &std::path::Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pilotfish"))
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut web, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin.is_none() && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let field = |k: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(|v| v.parse::<SocketAddr>().unwrap())
            };
            if line.contains("listening") && web.is_none() {
                web = field("local=");
            }
            if line.contains("pilotfish is serving") {
                admin = field("admin=");
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe; keep it beside the config.
        let log_path = config.with_extension("stderr.log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log_path).ok();
            for l in lines.map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
            }
        });
        Proc { child, web: web.expect("listener address in log"), admin: admin.expect("admin address in log") }
    }

    /// Sends `signal` (e.g. "HUP") by PID.
    pub fn signal(&self, signal: &str) {
        let ok =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap().success();
        assert!(ok, "kill -{signal}");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "pilotfish did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
