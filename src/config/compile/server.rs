//! The process-wide sections: `[server]`, `[access_log]`, `[aws]` and `[cloudwatch]`, each
//! checked and turned into its compiled settings in one pass.

use std::net::SocketAddr;
use std::time::Duration;

use super::{optional, Ctx};
use crate::config::file::{self, FileConfig, SecretRef, Spanned};
use crate::config::material::{self, Material};
use crate::config::snapshot::{
    AccessLogFormat, AdminToken, AwsSettings, CloudWatchSettings, CookieKey, ServerSettings,
};

/// hyper will not run with a smaller read buffer, so smaller head limits cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

/// The largest `max_connections` (far above what one process can hold open; tokio's semaphore
/// takes no more than `usize::MAX >> 3`).
const MAX_CONNECTIONS: usize = 1 << 24;

/// The compiled process-wide sections.
pub(super) struct Sections {
    pub settings: ServerSettings,
    pub access_log: AccessLogFormat,
    pub aws: AwsSettings,
    pub cloudwatch: Option<CloudWatchSettings>,
}

/// Checks and compiles the process-wide sections (None when one of them has an error).
pub(super) fn compile(cx: &mut Ctx<'_>, cfg: &FileConfig, material: &Material) -> Option<Sections> {
    let settings = server(cx, &cfg.server, material);
    let aws = aws(cx, cfg);
    let cloudwatch = cfg.cloudwatch.as_ref().map(|c| cloudwatch(cx, c));
    Some(Sections {
        settings: settings?,
        access_log: cfg.access_log.format.into(),
        aws: aws?,
        cloudwatch: optional(cloudwatch)?,
    })
}

fn server(cx: &mut Ctx<'_>, s: &file::Server, material: &Material) -> Option<ServerSettings> {
    let mark = cx.mark();
    let admin_public = *s.admin_public.get_ref();
    let admin_bind = match s.admin_bind.get_ref().parse::<SocketAddr>() {
        Ok(a) => {
            if !a.ip().is_loopback() && !admin_public {
                cx.err(
                    s.admin_bind.span(),
                    format!("admin_bind {a} is not a loopback address: set admin_public = true (with an admin_token) to allow it"),
                );
            }
            Some(a)
        }
        Err(_) => {
            cx.err(
                s.admin_bind.span(),
                format!("bad admin_bind address {:?}: expected IP:PORT", s.admin_bind.get_ref()),
            );
            None
        }
    };
    if !(MIN_HEADER_BYTES..=1 << 20).contains(s.max_header_bytes.get_ref()) {
        cx.err(s.max_header_bytes.span(), format!("max_header_bytes must be between {MIN_HEADER_BYTES} and 1048576"));
    }
    if !(256..=1 << 20).contains(s.max_uri_bytes.get_ref()) {
        cx.err(s.max_uri_bytes.span(), "max_uri_bytes must be between 256 and 1048576");
    }
    if !(8..=10_000).contains(s.max_headers.get_ref()) {
        cx.err(s.max_headers.span(), "max_headers must be between 8 and 10000");
    }
    if !(1..=MAX_CONNECTIONS).contains(s.max_connections.get_ref()) {
        cx.err(s.max_connections.span(), format!("max_connections must be between 1 and {MAX_CONNECTIONS}"));
    }
    if admin_public && s.admin_token.is_none() {
        cx.err(
            s.admin_public.span(),
            "admin_public = true needs an admin_token: the admin API would take reloads from anyone who can reach it",
        );
    }
    let admin_token = s.admin_token.as_ref().and_then(|r| match secret(cx, "admin_token", r, material) {
        Some(t) if t.is_empty() => {
            cx.err(r.span(), "admin_token is empty");
            None
        }
        Some(t) => Some(AdminToken::new(&t)),
        None => None,
    });
    let cookie_key = s.cookie_key.as_ref().and_then(|r| {
        let text = secret(cx, "cookie_key", r, material)?;
        match std::str::from_utf8(&text)
            .ok()
            .and_then(|t| aws_smithy_types::base64::decode(t).ok())
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
        {
            Some(k) => Some(CookieKey(k)),
            None => {
                cx.err(r.span(), "cookie_key must be 32 bytes written as standard base64 (`openssl rand -base64 32`)");
                None
            }
        }
    });
    let settings = ServerSettings {
        worker_threads: *s.worker_threads.get_ref(),
        admin_bind: admin_bind?,
        shutdown_drain: s.shutdown_drain.0,
        idle_timeout: s.idle_timeout.0,
        header_read_timeout: s.header_read_timeout.0,
        max_header_bytes: *s.max_header_bytes.get_ref(),
        max_uri_bytes: *s.max_uri_bytes.get_ref(),
        max_headers: *s.max_headers.get_ref(),
        max_connections: *s.max_connections.get_ref(),
        admin_token,
        cookie_key,
    };
    cx.clean_since(mark).then_some(settings)
}

/// The value of secret reference `r` (at key `key`), its surrounding whitespace trimmed (a file
/// written by `echo` ends with a newline); None with the error reported.
fn secret(cx: &mut Ctx<'_>, key: &str, r: &Spanned<SecretRef>, material: &Material) -> Option<Vec<u8>> {
    let at = r.span();
    let v = r.get_ref();
    let given = [v.file.is_some(), v.env.is_some(), v.ssm.is_some(), v.secrets_manager.is_some()];
    if given.iter().filter(|x| **x).count() != 1 {
        cx.err(at, format!("{key}: give exactly one of file, env, ssm or secrets_manager (+ field)"));
        return None;
    }
    if v.field.is_some() && v.secrets_manager.is_none() {
        cx.err(at, format!("{key}: field goes with secrets_manager"));
        return None;
    }
    let bytes = if let Some(f) = &v.file {
        let path = cx.path(f.get_ref());
        match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                cx.err(f.span(), format!("{key}: cannot read {}: {e}", path.display()));
                return None;
            }
        }
    } else if let Some(e) = &v.env {
        match std::env::var_os(e.get_ref()) {
            Some(val) => val.into_encoded_bytes(),
            None => {
                cx.err(e.span(), format!("{key}: environment variable {} is not set", e.get_ref()));
                return None;
            }
        }
    } else {
        let src = material::aws_secret(v)?;
        super::fetched(cx, at, key, &src, material.secrets.get(&src), "the last good value is used")?.0.clone()
    };
    Some(bytes.trim_ascii().to_vec())
}

/// `[aws]`, and a warning when something uses AWS without a region to call it in.
fn aws(cx: &mut Ctx<'_>, cfg: &FileConfig) -> Option<AwsSettings> {
    let mark = cx.mark();
    let a = cfg.aws.as_ref().map(|a| a.get_ref());
    if let Some(u) = a.and_then(|a| a.endpoint_url.as_ref()) {
        if u.get_ref().parse::<http::Uri>().ok().filter(|u| u.scheme().is_some() && u.host().is_some()).is_none() {
            cx.err(u.span(), format!("bad endpoint_url {:?}: expected e.g. \"http://127.0.0.1:5000\"", u.get_ref()));
        }
    }
    let uses_aws = cfg.cloudwatch.is_some()
        || cfg.target_groups.iter().any(|t| {
            let t = t.get_ref();
            t.discovery.as_ref().is_some_and(|d| d.get_ref().dns.is_none()) || t.autoscaling.is_some()
        })
        || !material::wanted_of(cfg).is_empty();
    if uses_aws
        && a.and_then(|a| a.region.as_ref()).is_none()
        && std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        cx.warn(0..0, "this configuration uses AWS but no region is set ([aws] region, or AWS_REGION); the SDK's chain (profile, IMDS) must provide one");
    }
    let settings = a
        .map(|a| AwsSettings {
            region: a.region.clone(),
            endpoint_url: a.endpoint_url.as_ref().map(|u| u.get_ref().clone()),
        })
        .unwrap_or_default();
    cx.clean_since(mark).then_some(settings)
}

fn cloudwatch(cx: &mut Ctx<'_>, cw: &file::Spanned<file::CloudWatch>) -> Option<CloudWatchSettings> {
    let mark = cx.mark();
    let c = cw.get_ref();
    if c.namespace.is_empty() || c.namespace.starts_with("AWS/") {
        cx.err(cw.span(), "cloudwatch namespace must be non-empty and must not start with \"AWS/\"");
    }
    if c.load_balancer.is_empty() {
        cx.err(cw.span(), "cloudwatch load_balancer must be non-empty");
    }
    if let Some(i) = &c.interval {
        if i.get_ref().0 < Duration::from_secs(1) {
            cx.err(i.span(), "cloudwatch interval must be at least 1s");
        }
    }
    let settings = CloudWatchSettings {
        namespace: c.namespace.clone(),
        load_balancer: c.load_balancer.clone(),
        interval: c.interval.as_ref().map_or(CloudWatchSettings::INTERVAL, |i| i.get_ref().0),
    };
    cx.clean_since(mark).then_some(settings)
}

impl From<file::AccessLogFormat> for AccessLogFormat {
    fn from(f: file::AccessLogFormat) -> Self {
        match f {
            file::AccessLogFormat::Json => AccessLogFormat::Json,
            file::AccessLogFormat::Off => AccessLogFormat::Off,
        }
    }
}
