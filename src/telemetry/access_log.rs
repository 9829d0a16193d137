//! The JSON access log: one line per request on stdout (the awslogs → CloudWatch Logs
//! convention). Requests hand a record to a bounded channel and never wait: a dedicated thread
//! formats and writes with a buffered stdout, flushing whenever the channel runs dry. If the writer
//! falls behind, records are dropped and counted (`pilotfish_access_log_dropped_total`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::metrics::Metrics;

/// One request's access log record.
#[derive(Debug, Serialize)]
pub struct Record {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    pub rule: Option<Box<str>>,
    pub target_group: Option<Arc<str>>,
    pub target: Option<SocketAddr>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub request_processing_time: f64,
    pub target_processing_time: Option<f64>,
    pub response_processing_time: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub error: Option<&'static str>,
    /// Who the client proved to be (mutual TLS, JWT); left out when neither applies.
    #[serde(skip_serializing_if = "Auth::is_empty")]
    pub auth: Auth,
}

/// The `auth` field of an access log line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Auth {
    /// `verified` or `passthrough`: the connection presented a client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<&'static str>,
    /// The verified client certificate's subject (RFC 2253).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `valid`, or why the rule's token check refused the request (`missing`, `expired`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<&'static str>,
}

impl Auth {
    fn is_empty(&self) -> bool {
        self.mtls.is_none() && self.jwt.is_none()
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// Seconds as f64 for log fields.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

enum Msg {
    Record(Box<Record>),
    /// Write out what is queued, then answer.
    Flush(SyncSender<()>),
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

/// Records buffered before new ones are dropped.
const CAPACITY: usize = 16 * 1024;

impl AccessLog {
    /// Starts the writer thread writing to `out` (stdout in production).
    pub fn start(metrics: Arc<Metrics>, out: Box<dyn Write + Send>) -> AccessLog {
        let (tx, rx) = sync_channel(CAPACITY);
        std::thread::Builder::new()
            .name("pilotfish-access-log".into())
            .spawn(move || writer(rx, out))
            .expect("spawn access log thread");
        AccessLog { tx, metrics }
    }

    /// Queues a record without blocking.
    pub fn log(&self, r: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Record(Box::new(r))) {
            self.metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `within`) until every record queued so far is written: at exit, so the
    /// lines of requests cut by the end of the drain are not lost with the process.
    pub fn flush(&self, within: Duration) {
        let (done, wait) = sync_channel(1);
        // The writer never waits for anything but stdout, so a full queue empties quickly.
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Record(r) => {
                    if serde_json::to_writer(&mut out, &r).is_ok() {
                        let _ = out.write_all(b"\n");
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}
