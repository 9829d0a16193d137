//! A rule's JSON Web Token check, ALB's: the token from `Authorization: Bearer <token>` (or the
//! configured header), its signature by a key of the issuer's key set ([`super::jwks`]; RS256
//! as ALB, also RS384/512, PS256/384/512, ES256/384 and EdDSA; never `none` or HMAC), then
//! `iss` (equal to `issuer`) and `exp` always, `nbf` and `iat` when present (60 s of clock skew
//! allowed), `aud` when `audience` is configured (one of them), and the listed claims. A
//! token that passes is forwarded unchanged; any other request gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and a description of the reason that never
//! repeats the token.
//!
//! Signatures are verified by `jsonwebtoken` on aws-lc-rs (the process's one crypto provider);
//! the claims are checked here, so every failure has its own reason for the metrics and the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::KeySet;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY: u64 = 60;

/// The algorithms a token may name.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a request's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    Algorithm,
    UnknownKey,
    NoKeys,
    Signature,
    Issuer,
    NoExpiry,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Audience,
    Claim,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Algorithm,
        Reason::UnknownKey,
        Reason::NoKeys,
        Reason::Signature,
        Reason::Issuer,
        Reason::NoExpiry,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::Audience,
        Reason::Claim,
    ];

    /// The label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "bad_algorithm",
            Reason::UnknownKey => "unknown_kid",
            Reason::NoKeys => "no_keys",
            Reason::Signature => "bad_signature",
            Reason::Issuer => "bad_issuer",
            Reason::NoExpiry => "no_expiry",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::Audience => "bad_audience",
            Reason::Claim => "claim_mismatch",
        }
    }

    /// The access log's `error` for the 401.
    pub fn log_error(self) -> &'static str {
        match self {
            Reason::Missing => "jwt_missing",
            Reason::Malformed => "jwt_malformed",
            Reason::Algorithm => "jwt_bad_algorithm",
            Reason::UnknownKey => "jwt_unknown_kid",
            Reason::NoKeys => "jwt_no_keys",
            Reason::Signature => "jwt_bad_signature",
            Reason::Issuer => "jwt_bad_issuer",
            Reason::NoExpiry => "jwt_no_expiry",
            Reason::Expired => "jwt_expired",
            Reason::NotYetValid => "jwt_not_yet_valid",
            Reason::IssuedInFuture => "jwt_issued_in_future",
            Reason::Audience => "jwt_bad_audience",
            Reason::Claim => "jwt_claim_mismatch",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 section 3): the reason, never the token.
    pub fn challenge(self) -> &'static str {
        match self {
            Reason::Missing => r#"Bearer error="invalid_token", error_description="no bearer token""#,
            Reason::Malformed => r#"Bearer error="invalid_token", error_description="the token is malformed""#,
            Reason::Algorithm => {
                r#"Bearer error="invalid_token", error_description="the token's algorithm is not accepted""#
            }
            Reason::UnknownKey => {
                r#"Bearer error="invalid_token", error_description="the token is signed with an unknown key""#
            }
            Reason::NoKeys => {
                r#"Bearer error="invalid_token", error_description="the issuer's keys are not available""#
            }
            Reason::Signature => r#"Bearer error="invalid_token", error_description="the signature is invalid""#,
            Reason::Issuer => r#"Bearer error="invalid_token", error_description="the issuer is not accepted""#,
            Reason::NoExpiry => r#"Bearer error="invalid_token", error_description="the token has no expiry""#,
            Reason::Expired => r#"Bearer error="invalid_token", error_description="the token has expired""#,
            Reason::NotYetValid => r#"Bearer error="invalid_token", error_description="the token is not valid yet""#,
            Reason::IssuedInFuture => {
                r#"Bearer error="invalid_token", error_description="the token is issued in the future""#
            }
            Reason::Audience => r#"Bearer error="invalid_token", error_description="the audience is not accepted""#,
            Reason::Claim => {
                r#"Bearer error="invalid_token", error_description="a required claim is missing or wrong""#
            }
        }
    }
}

/// A required claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRule {
    /// The claim is this string (ALB's single-string format).
    Equals(String),
    /// The claim holds every value: a space-separated string or an array of strings (ALB's
    /// space-separated-values and string-array formats).
    Contains(Vec<String>),
}

impl ClaimRule {
    fn holds(&self, v: &Value) -> bool {
        match self {
            ClaimRule::Equals(want) => v.as_str() == Some(want),
            ClaimRule::Contains(want) => {
                let have: Vec<&str> = match v {
                    Value::String(s) => s.split_ascii_whitespace().collect(),
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => return false,
                };
                want.iter().all(|w| have.contains(&w.as_str()))
            }
        }
    }
}

/// Counts of one rule's checks: passed, and refused by reason.
#[derive(Debug, Default)]
pub struct JwtStats {
    pub valid: AtomicU64,
    pub refused: [AtomicU64; Reason::ALL.len()],
}

impl JwtStats {
    fn refuse(&self, r: Reason) {
        // (`Reason::ALL` lists the reasons in declaration order: a unit test checks it.)
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused requests, every reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// One rule's check.
#[derive(Debug)]
pub struct JwtCheck {
    pub issuer: String,
    pub audience: Vec<String>,
    pub claims: Vec<(String, ClaimRule)>,
    /// Lowercase.
    pub header: http::HeaderName,
    pub keys: Arc<KeySet>,
    pub stats: Arc<JwtStats>,
}

impl JwtCheck {
    /// Checks the value of the token header (None: absent), counting the result. `repeated`:
    /// the header came more than once, which is refused (a target could read another copy than
    /// the one checked).
    pub async fn check(&self, value: Option<&str>, repeated: bool) -> Result<(), Reason> {
        let r = if repeated { Err(Reason::Malformed) } else { self.verify(value).await };
        match r {
            Ok(()) => self.stats.valid.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                self.stats.refuse(e);
                0
            }
        };
        r
    }

    async fn verify(&self, value: Option<&str>) -> Result<(), Reason> {
        let token = value.and_then(bearer).ok_or(Reason::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Reason::Algorithm);
        }
        let kid = header.kid.as_deref();
        let mut keys = self.keys.keys();
        if keys.as_ref().as_ref().is_none_or(|k| k.candidates(kid, header.alg).next().is_none()) {
            self.keys.refresh_for_unknown_key().await;
            keys = self.keys.keys();
        }
        let Some(set) = keys.as_ref().as_ref() else { return Err(Reason::NoKeys) };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut outcome = Err(if kid.is_some() { Reason::UnknownKey } else { Reason::Signature });
        for k in set.candidates(kid, header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(t) => {
                    outcome = Ok(t.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    outcome = Err(match e.kind() {
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                            Reason::Signature
                        }
                        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => Reason::Algorithm,
                        _ => Reason::Malformed,
                    });
                }
            }
        }
        let claims = outcome?;
        self.claims_hold(&claims, unix_now())
    }

    /// Checks the registered and configured claims at `now` (Unix seconds).
    pub fn claims_hold(&self, c: &Map<String, Value>, now: u64) -> Result<(), Reason> {
        if c.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Reason::Issuer);
        }
        let time = |name: &str| -> Result<Option<u64>, Reason> {
            match c.get(name) {
                None => Ok(None),
                Some(v) => v.as_f64().filter(|t| *t >= 0.0).map(|t| Some(t as u64)).ok_or(Reason::Malformed),
            }
        };
        let exp = time("exp")?.ok_or(Reason::NoExpiry)?;
        if now >= exp.saturating_add(LEEWAY) {
            return Err(Reason::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now.saturating_add(LEEWAY) < nbf) {
            return Err(Reason::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| iat > now.saturating_add(LEEWAY)) {
            return Err(Reason::IssuedInFuture);
        }
        if !self.audience.is_empty() {
            let ok = match c.get("aud") {
                Some(Value::String(a)) => self.audience.contains(a),
                Some(Value::Array(a)) => {
                    a.iter().filter_map(Value::as_str).any(|a| self.audience.iter().any(|w| w == a))
                }
                _ => false,
            };
            if !ok {
                return Err(Reason::Audience);
            }
        }
        for (name, rule) in &self.claims {
            if !c.get(name).is_some_and(|v| rule.holds(v)) {
                return Err(Reason::Claim);
            }
        }
        Ok(())
    }
}

/// The token of a header value: after `Bearer ` (any case), or the whole value when it has no
/// scheme (a custom header carrying the bare token). None for another scheme or nothing.
fn bearer(v: &str) -> Option<&str> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        None => v,
    };
    (!token.is_empty()).then_some(token)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(audience: &[&str], claims: Vec<(String, ClaimRule)>) -> JwtCheck {
        let tls =
            crate::tls::client::upstream_config(crate::config::snapshot::UpstreamProtocol::Http1, true, None, None)
                .unwrap()
                .config;
        let source = super::super::jwks::Source {
            url: "https://idp.test/jwks".into(),
            ca: None,
            refresh: std::time::Duration::from_secs(600),
            min_refresh: std::time::Duration::from_secs(30),
        };
        JwtCheck {
            issuer: "https://idp.test/".into(),
            audience: audience.iter().map(|s| s.to_string()).collect(),
            claims,
            header: http::header::AUTHORIZATION,
            keys: Arc::new(KeySet::new(source, tls, None)),
            stats: Default::default(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn registered_claims_are_checked_with_skew_and_claims_in_albs_formats() {
        let now = 1_800_000_000;
        let c = check(
            &["api", "other"],
            vec![
                ("scope".into(), ClaimRule::Contains(vec!["orders:read".into(), "orders:write".into()])),
                ("tenant".into(), ClaimRule::Equals("acme".into())),
            ],
        );
        let good = serde_json::json!({"iss": "https://idp.test/", "exp": now + 10, "aud": ["x", "api"],
            "scope": "profile orders:write orders:read", "tenant": "acme"});
        assert_eq!(c.claims_hold(&claims(good.clone()), now), Ok(()));
        let with = |k: &str, v: Value| {
            let mut m = claims(good.clone());
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.into(), v);
            }
            c.claims_hold(&m, now)
        };
        assert_eq!(with("iss", "https://evil.test/".into()), Err(Reason::Issuer));
        assert_eq!(with("exp", Value::Null), Err(Reason::NoExpiry));
        assert_eq!(with("exp", (now - 59).into()), Ok(()), "within the skew");
        assert_eq!(with("exp", (now - 60).into()), Err(Reason::Expired));
        assert_eq!(with("exp", "soon".into()), Err(Reason::Malformed));
        assert_eq!(with("nbf", (now + 61).into()), Err(Reason::NotYetValid));
        assert_eq!(with("nbf", (now + 30).into()), Ok(()));
        assert_eq!(with("iat", (now + 61).into()), Err(Reason::IssuedInFuture));
        assert_eq!(with("aud", "other".into()), Ok(()));
        assert_eq!(with("aud", "nobody".into()), Err(Reason::Audience));
        assert_eq!(with("aud", Value::Null), Err(Reason::Audience));
        assert_eq!(with("scope", serde_json::json!(["orders:read", "orders:write"])), Ok(()), "string-array");
        assert_eq!(with("scope", "orders:read".into()), Err(Reason::Claim), "every value is required");
        assert_eq!(with("tenant", "acme corp".into()), Err(Reason::Claim), "single-string: equal");
        assert_eq!(with("tenant", Value::Null), Err(Reason::Claim));
    }

    #[test]
    fn reasons_are_listed_in_declaration_order() {
        assert!(Reason::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
    }

    #[test]
    fn bearer_tokens_are_taken_from_the_header_value() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("abc"), Some("abc"));
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer "), None);
        for r in Reason::ALL {
            assert!(r.challenge().starts_with(r#"Bearer error="invalid_token", error_description=""#), "{r:?}");
        }
    }
}
