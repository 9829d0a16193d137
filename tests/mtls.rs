//! Mutual TLS through a real https listener, with real rustls clients presenting certificates
//! made here (rcgen): verify mode (a good chain and the five headers the target sees, no
//! certificate, a foreign CA, a revoked and an expired certificate, expiry ignored, the CA names
//! advertised), passthrough (the chain forwarded), and forged `X-Amzn-Mtls-*` headers removed on
//! every listener.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::tls::{Ca, ECDSA};
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration as TimeDuration, OffsetDateTime};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-mtls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A client CA: a root and an intermediate under it.
struct ClientPki {
    root_pem: String,
    root_subject: Vec<u8>,
    inter_pem: String,
    inter: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "pilotfish tests");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

impl ClientPki {
    fn new(name: &str) -> ClientPki {
        let root_key = KeyPair::generate_for(&ECDSA).unwrap();
        let root_params = ca_params(&format!("{name} Root"));
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root_subject = x509_subject(root_cert.der());
        let root = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate_for(&ECDSA).unwrap();
        let inter_params = ca_params(&format!("{name} Intermediate"));
        let inter_cert = inter_params.signed_by(&inter_key, &root).unwrap();
        ClientPki {
            root_pem: root_cert.pem(),
            root_subject,
            inter_pem: inter_cert.pem(),
            inter: Issuer::new(inter_params, inter_key),
        }
    }

    /// A client certificate issued by the intermediate: `serial`, valid `from`..`until`.
    fn client(&self, cn: &str, serial: &[u8], from: OffsetDateTime, until: OffsetDateTime) -> Client {
        let key = KeyPair::generate_for(&ECDSA).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "US");
        p.distinguished_name.push(DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(SerialNumber::from_slice(serial));
        p.not_before = from;
        p.not_after = until;
        let cert = p.signed_by(&key, &self.inter).unwrap();
        Client {
            leaf: cert.der().clone(),
            chain: vec![cert.der().clone(), CertificateDer::from_pem_slice(self.inter_pem.as_bytes()).unwrap()],
            key: key.serialize_der(),
        }
    }

    /// A CRL of the intermediate revoking `serial`.
    fn crl(&self, serial: &[u8]) -> String {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - TimeDuration::hours(1),
            next_update: now + TimeDuration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: now - TimeDuration::minutes(5),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.inter)
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn x509_subject(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    x.subject().as_raw().to_vec()
}

/// A client certificate, its chain (leaf first) and key.
#[derive(Clone)]
struct Client {
    leaf: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// Presents `key` (if any) and records the CA names the server asked for.
#[derive(Debug)]
struct Presenter {
    key: Option<Arc<CertifiedKey>>,
    hints: Mutex<Option<Vec<Vec<u8>>>>,
}

impl ResolvesClientCert for Presenter {
    fn resolve(&self, hints: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        *self.hints.lock().unwrap() = Some(hints.iter().map(|h| h.to_vec()).collect());
        self.key.clone()
    }
    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `server_ca` that presents `client`, with ALPN `alpn`.
fn client_config(server_ca: &str, client: Option<&Client>, alpn: &str) -> (Arc<rustls::ClientConfig>, Arc<Presenter>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap()).unwrap();
    let key = client.map(|c| {
        let der = PrivateKeyDer::Pkcs8(c.key.clone().into());
        Arc::new(CertifiedKey::from_der(c.chain.clone(), der, &provider()).unwrap())
    });
    let presenter = Arc::new(Presenter { key, hints: Mutex::new(None) });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(presenter.clone());
    cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    (Arc::new(cfg), presenter)
}

/// One GET over a new TLS connection (HTTP/1.1 or, with `h2`, HTTP/2) with extra headers: the
/// status, or the error (the handshake's alert, as the client saw it).
async fn request(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    h2: bool,
    headers: &[(&str, &str)],
) -> Result<u16, String> {
    request_to(addr, cfg, h2, "/who", headers).await.map(|(status, _)| status)
}

/// [`request`] for `path`: the status and the body.
async fn request_to(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    h2: bool,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("{e:?}"))?;
    let mut req = http::Request::get(format!("https://app.test{path}")).header("host", "app.test");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        tx.send_request(req).await
    } else {
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        tx.send_request(req).await
    };
    let resp = resp.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok((status, body))
}

/// The error a client gets from a handshake the server refuses: with TLS 1.3 the client's side
/// completes first, so the refusal (the alert) is what the first read returns. (No request is
/// sent: unread bytes would make the server's close a reset that can destroy the alert.)
async fn refusal(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return format!("{e:?}"),
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Err(e)) => format!("{e:?}"),
        other => panic!("the handshake was not refused: {other:?}"),
    }
}

struct Setup {
    dir: PathBuf,
    server_ca: Ca,
    pki: ClientPki,
    be: Backend,
}

impl Setup {
    async fn new(name: &str) -> Setup {
        Setup {
            dir: tmp(name),
            server_ca: Ca::new("server CA"),
            pki: ClientPki::new("Clients"),
            be: Backend::start("be").await,
        }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// An https listener `mtls` with `mutual_tls = { <mtls> }` forwarding to the backend.
    fn config(&self, mtls: &str) -> String {
        let (c, k) = self.server_ca.issue(&["app.test"], &ECDSA).write(&self.dir, "server");
        format!(
            r#"
[[certificates]]
name = "app"
cert = "{c}"
key = "{k}"

[[listeners]]
name = "mtls"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["app"]
mutual_tls = {{ {mtls} }}
default_action = {{ forward = "g" }}

[[rules]]
name = "over-h2"
listeners = ["mtls"]
priority = 1
headers = {{ "x-h2-target" = ["1"] }}
forward = "g2"

[[rules]]
name = "partner"
listeners = ["mtls"]
priority = 2
path = ["/who-am-i"]
headers = {{ "x-amzn-mtls-clientcert-subject" = ["CN=client-1,*"] }}
fixed_response = {{ status = 200, body = "partner" }}

[[target_groups]]
name = "g"
targets = ["{0}"]

[[target_groups]]
name = "g2"
protocol = "http2"
targets = ["{0}"]
"#,
            self.be.addr
        )
    }
}

fn url_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_accepts_a_good_chain_and_tells_the_target_who_it_is() {
    let s = Setup::new("verify-ok").await;
    let trust = s.write("trust.pem", &s.pki.root_pem);
    let lb = Lb::start(&s.config(&format!(r#"mode = "verify", trust_store = "{trust}""#)));
    let addr = lb.addr("mtls");
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let (from, until) = (now - TimeDuration::days(1), now + TimeDuration::days(30));
    // (A serial with its high bit set: DER writes a 00 before it, which the header leaves out.)
    let client = s.pki.client("client-1", &[0x8a, 0x1b, 0x2c, 0x3d], from, until);

    for (h2, h2_target) in [(false, false), (true, false), (false, true), (true, true)] {
        let (cfg, presenter) = client_config(&s.server_ca.pem, Some(&client), if h2 { "h2" } else { "http/1.1" });
        let mut forged = vec![("x-amzn-mtls-clientcert-subject", "CN=forged"), ("X-Amzn-Mtls-Clientcert", "forged")];
        if h2_target {
            forged.push(("x-h2-target", "1"));
        }
        assert_eq!(request(addr, cfg, h2, &forged).await, Ok(200), "h2: {h2}");
        let seen = s.be.last();
        let want = if h2_target { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        assert_eq!(seen.version, want, "h2 client {h2}, h2 target {h2_target}");
        let h = |n: &str| {
            let all: Vec<_> = seen.headers.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect();
            assert_eq!(all.len(), 1, "{n}: {all:?} (h2: {h2})");
            all[0].clone()
        };
        assert_eq!(h("x-amzn-mtls-clientcert-serial-number"), "8A1B2C3D");
        assert_eq!(h("x-amzn-mtls-clientcert-subject"), r"CN=client-1,O=Acme\, Inc.,C=US");
        assert_eq!(h("x-amzn-mtls-clientcert-issuer"), "CN=Clients Intermediate,O=pilotfish tests");
        assert_eq!(
            h("x-amzn-mtls-clientcert-validity"),
            format!("NotBefore={};NotAfter={}", rfc3339(from), rfc3339(until))
        );
        let leaf = h("x-amzn-mtls-clientcert-leaf");
        assert!(leaf.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{leaf}");
        assert_eq!(CertificateDer::from_pem_slice(&url_decode(&leaf)).unwrap(), client.leaf);
        assert!(seen.headers.get("x-amzn-mtls-clientcert").is_none(), "the forged chain header is removed");
        let hints = presenter.hints.lock().unwrap().clone().expect("the server asked for a certificate");
        assert!(hints.contains(&s.pki.root_subject), "the trust store's CA names are advertised");
    }
    // Rules match on the certificate pilotfish verified, never on a client's header.
    let (cfg, _) = client_config(&s.server_ca.pem, Some(&client), "http/1.1");
    let forged = [("x-amzn-mtls-clientcert-subject", "CN=client-1,O=forged")];
    let got = request_to(addr, cfg.clone(), false, "/who-am-i", &[]).await.unwrap();
    assert_eq!(got, (200, Bytes::from_static(b"partner")));
    let other = s.pki.client("client-2", &[0x09], from, until);
    let (cfg2, _) = client_config(&s.server_ca.pem, Some(&other), "http/1.1");
    let got = request_to(addr, cfg2, false, "/who-am-i", &forged).await.unwrap();
    assert_eq!(got.0, 200);
    assert_ne!(got.1, Bytes::from_static(b"partner"), "a forged subject does not match the rule");

    // The access log says who came in.
    let logged = eventually(Duration::from_secs(5), || {
        lb.log.lines().iter().filter(|l| l["auth"]["mtls"] == "verified").count() >= 4
    })
    .await;
    assert!(logged, "{:?}", lb.log.lines());
    assert_eq!(lb.log.lines()[0]["auth"]["subject"], r"CN=client-1,O=Acme\, Inc.,C=US");

    // advertise_ca_names = false: the CertificateRequest names no CA.
    let cfg_text = s.config(&format!(r#"mode = "verify", trust_store = "{trust}", advertise_ca_names = false"#));
    assert!(lb.server.control().reload_text("test.toml", &cfg_text).ok());
    let (cfg, presenter) = client_config(&s.server_ca.pem, Some(&client), "http/1.1");
    assert_eq!(request(addr, cfg, false, &[]).await, Ok(200));
    assert_eq!(presenter.hints.lock().unwrap().clone(), Some(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_refuses_missing_foreign_revoked_and_expired_certificates() {
    let s = Setup::new("verify-refuse").await;
    let trust = s.write("trust.pem", &s.pki.root_pem);
    let revoked_serial = [0x77, 0x01];
    let crl = s.write("revoked.crl", &s.pki.crl(&revoked_serial));
    let cfg_text = s.config(&format!(r#"mode = "verify", trust_store = "{trust}", crl = ["{crl}"]"#));
    let lb = Lb::start(&cfg_text);
    let addr = lb.addr("mtls");
    let now = OffsetDateTime::now_utc();
    let good = s.pki.client("good", &[0x01], now - TimeDuration::days(1), now + TimeDuration::days(30));
    let revoked = s.pki.client("revoked", &revoked_serial, now - TimeDuration::days(1), now + TimeDuration::days(30));
    let expired = s.pki.client("expired", &[0x02], now - TimeDuration::days(60), now - TimeDuration::days(1));
    let foreign = ClientPki::new("Strangers").client(
        "stranger",
        &[0x03],
        now - TimeDuration::days(1),
        now + TimeDuration::days(30),
    );

    let (cfg, _) = client_config(&s.server_ca.pem, Some(&good), "http/1.1");
    assert_eq!(request(addr, cfg, false, &[]).await, Ok(200), "a good certificate is accepted next to the CRL");
    let served = s.be.requests();
    // Each refusal ends the handshake with the alert for it, and is counted by reason.
    for (what, client, alert, reason) in [
        ("no certificate", None, "CertificateRequired", "no_certificate"),
        ("a foreign CA", Some(&foreign), "UnknownCA", "unknown_ca"),
        ("a revoked certificate", Some(&revoked), "CertificateRevoked", "revoked"),
        ("an expired certificate", Some(&expired), "CertificateExpired", "expired"),
    ] {
        let (cfg, _) = client_config(&s.server_ca.pem, client, "http/1.1");
        let err = refusal(addr, cfg.clone()).await;
        assert!(err.contains(alert), "{what}: {err}");
        assert!(request(addr, cfg, false, &[]).await.is_err(), "{what}: a request is refused too");
        let line = format!("pilotfish_mtls_failures_total{{listener=\"mtls\",reason=\"{reason}\"}} 2");
        assert!(wait_metric(&lb, &line, Duration::from_secs(5)).await, "{what}: {line}");
    }
    assert_eq!(s.be.requests(), served, "no refused client reached the target");

    // ignore_client_certificate_expiry: the expired certificate is accepted (and the chain still
    // checked: the foreign one is not).
    let ignoring = cfg_text.replace(r#"crl = ["#, r#"ignore_client_certificate_expiry = true, crl = ["#);
    assert!(lb.server.control().reload_text("test.toml", &ignoring).ok());
    let (cfg, _) = client_config(&s.server_ca.pem, Some(&expired), "http/1.1");
    assert_eq!(request(addr, cfg, false, &[]).await, Ok(200));
    assert!(s
        .be
        .last()
        .headers
        .get("x-amzn-mtls-clientcert-subject")
        .is_some_and(|v| v == "CN=expired,O=Acme\\, Inc.,C=US"));
    let (cfg, _) = client_config(&s.server_ca.pem, Some(&foreign), "http/1.1");
    assert!(request(addr, cfg, false, &[]).await.is_err());
    let (cfg, _) = client_config(&s.server_ca.pem, Some(&revoked), "http/1.1");
    assert!(request(addr, cfg, false, &[]).await.is_err(), "revocation is still checked");
    // Expired and something else wrong: still refused, for the other reason.
    let expired_revoked =
        s.pki.client("expired-revoked", &revoked_serial, now - TimeDuration::days(60), now - TimeDuration::days(1));
    let expired_foreign = ClientPki::new("Strangers").client(
        "old-stranger",
        &[0x04],
        now - TimeDuration::days(60),
        now - TimeDuration::days(1),
    );
    for (what, c, alert) in [
        ("expired and revoked", &expired_revoked, "CertificateRevoked"),
        ("expired, foreign CA", &expired_foreign, "UnknownCA"),
    ] {
        let (cfg, _) = client_config(&s.server_ca.pem, Some(c), "http/1.1");
        let err = refusal(addr, cfg).await;
        assert!(err.contains(alert), "{what}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_forwards_the_chain_without_verifying_it() {
    let s = Setup::new("passthrough").await;
    let lb = Lb::start(&s.config(r#"mode = "passthrough""#));
    let addr = lb.addr("mtls");
    let now = OffsetDateTime::now_utc();
    // Issued by a CA pilotfish knows nothing of, and expired: passthrough verifies nothing.
    let client =
        ClientPki::new("Anyone").client("anyone", &[0x05], now - TimeDuration::days(9), now - TimeDuration::days(2));
    let (cfg, _) = client_config(&s.server_ca.pem, Some(&client), "http/1.1");
    let forged = [("x-amzn-mtls-clientcert-subject", "CN=forged")];
    assert_eq!(request(addr, cfg, false, &forged).await, Ok(200));
    let seen = s.be.last();
    let chain = seen.headers.get("x-amzn-mtls-clientcert").expect("the chain is forwarded").to_str().unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&url_decode(chain)).collect::<Result<_, _>>().unwrap();
    assert_eq!(certs, client.chain, "leaf first, then the intermediate");
    assert!(
        seen.headers.get("x-amzn-mtls-clientcert-subject").is_none(),
        "verify-mode headers are not sent, forged ones removed"
    );

    // No certificate: served, with no certificate header.
    let (cfg, _) = client_config(&s.server_ca.pem, None, "h2");
    assert_eq!(request(addr, cfg, true, &[("x-amzn-mtls-clientcert", "forged")]).await, Ok(200));
    assert!(s.be.last().headers.get("x-amzn-mtls-clientcert").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_mtls_headers_never_reach_a_target_on_any_listener() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

[[rules]]
name = "admins"
listeners = ["web"]
priority = 1
headers = {{ "x-amzn-mtls-clientcert-subject" = ["CN=admin"] }}
fixed_response = {{ status = 403, body = "matched a forged header" }}

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        be.addr
    ));
    let forged = [
        ("X-Amzn-Mtls-Clientcert-Subject", "CN=admin"),
        ("x-amzn-mtls-clientcert-serial-number", "01"),
        ("X-AMZN-MTLS-CLIENTCERT", "x"),
        ("x-amzn-mtlsish", "kept"),
    ];
    for c in [client(), h2c_client()] {
        let got = get_with(&c, &lb.url("web", "/"), &forged).await;
        assert_eq!(got.status, 200);
        let seen = be.last();
        let mtls: Vec<_> = seen.headers.keys().filter(|n| n.as_str().starts_with("x-amzn-mtls-")).collect();
        assert!(mtls.is_empty(), "{mtls:?} reached the target ({:?})", seen.version);
        assert_eq!(seen.headers.get("x-amzn-mtlsish").unwrap(), "kept", "only the X-Amzn-Mtls- family is removed");
    }
    // Nor in a trailer: the body is refused before its end reaches the target.
    let before = be.requests();
    let got = common::raw::exchange(
        lb.addr("web"),
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\nX-Amzn-Mtls-Clientcert: forged\r\n\r\n",
    )
    .await;
    assert!(!got.contains("200 OK"), "{got}");
    let complete = be.seen.lock().unwrap()[before..].iter().any(|r| r.uri == "/t" && r.body.as_ref() == b"abc");
    assert!(!complete, "a body whose trailer forges a certificate header is not delivered");
}
