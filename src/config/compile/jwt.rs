//! A rule's `jwt`: checked at its keys (the key set's URL, the CA file, the claims in ALB's
//! formats and limits, the timings) and turned into a [`JwtDef`]; the key set it names is made
//! or taken over from the running configuration when the snapshot is built.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::Ctx;
use crate::auth::jwks::Source;
use crate::auth::jwt::ClaimRule;
use crate::config::file::{self, ClaimValues, Spanned};
use crate::config::snapshot::UpstreamProtocol;

/// How often a key set is read again, unless `refresh` says.
pub const REFRESH: Duration = Duration::from_secs(600);
/// How often a token naming an unknown key may make the set be read again.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// ALB's limits on additional claims.
const MAX_CLAIMS: usize = 10;
const MAX_VALUES: usize = 10;
const MAX_VALUE_LEN: usize = 256;
/// Claims every token is checked for already (ALB refuses them as additional claims).
const REGISTERED: [&str; 5] = ["iss", "exp", "nbf", "iat", "aud"];

/// A checked `jwt`.
pub(super) struct JwtDef {
    pub issuer: String,
    pub audience: Vec<String>,
    pub claims: Vec<(String, ClaimRule)>,
    pub header: HeaderName,
    pub source: Source,
    /// The client configuration the key set is fetched with.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Checks rule `rule`'s `jwt` (None: an error was reported).
pub(super) fn compile(cx: &mut Ctx<'_>, rule: &str, j: &Spanned<file::Jwt>) -> Option<JwtDef> {
    let mark = cx.mark();
    let what = format!("rule {rule:?}: jwt");
    let j = j.get_ref();
    let issuer = j.issuer.get_ref();
    if issuer.is_empty() || issuer.len() > 2048 {
        cx.err(j.issuer.span(), format!("{what}: issuer must be 1..=2048 characters (the tokens' iss)"));
    }
    let url = j.jwks.get_ref();
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()) => {}
        _ => cx.err(
            j.jwks.span(),
            format!("{what}: jwks must be an https:// URL (the key set is fetched over HTTPS), not {url:?}"),
        ),
    }
    let audience = match &j.audience {
        Some(a) => {
            if a.get_ref().is_empty() || a.get_ref().iter().any(String::is_empty) {
                cx.err(a.span(), format!("{what}: audience lists no value, or an empty one"));
            }
            a.get_ref().clone()
        }
        None => Vec::new(),
    };
    let mut claims = Vec::new();
    if let Some(c) = &j.claims {
        if c.get_ref().len() > MAX_CLAIMS {
            cx.err(c.span(), format!("{what}: at most {MAX_CLAIMS} claims"));
        }
        for (name, values) in c.get_ref() {
            if REGISTERED.contains(&name.as_str()) {
                cx.err(c.span(), format!("{what}: claim {name:?} is always checked (use issuer/audience)"));
                continue;
            }
            if name.is_empty() {
                cx.err(c.span(), format!("{what}: a claim needs a name"));
                continue;
            }
            let rule = match values {
                ClaimValues::One(v) => ClaimRule::Equals(v.clone()),
                ClaimValues::All(vs) => ClaimRule::Contains(vs.clone()),
            };
            let vals: Vec<&String> = match values {
                ClaimValues::One(v) => vec![v],
                ClaimValues::All(vs) => vs.iter().collect(),
            };
            if vals.is_empty() || vals.len() > MAX_VALUES {
                cx.err(c.span(), format!("{what}: claim {name:?} needs 1..={MAX_VALUES} values"));
            }
            for v in vals {
                if v.is_empty() || v.len() > MAX_VALUE_LEN {
                    cx.err(c.span(), format!("{what}: claim {name:?}: values are 1..={MAX_VALUE_LEN} characters"));
                } else if matches!(values, ClaimValues::All(_)) && v.contains(char::is_whitespace) {
                    cx.err(
                        c.span(),
                        format!(
                            "{what}: claim {name:?}: value {v:?} has a space (a list's values are matched one by one)"
                        ),
                    );
                }
            }
            claims.push((name.clone(), rule));
        }
    }
    let header = match &j.header {
        Some(h) => match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.err(h.span(), format!("{what}: bad header name {:?}", h.get_ref()));
                None
            }
        },
        None => Some(http::header::AUTHORIZATION),
    };
    let timing = |cx: &mut Ctx<'_>, d: &Option<Spanned<file::Dur>>, key: &str, default: Duration| match d {
        Some(d) if d.get_ref().0 < Duration::from_secs(1) || d.get_ref().0 > Duration::from_secs(86_400) => {
            cx.err(d.span(), format!("{what}: {key} must be 1s..=24h"));
            default
        }
        Some(d) => d.get_ref().0,
        None => default,
    };
    let refresh = timing(cx, &j.refresh, "refresh", REFRESH);
    let min_refresh = timing(cx, &j.min_refresh, "min_refresh", MIN_REFRESH.min(refresh));
    if min_refresh > refresh {
        let at = j.min_refresh.as_ref().map_or(j.jwks.span(), Spanned::span);
        cx.err(at, format!("{what}: min_refresh is longer than refresh"));
    }
    let ca = match &j.ca {
        Some(ca) => match crate::tls::load::load_ca_bundle(&cx.path(ca.get_ref())) {
            Ok(c) => Some(c),
            Err(e) => {
                cx.err(ca.span(), format!("{what}: {e}"));
                None
            }
        },
        None => None,
    };
    if !cx.clean_since(mark) {
        return None;
    }
    // The CA file's contents are part of the set's identity: a reload after it changed fetches
    // with the new one.
    let ca_id = ca.as_ref().zip(j.ca.as_ref()).map(|(certs, path)| {
        let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for c in certs {
            d.update(c.as_ref());
        }
        let hex: String = d.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{} (sha256 {hex})", path.get_ref())
    });
    let tls = match crate::tls::client::upstream_config(UpstreamProtocol::Http1, true, ca, None) {
        Ok(t) => t.config,
        Err(e) => {
            cx.err(j.ca.as_ref().map_or(j.jwks.span(), Spanned::span), format!("{what}: {e}"));
            return None;
        }
    };
    let source = Source { url: url.clone(), ca: ca_id, refresh, min_refresh };
    Some(JwtDef { issuer: issuer.clone(), audience, claims, header: header?, source, tls })
}
