//! Certificates, secrets and the configuration itself read from AWS — ACM, Parameter Store,
//! Secrets Manager, S3 — through the official SDK crates against moto_server, served to real
//! TLS clients by real listeners: the served leaf is what AWS holds, a rotated parameter reaches
//! new handshakes while an open connection keeps working, an outage keeps the last good
//! certificate, a changed S3 object or parameter reloads with `--poll`, a broken one is refused
//! once, and the admin token guards every admin path but /healthz and /readyz.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_acm::types::{CertificateExport, CertificateOptions};
use common::aws::{aws_env, Moto};
use common::process::Proc;
use common::tls::{self as t, Ca, ECDSA};
use common::*;
use pilotfish::server::{ConfigSource, Options, Server, StartError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-aws-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn sdk(moto: &Moto) -> aws_config::SdkConfig {
    aws_env();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto.endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await
}

async fn put_parameter(cfg: &aws_config::SdkConfig, name: &str, value: &str, secure: bool) {
    let kind = if secure {
        aws_sdk_ssm::types::ParameterType::SecureString
    } else {
        aws_sdk_ssm::types::ParameterType::String
    };
    aws_sdk_ssm::Client::new(cfg)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(kind)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

/// An exportable certificate requested from ACM for `domain`; its ARN and leaf DER.
async fn acm_certificate(cfg: &aws_config::SdkConfig, domain: &str) -> (String, Vec<u8>) {
    let acm = aws_sdk_acm::Client::new(cfg);
    let arn = acm
        .request_certificate()
        .domain_name(domain)
        .options(CertificateOptions::builder().export(CertificateExport::Enabled).build())
        .send()
        .await
        .unwrap()
        .certificate_arn
        .unwrap();
    let got = acm.get_certificate().certificate_arn(&arn).send().await.unwrap();
    let der = CertificateDer::from_pem_slice(got.certificate().unwrap().as_bytes()).unwrap().to_vec();
    (arn, der)
}

/// A request on an open TLS connection answers 200.
async fn request_ok(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, host: &str) -> bool {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

fn https_config(endpoint: &str, certificates: &str, names: &[&str], server: &str) -> String {
    let names = names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"[server]
admin_bind = "127.0.0.1:0"
{server}

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

{certificates}

[[listeners]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = [{names}]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"#
    )
}

fn start(text: String) -> Result<Server, StartError> {
    Server::start(Options {
        config: ConfigSource::Text { name: "aws.toml".into(), text },
        access_log: Some(Box::new(LogSink::default())),
        signals: false,
        poll: None,
    })
}

/// `pilotfish check --config SOURCE` with moto as the AWS endpoint.
fn check(moto: &Moto, source: &OsStr) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("check")
        .arg("--config")
        .arg(source)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_acm_parameter_store_and_secrets_manager_are_served() {
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    let (arn, acm_der) = acm_certificate(&cfg, "acm.test").await;
    let ca = Ca::new("test CA");
    let (ssm_cert, sm_cert) = (ca.issue(&["ssm.test"], &ECDSA), ca.issue(&["sm.test"], &ECDSA));
    put_parameter(&cfg, "/edge/tls/ssm.crt", &format!("{}{}", ssm_cert.cert, ca.pem), false).await;
    put_parameter(&cfg, "/edge/tls/ssm.key", &ssm_cert.key, true).await;
    put_parameter(&cfg, "/edge/admin-token", "s3cr3t-token\n", true).await;
    let secret = serde_json::json!({ "certificate": sm_cert.cert, "private_key": sm_cert.key }).to_string();
    aws_sdk_secretsmanager::Client::new(&cfg)
        .create_secret()
        .name("edge/sm-tls")
        .secret_string(secret)
        .send()
        .await
        .unwrap();

    let certificates = format!(
        r#"[[certificates]]
name = "from-acm"
acm = "{arn}"

[[certificates]]
name = "from-ssm"
ssm = {{ cert = "/edge/tls/ssm.crt", key = "/edge/tls/ssm.key" }}

[[certificates]]
name = "from-sm"
secrets_manager = {{ secret = "edge/sm-tls", cert_field = "certificate", key_field = "private_key" }}
"#
    );
    let text = https_config(
        &moto.endpoint(),
        &certificates,
        &["from-acm", "from-ssm", "from-sm"],
        "admin_token = { ssm = \"/edge/admin-token\" }",
    );
    let server = start(text).unwrap_or_else(|e| panic!("start: {e}"));
    let addr = server.listener_addr("https").unwrap();
    assert_eq!(t::served_leaf(addr, Some("acm.test"), false).await, acm_der, "ACM's certificate is served");
    assert_eq!(t::served_leaf(addr, Some("ssm.test"), false).await, ssm_cert.der(), "the parameter's certificate");
    assert_eq!(t::served_leaf(addr, Some("sm.test"), false).await, sm_cert.der(), "the secret's certificate");

    // The chain from SSM is served leaf first, with the CA after it.
    let (tls_cfg, rec) = t::recording_client(&["http/1.1"], false);
    let _s = t::connect(addr, Some("ssm.test"), tls_cfg).await.unwrap();
    assert_eq!(rec.chain_len(), 1, "the self-signed CA at the end of the chain is left out");

    // The admin token came from Parameter Store (trimmed).
    let admin = server.admin_addr();
    assert_eq!(admin_get(admin, "/metrics", None).await.status, 401);
    let m = admin_get(admin, "/metrics", Some("s3cr3t-token")).await;
    assert_eq!(m.status, 200);
    for name in ["from-acm", "from-ssm", "from-sm"] {
        let line = format!("pilotfish_certificate_expiry_seconds{{certificate=\"{name}\"}} ");
        let secs: f64 = m.body.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
        assert!(secs > 86_400.0, "{name}: {secs} s left\n{}", m.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_and_an_outage_keeps_the_last_good_one() {
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    let ca = Ca::new("test CA");
    let (first, second) = (ca.issue(&["shop.test"], &ECDSA), ca.issue(&["shop.test"], &ECDSA));
    put_parameter(&cfg, "/edge/shop.crt", &first.cert, false).await;
    put_parameter(&cfg, "/edge/shop.key", &first.key, true).await;
    let certificates = r#"[[certificates]]
name = "shop"
ssm = { cert = "/edge/shop.crt", key = "/edge/shop.key" }
refresh = "1s"
"#;
    let server = start(https_config(&moto.endpoint(), certificates, &["shop"], "")).unwrap();
    let addr = server.listener_addr("https").unwrap();
    assert_eq!(t::served_leaf(addr, Some("shop.test"), false).await, first.der());
    let (tls_cfg, _) = t::recording_client(&["http/1.1"], false);
    let mut open = t::connect(addr, Some("shop.test"), tls_cfg).await.unwrap();
    assert!(request_ok(&mut open, "shop.test").await);

    put_parameter(&cfg, "/edge/shop.crt", &second.cert, false).await;
    put_parameter(&cfg, "/edge/shop.key", &second.key, true).await;
    let want = second.der();
    let renewed = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let want = want.clone();
        async move { t::served_leaf(addr, Some("shop.test"), false).await == want }
    })
    .await;
    assert!(renewed, "the rotated certificate is served after a refresh");
    assert!(request_ok(&mut open, "shop.test").await, "the connection opened before the rotation keeps working");
    let admin = server.admin_addr();
    assert!(
        admin_get(admin, "/metrics", None).await.body.contains("pilotfish_config_reloads_total{result=\"success\"} 0"),
        "a refresh is not a reload"
    );

    // AWS goes away: refreshes fail, are counted, and the certificate in force keeps serving.
    let mut moto = moto;
    moto.stop();
    let counted = wait_metrics_at(admin, Duration::from_secs(60), |m| {
        m.lines()
            .find_map(|l| l.strip_prefix("pilotfish_certificate_refresh_errors_total{certificate=\"shop\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert!(counted, "the failed refresh is counted");
    assert_eq!(t::served_leaf(addr, Some("shop.test"), false).await, second.der(), "the last good certificate serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_fetched_stops_the_start_naming_it_and_the_aws_error() {
    let moto = Moto::start().await;
    aws_env();
    let arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000";
    let certificates = format!("[[certificates]]\nname = \"shop\"\nacm = \"{arn}\"\n");
    let Err(StartError::Config(d)) = start(https_config(&moto.endpoint(), &certificates, &["shop"], "")) else {
        panic!("started without its certificate");
    };
    let e = d.to_string();
    assert!(e.contains("aws.toml:11:7: certificate \"shop\""), "located at the acm key: {e}");
    assert!(e.contains(arn) && e.contains("DescribeCertificate failed: ResourceNotFoundException"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_every_path_but_healthz_and_readyz() {
    std::env::set_var("PILOTFISH_TEST_ADMIN_TOKEN", "let-me-in");
    let text = r#"[server]
admin_bind = "127.0.0.1:0"
admin_token = { env = "PILOTFISH_TEST_ADMIN_TOKEN" }
"#;
    let server = start(text.to_string()).unwrap();
    let admin = server.admin_addr();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(admin_get(admin, path, None).await.status, 200, "{path} is open");
    }
    for path in ["/metrics", "/config", "/targets", "/nowhere"] {
        let r = admin_get(admin, path, None).await;
        assert_eq!(r.status, 401, "{path} without the token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"pilotfish\""));
        assert_eq!(admin_get(admin, path, Some("let-me-i")).await.status, 401, "{path} with a wrong token");
        assert_eq!(admin_get(admin, path, Some("let-me-inn")).await.status, 401, "{path} with a longer token");
    }
    assert_eq!(admin_get(admin, "/metrics", Some("let-me-in")).await.status, 200);
    let shown = admin_get(admin, "/config", Some("let-me-in")).await;
    assert!(shown.body.contains("PILOTFISH_TEST_ADMIN_TOKEN") && !shown.body.contains("let-me-in"), "{}", shown.body);
    let reload = http::Request::post(format!("http://{admin}/reload")).body(Default::default()).unwrap();
    assert_eq!(send(&client(), reload).await.status, 401, "POST /reload needs the token");

    // admin_public without a token is refused.
    let open = "[server]\nadmin_bind = \"0.0.0.0:0\"\nadmin_public = true\n";
    let Err(StartError::Config(d)) = start(open.to_string()) else { panic!("a public admin API without a token") };
    assert!(d.to_string().contains("aws.toml:3:16: admin_public = true needs an admin_token"), "{d}");
}

fn fixed(body: &str) -> String {
    format!(
        r#"[server]
admin_bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ fixed_response = {{ status = 200, body = "{body}" }} }}
"#
    )
}

async fn metric(admin: std::net::SocketAddr, line: &str) -> Option<u64> {
    let m = admin_get(admin, "/metrics", None).await.body;
    m.lines().find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `pilotfish run --config SOURCE --poll 200ms` against moto.
async fn run_polling(moto: &Moto, source: &str, dir: &std::path::Path) -> Proc {
    let endpoint = moto.endpoint();
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let args = [OsStr::new("--config"), OsStr::new(source), OsStr::new("--poll"), OsStr::new("200ms")];
    Proc::run_with(&args, &env, &dir.join("stderr.log")).await
}

async fn body_is(url: &str, want: &str) -> bool {
    let (url, want) = (url.to_string(), want.to_string());
    poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let (url, want) = (url.clone(), want.clone());
        async move { get(&client(), &url).await.body == want }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_in_s3_reloads_on_change_and_a_broken_version_is_refused_once() {
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&cfg).force_path_style(true).build());
    s3.create_bucket().bucket("edge-config").send().await.unwrap();
    let put = |text: String| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("edge-config")
                .key("prod/pilotfish.toml")
                .body(text.into_bytes().into())
                .send()
                .await
                .unwrap();
        }
    };
    put(fixed("one")).await;
    let dir = tmp("s3");
    let p = run_polling(&moto, "s3://edge-config/prod/pilotfish.toml", &dir).await;
    let url = format!("http://{}/", p.addr("web"));
    assert_eq!(get(&client(), &url).await.body, "one");
    let shown: serde_json::Value = serde_json::from_str(&admin_get(p.admin, "/config", None).await.body).unwrap();
    assert_eq!(shown["source"]["location"], "s3://edge-config/prod/pilotfish.toml");
    assert!(shown["source"]["version"].as_str().is_some_and(|v| !v.is_empty()), "the ETag is shown: {shown}");

    put(fixed("two")).await;
    assert!(body_is(&url, "two").await, "a changed object reloads");

    put(fixed("three").replace("status = 200", "status = 2000")).await;
    let refused = poll_until(Duration::from_secs(20), Duration::from_millis(50), || async {
        metric(p.admin, "pilotfish_config_reloads_total{result=\"failure\"}").await == Some(1)
    })
    .await;
    assert!(refused, "the broken version is refused");
    // Several more polls of the same broken version: still refused once, the old one serving.
    let checks = metric(p.admin, "pilotfish_config_source_checks_total{result=\"unchanged\"}").await.unwrap_or(0);
    let polled = poll_until(Duration::from_secs(20), Duration::from_millis(50), || async {
        metric(p.admin, "pilotfish_config_source_checks_total{result=\"unchanged\"}").await.unwrap_or(0) >= checks + 3
    })
    .await;
    assert!(polled, "the source is polled");
    assert_eq!(metric(p.admin, "pilotfish_config_reloads_total{result=\"failure\"}").await, Some(1), "reported once");
    assert_eq!(get(&client(), &url).await.body, "two", "the old configuration keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_in_parameter_store_reloads_on_a_new_version_and_check_reads_it() {
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    put_parameter(&cfg, "/edge/pilotfish.toml", &fixed("one"), false).await;
    let dir = tmp("ssm");
    let p = run_polling(&moto, "ssm:/edge/pilotfish.toml", &dir).await;
    let url = format!("http://{}/", p.addr("web"));
    assert_eq!(get(&client(), &url).await.body, "one");
    put_parameter(&cfg, "/edge/pilotfish.toml", &fixed("two"), false).await;
    assert!(body_is(&url, "two").await, "a new parameter version reloads");
    let shown: serde_json::Value = serde_json::from_str(&admin_get(p.admin, "/config", None).await.body).unwrap();
    assert_eq!(shown["source"], serde_json::json!({"location": "ssm:/edge/pilotfish.toml", "version": "2"}));

    // `pilotfish check` reads the same sources.
    let check_ssm = |source: &str| check(&moto, OsStr::new(source));
    let ok = check_ssm("ssm:/edge/pilotfish.toml");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    put_parameter(&cfg, "/edge/broken.toml", "[server]\nadmin_bind = 7\n", false).await;
    let bad = check_ssm("ssm:/edge/broken.toml");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("ssm:/edge/broken.toml:2:14:"), "{err}");
    let missing = check_ssm("ssm:/edge/nothing-here");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("GetParameter failed: ParameterNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_that_read_aws_pass_check_against_what_they_name() {
    let blocks: Vec<String> =
        common::readme_toml_blocks().into_iter().filter(|(aws, _)| *aws).map(|(_, b)| b).collect();
    assert!(!blocks.is_empty(), "the README shows the AWS sources");
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    // What the examples name, put where they say.
    let (arn, _) = acm_certificate(&cfg, "shop.example.com").await;
    let ca = Ca::new("readme CA");
    let (api, partners) = (ca.issue(&["api.example.com"], &ECDSA), ca.issue(&["partners.example.com"], &ECDSA));
    put_parameter(&cfg, "/edge/admin-token", "readme-token", true).await;
    put_parameter(&cfg, "/edge/tls/api.crt", &api.cert, false).await;
    put_parameter(&cfg, "/edge/tls/api.key", &api.key, true).await;
    let sm = aws_sdk_secretsmanager::Client::new(&cfg);
    let secrets = [
        ("edge/keys", serde_json::json!({ "cookie_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" })),
        ("edge/partners-tls", serde_json::json!({ "cert": partners.cert, "key": partners.key })),
    ];
    for (name, value) in secrets {
        sm.create_secret().name(name).secret_string(value.to_string()).send().await.unwrap();
    }
    let dir = tmp("readme");
    for (i, block) in blocks.iter().enumerate() {
        // The ARN is the one moto gave; the example's own is a made-up one of the same form.
        let example_arn = block.lines().find_map(|l| l.strip_prefix("acm = \"")).and_then(|l| l.split('"').next());
        let text = match example_arn {
            Some(a) => block.replace(a, &arn),
            None => block.clone(),
        };
        let path = dir.join(format!("readme-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = check(&moto, path.as_os_str());
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "README AWS example {i}:\n{said}");
        assert!(said.contains("OK"), "{said}");
    }
}

/// A client presenting `client` (trusting `server_ca`) gets 200 on a new connection to `addr`.
async fn client_served(addr: std::net::SocketAddr, server_ca: &str, client: &t::Pem) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    match t::connect(addr, Some("api.test"), std::sync::Arc::new(cfg)).await {
        Ok(mut s) => request_ok(&mut s, "api.test").await,
        Err(_) => false,
    }
}

fn serial(pem: &t::Pem) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = pem.der();
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    x.raw_serial().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_store_in_s3_and_a_crl_in_parameter_store_verify_clients_and_refresh() {
    let moto = Moto::start().await;
    let cfg = sdk(&moto).await;
    let dir = tmp("trust");
    let server_ca = Ca::new("server CA");
    let (c, k) = server_ca.issue(&["api.test"], &ECDSA).write(&dir, "api");
    let (old_ca, new_ca) = (Ca::new("clients CA 1"), Ca::new("clients CA 2"));
    let (good, revoked) = (old_ca.issue(&["good.client"], &ECDSA), old_ca.issue(&["revoked.client"], &ECDSA));
    let next = new_ca.issue(&["next.client"], &ECDSA);
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&cfg).force_path_style(true).build());
    s3.create_bucket().bucket("trust").send().await.unwrap();
    let put = |body: String| {
        let s3 = s3.clone();
        async move {
            s3.put_object().bucket("trust").key("clients.pem").body(body.into_bytes().into()).send().await.unwrap();
        }
    };
    put(old_ca.pem.clone()).await;
    put_parameter(&cfg, "/edge/clients.crl", &old_ca.crl_pem_revoking(&[serial(&revoked)]), false).await;
    let text = format!(
        r#"[server]
admin_bind = "127.0.0.1:0"

[aws]
region = "us-east-1"
endpoint_url = "{}"

[[certificates]]
name = "api"
cert = "{c}"
key = "{k}"

[[listeners]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["api"]
mutual_tls = {{ mode = "verify", trust_store = {{ s3 = "s3://trust/clients.pem" }}, crl = [{{ ssm = "/edge/clients.crl" }}], refresh = "1s" }}
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"#,
        moto.endpoint()
    );
    let server = start(text).unwrap();
    let addr = server.listener_addr("https").unwrap();
    assert!(client_served(addr, &server_ca.pem, &good).await, "a client of the CA kept in S3 is served");
    assert!(!client_served(addr, &server_ca.pem, &revoked).await, "the CRL kept in Parameter Store revokes");
    assert!(!client_served(addr, &server_ca.pem, &next).await);

    // The bundle in S3 changes: after a refresh the new CA is trusted, the old one no longer.
    put(new_ca.pem.clone()).await;
    let refreshed = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let (pem, next) = (server_ca.pem.clone(), &next);
        async move { client_served(addr, &pem, next).await }
    })
    .await;
    assert!(refreshed, "the trust store is read again every refresh");
    assert!(!client_served(addr, &server_ca.pem, &good).await, "the old CA left the trust store");

    // AWS goes away: the failed reads are counted, and the trust store in force keeps verifying.
    let mut moto = moto;
    moto.stop();
    let admin = server.admin_addr();
    let counted = wait_metrics_at(admin, Duration::from_secs(60), |m| {
        m.contains("pilotfish_trust_store_refresh_errors_total{source=\"S3 object s3://trust/clients.pem\"}")
    })
    .await;
    assert!(counted, "the failed refresh is counted");
    assert!(client_served(addr, &server_ca.pem, &next).await, "the last good trust store keeps verifying");
}
