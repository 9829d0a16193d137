//! TLS termination through a real listener: SNI selection, ECDSA/RSA choice, ALPN, a real peer
//! (curl), the HTTP→HTTPS redirect, resumption across a reload, certificates reloaded from
//! disk, broken and expired certificates, HTTPS to targets, handshake error counting.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{self as t, Ca, ECDSA, RSA};
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::HandshakeKind;
use tokio::io::AsyncWriteExt;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Setup {
    dir: PathBuf,
    ca: Ca,
    be: Backend,
}

impl Setup {
    async fn new(name: &str) -> Setup {
        Setup { dir: tmp(name), ca: Ca::new("pilotfish test CA"), be: Backend::start("be").await }
    }

    /// A config with an https listener (given certificates, first = default unless `default`) and an
    /// http listener that redirects to it.
    fn config(&self, certs: &[(&str, &t::Pem)], default: Option<&str>, extra: &str) -> String {
        let mut s = String::new();
        for (name, pem) in certs {
            let (c, k) = pem.write(&self.dir, name);
            s += &format!("[[certificates]]\nname = \"{name}\"\ncert = \"{c}\"\nkey = \"{k}\"\n\n");
        }
        let names: Vec<String> = certs.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let default = default.map(|d| format!("default_certificate = \"{d}\"\n")).unwrap_or_default();
        s + &format!(
            r#"
[[listeners]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = [{}]
{default}default_action = {{ forward = "g" }}

[[target_groups]]
name = "g"
targets = ["{}"]
{extra}
"#,
            names.join(", "),
            self.be.addr
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_exact_then_wildcard_then_default_and_prefers_ecdsa() {
    let s = Setup::new("sni").await;
    let default = s.ca.issue(&["default.test"], &ECDSA);
    let exact = s.ca.issue(&["www.example.com"], &ECDSA);
    let wild = s.ca.issue(&["*.example.com"], &ECDSA);
    let dual_ec = s.ca.issue(&["dual.test"], &ECDSA);
    let dual_rsa = s.ca.issue(&["dual.test"], &RSA);
    let lb = Lb::start(&s.config(
        &[("wild", &wild), ("exact", &exact), ("default", &default), ("dual-rsa", &dual_rsa), ("dual-ec", &dual_ec)],
        Some("default"),
        "",
    ));
    let addr = lb.addr("https");
    assert_eq!(t::served_leaf(addr, Some("www.example.com"), false).await, exact.der(), "exact name");
    assert_eq!(t::served_leaf(addr, Some("WWW.Example.COM"), false).await, exact.der(), "case-insensitive");
    assert_eq!(t::served_leaf(addr, Some("api.example.com"), false).await, wild.der(), "wildcard");
    assert_eq!(t::served_leaf(addr, Some("a.b.example.com"), false).await, default.der(), "wildcards cover one label");
    assert_eq!(t::served_leaf(addr, Some("other.test"), false).await, default.der(), "no match: default");
    assert_eq!(t::served_leaf(addr, None, false).await, default.der(), "no SNI: default");
    assert_eq!(t::served_leaf(addr, Some("dual.test"), false).await, dual_ec.der(), "ECDSA when offered");
    assert_eq!(t::served_leaf(addr, Some("dual.test"), true).await, dual_rsa.der(), "RSA when ECDSA is not offered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_selects_h2_or_http1_and_forwarding_headers_say_https() {
    let s = Setup::new("alpn").await;
    let cert = s.ca.issue(&["app.test"], &ECDSA);
    let lb = Lb::start(&s.config(&[("app", &cert)], None, ""));
    let addr = lb.addr("https");

    let (cfg, _) = t::recording_client(&["h2", "http/1.1"], false);
    let tls = t::connect(addr, Some("app.test"), cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://app.test/over-h2").body(Empty::<Bytes>::new()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, http::Version::HTTP_2));

    // ALPN http/1.1, and no ALPN at all: HTTP/1.1 (HTTP/2 over TLS is negotiated, RFC 9113
    // section 3.2), as nginx and HAProxy.
    for (alpn, negotiated) in [(&["http/1.1"][..], Some(&b"http/1.1"[..])), (&[], None)] {
        let (cfg, _) = t::recording_client(alpn, false);
        let tls = t::connect(addr, Some("app.test"), cfg).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), negotiated);
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/over-h1").header("host", "app.test").body(Empty::<Bytes>::new()).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.version()), (200, http::Version::HTTP_11), "ALPN {alpn:?}");
        let seen = s.be.last();
        assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(seen.headers.get("x-forwarded-port").unwrap().to_str().unwrap(), addr.port().to_string());
    }

    // An HTTP/2 client that skips ALPN gets no HTTP/2 and reaches no target.
    let before = s.be.requests();
    let (cfg, _) = t::recording_client(&[], false);
    let tls = t::connect(addr, Some("app.test"), cfg).await.unwrap();
    let h2 = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .expect("answered or closed within 5 s");
    if let Ok((mut tx, conn)) = h2 {
        tokio::spawn(conn);
        let req = http::Request::get("https://app.test/h2-no-alpn").body(Empty::<Bytes>::new()).unwrap();
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), tx.send_request(req)).await;
        assert!(!matches!(sent, Ok(Ok(_))), "HTTP/2 without ALPN was served: {sent:?}");
    }
    assert_eq!(s.be.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_verifies_and_follows_the_http_to_https_redirect() {
    let s = Setup::new("curl").await;
    let cert = s.ca.issue(&["shop.test"], &ECDSA);
    let ca_file = s.dir.join("ca.pem");
    std::fs::write(&ca_file, &s.ca.pem).unwrap();
    // Bind the https listener first to learn its port, then add the redirecting http listener.
    let base = s.config(&[("shop", &cert)], None, "");
    let lb = Lb::start(&base);
    let https = lb.addr("https");
    let with_redirect = format!(
        "[server]\nadmin_bind = \"127.0.0.1:0\"\n{base}\n[[listeners]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n\n[[rules]]\nname = \"to-https\"\nlisteners = [\"http\"]\npriority = 1\nredirect = {{ protocol = \"https\", port = {}, status = 301 }}\n",
        https.port()
    );
    let out = lb.server.control().reload_text("test.toml", &with_redirect);
    assert!(out.ok(), "{:?}", out.errors);
    let http = lb.addr("http");
    let r = get_with(&client(), &format!("http://{http}/cart?id=1"), &[("host", "shop.test")]).await;
    assert_eq!(r.status.as_u16(), 301);
    assert_eq!(r.header("location"), Some(format!("https://shop.test:{}/cart?id=1", https.port()).as_str()));

    // curl is the real peer: it verifies the chain against our CA and the name, then follows.
    let out = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("shop.test:{}:127.0.0.1", https.port())])
        .args(["--resolve", &format!("shop.test:{}:127.0.0.1", http.port())])
        .args(["-w", "\n%{http_code} %{http_version} %{ssl_verify_result}"])
        .arg(format!("http://shop.test:{}/cart?id=1", http.port()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.ends_with("\n200 2 0"), "body, status, HTTP/2 over TLS, verify ok: {text:?}");
    assert!(text.starts_with("be"), "{text}");
    assert_eq!(s.be.last().uri, "/cart?id=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_a_reload() {
    let s = Setup::new("resume").await;
    let cert = s.ca.issue(&["app.test"], &ECDSA);
    let cfg_text = s.config(&[("app", &cert)], None, "");
    let lb = Lb::start(&cfg_text);
    let addr = lb.addr("https");
    let (cfg, _) = t::recording_client(&["http/1.1"], false);

    async fn one_request(
        addr: std::net::SocketAddr,
        cfg: std::sync::Arc<rustls::ClientConfig>,
    ) -> Option<HandshakeKind> {
        let tls = t::connect(addr, Some("app.test"), cfg).await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "app.test")
            .header("connection", "close")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
        let _ = conn.await; // reads the session tickets the server sent after the handshake
        kind
    }
    assert_eq!(one_request(addr, cfg.clone()).await, Some(HandshakeKind::Full));
    assert_eq!(one_request(addr, cfg.clone()).await, Some(HandshakeKind::Resumed));
    let out = lb.server.control().reload_text("test.toml", &cfg_text);
    assert!(out.ok());
    assert_eq!(one_request(addr, cfg.clone()).await, Some(HandshakeKind::Resumed), "tickets survive the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_from_disk_and_a_broken_key_keeps_the_old_one() {
    let s = Setup::new("reload").await;
    let first = s.ca.issue(&["app.test"], &ECDSA);
    let cfg_text = s.config(&[("app", &first)], None, "");
    let lb = Lb::start(&cfg_text);
    let addr = lb.addr("https");
    assert_eq!(t::served_leaf(addr, Some("app.test"), false).await, first.der());

    // Replace the files on disk, same config text: the reload re-reads them.
    let second = s.ca.issue(&["app.test"], &ECDSA);
    second.write(&s.dir, "app");
    let out = lb.server.control().reload_text("test.toml", &cfg_text);
    assert!(out.ok(), "{:?}", out.errors);
    assert_eq!(t::served_leaf(addr, Some("app.test"), false).await, second.der());

    // A key that does not match: the reload fails naming the certificate and file, old one serves.
    let other = s.ca.issue(&["app.test"], &ECDSA);
    std::fs::write(s.dir.join("app.key"), &other.key).unwrap();
    let out = lb.server.control().reload_text("test.toml", &cfg_text);
    assert!(!out.ok());
    let msg = out.errors[0].to_string();
    assert!(msg.contains("certificate \"app\"") && msg.contains("does not match") && msg.contains("app.key"), "{msg}");
    assert_eq!(t::served_leaf(addr, Some("app.test"), false).await, second.der());

    // A missing file likewise.
    std::fs::remove_file(s.dir.join("app.crt")).unwrap();
    let out = lb.server.control().reload_text("test.toml", &cfg_text);
    assert!(!out.ok() && out.errors[0].to_string().contains("app.crt"), "{:?}", out.errors);
    assert_eq!(t::served_leaf(addr, Some("app.test"), false).await, second.der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_errors_and_expiring_ones_warnings() {
    let s = Setup::new("expiry").await;
    let now = time::OffsetDateTime::now_utc();
    let expired = s.ca.issue_until(&["old.test"], &ECDSA, now - time::Duration::days(1));
    let soon = s.ca.issue_until(&["soon.test"], &ECDSA, now + time::Duration::days(5));
    let good = s.ca.issue(&["good.test"], &ECDSA);
    let lb = Lb::start(&s.config(&[("good", &good)], None, ""));
    let out = lb.server.control().reload_text("test.toml", &s.config(&[("good", &good), ("old", &expired)], None, ""));
    assert!(!out.ok());
    assert!(
        out.errors[0].to_string().contains("certificate \"old\"") && out.errors[0].to_string().contains("expired"),
        "{:?}",
        out.errors
    );
    let out = lb.server.control().reload_text("test.toml", &s.config(&[("good", &good), ("soon", &soon)], None, ""));
    assert!(out.ok(), "{:?}", out.errors);
    assert!(out.warnings.iter().any(|w| w.to_string().contains("less than 14 days")), "{:?}", out.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_targets_verifies_their_certificates() {
    let s = Setup::new("upstream").await;
    let backend_cert = s.ca.issue(&["backend.test"], &ECDSA);
    let secure = Backend::start_tls("secure", &backend_cert.cert, &backend_cert.key).await;
    let rogue_ca = Ca::new("someone else");
    let rogue_cert = rogue_ca.issue(&["backend.test"], &ECDSA);
    let rogue = Backend::start_tls("rogue", &rogue_cert.cert, &rogue_cert.key).await;
    let ca_file = s.dir.join("ca.pem");
    std::fs::write(&ca_file, &s.ca.pem).unwrap();
    let cfg = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[rules]]
name = "secure"
listeners = ["web"]
priority = 1
path = ["/secure/*"]
forward = "secure"

[[rules]]
name = "secure-h2"
listeners = ["web"]
priority = 2
path = ["/h2/*"]
forward = "secure-h2"

[[rules]]
name = "rogue"
listeners = ["web"]
priority = 3
path = ["/rogue/*"]
forward = "rogue"

[[target_groups]]
name = "secure"
targets = ["{secure}"]
tls = {{ ca = "{ca}", server_name = "backend.test" }}

[[target_groups]]
name = "secure-h2"
protocol = "http2"
targets = ["{secure}"]
tls = {{ ca = "{ca}", server_name = "backend.test" }}

[[target_groups]]
name = "rogue"
retries = 0
targets = ["{rogue}"]
tls = {{ ca = "{ca}", server_name = "backend.test" }}
"#,
        secure = secure.addr,
        rogue = rogue.addr,
        ca = ca_file.display()
    );
    let lb = Lb::start(&cfg);
    let c = client();
    let r = get(&c, &lb.url("web", "/secure/x")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "secure"));
    assert_eq!(secure.last().version, http::Version::HTTP_11);
    let r = get(&c, &lb.url("web", "/h2/x")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "secure"));
    assert_eq!(secure.last().version, http::Version::HTTP_2, "ALPN h2 to the target");
    let r = get(&c, &lb.url("web", "/rogue/x")).await;
    assert_eq!(r.status.as_u16(), 502, "a target whose certificate does not verify is refused");
    assert_eq!(rogue.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted() {
    let s = Setup::new("hserr").await;
    let cert = s.ca.issue(&["app.test"], &ECDSA);
    let lb = Lb::start(&s.config(&[("app", &cert)], None, ""));
    let mut raw = tokio::net::TcpStream::connect(lb.addr("https")).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: plaintext.test\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf)).await;
    let line = "pilotfish_tls_handshake_errors_total{listener=\"https\"} 1";
    assert!(wait_metric(&lb, line, Duration::from_secs(5)).await, "{line} never appeared");
    assert_eq!(s.be.requests(), 0);
}

#[test]
fn check_warns_when_a_rule_host_has_no_certificate() {
    let dir = tmp("check");
    let ca = Ca::new("ca");
    let cert = ca.issue(&["*.example.com"], &ECDSA);
    cert.write(&dir, "wild");
    let cfg = dir.join("pilotfish.toml");
    std::fs::write(
        &cfg,
        "[[certificates]]\nname = \"wild\"\ncert = \"wild.crt\"\nkey = \"wild.key\"\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\ncertificates = [\"wild\"]\n\n[[rules]]\nname = \"r\"\nlisteners = [\"https\"]\npriority = 1\nhost = [\"api.example.com\", \"example.org\"]\nfixed_response = { status = 200 }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pilotfish")).args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "relative certificate paths resolve against the config's folder: {err}");
    assert!(err.contains("warning: rule \"r\": host \"example.org\" is not covered"), "{err}");
    assert!(!err.contains("\"api.example.com\" is not covered"), "{err}");
}
