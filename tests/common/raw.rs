//! Raw-socket peers: a target that answers with scripted bytes (to misbehave exactly), and
//! client helpers that send bytes and read what comes back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the scripted target does after a request's head arrived.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Bytes written back (they may be anything).
    pub bytes: Vec<u8>,
    /// Read the request's body (by Content-Length) before answering.
    pub read_body: bool,
    pub then: Then,
}

/// What the connection does after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Serve the next request.
    KeepOpen,
    Close,
    /// Stay open and silent (a target stalled mid-body).
    Stall,
}

impl Reply {
    /// `HTTP/1.1 200 OK` with body `ok`, kept alive.
    pub fn ok() -> Reply {
        Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Then::KeepOpen)
    }

    pub fn raw(bytes: &[u8], then: Then) -> Reply {
        Reply { bytes: bytes.to_vec(), read_body: true, then }
    }
}

/// Each request's raw bytes, with the index of the connection it came on.
pub type Seen = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A raw TCP target: each request gets the next scripted reply, then [`Reply::ok`] for ever.
/// With `hang_up_on_reuse`, a connection serves one request and closes, without answering, when
/// the next one arrives on it (a keep-alive timeout racing a request).
pub struct Scripted {
    pub addr: SocketAddr,
    /// Each request's raw head (and body when read), with the index of its connection.
    pub seen: Seen,
    pub connections: Arc<AtomicUsize>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

impl Scripted {
    pub async fn start(script: Vec<Reply>, hang_up_on_reuse: bool) -> Scripted {
        Self::start_with(script, hang_up_on_reuse, None).await
    }

    /// A target that closes each connection left idle for `idle` (a short keep-alive timeout).
    pub async fn closing_idle(idle: Duration) -> Scripted {
        Self::start_with(Vec::new(), false, Some(idle)).await
    }

    async fn start_with(script: Vec<Reply>, hang_up_on_reuse: bool, idle: Option<Duration>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (s, c, q) = (seen.clone(), connections.clone(), script.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let (s, q) = (s.clone(), q.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        // One request head.
                        let head_end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            let read = stream.read(&mut chunk);
                            let read = match idle {
                                Some(idle) if buf.is_empty() => match tokio::time::timeout(idle, read).await {
                                    Ok(r) => r,
                                    Err(_) => return,
                                },
                                _ => read.await,
                            };
                            match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        if hang_up_on_reuse && served == 1 {
                            return;
                        }
                        let reply = q.lock().unwrap().pop_front().unwrap_or_else(Reply::ok);
                        let mut end = head_end;
                        if reply.read_body {
                            end += content_length(&buf[..head_end]);
                            while buf.len() < end {
                                let mut chunk = [0u8; 4096];
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                        }
                        s.lock().unwrap().push((conn, buf[..end.min(buf.len())].to_vec()));
                        buf.drain(..end.min(buf.len()));
                        if stream.write_all(&reply.bytes).await.is_err() {
                            return;
                        }
                        served += 1;
                        match reply.then {
                            Then::KeepOpen => {}
                            Then::Close => return,
                            Then::Stall => {
                                // Stalled on purpose (the behaviour under test): open and silent
                                // until the test drops the target.
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Scripted { addr, seen, connections, script, task }
    }

    /// Queues more replies.
    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request's raw bytes as text.
    pub fn last(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap().last().expect("a request").1).into_owned()
    }
}

/// Sends `bytes` on a new connection and reads until the server closes (bounded by 10 s).
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s).await
}

/// Reads until the peer closes (bounded by 10 s).
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response whose body has `Content-Length` (or none) from a keep-alive connection
/// (bounded by 10 s); returns its text.
pub async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = async {
        loop {
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let len = content_length(&got[..p + 4]);
                if got.len() >= p + 4 + len {
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&got).into_owned()
}
