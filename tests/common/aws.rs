//! moto_server, the AWS emulator, started on a loopback port of its choosing for one test (behind
//! a proxy the test owns, see [`Moto`]) and stopped by its PID on drop; seeded with boto3 from
//! the same venv (`tests/aws/seed.py`). `make test` creates the venv (`.venv` at the repository
//! root, or `PILOTFISH_VENV`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::poll_until;

/// The test venv (moto_server, cfn-lint): `PILOTFISH_VENV`, else `.venv` in the repository.
pub fn venv() -> PathBuf {
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

/// A running moto_server, behind a loopback proxy that the test owns.
///
/// moto binds port 0 itself and prints the port it got, which is read from its stderr. pilotfish
/// is given the proxy's address ([`Moto::endpoint`]), whose socket is bound once and kept until
/// drop: an outage ([`Moto::stop`]) and a restart (a new moto, on a new port of its own) keep
/// that endpoint without ever re-binding a port that something else may have taken meanwhile.
pub struct Moto {
    /// The proxy's address: what pilotfish talks to.
    pub addr: SocketAddr,
    /// moto's own address; None during an outage (the proxy then closes every connection).
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    child: Option<Child>,
    proxy: JoinHandle<()>,
}

impl Moto {
    pub async fn start() -> Moto {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = upstream.clone();
        let proxy = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let to = *up.lock().unwrap();
                tokio::spawn(async move {
                    // During an outage, or if moto is gone, the connection is closed unanswered.
                    let Some(to) = to else { return };
                    let Ok(mut moto) = TcpStream::connect(to).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut moto).await;
                });
            }
        });
        let mut m = Moto { addr, upstream, child: None, proxy };
        m.spawn().await;
        m
    }

    /// The endpoint pilotfish is configured with (the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// moto's own endpoint (for seeding; it changes on a restart).
    fn moto_endpoint(&self) -> String {
        format!("http://{}", self.upstream.lock().unwrap().expect("moto is running"))
    }

    /// Starts a moto_server on a port of its own and points the proxy at it.
    async fn spawn(&mut self) {
        let bin = venv().join("bin/moto_server");
        assert!(bin.exists(), "{} is missing: run `make test` (it creates the venv with moto[server])", bin.display());
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        // werkzeug prints " * Running on http://127.0.0.1:PORT" once the socket is listening,
        // then a line per request: keep reading, so moto never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let bound: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let b = bound.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split_once("Running on http://").and_then(|(_, a)| a.trim().parse().ok()) {
                    *b.lock().unwrap() = Some(a);
                }
            }
        });
        self.child = Some(child);
        let up = poll_until(Duration::from_secs(30), Duration::from_millis(20), || {
            std::future::ready(bound.lock().unwrap().is_some())
        })
        .await;
        assert!(up, "moto_server did not report its address within 30 s");
        *self.upstream.lock().unwrap() = *bound.lock().unwrap();
    }

    /// Kills moto (an AWS outage): the endpoint still accepts connections, and closes them.
    pub fn stop(&mut self) {
        *self.upstream.lock().unwrap() = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new moto (with empty state) behind the same endpoint.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Runs one seeding command (see `tests/aws/seed.py`) and returns its JSON result.
    pub fn seed(&self, cmd: serde_json::Value) -> serde_json::Value {
        let out = Command::new(venv().join("bin/python"))
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/seed.py"))
            .arg(self.moto_endpoint())
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
        self.proxy.abort();
    }
}
