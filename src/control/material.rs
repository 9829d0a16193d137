//! Fetching what a configuration reads from AWS ([`crate::config::material`]): certificates
//! from ACM (`DescribeCertificate`, then `ExportCertificate` with a random passphrase only when
//! the serial changed, the encrypted PKCS#8 key decrypted in memory), Parameter Store
//! (`GetParameter` with decryption) and Secrets Manager (`GetSecretValue`), and secrets from the
//! same two. The last good value of every source is cached: a failed fetch serves it (a
//! warning, counted in `pilotfish_certificate_refresh_errors_total`), and only a source never
//! fetched before fails the compile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::material::{AwsCertificate, AwsSecret, CertificatePem, Fetched, Material, SecretBytes, Wanted};
use crate::config::snapshot::AwsSettings;
use crate::telemetry::metrics::Metrics;
use crate::tls::pkcs8::private_key_from_pem;

use super::aws::{sdk_config, AwsError};

/// The last good value of every source.
#[derive(Debug, Default)]
pub struct Cache {
    certificates: HashMap<AwsCertificate, Arc<CertificatePem>>,
    secrets: HashMap<AwsSecret, Arc<SecretBytes>>,
}

impl Cache {
    /// Everything cached for `wanted`, as fresh material (a rebuild after a refresh).
    pub fn material(&self, wanted: &Wanted) -> Material {
        let mut m = Material::default();
        for (_, src) in &wanted.certificates {
            if let Some(p) = self.certificates.get(src) {
                m.certificates.insert(src.clone(), Fetched::Fresh(p.clone()));
            }
        }
        for src in &wanted.secrets {
            if let Some(s) = self.secrets.get(src) {
                m.secrets.insert(src.clone(), Fetched::Fresh(s.clone()));
            }
        }
        m
    }

    /// The cached copy of `src`.
    pub fn certificate(&self, src: &AwsCertificate) -> Option<Arc<CertificatePem>> {
        self.certificates.get(src).cloned()
    }

    /// The cached copy of secret `src`.
    pub fn secret(&self, src: &AwsSecret) -> Option<Arc<SecretBytes>> {
        self.secrets.get(src).cloned()
    }

    /// Records a good copy of secret `src`.
    pub fn put_secret(&mut self, src: AwsSecret, b: Arc<SecretBytes>) {
        self.secrets.insert(src, b);
    }

    /// Records a good copy of `src`.
    pub fn put_certificate(&mut self, src: AwsCertificate, pem: Arc<CertificatePem>) {
        self.certificates.insert(src, pem);
    }
}

/// The SDK clients of one round of fetches (made in the runtime that uses them).
pub struct Clients {
    acm: aws_sdk_acm::Client,
    ssm: aws_sdk_ssm::Client,
    secrets: aws_sdk_secretsmanager::Client,
    s3: aws_sdk_s3::Client,
}

impl Clients {
    pub async fn new(aws: &AwsSettings) -> Clients {
        let cfg = sdk_config(aws).await;
        Clients {
            acm: aws_sdk_acm::Client::new(&cfg),
            ssm: aws_sdk_ssm::Client::new(&cfg),
            secrets: aws_sdk_secretsmanager::Client::new(&cfg),
            // A custom endpoint (an S3-compatible store, an emulator) is addressed by path.
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&cfg).force_path_style(aws.endpoint_url.is_some()).build(),
            ),
        }
    }
}

/// Fetches everything `wanted` names (each source once), falling back on `cache` and updating
/// it; failures are counted per certificate name in `metrics`.
pub async fn fetch(wanted: &Wanted, cache: &Mutex<Cache>, metrics: &Metrics) -> Material {
    let mut m = Material::default();
    if wanted.is_empty() {
        return m;
    }
    let clients = Clients::new(&wanted.aws).await;
    for (name, src) in &wanted.certificates {
        if m.certificates.contains_key(src) {
            continue;
        }
        let cached = cache.lock().expect("material cache").certificate(src);
        let got = match certificate(&clients, src, cached.as_deref()).await {
            Ok(p) => {
                let p = Arc::new(p);
                cache.lock().expect("material cache").put_certificate(src.clone(), p.clone());
                Fetched::Fresh(p)
            }
            Err(e) => {
                metrics.certificate_refresh_error(name);
                tracing::error!(certificate = %name, source = %src, error = %e, "cannot read a certificate from AWS");
                match cached {
                    Some(p) => Fetched::Stale(p, e.to_string()),
                    None => Fetched::Failed(e.to_string()),
                }
            }
        };
        m.certificates.insert(src.clone(), got);
    }
    for src in &wanted.secrets {
        if m.secrets.contains_key(src) {
            continue;
        }
        let got = match secret(&clients, src).await {
            Ok(b) => {
                let b = Arc::new(b);
                cache.lock().expect("material cache").secrets.insert(src.clone(), b.clone());
                Fetched::Fresh(b)
            }
            Err(e) => {
                tracing::error!(source = %src, error = %e, "cannot read a secret from AWS");
                match cache.lock().expect("material cache").secrets.get(src) {
                    Some(b) => Fetched::Stale(b.clone(), e.to_string()),
                    None => Fetched::Failed(e.to_string()),
                }
            }
        };
        m.secrets.insert(src.clone(), got);
    }
    m
}

/// Reads certificate `src`. `cached`: the last good copy (ACM skips the export when the serial
/// is unchanged).
pub async fn certificate(
    c: &Clients,
    src: &AwsCertificate,
    cached: Option<&CertificatePem>,
) -> Result<CertificatePem, AwsError> {
    match src {
        AwsCertificate::Acm(arn) => acm(&c.acm, arn, cached).await,
        AwsCertificate::Ssm { cert, key } => {
            let (chain, cv) = ssm_parameter(&c.ssm, cert).await?;
            let (key_pem, kv) = ssm_parameter(&c.ssm, key).await?;
            let key = parse_key("GetParameter", key_pem.as_bytes(), b"")?;
            Ok(CertificatePem { chain: chain.into_bytes(), key, version: format!("{cv}/{kv}") })
        }
        AwsCertificate::SecretsManager { secret, cert_field, key_field } => {
            let (text, version) = secrets_manager(&c.secrets, secret).await?;
            let chain = json_field(secret, &text, cert_field)?;
            let key = parse_key("GetSecretValue", json_field(secret, &text, key_field)?.as_bytes(), b"")?;
            Ok(CertificatePem { chain: chain.into_bytes(), key, version })
        }
    }
}

async fn acm(c: &aws_sdk_acm::Client, arn: &str, cached: Option<&CertificatePem>) -> Result<CertificatePem, AwsError> {
    let d = c
        .describe_certificate()
        .certificate_arn(arn)
        .send()
        .await
        .map_err(|e| AwsError::sdk("DescribeCertificate", e))?;
    let serial = d.certificate().and_then(|c| c.serial()).unwrap_or_default().to_string();
    if let Some(c) = cached.filter(|c| !serial.is_empty() && c.version == serial) {
        return Ok(c.clone());
    }
    // 32 random hex digits (printable, none of the characters ACM refuses).
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| AwsError {
        operation: "ExportCertificate",
        code: "NoRandom".into(),
        message: "no random bytes for the passphrase".into(),
    })?;
    let pass: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let out = c
        .export_certificate()
        .certificate_arn(arn)
        .passphrase(aws_smithy_types::Blob::new(pass.as_bytes()))
        .send()
        .await
        .map_err(|e| AwsError::sdk("ExportCertificate", e))?;
    let (Some(cert), Some(key)) = (out.certificate(), out.private_key()) else {
        return Err(AwsError {
            operation: "ExportCertificate",
            code: "IncompleteResponse".into(),
            message: "the answer has no certificate or no private key".into(),
        });
    };
    let mut chain = cert.trim_end().to_string();
    chain.push('\n');
    if let Some(rest) = out.certificate_chain() {
        chain.push_str(rest);
    }
    let key = parse_key("ExportCertificate", key.as_bytes(), pass.as_bytes())?;
    Ok(CertificatePem { chain: chain.into_bytes(), key, version: serial })
}

fn parse_key(
    operation: &'static str,
    pem: &[u8],
    passphrase: &[u8],
) -> Result<Arc<rustls_pki_types::PrivateKeyDer<'static>>, AwsError> {
    private_key_from_pem(pem, passphrase).map(Arc::new).map_err(|message| AwsError {
        operation,
        code: "BadPrivateKey".into(),
        message,
    })
}

/// A parameter's value (decrypted) and version (also the configuration's source, `ssm:/NAME`).
pub(super) async fn ssm_parameter(c: &aws_sdk_ssm::Client, name: &str) -> Result<(String, i64), AwsError> {
    let out = c
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| AwsError::sdk("GetParameter", e))?;
    let p = out.parameter();
    let value = p.and_then(|p| p.value()).ok_or_else(|| AwsError {
        operation: "GetParameter",
        code: "NoValue".into(),
        message: format!("parameter {name} has no value"),
    })?;
    Ok((value.to_string(), p.map_or(0, |p| p.version())))
}

/// A secret's string and version id.
async fn secrets_manager(c: &aws_sdk_secretsmanager::Client, secret: &str) -> Result<(String, String), AwsError> {
    let out = c.get_secret_value().secret_id(secret).send().await.map_err(|e| AwsError::sdk("GetSecretValue", e))?;
    let text = out.secret_string().ok_or_else(|| AwsError {
        operation: "GetSecretValue",
        code: "NoSecretString".into(),
        message: format!("secret {secret} has no SecretString (binary secrets are not read)"),
    })?;
    Ok((text.to_string(), out.version_id().unwrap_or_default().to_string()))
}

fn json_field(secret: &str, text: &str, field: &str) -> Result<String, AwsError> {
    let bad = |message: String| AwsError { operation: "GetSecretValue", code: "BadSecret".into(), message };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("secret {secret} is not a JSON object: {e}")))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("field {field:?} of secret {secret} is not a string"))),
        None => Err(bad(format!("secret {secret} has no field {field:?}"))),
    }
}

/// Reads secret (or trust store, or CRL) `src`.
pub async fn secret(c: &Clients, src: &AwsSecret) -> Result<SecretBytes, AwsError> {
    match src {
        AwsSecret::Ssm(name) => Ok(SecretBytes(ssm_parameter(&c.ssm, name).await?.0.into_bytes())),
        AwsSecret::SecretsManager { secret, field } => {
            let (text, _) = secrets_manager(&c.secrets, secret).await?;
            Ok(SecretBytes(
                match field {
                    Some(f) => json_field(secret, &text, f)?,
                    None => text,
                }
                .into_bytes(),
            ))
        }
        AwsSecret::S3 { bucket, key } => {
            let out =
                c.s3.get_object().bucket(bucket).key(key).send().await.map_err(|e| AwsError::sdk("GetObject", e))?;
            let body = out.body.collect().await.map_err(|e| AwsError {
                operation: "GetObject",
                code: "ReadFailed".into(),
                message: e.to_string(),
            })?;
            Ok(SecretBytes(body.into_bytes().to_vec()))
        }
    }
}
