#![allow(unused_imports)]
//! Certificates made at test time (rcgen) and TLS clients that report what the server served.

use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SignatureAlgorithm};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use rcgen::{PKCS_ECDSA_P256_SHA256 as ECDSA, PKCS_RSA_SHA256 as RSA};

/// A test certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// The leaf certificate's DER.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap().to_vec()
    }

    /// Writes `NAME.crt` and `NAME.key` under `dir`; returns their paths.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> (String, String) {
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&ECDSA).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` valid for a year.
    pub fn issue(&self, names: &[&str], alg: &'static SignatureAlgorithm) -> Pem {
        self.issue_until(names, alg, OffsetDateTime::now_utc() + TimeDuration::days(365))
    }

    /// A leaf for `names` valid until `not_after`.
    pub fn issue_until(&self, names: &[&str], alg: &'static SignatureAlgorithm, not_after: OffsetDateTime) -> Pem {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = not_after - TimeDuration::days(400);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }
}

impl Ca {
    /// An empty revocation list signed by this CA.
    pub fn crl_pem(&self) -> String {
        self.crl_pem_revoking(&[])
    }

    /// A revocation list signed by this CA revoking the certificates with these serial numbers.
    pub fn crl_pem_revoking(&self, serials: &[Vec<u8>]) -> String {
        let now = OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - TimeDuration::hours(1),
            next_update: now + TimeDuration::days(7),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now - TimeDuration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// A TLS acceptor for a test backend.
pub fn acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Accepts any server certificate but remembers the leaf, and can pretend to support only RSA
/// signatures (so the server must pick an RSA certificate).
#[derive(Debug)]
pub struct Recorder {
    pub leaf: Mutex<Option<Vec<u8>>>,
    /// How many certificates the server sent (leaf and intermediates).
    chain: Mutex<usize>,
    rsa_only: bool,
}

impl Recorder {
    /// How many certificates the server sent.
    pub fn chain_len(&self) -> usize {
        *self.chain.lock().unwrap()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap() = Some(end.to_vec());
        *self.chain.lock().unwrap() = 1 + intermediates.len();
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let all = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes();
        if self.rsa_only {
            all.into_iter().filter(|s| format!("{s:?}").starts_with("RSA")).collect()
        } else {
            all
        }
    }
}

/// A client configuration whose verifier records the served certificate.
pub fn recording_client(alpn: &[&str], rsa_only: bool) -> (Arc<ClientConfig>, Arc<Recorder>) {
    let rec = Arc::new(Recorder { leaf: Mutex::new(None), chain: Mutex::new(0), rsa_only });
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    (Arc::new(cfg), rec)
}

/// Connects with `sni` (None: no SNI, by connecting to the IP address).
pub async fn connect(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await
}

/// The leaf certificate served to a client sending `sni`.
pub async fn served_leaf(addr: std::net::SocketAddr, sni: Option<&str>, rsa_only: bool) -> Vec<u8> {
    let (cfg, rec) = recording_client(&["http/1.1"], rsa_only);
    let _s = connect(addr, sni, cfg).await.expect("TLS handshake");
    let leaf = rec.leaf.lock().unwrap().clone();
    leaf.expect("a certificate was served")
}
