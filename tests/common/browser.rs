//! A real headless browser for the dashboard tests: Debian's chromium, driven through the
//! Chrome DevTools Protocol over its WebSocket (tokio-tungstenite), started with a profile of its
//! own on a loopback debugging port it picks (read from `DevToolsActivePort`), stopped by its PID
//! on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CANDIDATES: [&str; 3] = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/// The browser binary, if installed.
pub fn binary() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The chromium process group and its profile: killed (the whole group, renderers included,
/// by the leader's PID) and removed on drop, from the moment it is spawned.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The group's id is the leader's PID (process_group(0) below).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running headless chromium with one page attached.
pub struct Browser {
    ws: WebSocketStream<TcpStream>,
    session: String,
    next: u64,
    // Last: the connection closes before the process goes.
    _running: Running,
}

impl Browser {
    /// Starts chromium with a `width` x `height` window and opens `url` in a page. `None`, with
    /// a message saying what to install, when chromium is not installed — unless
    /// `PILOTFISH_REQUIRE_CHROMIUM` is set (CI), where its absence fails the test.
    pub async fn open(name: &str, url: &str, width: u32, height: u32) -> Option<Browser> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("PILOTFISH_REQUIRE_CHROMIUM").is_none(),
                "chromium is not installed (Debian: apt-get install chromium) and PILOTFISH_REQUIRE_CHROMIUM is set"
            );
            eprintln!("SKIPPED: the dashboard browser tests need chromium (Debian: apt-get install chromium)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("pilotfish-browser-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin)
            .process_group(0)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", dir.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let running = Running { child, dir: dir.clone() };
        // chromium writes its port and browser path once it listens.
        let file = dir.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(p), Some(path)) = (lines.next(), lines.next()) {
                    break (p.trim().parse::<u16>().unwrap(), path.trim().to_string());
                }
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp).await.unwrap();
        let mut b = Browser { ws, session: String::new(), next: 0, _running: running };
        let target = b.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true })).await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        b.page("Page.navigate", json!({ "url": url })).await;
        Some(b)
    }

    /// Sends a DevTools command (to the page's session when `session` is set) and returns its
    /// result; events in between are skipped. Bounded: 30 s.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(msg.to_string().into())).await.unwrap();
        let read = async {
            while let Some(m) = self.ws.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                    return v["result"].clone();
                }
            }
            panic!("the DevTools connection closed during {method}");
        };
        tokio::time::timeout(Duration::from_secs(30), read).await.unwrap_or_else(|_| panic!("{method} got no answer"))
    }

    /// A command to the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// The value of a JavaScript expression in the page (JSON-serializable).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .page("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }))
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until it is `true` (true) or `within` passes (false).
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(expression).await == json!(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as it is.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self.page("Page.captureScreenshot", json!({ "format": "png" })).await;
        aws_smithy_types::base64::decode(r["data"].as_str().unwrap()).unwrap()
    }
}
