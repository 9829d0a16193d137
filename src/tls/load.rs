//! Loading a certificate and its key from PEM (files, or text fetched from AWS: rustls-pki-types
//! `PemObject`), and what
//! the rest of pilotfish needs to know about it: the names it answers for (SAN DNS entries,
//! the subject CN only when there is no SAN), its key type, and its validity.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The key algorithm of a certificate, for ALB's ECDSA-over-RSA preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
    Other,
}

/// A loaded, checked certificate.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lowercase DNS names it covers (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub kind: KeyKind,
    pub not_after: SystemTime,
    /// The leaf's serial number, as hex pairs (`0a:1b:...`).
    pub serial: String,
}

/// Certificates expiring sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Loads `cert` (PEM chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1) from files. Returns
/// the certificate and warnings, or an error message naming the file at fault.
pub fn load(cert: &Path, key: &Path) -> Result<(LoadedCert, Vec<String>), String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("cannot read certificate file {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read private key file {}: {e}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no private key in {}", key.display()),
        e => format!("cannot read private key file {}: {e}", key.display()),
    })?;
    let origin = Origin { cert: &cert.display().to_string(), key: &key.display().to_string() };
    from_pem(&origin, &cert_pem, key_der)
}

/// Where a certificate and its key come from, as messages name them (file paths, or an ARN or
/// parameter name).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub cert: &'a str,
    pub key: &'a str,
}

/// Loads and checks a PEM chain (leaf first; a self-signed root at its end is left out, clients
/// have it) and its key: the key must match, an expired certificate is an error, one that
/// expires within 14 days a warning.
pub fn from_pem(
    origin: &Origin<'_>,
    cert_pem: &[u8],
    key_der: PrivateKeyDer<'static>,
) -> Result<(LoadedCert, Vec<String>), String> {
    let (cert, key) = (origin.cert, origin.key);
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certificate {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("no CERTIFICATE block in {cert}"));
    }
    while chain.len() > 1 && chain.last().is_some_and(|c| is_self_signed(c)) {
        chain.pop();
    }
    let provider = super::provider();
    let certified = CertifiedKey::from_der(chain.clone(), key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!("private key {key} does not match certificate {cert}"),
        e => format!("unusable private key {key}: {e}"),
    })?;
    let kind = match certified.key.algorithm() {
        rustls::SignatureAlgorithm::ECDSA => KeyKind::Ecdsa,
        rustls::SignatureAlgorithm::RSA => KeyKind::Rsa,
        _ => KeyKind::Other,
    };
    let (_, leaf) =
        X509Certificate::from_der(&chain[0]).map_err(|e| format!("cannot parse certificate {cert}: {e}"))?;
    let mut names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names =
            leaf.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect();
    }
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(leaf.validity().not_after.timestamp().max(0) as u64);
    let now = SystemTime::now();
    if not_after <= now {
        return Err(format!("certificate {cert} expired on {}", humantime::format_rfc3339_seconds(not_after)));
    }
    let mut warnings = Vec::new();
    if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
        warnings.push(format!(
            "certificate {cert} expires on {} (in less than 14 days)",
            humantime::format_rfc3339_seconds(not_after)
        ));
    }
    if names.is_empty() {
        warnings.push(format!("certificate {cert} names no DNS name (no SAN, no CN): it can only be a default"));
    }
    let serial = leaf.raw_serial_as_string();
    Ok((LoadedCert { key: Arc::new(certified), names, kind, not_after, serial }, warnings))
}

fn is_self_signed(c: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(c).is_ok_and(|(_, x)| x.subject() == x.issuer())
}

/// Loads every certificate of a PEM bundle (CA files for target verification).
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    ca_bundle(&pem, &format!("CA file {}", path.display()))
}

/// Every certificate of PEM bundle `pem`, which messages call `what` (at least one).
pub fn ca_bundle(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| format!("bad PEM in {what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no CERTIFICATE block in {what}"));
    }
    Ok(certs)
}
