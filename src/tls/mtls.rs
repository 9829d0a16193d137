//! Mutual TLS on https listeners, with ALB's two modes and headers.
//!
//! - `verify`: the client must present a certificate that chains to the listener's trust store
//!   (roots and intermediates are all trust anchors, as in an ALB trust store), is not revoked
//!   by the listed CRLs (a CA without a CRL is not an error) and is within its validity
//!   (`ignore_client_certificate_expiry` verifies an expired leaf as of its last valid second,
//!   so everything else is still checked). rustls' `WebPkiClientVerifier` does the checking
//!   and ends a failed handshake with the alert the failure calls for.
//! - `passthrough`: any certificate is accepted without path validation (the client still
//!   proves it holds the key: the handshake signature is verified), and none is required; the
//!   target gets the chain.
//!
//! What targets receive is computed once per connection, after the handshake
//! ([`ClientCert::from_chain`]): in verify mode `X-Amzn-Mtls-Clientcert-Serial-Number`
//! (uppercase hex), `-Issuer` and `-Subject` (RFC 2253), `-Validity`
//! (`NotBefore=...;NotAfter=...`, ISO 8601 UTC) and `-Leaf` (the URL-encoded PEM); in
//! passthrough mode `X-Amzn-Mtls-Clientcert` (the URL-encoded PEM chain, leaf first). ALB
//! supports no session resumption with mutual TLS, and neither does pilotfish: a resumed
//! session would carry no certificate to check.

use std::fmt::Write as _;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// How a listener treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Verify,
    Passthrough,
}

impl Mode {
    /// As the access log's `auth.mtls` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Verify => "verified",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// A listener's mutual TLS, checked and loaded.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// The trust store (verify mode).
    pub trust: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub ignore_expiry: bool,
    pub advertise_ca_names: bool,
}

/// The client certificate verifier for `s`.
pub fn verifier(s: &Settings) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let provider = super::provider();
    match s.mode {
        Mode::Passthrough => Ok(Arc::new(Passthrough { algorithms: provider.signature_verification_algorithms })),
        Mode::Verify => {
            let mut roots = RootCertStore::empty();
            for c in &s.trust {
                roots.add(c.clone()).map_err(|e| format!("unusable CA certificate in the trust store: {e}"))?;
            }
            let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(s.crls.iter().cloned())
                .allow_unknown_revocation_status();
            if !s.advertise_ca_names {
                b = b.clear_root_hint_subjects();
            }
            let inner = b.build().map_err(|e| format!("client certificate verifier: {e}"))?;
            Ok(if s.ignore_expiry { Arc::new(IgnoreExpiry(inner)) } else { inner })
        }
    }
}

/// Passthrough: any certificate chain is accepted; the handshake signature still proves the
/// client holds its key.
#[derive(Debug)]
struct Passthrough {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for Passthrough {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verify mode with `ignore_client_certificate_expiry`: an expired leaf is verified again as of
/// its last valid second (its chain, signatures and revocation are still checked).
#[derive(Debug)]
struct IgnoreExpiry(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for IgnoreExpiry {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                let (_, leaf) = X509Certificate::from_der(end_entity)
                    .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
                let last = leaf.validity().not_after.timestamp().max(1) as u64 - 1;
                self.0.verify_client_cert(end_entity, intermediates, UnixTime::since_unix_epoch(secs(last)))
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn secs(s: u64) -> std::time::Duration {
    std::time::Duration::from_secs(s)
}

/// Why a mutual TLS handshake failed, as `pilotfish_mtls_failures_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoCertificate,
    UnknownCa,
    Revoked,
    Expired,
    NotYetValid,
    BadSignature,
    Invalid,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::NoCertificate,
        Failure::UnknownCa,
        Failure::Revoked,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::BadSignature,
        Failure::Invalid,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NoCertificate => "no_certificate",
            Failure::UnknownCa => "unknown_ca",
            Failure::Revoked => "revoked",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::BadSignature => "bad_signature",
            Failure::Invalid => "invalid_certificate",
        }
    }

    /// The client certificate failure a handshake error is, if it is one.
    pub fn of(e: &std::io::Error) -> Option<Failure> {
        let e = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(match e {
            rustls::Error::NoCertificatesPresented => Failure::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Failure::UnknownCa,
                CertificateError::Revoked => Failure::Revoked,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Failure::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Failure::NotYetValid,
                CertificateError::BadSignature => Failure::BadSignature,
                _ => Failure::Invalid,
            },
            _ => return None,
        })
    }
}

static SERIAL: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert-serial-number");
static ISSUER: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert-issuer");
static SUBJECT: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert-subject");
static VALIDITY: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert-validity");
static LEAF: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert-leaf");
static CHAIN: HeaderName = HeaderName::from_static("x-amzn-mtls-clientcert");

/// Whether a (lowercase) request field name is one pilotfish sets from the TLS handshake: a
/// client's is always removed.
#[inline]
pub fn is_mtls_header(lower_name: &[u8]) -> bool {
    lower_name.len() > 12 && lower_name[..12].eq_ignore_ascii_case(b"x-amzn-mtls-")
}

/// The headers a connection's client certificate gives every request to a target, both as
/// header fields and as the field lines the HTTP/1.1 engine writes.
#[derive(Debug)]
pub struct ClientCert {
    pub mode: Mode,
    /// The leaf's subject (RFC 2253), verify mode.
    pub subject: Option<String>,
    pub fields: Vec<(HeaderName, HeaderValue)>,
    /// `name: value\r\n` for each field.
    pub lines: Box<[u8]>,
}

impl ClientCert {
    /// The headers for the certificate chain a client presented (leaf first) in `mode`. None
    /// when the leaf cannot be parsed (passthrough accepts anything).
    pub fn from_chain(mode: Mode, chain: &[CertificateDer<'_>]) -> Option<ClientCert> {
        let leaf = chain.first()?;
        let mut subject = None;
        let fields = match mode {
            Mode::Passthrough => {
                let mut pem = String::new();
                for c in chain {
                    pem.push_str(&to_pem(c));
                }
                vec![(CHAIN.clone(), value(url_encode(&pem))?)]
            }
            Mode::Verify => {
                let (_, x) = X509Certificate::from_der(leaf).ok()?;
                // The serial as a number: DER's sign byte (a 00 before a byte >= 0x80) left out,
                // as OpenSSL and ALB print it.
                let raw = match x.raw_serial() {
                    [0, rest @ ..] if rest.first().is_some_and(|b| *b >= 0x80) => rest,
                    r => r,
                };
                let mut serial = String::with_capacity(raw.len() * 2);
                for b in raw {
                    let _ = write!(serial, "{b:02X}");
                }
                let validity = format!(
                    "NotBefore={};NotAfter={}",
                    iso8601(x.validity().not_before.timestamp()),
                    iso8601(x.validity().not_after.timestamp())
                );
                let subj = rfc2253(x.subject());
                subject = Some(subj.clone());
                vec![
                    (SERIAL.clone(), value(serial)?),
                    (ISSUER.clone(), value(rfc2253(x.issuer()))?),
                    (SUBJECT.clone(), value(subj)?),
                    (VALIDITY.clone(), value(validity)?),
                    (LEAF.clone(), value(url_encode(&to_pem(leaf)))?),
                ]
            }
        };
        let mut lines = Vec::new();
        for (n, v) in &fields {
            lines.extend_from_slice(n.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(v.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Some(ClientCert { mode, subject, fields, lines: lines.into() })
    }
}

fn value(s: String) -> Option<HeaderValue> {
    HeaderValue::try_from(s).ok()
}

fn iso8601(unix: i64) -> String {
    // (humantime writes years up to 9999.)
    let t = std::time::UNIX_EPOCH + secs(unix.clamp(0, 253_402_300_799) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A certificate as PEM (64-column base64 lines).
pub fn to_pem(c: &CertificateDer<'_>) -> String {
    let b64 = aws_smithy_types::base64::encode(c.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encoding with ALB's safe set: unreserved characters and `+`, `=`, `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~+=/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A distinguished name as RFC 2253 writes it: the last RDN first, `,` between RDNs, `+`
/// inside a multi-valued one, RFC 2253's short names (else the dotted OID with the value as
/// `#` and the DER in hex), and special characters escaped; non-ASCII bytes are written as
/// `\XX` so the value is a valid header field.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.6" => Some("C"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(s), Ok(v)) => {
                    out.push_str(s);
                    out.push('=');
                    escape_value(&mut out, v);
                }
                _ => {
                    out.push_str(&oid);
                    out.push_str("=#");
                    let v = atv.attr_value();
                    let der = tlv(v.header.class() as u8, v.header.is_constructed(), v.tag().0, v.data);
                    for b in der {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

/// A DER element: identifier (low tag form, which attribute values use), length, contents.
fn tlv(class: u8, constructed: bool, tag: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 6);
    out.push((class << 6) | (u8::from(constructed) << 5) | (tag.min(30) as u8));
    match data.len() {
        n if n < 0x80 => out.push(n as u8),
        n => {
            let len = (n as u64).to_be_bytes();
            let skip = len.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (8 - skip) as u8);
            out.extend_from_slice(&len[skip..]);
        }
    }
    out.extend_from_slice(data);
    out
}

fn escape_value(out: &mut String, v: &str) {
    let bytes = v.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let special =
            b",+\"\\<>;".contains(&b) || (i == 0 && (b == b'#' || b == b' ')) || (i + 1 == bytes.len() && b == b' ');
        if special {
            out.push('\\');
            out.push(b as char);
        } else if !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_written_as_rfc_2253_says() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "US");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name.push(rcgen::DnType::CommonName, " #client+1 ");
        let cert = p.self_signed(&key).unwrap();
        let (_, x) = X509Certificate::from_der(cert.der()).unwrap();
        assert_eq!(rfc2253(x.subject()), r"CN=\ #client\+1\ ,O=Acme\, Inc.,C=US");
    }

    #[test]
    fn failures_are_listed_in_declaration_order() {
        assert!(Failure::ALL.iter().enumerate().all(|(i, f)| *f as usize == i));
    }

    #[test]
    fn pem_is_url_encoded_with_albs_safe_characters() {
        assert_eq!(url_encode("-----BEGIN CERTIFICATE-----\nab+/=\n"), "-----BEGIN%20CERTIFICATE-----%0Aab+/=%0A");
        assert!(is_mtls_header(b"X-Amzn-Mtls-Clientcert-Subject") && !is_mtls_header(b"x-amzn-mtls-"));
    }
}
