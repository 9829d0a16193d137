//! A real DNS server for the discovery tests: Debian's dnsmasq (package `dnsmasq-base`), run
//! on a loopback port with its own configuration, authoritative for `pf.test` and forwarding
//! nothing. Its records change by restarting it on the same port with new ones (dnsmasq reads
//! `host-record` / `srv-host` only at start). Stopped by its PID on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs dnsmasq (`/usr/sbin` is not on every user's PATH).
const CANDIDATES: [&str; 3] = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/usr/local/sbin/dnsmasq"];

/// The dnsmasq binary, if installed.
pub fn binary() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
    ttl: u32,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Dnsmasq {
    /// Starts dnsmasq serving `records` (dnsmasq configuration lines: `host-record=...`,
    /// `srv-host=...`) with answers valid for `ttl` seconds. `None`, with a message saying
    /// what to install, when dnsmasq is not installed — unless `PILOTFISH_REQUIRE_DNSMASQ` is
    /// set (CI), where its absence fails the test.
    pub fn start(name: &str, records: &[String], ttl: u32) -> Option<Dnsmasq> {
        if binary().is_none() {
            assert!(
                std::env::var_os("PILOTFISH_REQUIRE_DNSMASQ").is_none(),
                "dnsmasq is not installed (Debian: apt-get install dnsmasq-base) and PILOTFISH_REQUIRE_DNSMASQ is set"
            );
            eprintln!("SKIPPED: the DNS discovery tests need dnsmasq (Debian: apt-get install dnsmasq-base)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pilotfish-dns-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // dnsmasq cannot bind port 0 and say which it got: take a free port and hand it over,
        // trying again (bounded) if something else took it meanwhile.
        for _ in 0..10 {
            let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut d = Dnsmasq { child: None, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir: dir.clone(), ttl };
            if d.spawn(records) {
                return Some(d);
            }
        }
        panic!("dnsmasq did not start on a free loopback port (see {})", dir.display());
    }

    /// Serves `records` from now on (a restart on the same address; queries in between fail,
    /// which the discovery loop must survive).
    pub fn set(&mut self, records: &[String]) {
        // Blocking (a process start): off the async worker's hands.
        tokio::task::block_in_place(|| {
            self.stop();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.spawn(records) {
                assert!(Instant::now() < deadline, "dnsmasq did not restart on {}", self.addr);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts dnsmasq on `self.addr`; false if it could not bind there.
    fn spawn(&mut self, records: &[String]) -> bool {
        let conf = self.dir.join("dnsmasq.conf");
        let mut lines = vec![
            format!("port={}", self.addr.port()),
            "listen-address=127.0.0.1".into(),
            "bind-interfaces".into(),
            "no-resolv".into(),
            "no-hosts".into(),
            "no-poll".into(),
            // Authoritative for pf.test: a name it does not know is NXDOMAIN, never forwarded.
            "local=/pf.test/".into(),
            format!("local-ttl={}", self.ttl),
            format!("auth-ttl={}", self.ttl),
            "log-facility=-".into(),
            "log-queries".into(),
            "pid-file=".into(),
        ];
        lines.extend(records.iter().cloned());
        std::fs::write(&conf, lines.join("\n") + "\n").unwrap();
        let mut cmd = Command::new(binary().unwrap());
        cmd.arg("--keep-in-foreground").arg(format!("--conf-file={}", conf.display()));
        // As root dnsmasq would switch to `nobody`; stay who we are.
        if is_root() {
            cmd.arg("--user=root");
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start dnsmasq");
        let stderr = child.stderr.take().unwrap();
        let log = self.dir.join("dnsmasq.log");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = out.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if !told && (line.contains("started, version") || line.contains("failed")) {
                    told = true;
                    let _ = tx.send(line.contains("started, version"));
                }
            }
            if !told {
                let _ = tx.send(false);
            }
        });
        let started = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        if started {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        started
    }
}

/// Whether this process runs as root (uid 0), read from /proc (no libc call).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
