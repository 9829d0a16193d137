//! Where the configuration comes from — a file, an S3 object (`s3://BUCKET/KEY`) or a Parameter
//! Store parameter (`ssm:/NAME`) — reading it, and `--poll`: checking it for a new version (a
//! file's modification time, the object's ETag, the parameter's version) and reloading on a
//! change exactly as SIGHUP does. A version that fails to load is reported once, not on every
//! poll. S3 and SSM are reached with the SDK's standard settings (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, the credential chain): `[aws]` is inside the file being read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::aws::{sdk_config, AwsError};
use super::Control;
use crate::config::snapshot::AwsSettings;
use crate::config::{ConfigError, Diagnostics, Severity};

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file, re-read on every reload.
    File(PathBuf),
    /// An S3 object.
    S3 { bucket: String, key: String },
    /// A Parameter Store parameter (String or SecureString).
    Ssm(String),
    /// Text (the demo, tests); `name` is used in messages. Nothing to re-read.
    Text { name: String, text: String },
}

impl ConfigSource {
    /// Reads `--config`: `s3://BUCKET/KEY`, `ssm:/NAME` or a file path.
    pub fn parse(s: &str) -> Result<ConfigSource, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(ConfigSource::S3 { bucket: bucket.into(), key: key.into() })
                }
                _ => Err(format!("bad S3 location {s:?}: expected s3://BUCKET/KEY")),
            };
        }
        if let Some(name) = s.strip_prefix("ssm:") {
            if !name.starts_with('/') || name.len() < 2 {
                return Err(format!("bad parameter {s:?}: expected ssm:/NAME (the parameter's full path)"));
            }
            return Ok(ConfigSource::Ssm(name.into()));
        }
        Ok(ConfigSource::File(PathBuf::from(s)))
    }

    /// The source as `--config` spells it (the name in messages).
    pub fn location(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            ConfigSource::Ssm(name) => format!("ssm:{name}"),
            ConfigSource::Text { name, .. } => name.clone(),
        }
    }

    /// Relative paths in the configuration are resolved against this (a file's folder; the
    /// working directory otherwise).
    pub fn base_dir(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(p) => p.parent(),
            _ => None,
        }
    }

    /// `--poll`'s default: off for files and text, every minute for S3 and SSM.
    pub fn default_poll(&self) -> Option<Duration> {
        match self {
            ConfigSource::S3 { .. } | ConfigSource::Ssm(_) => Some(Duration::from_secs(60)),
            _ => None,
        }
    }
}

/// One version of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// The name in messages (the source's location).
    pub name: String,
    pub text: String,
    /// What identifies this version at its source (None: text).
    pub version: Option<String>,
}

/// Reads `src` (a runtime is needed for S3 and SSM).
pub async fn read(src: &ConfigSource) -> Result<Document, Diagnostics> {
    let name = src.location();
    let fail = |message: String| {
        Diagnostics(vec![ConfigError { file: name.clone(), line: 1, col: 1, message, severity: Severity::Error }])
    };
    match src {
        ConfigSource::File(p) => {
            let text = crate::config::read(p)?;
            Ok(Document { name: name.clone(), text, version: file_version(p) })
        }
        ConfigSource::Text { name, text } => Ok(Document { name: name.clone(), text: text.clone(), version: None }),
        ConfigSource::S3 { bucket, key } => {
            let (text, etag) =
                s3_get(bucket, key).await.map_err(|e| fail(format!("cannot read the configuration: {e}")))?;
            Ok(Document { name: name.clone(), text, version: Some(etag) })
        }
        ConfigSource::Ssm(param) => {
            let (text, v) = ssm_get(param).await.map_err(|e| fail(format!("cannot read the configuration: {e}")))?;
            Ok(Document { name: name.clone(), text, version: Some(v) })
        }
    }
}

/// `src` read again when its version is not `seen`; None when it is unchanged.
pub async fn changed(src: &ConfigSource, seen: Option<&str>) -> Result<Option<Document>, String> {
    let is_seen = |v: &Option<String>| v.is_some() && v.as_deref() == seen;
    match src {
        ConfigSource::File(p) => {
            if is_seen(&file_version(p)) {
                return Ok(None);
            }
            read(src).await.map(Some).map_err(|d| d.to_string())
        }
        ConfigSource::S3 { bucket, key } => {
            let client = s3_client().await;
            let head = client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| AwsError::sdk("HeadObject", e).to_string())?;
            if is_seen(&head.e_tag().map(str::to_string)) {
                return Ok(None);
            }
            read(src).await.map(Some).map_err(|d| d.to_string())
        }
        ConfigSource::Ssm(param) => {
            let (text, v) = ssm_get(param).await.map_err(|e| e.to_string())?;
            let version = Some(v);
            if is_seen(&version) {
                return Ok(None);
            }
            Ok(Some(Document { name: src.location(), text, version }))
        }
        ConfigSource::Text { .. } => Ok(None),
    }
}

/// A file's version: its modification time (with the size, for clocks that tick coarsely).
pub fn file_version(p: &Path) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    let t = m.modified().ok()?;
    Some(format!("{} ({} bytes)", humantime::format_rfc3339_nanos(t), m.len()))
}

async fn s3_client() -> aws_sdk_s3::Client {
    let cfg = sdk_config(&AwsSettings::default()).await;
    // A custom endpoint (an S3-compatible store, an emulator) is addressed by path: bucket
    // names are not resolvable host names there.
    let path_style = cfg.endpoint_url().is_some();
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&cfg).force_path_style(path_style).build())
}

async fn s3_get(bucket: &str, key: &str) -> Result<(String, String), AwsError> {
    let out = s3_client()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| AwsError::sdk("GetObject", e))?;
    let etag = out.e_tag().unwrap_or_default().to_string();
    let body = out.body.collect().await.map_err(|e| AwsError {
        operation: "GetObject",
        code: "ReadFailed".into(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(body.into_bytes().to_vec()).map_err(|_| AwsError {
        operation: "GetObject",
        code: "NotUtf8".into(),
        message: format!("s3://{bucket}/{key} is not UTF-8 text"),
    })?;
    Ok((text, etag))
}

async fn ssm_get(name: &str) -> Result<(String, String), AwsError> {
    let cfg = sdk_config(&AwsSettings::default()).await;
    let (value, version) = super::material::ssm_parameter(&aws_sdk_ssm::Client::new(&cfg), name).await?;
    Ok((value, version.to_string()))
}

/// `--poll`: checks the source every `every` and reloads when its version changed. A version
/// that fails (to read or to load) is not tried again; the next version is.
pub async fn poll(control: Arc<Control>, src: ConfigSource, every: Duration) {
    // `seen`: the last version tried (loaded or refused); a reload by other means (SIGHUP)
    // that changes the version in force counts as seen too.
    let mut in_force = control.in_force_version();
    let mut seen = in_force.clone();
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let now = control.in_force_version();
        if now != in_force {
            seen.clone_from(&now);
            in_force = now;
        }
        match changed(&src, seen.as_deref()).await {
            Ok(None) => {
                control.state.metrics.config_source_check("unchanged");
                failing = false;
            }
            Ok(Some(doc)) => {
                control.state.metrics.config_source_check("changed");
                failing = false;
                tracing::info!(source = %doc.name, version = ?doc.version, "the configuration changed: reloading");
                seen = doc.version.clone();
                control.apply(doc).await;
                in_force = control.in_force_version();
            }
            Err(e) => {
                control.state.metrics.config_source_check("error");
                if !failing {
                    tracing::warn!(source = %src.location(), error = %e, "cannot check the configuration's source; the running configuration keeps serving");
                }
                failing = true;
            }
        }
    }
}
