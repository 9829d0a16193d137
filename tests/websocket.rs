//! WebSocket through pilotfish with a real client and server (tokio-tungstenite): over an http
//! and an https listener, to plaintext and HTTPS targets; the upgraded connection is a byte
//! tunnel both ways, counted in flight while open, and cut when silent for `idle_timeout`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{recording_client, Ca, ECDSA};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that greets each client, then echoes every message; TLS when given.
async fn ws_backend(tls: Option<tokio_rustls::TlsAcceptor>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    Some(a) => match a.accept(s).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(s),
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else { return };
                let _ = ws.send(Message::text("hello from the target")).await;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-ws-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn in_flight(lb: &Lb, group: &str, addr: std::net::SocketAddr) -> u64 {
    target_entry(lb, group, addr).await.and_then(|t| t["in_flight"].as_u64()).unwrap_or(u64::MAX)
}

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a message").expect("open").unwrap()
}

/// Sends a text and a binary message and expects them echoed after the greeting.
async fn talk<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(next(ws).await, Message::text("hello from the target"), "{what}");
    ws.send(Message::text(format!("ping {what}"))).await.unwrap();
    assert_eq!(next(ws).await, Message::text(format!("ping {what}")), "{what}");
    let big = vec![7u8; 100_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(ws).await, Message::binary(big), "{what}: a message larger than a buffer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_tunnel_over_http_and_https_to_plain_and_tls_targets() {
    let dir = tmp("tunnel");
    let ca = Ca::new("ws test CA");
    let front = ca.issue(&["lb.test"], &ECDSA);
    let (fc, fk) = front.write(&dir, "front");
    let back = ca.issue(&["backend.test"], &ECDSA);
    let plain = ws_backend(None).await;
    let secure = ws_backend(Some(common::tls::acceptor(&back.cert, &back.key))).await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let lb = Lb::start(&format!(
        r#"
[[certificates]]
name = "front"
cert = "{fc}"
key = "{fk}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "plain" }}

[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["front"]
default_action = {{ forward = "plain" }}

[[rules]]
name = "secure"
listeners = ["web", "tls"]
priority = 1
path = ["/secure"]
forward = "secure"

[[target_groups]]
name = "plain"
targets = ["{plain}"]

[[target_groups]]
name = "secure"
targets = ["{secure}"]
tls = {{ ca = "{ca}", server_name = "backend.test" }}
"#,
        ca = ca_file.display()
    ));

    // ws:// to a plaintext target, counted in flight while open.
    let s = TcpStream::connect(lb.addr("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/chat", lb.addr("web")), s).await.unwrap();
    assert_eq!(resp.status(), 101);
    talk(&mut ws, "ws").await;
    assert_eq!(in_flight(&lb, "plain", plain).await, 1, "an open tunnel is in flight");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // The target closed its side; the tunnel passes that on and ends when the client closes too.
    drop(ws);
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
            in_flight(&lb, "plain", plain).await == 0
        })
        .await
    );

    // ws:// to an HTTPS target.
    let s = TcpStream::connect(lb.addr("web")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/secure", lb.addr("web")), s).await.unwrap();
    talk(&mut ws, "ws to https").await;

    // wss:// through the https listener, to both.
    let (cfg, _) = recording_client(&["http/1.1"], false);
    for (path, what) in [("/chat", "wss"), ("/secure", "wss to https")] {
        let tcp = TcpStream::connect(lb.addr("tls")).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&cfg))
            .connect(ServerName::try_from("lb.test").unwrap(), tcp)
            .await
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://lb.test{path}"), tls).await.unwrap();
        assert_eq!(resp.status(), 101, "{what}");
        talk(&mut ws, what).await;
    }

    // The access log has the tunnel with its status.
    assert!(
        eventually(Duration::from_secs(5), || lb
            .log
            .lines()
            .iter()
            .any(|l| l["status"] == 101 && l["path"] == "/chat"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_cut_after_idle_timeout() {
    let plain = ws_backend(None).await;
    let lb = Lb::start(&format!(
        "[server]\nidle_timeout = \"1s\"\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_action = {{ forward = \"g\" }}\n[[target_groups]]\nname = \"g\"\ntargets = [\"{plain}\"]\n"
    ));
    let s = TcpStream::connect(lb.addr("web")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/", lb.addr("web")), s).await.unwrap();
    talk(&mut ws, "before the silence").await;
    let silent = Instant::now();
    // Silent on purpose: nothing is sent until the balancer cuts the tunnel.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("the tunnel was cut");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let waited = silent.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "cut after {waited:?}");
}
