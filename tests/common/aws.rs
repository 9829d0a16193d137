//! moto_server, the AWS emulator, started on a free loopback port for one test and stopped by its
//! PID on drop; seeded with boto3 from the same venv (`tests/aws/seed.py`). `make test` creates
//! the venv (`.venv` at the repository root, or `PILOTFISH_VENV`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn venv() -> PathBuf {
    std::env::var_os("PILOTFISH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"))
}

/// Credentials and region the SDK inside pilotfish picks up from the environment (moto accepts
/// any). Every test sets the same values, so parallel tests agree.
pub fn aws_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// A running moto_server.
pub struct Moto {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut m = Moto { addr: SocketAddr::from(([127, 0, 0, 1], port)), child: None };
        m.spawn();
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self) {
        let bin = venv().join("bin/moto_server");
        assert!(bin.exists(), "{} is missing: run `make test` (it creates the venv with moto[server])", bin.display());
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "moto_server did not start on {}", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills moto (an AWS outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts moto again on the same port (with empty state).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs one seeding command (see `tests/aws/seed.py`) and returns its JSON result.
    pub fn seed(&self, cmd: serde_json::Value) -> serde_json::Value {
        let out = Command::new(venv().join("bin/python"))
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/seed.py"))
            .arg(self.endpoint())
            .arg(cmd.to_string())
            .output()
            .expect("run seed.py");
        assert!(out.status.success(), "seed {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("seed.py prints JSON")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
