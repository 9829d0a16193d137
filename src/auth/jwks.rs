//! JSON Web Key Sets: fetched over HTTPS, parsed into verification keys, cached, and read again
//! in the background every `refresh` ([`run`], on the control thread) and when a token names a
//! key the set does not hold (at most once per `min_refresh`, the request waiting for that one
//! fetch; concurrent requests share it). A failed fetch keeps the last good keys. ALB's limits
//! hold: a response larger than 150 KB or with more than 10 keys is refused (the last good keys
//! stay). A set belongs to every rule that names the same URL and settings, and a reload hands
//! the running set to the new configuration ([`KeySet::reuse`]), so keys are not fetched again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use rustls::pki_types::ServerName;

use crate::telemetry::metrics::JwksStats;

/// ALB's limits on a key set.
pub const MAX_BYTES: usize = 150 * 1024;
pub const MAX_KEYS: usize = 10;
/// One fetch (connect, TLS, request, body) gets this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What identifies a key set: its URL, the CA file it is verified with, and its timings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub url: String,
    /// None: the system's roots.
    pub ca: Option<String>,
    pub refresh: Duration,
    pub min_refresh: Duration,
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms a token signed with this key may name.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The keys of one fetch.
#[derive(Default)]
pub struct Keys {
    pub keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (&k.kid, &k.algorithms))).finish()
    }
}

impl Keys {
    /// The keys a token with `kid` (or none) and `alg` may be verified with.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| k.algorithms.contains(&alg) && (kid.is_none() || k.kid.as_deref() == kid))
    }
}

/// A key set and its state.
pub struct KeySet {
    pub source: Source,
    tls: Arc<rustls::ClientConfig>,
    /// None until the first good fetch.
    keys: ArcSwap<Option<Keys>>,
    /// Milliseconds since [`epoch`] of the last fetch attempt, and of the last good one (0: never).
    last_attempt: AtomicU64,
    last_good: AtomicU64,
    /// Consecutive failed fetches (the background retries back off).
    failures: AtomicU64,
    /// A background fetch is running ([`run`] starts one at a time).
    in_flight: std::sync::atomic::AtomicBool,
    /// One fetch at a time; requests that need one wait for it.
    fetching: tokio::sync::Mutex<()>,
    metrics: Option<Arc<JwksStats>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("source", &self.source).finish_non_exhaustive()
    }
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    (epoch().elapsed().as_millis() as u64).max(1)
}

impl KeySet {
    /// A set not fetched yet, verified with `tls`.
    pub fn new(source: Source, tls: Arc<rustls::ClientConfig>, metrics: Option<Arc<JwksStats>>) -> KeySet {
        KeySet {
            source,
            tls,
            keys: ArcSwap::from_pointee(None),
            last_attempt: AtomicU64::new(0),
            last_good: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// A new set for `source` that starts with what `old` (the same URL with other settings)
    /// holds: a reload that changes a timing or the CA does not lose the keys, and the running
    /// set is not changed (the reload may still be refused).
    pub fn seeded(
        source: Source,
        tls: Arc<rustls::ClientConfig>,
        metrics: Option<Arc<JwksStats>>,
        old: &KeySet,
    ) -> KeySet {
        let k = KeySet::new(source, tls, metrics);
        k.keys.store(old.keys.load_full());
        for (to, from) in
            [(&k.last_attempt, &old.last_attempt), (&k.last_good, &old.last_good), (&k.failures, &old.failures)]
        {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        k
    }

    /// The running set for `source` among `previous`, if there is one.
    pub fn reuse(previous: &[Arc<KeySet>], source: &Source) -> Option<Arc<KeySet>> {
        previous.iter().find(|k| &k.source == source).cloned()
    }

    /// The keys in force (None: never fetched).
    pub fn keys(&self) -> arc_swap::Guard<Arc<Option<Keys>>> {
        self.keys.load()
    }

    /// How many keys are held, and how long ago the last good fetch was.
    pub fn status(&self) -> (usize, Option<Duration>) {
        let n = self.keys.load().as_ref().as_ref().map_or(0, |k| k.keys.len());
        let good = self.last_good.load(Ordering::Relaxed);
        (n, (good > 0).then(|| Duration::from_millis(now_ms().saturating_sub(good))))
    }

    /// When the background task should fetch next: `refresh` after the last good fetch, or
    /// (never fetched, or failing) after a backoff from the last attempt.
    pub fn next_due(&self) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) {
            // Looked at again once the fetch has surely ended.
            return Instant::now() + FETCH_TIMEOUT + Duration::from_secs(1);
        }
        let attempt = self.last_attempt.load(Ordering::Relaxed);
        if attempt == 0 {
            return Instant::now();
        }
        let failures = self.failures.load(Ordering::Relaxed);
        let wait = if failures == 0 {
            self.source.refresh
        } else {
            // 1 s, 2 s, 4 s ... up to min_refresh, then at least every min_refresh.
            Duration::from_secs(1u64 << failures.min(16).saturating_sub(1))
                .min(self.source.min_refresh.max(Duration::from_secs(1)))
        };
        epoch() + Duration::from_millis(attempt) + wait
    }

    /// Fetches the set now (after any fetch in progress) and keeps the keys if they are good.
    pub async fn fetch_now(&self) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), String> {
        self.last_attempt.store(now_ms(), Ordering::Relaxed);
        let got = tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.source.url, &self.tls))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))
            .and_then(|body| parse(&body));
        let result = match got {
            Ok(keys) => {
                self.keys.store(Arc::new(Some(keys)));
                self.last_good.store(now_ms(), Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(jwks = %self.source.url, error = %e, "cannot read the JSON Web Key Set; the last good keys stay in use");
                Err(e)
            }
        };
        if let Some(m) = &self.metrics {
            m.count(&self.source.url, result.is_ok());
        }
        result
    }

    /// A token named a key the set does not hold: read the set again, unless that was tried
    /// less than `min_refresh` ago (a fetch in progress is waited for instead of starting
    /// another). The caller looks the key up again afterwards.
    pub async fn refresh_for_unknown_key(&self) {
        let seen = self.last_attempt.load(Ordering::Relaxed);
        let _one = self.fetching.lock().await;
        if self.last_attempt.load(Ordering::Relaxed) != seen {
            return; // a fetch ended while this one waited: its keys are in force
        }
        if seen > 0 && now_ms().saturating_sub(seen) < self.source.min_refresh.as_millis() as u64 {
            return;
        }
        let _ = self.fetch_locked().await;
    }
}

/// GETs `url` over HTTPS (HTTP/1.1) and returns the body, at most [`MAX_BYTES`].
async fn fetch(url: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(bare.to_string()).map_err(|_| format!("bad host {host:?}"))?,
    };
    let addrs: Vec<_> =
        tokio::net::lookup_host((bare, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    let mut last = format!("{host} resolves to no address");
    let mut tcp = None;
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("pilotfish/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = tx.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("the endpoint answered {}", resp.status()));
    }
    if resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BYTES)
    {
        return Err(format!("the key set is larger than {} KB", MAX_BYTES / 1024));
    }
    Limited::new(resp.into_body(), MAX_BYTES).collect().await.map(|b| b.to_bytes()).map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            format!("the key set is larger than {} KB", MAX_BYTES / 1024)
        } else {
            format!("reading the key set: {e}")
        }
    })
}

/// The verification keys of a JWKS document: every key for signatures whose type pilotfish
/// verifies (RSA, EC P-256/P-384, Ed25519); others (encryption keys, symmetric keys, unknown
/// types) are left out. More than [`MAX_KEYS`] keys, or none usable, is an error.
pub fn parse(body: &[u8]) -> Result<Keys, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if doc.keys.len() > MAX_KEYS {
        return Err(format!("the key set has {} keys (at most {MAX_KEYS})", doc.keys.len()));
    }
    let mut keys = Vec::new();
    for v in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
        if let Some(k) = key(&jwk) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err("the key set holds no usable signature key".into());
    }
    Ok(Keys { keys })
}

fn key(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        // Symmetric keys never verify tokens here (a published secret is no secret).
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family,
        Some(a) => {
            let a = key_algorithm(a)?;
            if !family.contains(&a) {
                return None;
            }
            vec![a]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), algorithms, key })
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Keeps every key set of the snapshot in force fetched until the runtime stops: each is read
/// when due ([`KeySet::next_due`]); a new configuration's sets are looked at at once.
pub async fn run(state: Arc<crate::state::SharedState>) {
    let mut published = state.generation_watch();
    loop {
        let snap = state.load();
        let sets: HashMap<&Source, &Arc<KeySet>> = snap.jwks.iter().map(|k| (&k.source, k)).collect();
        let next = sets.values().map(|k| k.next_due()).min();
        let Some(next) = next else {
            if published.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let now = Instant::now();
        for k in sets.values().filter(|k| k.next_due() <= now) {
            // Each on its own: a slow endpoint holds up no other set; one at a time per set.
            if k.in_flight.swap(true, Ordering::Relaxed) {
                continue;
            }
            let k = Arc::clone(k);
            tokio::spawn(async move {
                let _ = k.fetch_now().await;
                k.in_flight.store(false, Ordering::Relaxed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_keep_signature_keys_and_respect_the_limits() {
        let rsa = r#"{"kty":"RSA","kid":"r","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
        let enc = r#"{"kty":"RSA","kid":"e","use":"enc","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
        let hmac = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#;
        let odd = r#"{"kty":"XYZ","kid":"x"}"#;
        let keys = parse(format!(r#"{{"keys":[{rsa},{enc},{hmac},{odd}]}}"#).as_bytes()).unwrap();
        assert_eq!(keys.keys.len(), 1, "only the RSA signature key");
        assert_eq!(keys.candidates(Some("r"), Algorithm::RS256).count(), 1);
        assert_eq!(keys.candidates(Some("r"), Algorithm::HS256).count(), 0, "never HMAC with a public key");
        assert_eq!(keys.candidates(None, Algorithm::RS256).count(), 1);
        assert_eq!(keys.candidates(Some("other"), Algorithm::RS256).count(), 0);
        let eleven = [rsa; 11].join(",");
        assert!(parse(format!(r#"{{"keys":[{eleven}]}}"#).as_bytes()).unwrap_err().contains("at most 10"));
        assert!(parse(format!(r#"{{"keys":[{hmac}]}}"#).as_bytes()).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
