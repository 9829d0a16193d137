//! Material a configuration reads from AWS — certificates from ACM, Parameter Store or Secrets
//! Manager, and secrets — named by what the file asks for ([`wanted`]) and handed to the compile
//! once fetched ([`Material`]). Fetching is the control plane's (`control::material`): the
//! compile itself never waits on the network, so `check`, start-up, a reload and a certificate
//! refresh all compile the same way from the same inputs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::file::{self, FileConfig};
use super::snapshot::AwsSettings;
use super::SourceMap;

/// A certificate kept in AWS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AwsCertificate {
    /// An exportable ACM certificate (its ARN).
    Acm(String),
    /// Two Parameter Store parameters (the key a SecureString).
    Ssm { cert: String, key: String },
    /// A JSON secret holding both PEMs.
    SecretsManager { secret: String, cert_field: String, key_field: String },
}

impl fmt::Display for AwsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsCertificate::Acm(arn) => write!(f, "ACM certificate {arn}"),
            AwsCertificate::Ssm { cert, key } => write!(f, "SSM parameters {cert} and {key}"),
            AwsCertificate::SecretsManager { secret, .. } => write!(f, "Secrets Manager secret {secret}"),
        }
    }
}

/// A secret (or other bytes: a trust store, a CRL) kept in AWS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AwsSecret {
    Ssm(String),
    SecretsManager {
        secret: String,
        field: Option<String>,
    },
    /// An S3 object (ALB keeps trust stores and CRLs there).
    S3 {
        bucket: String,
        key: String,
    },
}

impl fmt::Display for AwsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsSecret::Ssm(name) => write!(f, "SSM parameter {name}"),
            AwsSecret::SecretsManager { secret, field: Some(k) } => {
                write!(f, "Secrets Manager secret {secret} field {k:?}")
            }
            AwsSecret::SecretsManager { secret, field: None } => write!(f, "Secrets Manager secret {secret}"),
            AwsSecret::S3 { bucket, key } => write!(f, "S3 object s3://{bucket}/{key}"),
        }
    }
}

/// A certificate as fetched: the PEM chain (leaf first) and the plain private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificatePem {
    pub chain: Vec<u8>,
    /// The private key as DER (PKCS#8, PKCS#1 or SEC1, see `format`).
    pub key: Arc<rustls_pki_types::PrivateKeyDer<'static>>,
    /// What identifies this version at its source (ACM: the serial; SSM: the parameter
    /// versions; Secrets Manager: the version id): a refresh that finds the same skips the work.
    pub version: String,
}

impl fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificatePem").field("version", &self.version).finish_non_exhaustive()
    }
}

/// A fetched value, or why it could not be fetched.
#[derive(Debug, Clone)]
pub enum Fetched<T> {
    Fresh(Arc<T>),
    /// The fetch failed (the error names the AWS operation and code) and the last good value
    /// is used: a warning, not an error.
    Stale(Arc<T>, String),
    Failed(String),
}

/// A secret's bytes (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// Everything fetched for one compile.
#[derive(Debug, Clone, Default)]
pub struct Material {
    pub certificates: HashMap<AwsCertificate, Fetched<CertificatePem>>,
    pub secrets: HashMap<AwsSecret, Fetched<SecretBytes>>,
}

/// What a configuration asks of AWS, and the `[aws]` settings to ask with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub aws: AwsSettings,
    /// By certificate name.
    pub certificates: Vec<(String, AwsCertificate)>,
    pub secrets: Vec<AwsSecret>,
}

impl Wanted {
    /// Whether nothing is read from AWS.
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty() && self.secrets.is_empty()
    }
}

/// What configuration `text` reads from AWS. A file that does not parse asks for nothing (its
/// compile reports why); an element with a wrong set of sources asks for nothing either.
pub fn wanted(name: &str, text: &str) -> Wanted {
    let map = SourceMap::new(name, text);
    let Ok((cfg, _)) = super::parse(&map, text) else { return Wanted::default() };
    wanted_of(&cfg)
}

/// What parsed configuration `cfg` reads from AWS.
pub fn wanted_of(cfg: &FileConfig) -> Wanted {
    let aws = cfg
        .aws
        .as_ref()
        .map(|a| AwsSettings {
            region: a.get_ref().region.clone(),
            endpoint_url: a.get_ref().endpoint_url.as_ref().map(|u| u.get_ref().clone()),
        })
        .unwrap_or_default();
    let certificates = cfg
        .certificates
        .iter()
        .filter_map(|c| {
            let c = c.get_ref();
            aws_certificate(c).map(|a| (c.name.get_ref().clone(), a))
        })
        .collect();
    let mut secrets: Vec<AwsSecret> = [&cfg.server.admin_token, &cfg.server.cookie_key]
        .into_iter()
        .flatten()
        .filter_map(|r| aws_secret(r.get_ref()))
        .collect();
    for m in cfg.listeners.iter().filter_map(|l| l.get_ref().mutual_tls.as_ref()) {
        let m = m.get_ref();
        let crls = m.crl.iter().flat_map(|c| c.get_ref().iter());
        for b in m.trust_store.iter().map(|t| t.get_ref()).chain(crls) {
            if let Ok(Some(src)) = aws_blob(b) {
                if !secrets.contains(&src) {
                    secrets.push(src);
                }
            }
        }
    }
    Wanted { aws, certificates, secrets }
}

/// The AWS source of certificate `c`, when it has exactly one source and that is AWS.
pub fn aws_certificate(c: &file::Certificate) -> Option<AwsCertificate> {
    let files = c.cert.is_some() || c.key.is_some();
    let count = [files, c.acm.is_some(), c.ssm.is_some(), c.secrets_manager.is_some()].iter().filter(|x| **x).count();
    if count != 1 {
        return None;
    }
    if let Some(arn) = &c.acm {
        return Some(AwsCertificate::Acm(arn.get_ref().clone()));
    }
    if let Some(s) = &c.ssm {
        let s = s.get_ref();
        return Some(AwsCertificate::Ssm { cert: s.cert.clone(), key: s.key.clone() });
    }
    c.secrets_manager.as_ref().map(|s| {
        let s = s.get_ref();
        AwsCertificate::SecretsManager {
            secret: s.secret.clone(),
            cert_field: s.cert_field.clone(),
            key_field: s.key_field.clone(),
        }
    })
}

/// The AWS source of `b` (None: a file), or why it names none.
pub fn aws_blob(b: &file::Blob) -> Result<Option<AwsSecret>, String> {
    let file::Blob::Aws(a) = b else { return Ok(None) };
    let given = [a.s3.is_some(), a.ssm.is_some(), a.secrets_manager.is_some()].iter().filter(|x| **x).count();
    if given != 1 {
        return Err("give a file path, or exactly one of s3, ssm or secrets_manager (+ field)".into());
    }
    if a.field.is_some() && a.secrets_manager.is_none() {
        return Err("field goes with secrets_manager".into());
    }
    if let Some(loc) = &a.s3 {
        return match loc.strip_prefix("s3://").and_then(|r| r.split_once('/')) {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                Ok(Some(AwsSecret::S3 { bucket: bucket.into(), key: key.into() }))
            }
            _ => Err(format!("bad S3 location {loc:?}: expected s3://BUCKET/KEY")),
        };
    }
    if let Some(n) = &a.ssm {
        return Ok(Some(AwsSecret::Ssm(n.clone())));
    }
    Ok(a.secrets_manager.as_ref().map(|s| AwsSecret::SecretsManager { secret: s.clone(), field: a.field.clone() }))
}

/// The AWS source of secret reference `r`, when it has exactly one source and that is AWS.
pub fn aws_secret(r: &file::SecretRef) -> Option<AwsSecret> {
    let count = [r.file.is_some(), r.env.is_some(), r.ssm.is_some(), r.secrets_manager.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if count != 1 {
        return None;
    }
    if let Some(n) = &r.ssm {
        return Some(AwsSecret::Ssm(n.get_ref().clone()));
    }
    r.secrets_manager.as_ref().map(|s| AwsSecret::SecretsManager {
        secret: s.get_ref().clone(),
        field: r.field.as_ref().map(|f| f.get_ref().clone()),
    })
}
