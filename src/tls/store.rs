//! The SNI certificate store of one listener: exact names in a hash map, wildcard certificates
//! keyed by the name they cover minus its first label, and the default. Immutable once built,
//! so rustls resolves certificates without a lock; a reload builds a new store.
//!
//! Resolution (ALB's): exact name (case-insensitive), else the wildcard covering exactly one more
//! label (`*.example.com` covers `a.example.com`, not `a.b.example.com` nor `example.com`), else
//! the default certificate; no SNI gets the default. When both an ECDSA and an RSA certificate
//! cover the name, ECDSA is served if the client offers an ECDSA signature scheme.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::load::{KeyKind, LoadedCert};

/// The certificates for one name: at most one per key kind (the first one listed wins).
#[derive(Debug, Default, Clone)]
struct Pair {
    ecdsa: Option<Arc<CertifiedKey>>,
    other: Option<Arc<CertifiedKey>>,
}

impl Pair {
    fn add(&mut self, kind: KeyKind, key: &Arc<CertifiedKey>) {
        let slot = if kind == KeyKind::Ecdsa { &mut self.ecdsa } else { &mut self.other };
        if slot.is_none() {
            *slot = Some(key.clone());
        }
    }

    #[inline]
    fn choose(&self, offers_ecdsa: bool) -> Option<&Arc<CertifiedKey>> {
        if offers_ecdsa && self.ecdsa.is_some() {
            self.ecdsa.as_ref()
        } else {
            self.other.as_ref().or(self.ecdsa.as_ref())
        }
    }
}

/// One listener's certificates, indexed for SNI.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: FxHashMap<Box<str>, Pair>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: FxHashMap<Box<str>, Pair>,
    default: Pair,
}

impl CertStore {
    /// A store whose default is `default`.
    pub fn new(default: &LoadedCert) -> Self {
        let mut s = CertStore::default();
        s.default.add(default.kind, &default.key);
        s
    }

    /// Adds `cert` under every name it covers.
    pub fn add(&mut self, cert: &LoadedCert) {
        self.add_names(&cert.names, cert.kind, &cert.key);
    }

    /// Adds `key` under `names` (lowercase; `*.` prefix for wildcards).
    pub fn add_names(&mut self, names: &[String], kind: KeyKind, key: &Arc<CertifiedKey>) {
        for n in names {
            match n.strip_prefix("*.") {
                Some(rest) => self.wildcard.entry(rest.into()).or_default().add(kind, key),
                None => self.exact.entry(n.as_str().into()).or_default().add(kind, key),
            }
        }
    }

    /// The certificate for `sni`, honouring the ECDSA preference.
    #[inline]
    pub fn lookup(&self, sni: Option<&str>, offers_ecdsa: bool) -> Option<&Arc<CertifiedKey>> {
        let found = sni.and_then(|name| {
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            let name = name.strip_suffix('.').unwrap_or(name);
            self.exact
                .get(name)
                .or_else(|| name.split_once('.').and_then(|(_, rest)| self.wildcard.get(rest)))
                .and_then(|p| p.choose(offers_ecdsa))
        });
        found.or_else(|| self.default.choose(offers_ecdsa))
    }

    /// Whether `host` (lowercase) is covered by a certificate other than the default.
    pub fn covers(&self, host: &str) -> bool {
        self.exact.contains_key(host) || host.split_once('.').is_some_and(|(_, rest)| self.wildcard.contains_key(rest))
    }
}

fn is_ecdsa(s: &SignatureScheme) -> bool {
    matches!(
        s,
        SignatureScheme::ECDSA_NISTP256_SHA256
            | SignatureScheme::ECDSA_NISTP384_SHA384
            | SignatureScheme::ECDSA_NISTP521_SHA512
    )
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offers_ecdsa = hello.signature_schemes().iter().any(is_ecdsa);
        self.lookup(hello.server_name(), offers_ecdsa).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let k = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap().self_signed(&k).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(k.serialize_der().into());
        Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], der, &crate::tls::provider()).unwrap())
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default_with_ecdsa_preference() {
        let (def, exact, wild, rsa) = (key(), key(), key(), key());
        let mut s = CertStore::default();
        s.default.add(KeyKind::Ecdsa, &def);
        s.add_names(&["www.example.com".into()], KeyKind::Ecdsa, &exact);
        s.add_names(&["*.example.com".into()], KeyKind::Ecdsa, &wild);
        s.add_names(&["*.example.com".into()], KeyKind::Rsa, &rsa);
        let is = |got: Option<&Arc<CertifiedKey>>, want: &Arc<CertifiedKey>| Arc::ptr_eq(got.unwrap(), want);
        assert!(is(s.lookup(Some("WWW.example.com"), true), &exact));
        assert!(is(s.lookup(Some("api.example.com"), true), &wild));
        assert!(is(s.lookup(Some("api.example.com"), false), &rsa), "no ECDSA offered: RSA");
        assert!(is(s.lookup(Some("a.b.example.com"), true), &def), "wildcards cover one label");
        assert!(is(s.lookup(Some("example.com"), true), &def));
        assert!(is(s.lookup(None, true), &def));
        assert!(s.covers("api.example.com") && !s.covers("example.com"));
    }
}
