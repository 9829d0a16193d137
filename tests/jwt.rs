//! JWT verification through a real listener: a JSON Web Key Set served over HTTPS by a test
//! server (its certificate from a test CA, given as the rule's `ca`) with generated RSA, EC and
//! Ed25519 keys, tokens signed here with `jsonwebtoken`, real HTTP/1.1 and h2c clients. Valid,
//! expired, not yet valid, wrong issuer, wrong audience, missing claim, bad signature, no token,
//! an unknown key then its rotation into the set, and the endpoint failing (the cached keys keep
//! working).

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::tls::Ca;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str, alg: Algorithm) -> SigningKey {
        let (rcgen_alg, make): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> EncodingKey) = match alg {
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, |pkcs8| {
                // jsonwebtoken reads RSA keys as PKCS#1: the key inside the PKCS#8 wrapper.
                let info = pkcs8::PrivateKeyInfo::try_from(pkcs8).unwrap();
                EncodingKey::from_rsa_der(info.private_key)
            }),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_der),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_der),
            a => panic!("no test key for {a:?}"),
        };
        let der = if alg == Algorithm::EdDSA {
            // aws-lc-rs signs with PKCS#8 v2 Ed25519 keys (with the public key), which rcgen
            // does not write.
            let rng = aws_lc_rs::rand::SystemRandom::new();
            aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref().to_vec()
        } else {
            rcgen::KeyPair::generate_for(rcgen_alg).unwrap().serialize_der()
        };
        let key = make(&der);
        let jwk = if alg == Algorithm::EdDSA {
            // (jsonwebtoken derives an Ed25519 JWK only from a v1 key, which aws-lc-rs does not
            // sign with: written out here.)
            use aws_lc_rs::signature::KeyPair as _;
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&der).unwrap();
            let x = aws_smithy_types::base64::encode(pair.public_key().as_ref());
            let x = x.trim_end_matches('=').replace('+', "-").replace('/', "_");
            json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": kid, "use": "sig" })
        } else {
            let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(&jwk).unwrap()
        };
        SigningKey { kid: kid.to_string(), alg, key, jwk }
    }

    /// A token with `claims`, naming this key's kid.
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| {
        let s = aws_smithy_types::base64::encode(v.to_string().as_bytes());
        s.trim_end_matches('=').replace('+', "-").replace('/', "_")
    };
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})), b64(claims))
}

/// The classic confusion: HS256 keyed with the RSA key's public JWK (as an attacker can read it).
fn hmac_confusion(k: &SigningKey, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(k.kid.clone());
    let secret = k.jwk["n"].as_str().unwrap().as_bytes().to_vec();
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(&secret).unwrap()).unwrap()
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// An HTTPS server answering `GET /jwks.json` with `body` (or `status` when it is not 200).
struct JwksServer {
    addr: std::net::SocketAddr,
    body: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(ca: &Ca, body: String) -> JwksServer {
        let pem = ca.issue(&["127.0.0.1"], &common::tls::ECDSA);
        let acceptor = common::tls::acceptor(&pem.cert, &pem.key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, st, h) = (body.clone(), status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, b, st, h) = (acceptor.clone(), b.clone(), st.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (b, st, h) = (b.clone(), st.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let status = st.load(Ordering::SeqCst);
                            let mut r = http::Response::new(Full::new(Bytes::from(b.lock().unwrap().clone())));
                            if req.uri().path() != "/jwks.json" {
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                            } else {
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            }
                            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        JwksServer { addr, body, status, hits, task }
    }

    fn url(&self) -> String {
        format!("https://{}/jwks.json", self.addr)
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const ISSUER: &str = "https://idp.test/";

fn claims() -> Value {
    json!({ "iss": ISSUER, "sub": "svc-orders", "aud": "api", "exp": now() + 600, "iat": now() - 5,
            "scope": "profile orders:read" })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = value;
    }
    v
}

struct Setup {
    /// The configuration it started with.
    text: String,
    lb: Lb,
    be: Backend,
    idp: JwksServer,
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
}

async fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("pilotfish-jwt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("idp CA");
    std::fs::write(dir.join("idp-ca.pem"), &ca.pem).unwrap();
    let (rsa, ec, ed) = (
        SigningKey::new("rsa-1", Algorithm::RS256),
        SigningKey::new("ec-1", Algorithm::ES256),
        SigningKey::new("ed-1", Algorithm::EdDSA),
    );
    let idp = JwksServer::start(&ca, jwks(&[&rsa, &ec, &ed])).await;
    let be = Backend::start("be").await;
    let text = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ fixed_response = {{ status = 404 }} }}

[[rules]]
name = "api"
listeners = ["web"]
priority = 10
path = ["/api/*"]
jwt = {{ issuer = "{ISSUER}", jwks = "{}", ca = "{}", audience = ["api", "api-next"], claims = {{ scope = ["orders:read"] }}, min_refresh = "1s" }}
forward = "g"

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        idp.url(),
        dir.join("idp-ca.pem").display(),
        be.addr
    );
    let lb = Lb::start(&text);
    Setup { text, lb, be, idp, rsa, ec, ed }
}

async fn call(s: &Setup, c: &HttpClient, auth: Option<&str>) -> Got {
    let url = s.lb.url("web", "/api/orders");
    match auth {
        Some(a) => get_with(c, &url, &[("authorization", a)]).await,
        None => get(c, &url).await,
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_before_the_action_and_refusals_say_why() {
    let s = setup("verify").await;
    for c in [client(), h2c_client()] {
        // Valid tokens, one per key type: forwarded with the token unchanged.
        for k in [&s.rsa, &s.ec, &s.ed] {
            let token = k.sign(&claims());
            let got = call(&s, &c, Some(&bearer(&token))).await;
            assert_eq!(got.status, 200, "{:?}: {}", k.alg, got.body);
            assert_eq!(s.be.last().headers.get("authorization").unwrap(), &bearer(&token));
        }
        let served = s.be.requests();
        let other_rsa = SigningKey::new("rsa-1", Algorithm::RS256);
        let t = now();
        let refusals = [
            ("no token", None, "no bearer token"),
            ("another scheme", Some("Basic dXNlcjpwYXNz".to_string()), "no bearer token"),
            ("garbage", Some(bearer("not.a.jwt")), "malformed"),
            ("expired", Some(bearer(&s.rsa.sign(&with(claims(), "exp", json!(t - 3600))))), "expired"),
            ("not yet valid", Some(bearer(&s.ec.sign(&with(claims(), "nbf", json!(t + 3600))))), "not valid yet"),
            ("wrong issuer", Some(bearer(&s.rsa.sign(&with(claims(), "iss", json!("https://evil.test/"))))), "issuer"),
            ("wrong audience", Some(bearer(&s.rsa.sign(&with(claims(), "aud", json!(["web"]))))), "audience"),
            ("missing claim", Some(bearer(&s.rsa.sign(&with(claims(), "scope", json!("profile"))))), "claim"),
            ("bad signature", Some(bearer(&other_rsa.sign(&claims()))), "signature is invalid"),
            ("alg none", Some(bearer(&unsigned(&claims()))), "malformed"),
            ("HMAC keyed with the public key", Some(bearer(&hmac_confusion(&s.rsa, &claims()))), "algorithm"),
            ("no expiry", Some(bearer(&s.rsa.sign(&with(claims(), "exp", Value::Null)))), "no expiry"),
            ("issued in the future", Some(bearer(&s.rsa.sign(&with(claims(), "iat", json!(t + 3600))))), "future"),
        ];
        for (what, auth, says) in &refusals {
            let got = call(&s, &c, auth.as_deref()).await;
            assert_eq!(got.status, 401, "{what}");
            let challenge = got.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with(r#"Bearer error="invalid_token""#), "{what}: {challenge}");
            assert!(challenge.contains(says), "{what}: {challenge}");
            if let Some(a) = auth {
                let token = a.trim_start_matches("Bearer ").trim_start_matches("Basic ");
                assert!(!challenge.contains(token) && !got.body.contains(token), "{what}: the token is echoed");
            }
        }
        // Two token headers: which one would the target read? Refused.
        let url = s.lb.url("web", "/api/orders");
        let good = bearer(&s.rsa.sign(&claims()));
        let got = get_with(&c, &url, &[("authorization", &good), ("authorization", "Bearer other")]).await;
        assert_eq!(got.status, 401, "a repeated token header");
        assert_eq!(s.be.requests(), served, "no refused request reached the target");
    }
    // Counted by reason, and logged.
    let metrics = get(&client(), &s.lb.admin("/metrics")).await.body;
    for line in [
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"valid\"} 6",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"expired\"} 2",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"missing\"} 4",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"bad_signature\"} 2",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"bad_audience\"} 2",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"malformed\"} 6",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"bad_algorithm\"} 2",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"no_expiry\"} 2",
        "pilotfish_jwt_checks_total{rule=\"api\",result=\"issued_in_future\"} 2",
        "pilotfish_requests_total{listener=\"web\",target_group=\"\",code=\"401\"} 28",
        &format!("pilotfish_jwks_keys{{jwks=\"{}\"}} 3", s.idp.url()),
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(eventually(Duration::from_secs(5), || s.lb.log.lines().len() >= 34).await);
    let logged: Vec<Value> = s.lb.log.lines();
    assert!(logged.iter().any(|l| l["auth"]["jwt"] == "valid" && l["status"] == 200));
    assert!(logged.iter().any(|l| l["auth"]["jwt"] == "not_yet_valid" && l["error"] == "jwt_not_yet_valid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_refreshes_the_set_and_the_cached_keys_outlive_the_endpoint() {
    let s = setup("rotate").await;
    let c = client();
    assert_eq!(call(&s, &c, Some(&bearer(&s.rsa.sign(&claims())))).await.status, 200);

    // A token signed with a key the set does not publish yet: refused, after reading the set again.
    let next = SigningKey::new("rsa-2", Algorithm::RS256);
    let token = next.sign(&claims());
    // (At most once per min_refresh: the set was read at start a moment ago.)
    let hits = s.idp.hits.load(Ordering::SeqCst);
    let refetched = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let (c, s, token) = (c.clone(), &s, token.clone());
        async move {
            assert_eq!(call(s, &c, Some(&bearer(&token))).await.status, 401);
            s.idp.hits.load(Ordering::SeqCst) > hits
        }
    })
    .await;
    assert!(refetched, "an unknown kid reads the set again");
    // The issuer rotates: the new key is published, the old one kept for a while.
    s.idp.serve(jwks(&[&next, &s.rsa]));
    let accepted = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let (c, s, token) = (c.clone(), &s, token.clone());
        async move { call(s, &c, Some(&bearer(&token))).await.status == 200 }
    })
    .await;
    assert!(accepted, "the rotated key is picked up (min_refresh = 1s)");

    // The endpoint fails: the cached keys keep verifying, and the failure is counted.
    s.idp.status.store(503, Ordering::SeqCst);
    let unknown = SigningKey::new("rsa-3", Algorithm::RS256).sign(&claims());
    let failed = format!("pilotfish_jwks_fetches_total{{jwks=\"{}\",result=\"error\"}}", s.idp.url());
    let counted = poll_until(Duration::from_secs(10), Duration::from_millis(300), || {
        let (c, s, unknown, failed) = (c.clone(), &s, unknown.clone(), failed.clone());
        async move {
            assert_eq!(call(s, &c, Some(&bearer(&unknown))).await.status, 401);
            get(&client(), &s.lb.admin("/metrics")).await.body.contains(&failed)
        }
    })
    .await;
    assert!(counted, "the failed fetch is counted");
    assert_eq!(call(&s, &c, Some(&bearer(&token))).await.status, 200, "cached keys still verify");
    assert_eq!(call(&s, &c, Some(&bearer(&s.ec.sign(&claims())))).await.status, 401, "ec-1 left the set");

    // A set over ALB's limits (11 keys) is refused like an outage: the last good keys stay.
    s.idp.status.store(200, Ordering::SeqCst);
    let many: Vec<SigningKey> = (0..11).map(|i| SigningKey::new(&format!("k{i}"), Algorithm::EdDSA)).collect();
    s.idp.serve(jwks(&many.iter().collect::<Vec<_>>()));
    let hits = s.idp.hits.load(Ordering::SeqCst);
    let fetched = poll_until(Duration::from_secs(10), Duration::from_millis(300), || {
        let (c, s, t) = (c.clone(), &s, many[0].sign(&claims()));
        async move {
            assert_eq!(call(s, &c, Some(&bearer(&t))).await.status, 401, "a set of 11 keys is not taken");
            s.idp.hits.load(Ordering::SeqCst) > hits
        }
    })
    .await;
    assert!(fetched);
    assert_eq!(call(&s, &c, Some(&bearer(&token))).await.status, 200, "the last good keys stay");

    // A reload that changes the set's timings, with the endpoint down: the keys are kept.
    s.idp.status.store(503, Ordering::SeqCst);
    let reloaded = s.text.replace(r#"min_refresh = "1s""#, r#"min_refresh = "2s""#);
    assert_ne!(reloaded, s.text);
    assert!(s.lb.server.control().reload_text("test.toml", &reloaded).ok());
    assert_eq!(call(&s, &c, Some(&bearer(&token))).await.status, 200, "the keys outlive the reload");
}
