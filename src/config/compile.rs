//! Validation and compilation: [`file::FileConfig`] → [`Snapshot`]. Every check runs and every
//! problem is collected (with its span) before anything is built, so one `check` run reports all
//! mistakes, and a failed reload leaves the running snapshot untouched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use serde_json::json;
use toml::Spanned;

use super::file::{self, FileConfig, Forward, TargetEntry};
use super::snapshot::*;
use super::{Diagnostics, Severity, SourceMap};
use crate::balance::{Algorithm, GroupSettings, HealthCheck, TargetGroup, TargetSpec};
use crate::routing::{Conditions, Pattern, Router, Rule};
use crate::telemetry::metrics::Metrics;
use crate::tls::client::{upstream_config, UpstreamTls};
use crate::tls::{CertStore, LoadedCert};
use rustls::pki_types::ServerName;

/// What a compile needs besides the file itself.
pub struct CompileInput<'a> {
    /// Name of the file in messages (its path).
    pub name: &'a str,
    pub text: &'a str,
    /// The running snapshot, whose targets are reused by address.
    pub previous: Option<&'a Snapshot>,
    pub metrics: &'a Metrics,
    pub generation: u64,
    /// Relative certificate and CA paths are resolved against this (the config file's folder).
    pub base_dir: Option<&'a Path>,
}

/// ALB's limits, which pilotfish follows so configs move between the two.
const MAX_PRIORITY: u32 = 50_000;
const MAX_WEIGHT: u32 = 999;
const MAX_RETRIES: u32 = 5;
const MAX_FIXED_BODY: usize = 64 * 1024;
/// hyper will not run with a smaller read buffer, so smaller head limits cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

struct Ctx<'a> {
    map: SourceMap<'a>,
    diags: Vec<super::ConfigError>,
    base_dir: Option<&'a Path>,
    /// Certificates loaded during validation, by name.
    certs: HashMap<String, LoadedCert>,
    /// HTTPS-to-target client configurations, by target group.
    upstream_tls: HashMap<String, UpstreamTls>,
}

impl Ctx<'_> {
    fn path(&self, p: &str) -> PathBuf {
        match self.base_dir {
            Some(base) if Path::new(p).is_relative() => base.join(p),
            _ => PathBuf::from(p),
        }
    }

    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.map.diag(span, Severity::Error, msg);
        self.diags.push(d);
    }
    fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.map.diag(span, Severity::Warning, msg);
        self.diags.push(d);
    }
}

/// Parses, validates and compiles a configuration. On success returns the snapshot and any warnings.
pub fn compile(input: CompileInput<'_>) -> Result<(Snapshot, Diagnostics), Diagnostics> {
    let map = SourceMap::new(input.name, input.text);
    let (cfg, diags) = super::parse(&map, input.text)?;
    let mut cx = Ctx { map, diags, base_dir: input.base_dir, certs: HashMap::new(), upstream_tls: HashMap::new() };
    validate(&mut cx, &cfg);
    if let Some(prev) = input.previous {
        restart_only(&mut cx, &cfg.server, &prev.server);
    }
    cx.diags.sort_by_key(|d| (d.line, d.col));
    if cx.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(Diagnostics(cx.diags));
    }
    match build(&cfg, &input, &cx) {
        Ok(snap) => Ok((snap, Diagnostics(cx.diags))),
        Err(e) => {
            cx.err(0..0, e);
            Err(Diagnostics(cx.diags))
        }
    }
}

/// The largest `max_connections` (far above what one process can hold open; tokio's semaphore
/// takes no more than `usize::MAX >> 3`).
const MAX_CONNECTIONS: usize = 1 << 24;

/// Settings fixed at start-up (the worker threads, the admin socket) that a reload changes:
/// each is a warning at its key, and the running value stays in force (and is what `/config`
/// shows) until the next start. (`max_connections` is applied live.)
fn restart_only(cx: &mut Ctx<'_>, s: &crate::config::file::Server, prev: &ServerSettings) {
    // (A key left out is its default, reported at the top of the file.)
    let threads = *s.worker_threads.get_ref();
    if threads != prev.worker_threads {
        let count = |n: usize| if n == 0 { "0 (one per core)".to_string() } else { n.to_string() };
        let msg = format!(
            "worker_threads = {} takes effect at the next start; {} stay in force",
            count(threads),
            count(prev.worker_threads)
        );
        cx.warn(s.worker_threads.span(), msg);
    }
    if let Some(a) = s.admin_bind.get_ref().parse::<SocketAddr>().ok().filter(|a| *a != prev.admin_bind) {
        let msg =
            format!("admin_bind = {a} takes effect at the next start; the admin API stays on {}", prev.admin_bind);
        cx.warn(s.admin_bind.span(), msg);
    }
}

fn validate(cx: &mut Ctx<'_>, cfg: &FileConfig) {
    let s = &cfg.server;
    if let Ok(a) = s.admin_bind.get_ref().parse::<SocketAddr>() {
        if !a.ip().is_loopback() && !s.admin_public {
            cx.err(
                s.admin_bind.span(),
                format!("admin_bind {a} is not a loopback address: the admin API has no authentication; set admin_public = true to allow it"),
            );
        }
    }
    if s.admin_bind.get_ref().parse::<SocketAddr>().is_err() {
        cx.err(s.admin_bind.span(), format!("bad admin_bind address {:?}: expected IP:PORT", s.admin_bind.get_ref()));
    }
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
    if let Some(aws) = &cfg.aws {
        if let Some(u) = &aws.get_ref().endpoint_url {
            if u.get_ref().parse::<http::Uri>().ok().filter(|u| u.scheme().is_some() && u.host().is_some()).is_none() {
                cx.err(
                    u.span(),
                    format!("bad endpoint_url {:?}: expected e.g. \"http://127.0.0.1:5000\"", u.get_ref()),
                );
            }
        }
    }
    let uses_aws = cfg.cloudwatch.is_some()
        || cfg.target_groups.iter().any(|t| t.get_ref().discovery.is_some() || t.get_ref().autoscaling.is_some());
    if uses_aws
        && cfg.aws.as_ref().and_then(|a| a.get_ref().region.as_ref()).is_none()
        && std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        cx.warn(0..0, "discovery uses AWS but no region is set ([aws] region, or AWS_REGION); the SDK's chain (profile, IMDS) must provide one");
    }
    if let Some(cw) = &cfg.cloudwatch {
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
    }
    for c in &cfg.certificates {
        let c = c.get_ref();
        let name = c.name.get_ref();
        if !valid_name(name) {
            cx.err(c.name.span(), format!("bad certificate name {name:?}: use letters, digits, '-', '_' and '.'"));
            continue;
        }
        if cx.certs.contains_key(name) {
            cx.err(c.name.span(), format!("duplicate certificate name {name:?}"));
            continue;
        }
        let (cert, key) = (cx.path(c.cert.get_ref()), cx.path(c.key.get_ref()));
        match crate::tls::load(&cert, &key) {
            Ok((loaded, warnings)) => {
                for w in warnings {
                    cx.warn(c.cert.span(), format!("certificate {name:?}: {w}"));
                }
                cx.certs.insert(name.clone(), loaded);
            }
            Err(e) => cx.err(c.cert.span(), format!("certificate {name:?}: {e}")),
        }
    }
    // Elements that could not be read were reported already; naming one is not a second error.
    let unreadable = || cfg.unreadable.iter().map(String::as_str);
    let cert_names: HashSet<&str> =
        cfg.certificates.iter().map(|c| c.get_ref().name.get_ref().as_str()).chain(unreadable()).collect();

    // Target groups.
    let mut groups: HashSet<&str> = HashSet::new();
    for tg in &cfg.target_groups {
        let span = tg.span();
        let tg = tg.get_ref();
        let name = tg.name.get_ref();
        if !valid_name(name) {
            cx.err(tg.name.span(), format!("bad target group name {name:?}: use letters, digits, '-', '_' and '.'"));
        } else if !groups.insert(name) {
            cx.err(tg.name.span(), format!("duplicate target group name {name:?}"));
        }
        let mut addrs = HashSet::new();
        for t in &tg.targets {
            let (addr, weight) = match t.get_ref() {
                TargetEntry::Addr(a) => (a, None),
                TargetEntry::Weighted { address, weight } => (address, Some(*weight)),
            };
            match addr.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => cx.err(t.span(), format!("target {addr:?} needs a non-zero port")),
                Ok(a) => {
                    if !addrs.insert(a) {
                        cx.err(t.span(), format!("duplicate target {a} in target group {name:?}"));
                    }
                }
                Err(_) => {
                    cx.err(t.span(), format!("bad target address {addr:?}: expected IP:PORT (e.g. \"10.0.1.5:8080\")"))
                }
            }
            if weight.is_some_and(|w| w > MAX_WEIGHT) {
                cx.err(t.span(), format!("target weight must be 0..={MAX_WEIGHT}"));
            }
        }
        if tg.retries.is_some_and(|r| r > MAX_RETRIES) {
            cx.err(span.clone(), format!("target group {name:?}: retries must be 0..={MAX_RETRIES}"));
        }
        for (d, what) in [(&tg.connect_timeout, "connect_timeout"), (&tg.response_timeout, "response_timeout")] {
            if d.is_some_and(|d| d.0.is_zero()) {
                cx.err(span.clone(), format!("target group {name:?}: {what} must be greater than 0"));
            }
        }
        if let Some(v) = &tg.slow_start {
            if v.get_ref().0 > Duration::from_secs(3600) {
                cx.err(v.span(), "slow_start must be at most 1h (0s = off)");
            }
        }
        if let Some(v) = &tg.deregistration_delay {
            if v.get_ref().0 > Duration::from_secs(3600) {
                cx.err(v.span(), "deregistration_delay must be at most 1h");
            }
        }
        if let Some(hc) = &tg.health_check {
            check_health(cx, hc.get_ref());
        }
        if let Some(d) = &tg.discovery {
            let dv = d.get_ref();
            match (&dv.cloud_map, &dv.ecs) {
                (Some(_), Some(_)) | (None, None) => {
                    cx.err(d.span(), format!("target group {name:?}: discovery needs exactly one of cloud_map or ecs"))
                }
                (Some(cm), None) => {
                    if let Some(h) = &cm.get_ref().health_status {
                        if !["HEALTHY", "UNHEALTHY", "ALL", "HEALTHY_OR_ELSE_ALL"].contains(&h.get_ref().as_str()) {
                            cx.err(h.span(), "health_status must be HEALTHY, UNHEALTHY, ALL or HEALTHY_OR_ELSE_ALL");
                        }
                    }
                    if cm.get_ref().refresh.is_some_and(|r| r.0 < Duration::from_millis(100)) {
                        cx.err(cm.span(), "cloud_map refresh must be at least 100ms");
                    }
                }
                (None, Some(ecs)) => {
                    if *ecs.get_ref().container_port.get_ref() == 0 {
                        cx.err(ecs.get_ref().container_port.span(), "container_port must be 1..=65535");
                    }
                    if ecs.get_ref().refresh.is_some_and(|r| r.0 < Duration::from_millis(100)) {
                        cx.err(ecs.span(), "ecs refresh must be at least 100ms");
                    }
                }
            }
            if !tg.targets.is_empty() {
                cx.err(d.span(), format!("target group {name:?}: use either targets or discovery, not both"));
            }
        }
        if let Some(a) = &tg.autoscaling {
            let v = a.get_ref();
            if *v.max.get_ref() == 0 || v.min.get_ref() > v.max.get_ref() {
                cx.err(v.max.span(), format!("target group {name:?}: autoscaling needs 0 <= min <= max and max >= 1"));
            }
            if !(*v.target.get_ref() > 0.0 && v.target.get_ref().is_finite()) {
                cx.err(v.target.span(), "autoscaling target must be a positive number");
            }
            if let Some(p) = &v.period {
                if p.get_ref().0 < Duration::from_secs(1) {
                    cx.err(p.span(), "autoscaling period must be at least 1s");
                } else if v.source == file::MetricSource::Cloudwatch && p.get_ref().0.as_secs() % 60 != 0 {
                    cx.warn(p.span(), "CloudWatch standard-resolution metrics need a period that is a multiple of 60s");
                }
            }
            let needs_cw =
                v.source == file::MetricSource::Cloudwatch || v.mode == file::ScalingMode::ApplicationAutoscaling;
            if needs_cw && cfg.cloudwatch.is_none() {
                cx.err(a.span(), format!("target group {name:?}: autoscaling from CloudWatch needs a [cloudwatch] section (the metrics it reads are the ones pilotfish publishes)"));
            }
        }
        if let Some(t) = &tg.tls {
            let span = t.span();
            let t = t.get_ref();
            if t.enabled {
                let ca = match &t.ca {
                    Some(ca) => match crate::tls::load::load_ca_bundle(&cx.path(ca.get_ref())) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            cx.err(ca.span(), format!("target group {name:?}: {e}"));
                            None
                        }
                    },
                    None => None,
                };
                let server_name = match &t.server_name {
                    Some(sn) => match ServerName::try_from(sn.get_ref().clone()) {
                        Ok(n) => Some(n),
                        Err(_) => {
                            cx.err(sn.span(), format!("bad server_name {:?}: a DNS name or IP address", sn.get_ref()));
                            None
                        }
                    },
                    None => None,
                };
                if !t.verify {
                    cx.warn(span.clone(), format!("target group {name:?}: verify = false: target certificates are not checked (encryption without authentication)"));
                }
                if t.ca.is_some() && !t.verify {
                    cx.err(span.clone(), format!("target group {name:?}: ca is set but verify = false"));
                }
                if t.ca.is_none() || ca.is_some() {
                    match upstream_config(tg.protocol.into(), t.verify, ca, server_name) {
                        Ok(c) => {
                            cx.upstream_tls.insert(name.clone(), c);
                        }
                        Err(e) => cx.err(span, format!("target group {name:?}: {e}")),
                    }
                }
            }
        }
    }

    groups.extend(unreadable());

    // Listeners.
    let mut listeners: HashSet<&str> = HashSet::new();
    let mut binds: HashMap<SocketAddr, &str> = HashMap::new();
    for l in &cfg.listeners {
        let l = l.get_ref();
        let name = l.name.get_ref();
        if !valid_name(name) {
            cx.err(l.name.span(), format!("bad listener name {name:?}: use letters, digits, '-', '_' and '.'"));
        } else if !listeners.insert(name) {
            cx.err(l.name.span(), format!("duplicate listener name {name:?}"));
        }
        match l.bind.get_ref().parse::<SocketAddr>() {
            Ok(a) => {
                if let Some(other) = binds.insert(a, name).filter(|_| a.port() != 0) {
                    cx.err(l.bind.span(), format!("listener {name:?} binds {a}, already bound by listener {other:?}"));
                }
            }
            Err(_) => cx.err(
                l.bind.span(),
                format!("bad bind address {:?}: expected IP:PORT (e.g. \"0.0.0.0:80\")", l.bind.get_ref()),
            ),
        }
        if *l.protocol.get_ref() == file::ListenerProtocol::Https {
            match &l.certificates {
                None => cx.err(l.name.span(), format!("https listener {name:?} needs certificates = [...]")),
                Some(list) => {
                    if list.get_ref().is_empty() {
                        cx.err(list.span(), format!("https listener {name:?} needs at least one certificate"));
                    }
                    for c in list.get_ref() {
                        if !cert_names.contains(c.as_str()) {
                            cx.err(list.span(), format!("listener {name:?} names unknown certificate {c:?}"));
                        }
                    }
                    if let Some(d) = &l.default_certificate {
                        if !list.get_ref().contains(d.get_ref()) {
                            cx.err(
                                d.span(),
                                format!("default_certificate {:?} is not in the listener's certificates", d.get_ref()),
                            );
                        }
                    }
                }
            }
            if let Some(alpn) = &l.alpn {
                for p in alpn.get_ref() {
                    if p != "h2" && p != "http/1.1" {
                        cx.err(alpn.span(), format!("unsupported ALPN protocol {p:?}: \"h2\" or \"http/1.1\""));
                    }
                }
                if alpn.get_ref().is_empty() {
                    cx.err(alpn.span(), "alpn lists no protocol");
                }
            }
        }
        for (present, span, key) in [
            (l.certificates.as_ref().map(|c| c.span()), "certificates"),
            (l.default_certificate.as_ref().map(|c| c.span()), "default_certificate"),
            (l.alpn.as_ref().map(|c| c.span()), "alpn"),
        ]
        .map(|(s, k)| (s.is_some(), s, k))
        {
            if present && *l.protocol.get_ref() == file::ListenerProtocol::Http {
                cx.err(span.unwrap_or(0..0), format!("{key} is only valid on https listeners"));
            }
        }
        if let Some(a) = &l.default_action {
            let a = a.get_ref();
            check_action(
                cx,
                &groups,
                a.forward.as_ref(),
                a.redirect.as_ref(),
                a.fixed_response.as_ref(),
                l.name.span(),
                "default_action",
            );
        }
    }

    listeners.extend(unreadable());

    // Rules.
    let mut rule_names: HashSet<&str> = HashSet::new();
    let mut priorities: HashMap<(&str, u32), &str> = HashMap::new();
    for r in &cfg.rules {
        let r = r.get_ref();
        let name = r.name.get_ref();
        if !valid_name(name) {
            cx.err(r.name.span(), format!("bad rule name {name:?}: use letters, digits, '-', '_' and '.'"));
        } else if !rule_names.insert(name) {
            cx.err(r.name.span(), format!("duplicate rule name {name:?}"));
        }
        let prio = *r.priority.get_ref();
        if !(1..=MAX_PRIORITY).contains(&prio) {
            cx.err(r.priority.span(), format!("priority must be 1..={MAX_PRIORITY}"));
        }
        if r.listeners.get_ref().is_empty() {
            cx.err(r.listeners.span(), format!("rule {name:?} names no listener"));
        }
        for l in r.listeners.get_ref() {
            if !listeners.contains(l.get_ref().as_str()) {
                cx.err(l.span(), format!("rule {name:?} names unknown listener {:?}", l.get_ref()));
            } else if let Some(other) = priorities.insert((l.get_ref(), prio), name) {
                cx.err(
                    r.priority.span(),
                    format!("priority {prio} on listener {:?} is already used by rule {other:?}", l.get_ref()),
                );
            }
        }
        if let Some(hosts) = &r.host {
            for h in hosts.get_ref() {
                if h.is_empty()
                    || h.len() > 128
                    || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*?_".contains(&b))
                {
                    cx.err(
                        hosts.span(),
                        format!("bad host pattern {h:?}: letters, digits, '-', '.', '_', '*' and '?' (max 128)"),
                    );
                }
            }
            empty_list(cx, hosts, "host");
        }
        if let Some(paths) = &r.path {
            for p in paths.get_ref() {
                if !(p.starts_with('/') || p.starts_with('*'))
                    || p.len() > 128
                    || p.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    cx.err(
                        paths.span(),
                        format!("bad path pattern {p:?}: must start with '/' (or '*'), no spaces, max 128"),
                    );
                }
            }
            empty_list(cx, paths, "path");
        }
        if let Some(methods) = &r.method {
            for m in methods.get_ref() {
                if Method::from_bytes(m.as_bytes()).is_err() || m.bytes().any(|b| b.is_ascii_lowercase()) {
                    cx.err(methods.span(), format!("bad method {m:?}: an uppercase HTTP method token like \"GET\""));
                }
            }
            empty_list(cx, methods, "method");
        }
        if let Some(ips) = &r.source_ip {
            for ip in ips.get_ref() {
                if parse_cidr(ip.get_ref()).is_none() {
                    cx.err(
                        ip.span(),
                        format!("bad CIDR {:?}: expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"", ip.get_ref()),
                    );
                }
            }
            empty_list(cx, ips, "source_ip");
        }
        if let Some(h) = &r.headers {
            for (k, v) in h.get_ref() {
                if HeaderName::from_bytes(k.as_bytes()).is_err() {
                    cx.err(h.span(), format!("bad header name {k:?}"));
                }
                if v.is_empty() {
                    cx.err(h.span(), format!("header condition {k:?} lists no value"));
                }
            }
        }
        if let Some(q) = &r.query {
            for (k, v) in q.get_ref() {
                if k.is_empty() || v.is_empty() {
                    cx.err(q.span(), format!("query condition {k:?} needs a key and at least one value"));
                }
            }
        }
        check_action(
            cx,
            &groups,
            r.forward.as_ref(),
            r.redirect.as_ref(),
            r.fixed_response.as_ref(),
            r.name.span(),
            &format!("rule {name:?}"),
        );
    }
    if cfg.listeners.is_empty() {
        cx.warn(0..0, "no [[listeners]]: pilotfish will serve nothing but its admin API");
    }
    // A rule host on an https listener that no certificate covers gets the default certificate,
    // which browsers reject: warn (check and reload both show it).
    for r in &cfg.rules {
        let r = r.get_ref();
        let Some(hosts) = &r.host else { continue };
        for l in r.listeners.get_ref() {
            let Some(listener) = cfg.listeners.iter().map(|x| x.get_ref()).find(|x| x.name.get_ref() == l.get_ref())
            else {
                continue;
            };
            let Some(certs) = listener
                .certificates
                .as_ref()
                .filter(|_| *listener.protocol.get_ref() == file::ListenerProtocol::Https)
            else {
                continue;
            };
            let mut store = CertStore::default();
            for c in certs.get_ref().iter().filter_map(|c| cx.certs.get(c)) {
                store.add(c);
            }
            for h in hosts.get_ref() {
                let h = h.to_ascii_lowercase();
                let covered = if let Some(rest) = h.strip_prefix("*.") {
                    store.covers(&format!("x.{rest}"))
                } else if h.contains(['*', '?']) {
                    true // other wildcard shapes cannot be checked name by name
                } else {
                    store.covers(&h)
                };
                if !covered {
                    cx.warn(hosts.span(), format!("rule {:?}: host {h:?} is not covered by any certificate of https listener {:?}; clients will get the default certificate", r.name.get_ref(), l.get_ref()));
                }
            }
        }
    }
    let used: HashSet<String> = cfg
        .rules
        .iter()
        .filter_map(|r| r.get_ref().forward.as_ref())
        .chain(cfg.listeners.iter().filter_map(|l| l.get_ref().default_action.as_ref()?.get_ref().forward.as_ref()))
        .flat_map(|f| forward_groups(f.get_ref()))
        .collect();
    for tg in &cfg.target_groups {
        let tg = tg.get_ref();
        if !used.contains(tg.name.get_ref()) {
            cx.warn(
                tg.name.span(),
                format!("target group {:?} is not used by any rule or default action", tg.name.get_ref()),
            );
        }
        if tg.targets.is_empty() && tg.discovery.is_none() {
            cx.warn(
                tg.name.span(),
                format!("target group {:?} has no targets: requests to it get 503", tg.name.get_ref()),
            );
        }
    }
}

fn check_health(cx: &mut Ctx<'_>, hc: &file::HealthCheck) {
    if let Some(p) = &hc.path {
        let v = p.get_ref();
        if !v.starts_with('/') || v.len() > 1024 || v.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            cx.err(p.span(), format!("bad health check path {v:?}: must start with '/', no spaces, max 1024"));
        }
    }
    if let Some(p) = &hc.port {
        match p.get_ref() {
            file::HealthPort::Number(0) => cx.err(p.span(), "health check port must be 1..=65535 or \"traffic-port\""),
            file::HealthPort::Named(n) if n != "traffic-port" => {
                cx.err(p.span(), format!("bad health check port {n:?}: a number or \"traffic-port\""))
            }
            _ => {}
        }
    }
    let interval = hc.interval.as_ref().map_or(Duration::from_secs(30), |d| d.get_ref().0);
    if let Some(i) = &hc.interval {
        if i.get_ref().0 < Duration::from_millis(50) || i.get_ref().0 > Duration::from_secs(300) {
            cx.err(i.span(), "health check interval must be between 50ms and 300s");
        }
    }
    if let Some(t) = &hc.timeout {
        if t.get_ref().0.is_zero() || t.get_ref().0 > interval {
            cx.err(t.span(), "health check timeout must be greater than 0 and at most the interval");
        }
    } else if interval < Duration::from_secs(5) {
        // The default timeout (5 s) would exceed a short interval: say which key to set.
        cx.err(
            hc.interval.as_ref().map_or(0..0, |i| i.span()),
            "health check interval is shorter than the default timeout (5s): set timeout too",
        );
    }
    for t in [&hc.healthy_threshold, &hc.unhealthy_threshold].into_iter().flatten() {
        if !(1..=10).contains(t.get_ref()) {
            cx.err(t.span(), "health check thresholds must be 1..=10");
        }
    }
    if let Some(m) = &hc.matcher {
        if let Err(e) = parse_matcher(m.get_ref()) {
            cx.err(m.span(), e);
        }
    }
}

/// Parses an ALB-style status matcher: `"200"`, `"200,204"`, `"200-399"`.
pub fn parse_matcher(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || format!("bad matcher {s:?}: codes like \"200\", \"200,204\" or \"200-399\" (100..=599)");
    let code = |c: &str| c.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
    s.split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => match (code(lo), code(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
                _ => Err(bad()),
            },
            None => code(part).map(|c| (c, c)).ok_or_else(bad),
        })
        .collect()
}

fn empty_list<T>(cx: &mut Ctx<'_>, list: &Spanned<Vec<T>>, what: &str) {
    if list.get_ref().is_empty() {
        cx.err(list.span(), format!("empty {what} list: remove the condition to match any {what}"));
    }
}

fn forward_groups(f: &Forward) -> Vec<String> {
    match f {
        Forward::One(g) => vec![g.clone()],
        Forward::Weighted(arms) => arms.iter().map(|a| a.target_group.clone()).collect(),
    }
}

fn check_action(
    cx: &mut Ctx<'_>,
    groups: &HashSet<&str>,
    forward: Option<&Spanned<Forward>>,
    redirect: Option<&Spanned<file::Redirect>>,
    fixed: Option<&Spanned<file::FixedResponse>>,
    owner_span: Range<usize>,
    owner: &str,
) {
    let n = forward.is_some() as u8 + redirect.is_some() as u8 + fixed.is_some() as u8;
    if n != 1 {
        cx.err(
            owner_span,
            format!("{owner} needs exactly one action: forward, redirect or fixed_response (found {n})"),
        );
    }
    if let Some(f) = forward {
        match f.get_ref() {
            Forward::One(g) => {
                if !groups.contains(g.as_str()) {
                    cx.err(f.span(), format!("{owner} forwards to unknown target group {g:?}"));
                }
            }
            Forward::Weighted(arms) => {
                if arms.is_empty() {
                    cx.err(f.span(), format!("{owner}: weighted forward lists no target group"));
                }
                let mut seen = HashSet::new();
                for a in arms {
                    if !groups.contains(a.target_group.as_str()) {
                        cx.err(f.span(), format!("{owner} forwards to unknown target group {:?}", a.target_group));
                    }
                    if !seen.insert(&a.target_group) {
                        cx.err(
                            f.span(),
                            format!("{owner}: target group {:?} appears twice in one forward", a.target_group),
                        );
                    }
                    if a.weight > MAX_WEIGHT {
                        cx.err(f.span(), format!("{owner}: forward weight must be 0..={MAX_WEIGHT}"));
                    }
                }
                if !arms.is_empty() && arms.iter().all(|a| a.weight == 0) {
                    cx.err(f.span(), format!("{owner}: forward weights are all zero"));
                }
            }
        }
    }
    if let Some(r) = redirect {
        let rd = r.get_ref();
        if !matches!(rd.status, 301 | 302 | 303 | 307 | 308) {
            cx.err(r.span(), format!("{owner}: redirect status must be 301, 302, 303, 307 or 308"));
        }
        if rd.protocol.as_deref().is_some_and(|p| p != "http" && p != "https") {
            cx.err(r.span(), format!("{owner}: redirect protocol must be \"http\" or \"https\""));
        }
        if rd.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            cx.err(r.span(), format!("{owner}: redirect path must start with '/'"));
        }
        if rd.host.as_deref().is_some_and(|h| h.is_empty() || h.contains(['/', ' ', '?', '#'])) {
            cx.err(r.span(), format!("{owner}: redirect host must be a bare host name"));
        }
        if rd.port == Some(0) {
            cx.err(r.span(), format!("{owner}: redirect port must be 1..=65535"));
        }
    }
    if let Some(f) = fixed {
        let fr = f.get_ref();
        if !(200..=599).contains(&fr.status) {
            cx.err(f.span(), format!("{owner}: fixed_response status must be 200..=599"));
        }
        if HeaderValue::from_str(&fr.content_type).is_err() {
            cx.err(f.span(), format!("{owner}: bad content_type {:?}", fr.content_type));
        }
        if fr.body.len() > MAX_FIXED_BODY {
            cx.err(f.span(), format!("{owner}: fixed_response body is larger than {MAX_FIXED_BODY} bytes"));
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Parses a CIDR; a bare address is a single-host network.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc()).or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

// ---------------------------------------------------------------------------------------------
// Building (input is valid here: every parse below was checked above).

fn build(cfg: &FileConfig, input: &CompileInput<'_>, cx: &Ctx<'_>) -> Result<Snapshot, String> {
    let s = &cfg.server;
    let mut server = ServerSettings {
        worker_threads: *s.worker_threads.get_ref(),
        admin_bind: s.admin_bind.get_ref().parse().expect("validated"),
        shutdown_drain: s.shutdown_drain.0,
        idle_timeout: s.idle_timeout.0,
        header_read_timeout: s.header_read_timeout.0,
        max_header_bytes: *s.max_header_bytes.get_ref(),
        max_uri_bytes: *s.max_uri_bytes.get_ref(),
        max_headers: *s.max_headers.get_ref(),
        max_connections: *s.max_connections.get_ref(),
    };
    if let Some(prev) = input.previous {
        // Fixed at start-up (see `restart_only`): the running values stay in force.
        server.worker_threads = prev.server.worker_threads;
        server.admin_bind = prev.server.admin_bind;
    }
    let metrics = input.metrics;

    let groups: BTreeMap<&str, Upstream> = cfg
        .target_groups
        .iter()
        .map(|tg| {
            let tg = tg.get_ref();
            let name: Arc<str> = tg.name.get_ref().as_str().into();
            let mut transport = Transport::new(tg.protocol.into());
            if let Some(d) = tg.connect_timeout {
                transport.connect_timeout = d.0;
            }
            if let Some(d) = tg.response_timeout {
                transport.response_timeout = d.0;
            }
            if let Some(r) = tg.retries {
                transport.retries = r;
            }
            transport.tls = cx.upstream_tls.get(tg.name.get_ref()).cloned().map(Arc::new);
            let mut settings = GroupSettings::new(tg.algorithm.into());
            if let Some(d) = &tg.slow_start {
                settings.slow_start = d.get_ref().0;
            }
            if let Some(d) = &tg.deregistration_delay {
                settings.deregistration_delay = d.get_ref().0;
            }
            settings.health_check = tg.health_check.as_ref().map(|h| health(h.get_ref()));
            let prev = input.previous.and_then(|p| p.target_group(&name));
            // Discovered groups keep what discovery last found; the discovery loop updates them.
            let specs: Vec<TargetSpec> = if tg.discovery.is_some() {
                prev.map(|g| g.targets().registered_specs()).unwrap_or_default()
            } else {
                tg.targets
                    .iter()
                    .map(|t| match t.get_ref() {
                        TargetEntry::Addr(a) => TargetSpec { addr: a.parse().expect("validated"), weight: 100 },
                        TargetEntry::Weighted { address, weight } => {
                            TargetSpec { addr: address.parse().expect("validated"), weight: *weight }
                        }
                    })
                    .collect()
            };
            let group = Arc::new(TargetGroup::new(name, settings, &specs, prev.map(|g| &**g)));
            (tg.name.get_ref().as_str(), Upstream { group, transport: Arc::new(transport) })
        })
        .collect();

    let listeners: Vec<Arc<ListenerConfig>> = cfg
        .listeners
        .iter()
        .map(|l| -> Result<Arc<ListenerConfig>, String> {
            let l = l.get_ref();
            let lname: Arc<str> = l.name.get_ref().as_str().into();
            let mut rules = Vec::new();
            for r in &cfg.rules {
                let r = r.get_ref();
                if !r.listeners.get_ref().iter().any(|x| x.get_ref() == l.name.get_ref()) {
                    continue;
                }
                rules.push(Rule {
                    name: r.name.get_ref().as_str().into(),
                    priority: *r.priority.get_ref(),
                    conditions: conditions(r),
                    action: action(
                        metrics,
                        &lname,
                        &groups,
                        r.forward.as_ref(),
                        r.redirect.as_ref(),
                        r.fixed_response.as_ref(),
                    ),
                });
            }
            let default = match &l.default_action {
                Some(a) => {
                    let a = a.get_ref();
                    action(metrics, &lname, &groups, a.forward.as_ref(), a.redirect.as_ref(), a.fixed_response.as_ref())
                }
                None => Action::Fixed(FixedAction {
                    status: StatusCode::NOT_FOUND,
                    content_type: HeaderValue::from_static("text/plain"),
                    body: Bytes::from_static(b"no route\n"),
                    codes: metrics.requests(&lname, &"".into()),
                }),
            };
            let tls = match (l.protocol.get_ref(), &l.certificates) {
                (file::ListenerProtocol::Https, Some(list)) => {
                    let names = list.get_ref();
                    let default = l.default_certificate.as_ref().map_or(&names[0], |d| d.get_ref());
                    let mut store = CertStore::new(&cx.certs[default]);
                    for n in names {
                        store.add(&cx.certs[n]);
                    }
                    let alpn = l
                        .alpn
                        .as_ref()
                        .map_or_else(|| vec!["h2".to_string(), "http/1.1".to_string()], |a| a.get_ref().clone());
                    Some(crate::tls::server_config(store, &alpn).map_err(|e| format!("listener {lname:?}: TLS: {e}"))?)
                }
                _ => None,
            };
            Ok(Arc::new(ListenerConfig {
                name: lname.clone(),
                bind: l.bind.get_ref().parse().expect("validated"),
                protocol: (*l.protocol.get_ref()).into(),
                router: Router::new(rules, default),
                stats: metrics.listener(&lname),
                own_codes: metrics.requests(&lname, &"".into()),
                tls,
                max_request_body: l.max_request_body.as_ref().map(|m| *m.get_ref()),
            }))
        })
        .collect::<Result<_, _>>()?;

    let json = describe(cfg, &server, input.generation);
    let mut snap = Snapshot::new(
        input.generation,
        server,
        cfg.access_log.format.into(),
        listeners,
        groups.into_values().collect(),
        json,
    );
    snap.aws = cfg
        .aws
        .as_ref()
        .map(|a| AwsSettings {
            region: a.get_ref().region.clone(),
            endpoint_url: a.get_ref().endpoint_url.as_ref().map(|u| u.get_ref().clone()),
        })
        .unwrap_or_default();
    snap.cloudwatch = cfg.cloudwatch.as_ref().map(|c| {
        let c = c.get_ref();
        CloudWatchSettings {
            namespace: c.namespace.clone(),
            load_balancer: c.load_balancer.clone(),
            interval: c.interval.as_ref().map_or(Duration::from_secs(60), |i| i.get_ref().0),
        }
    });
    snap.autoscaling = cfg
        .target_groups
        .iter()
        .filter_map(|tg| {
            let tg = tg.get_ref();
            let a = tg.autoscaling.as_ref()?.get_ref();
            Some((
                Arc::from(tg.name.get_ref().as_str()),
                AutoscalingSpec {
                    ecs: EcsService { cluster: a.ecs.cluster.clone(), service: a.ecs.service.clone() },
                    min: *a.min.get_ref(),
                    max: *a.max.get_ref(),
                    metric: a.metric.into(),
                    target: *a.target.get_ref(),
                    source: a.source.into(),
                    period: a.period.as_ref().map_or(Duration::from_secs(60), |p| p.get_ref().0),
                    scale_out_cooldown: a.scale_out_cooldown.map_or(Duration::from_secs(60), |d| d.0),
                    scale_in_cooldown: a.scale_in_cooldown.map_or(Duration::from_secs(120), |d| d.0),
                    mode: a.mode.into(),
                },
            ))
        })
        .collect();
    snap.discovery = cfg
        .target_groups
        .iter()
        .filter_map(|tg| {
            let tg = tg.get_ref();
            let d = tg.discovery.as_ref()?.get_ref();
            let spec = match (&d.cloud_map, &d.ecs) {
                (Some(cm), _) => {
                    let cm = cm.get_ref();
                    DiscoverySpec::CloudMap {
                        namespace: cm.namespace.clone(),
                        service: cm.service.clone(),
                        health_status: cm
                            .health_status
                            .as_ref()
                            .map_or_else(|| "HEALTHY".to_string(), |h| h.get_ref().clone()),
                        port: cm.port,
                        refresh: cm.refresh.map_or(Duration::from_secs(10), |r| r.0),
                    }
                }
                (None, Some(e)) => {
                    let e = e.get_ref();
                    DiscoverySpec::Ecs {
                        cluster: e.cluster.clone(),
                        service: e.service.clone(),
                        container_name: e.container_name.clone(),
                        container_port: *e.container_port.get_ref(),
                        refresh: e.refresh.map_or(Duration::from_secs(15), |r| r.0),
                    }
                }
                (None, None) => return None,
            };
            Some((Arc::from(tg.name.get_ref().as_str()), spec))
        })
        .collect();
    Ok(snap)
}

fn health(h: &file::HealthCheck) -> HealthCheck {
    let d = HealthCheck::default();
    HealthCheck {
        path: h.path.as_ref().map_or(d.path, |p| p.get_ref().clone()),
        port: match h.port.as_ref().map(|p| p.get_ref()) {
            Some(file::HealthPort::Number(n)) => Some(*n),
            _ => None,
        },
        interval: h.interval.as_ref().map_or(d.interval, |i| i.get_ref().0),
        timeout: h.timeout.as_ref().map_or(d.timeout, |t| t.get_ref().0),
        healthy_threshold: h.healthy_threshold.as_ref().map_or(d.healthy_threshold, |t| *t.get_ref()),
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map_or(d.unhealthy_threshold, |t| *t.get_ref()),
        matcher: h.matcher.as_ref().map_or(d.matcher, |m| parse_matcher(m.get_ref()).expect("validated")),
    }
}

fn conditions(r: &file::Rule) -> Conditions {
    let list = |v: &Option<Spanned<Vec<String>>>| v.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default();
    Conditions {
        hosts: list(&r.host).iter().map(|h| Pattern::new(h.strip_suffix('.').unwrap_or(h), true)).collect(),
        paths: list(&r.path).iter().map(|p| Pattern::new(p, false)).collect(),
        methods: list(&r.method).iter().map(|m| Method::from_bytes(m.as_bytes()).expect("validated")).collect(),
        source_ips: r
            .source_ip
            .as_ref()
            .map(|v| v.get_ref().iter().map(|ip| parse_cidr(ip.get_ref()).expect("validated")).collect())
            .unwrap_or_default(),
        headers: r
            .headers
            .as_ref()
            .map(|h| {
                h.get_ref()
                    .iter()
                    .map(|(k, v)| {
                        (
                            HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                            v.iter().map(|p| Pattern::new(p, false)).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        query: r
            .query
            .as_ref()
            .map(|q| {
                q.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().map(|p| Pattern::new(p, false)).collect()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn action(
    metrics: &Metrics,
    listener: &Arc<str>,
    groups: &BTreeMap<&str, Upstream>,
    forward: Option<&Spanned<Forward>>,
    redirect: Option<&Spanned<file::Redirect>>,
    fixed: Option<&Spanned<file::FixedResponse>>,
) -> Action {
    let none: Arc<str> = "".into();
    if let Some(f) = forward {
        let arm = |name: &str, weight: u32| {
            let Upstream { group, transport } = groups[name].clone();
            ForwardArm {
                codes: metrics.requests(listener, &group.name),
                target_response: metrics.target_response(&group.name),
                group_stats: metrics.group(&group.name),
                group,
                transport,
                weight,
            }
        };
        let arms: Vec<ForwardArm> = match f.get_ref() {
            Forward::One(g) => vec![arm(g, 1)],
            Forward::Weighted(list) => {
                list.iter().filter(|a| a.weight > 0).map(|a| arm(&a.target_group, a.weight)).collect()
            }
        };
        let total_weight = arms.iter().map(|a| a.weight).sum();
        return Action::Forward(ForwardAction { arms, total_weight });
    }
    if let Some(r) = redirect {
        let r = r.get_ref();
        return Action::Redirect(RedirectAction {
            protocol: r.protocol.as_deref().map(Into::into),
            host: r.host.as_deref().map(Into::into),
            port: r.port,
            path: r.path.as_deref().map(Into::into),
            query: r.query.as_deref().map(Into::into),
            status: StatusCode::from_u16(r.status).expect("validated"),
            codes: metrics.requests(listener, &none),
        });
    }
    let f = fixed.expect("validated: exactly one action").get_ref();
    Action::Fixed(FixedAction {
        status: StatusCode::from_u16(f.status).expect("validated"),
        content_type: HeaderValue::from_str(&f.content_type).expect("validated"),
        body: Bytes::from(f.body.clone()),
        codes: metrics.requests(listener, &none),
    })
}

/// The active configuration for `GET /config`: the file as it is in force, in its own
/// spellings (every key but `generation` is a configuration key: converted to TOML it checks and
/// compiles to the same configuration). `[server]` shows the values in force, defaults included
/// (a reload leaves the start-up-only settings as they were); unset optional keys are left out.
/// Certificates appear as their file paths; no key material is ever in it.
fn describe(cfg: &FileConfig, server: &ServerSettings, generation: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    strip_nulls(&mut v);
    v["server"]["worker_threads"] = json!(server.worker_threads);
    v["server"]["admin_bind"] = json!(server.admin_bind.to_string());
    v["server"]["max_connections"] = json!(server.max_connections);
    v["generation"] = json!(generation);
    v
}

/// Drops null members (unset optional keys) everywhere: TOML has no null.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

// The file's spellings → the compiled types their users own.

impl From<file::ListenerProtocol> for ListenerProtocol {
    fn from(p: file::ListenerProtocol) -> Self {
        match p {
            file::ListenerProtocol::Http => ListenerProtocol::Http,
            file::ListenerProtocol::Https => ListenerProtocol::Https,
        }
    }
}

impl From<file::AccessLogFormat> for AccessLogFormat {
    fn from(f: file::AccessLogFormat) -> Self {
        match f {
            file::AccessLogFormat::Json => AccessLogFormat::Json,
            file::AccessLogFormat::Off => AccessLogFormat::Off,
        }
    }
}

impl From<file::UpstreamProtocol> for UpstreamProtocol {
    fn from(p: file::UpstreamProtocol) -> Self {
        match p {
            file::UpstreamProtocol::Http1 => UpstreamProtocol::Http1,
            file::UpstreamProtocol::Http2 => UpstreamProtocol::Http2,
        }
    }
}

impl From<file::Algorithm> for Algorithm {
    fn from(a: file::Algorithm) -> Self {
        match a {
            file::Algorithm::RoundRobin => Algorithm::RoundRobin,
            file::Algorithm::LeastOutstandingRequests => Algorithm::LeastOutstandingRequests,
            file::Algorithm::WeightedRandom => Algorithm::WeightedRandom,
        }
    }
}

impl From<file::ScalingMetric> for ScalingMetric {
    fn from(m: file::ScalingMetric) -> Self {
        match m {
            file::ScalingMetric::RequestCountPerTarget => ScalingMetric::RequestCountPerTarget,
            file::ScalingMetric::TargetResponseTime => ScalingMetric::TargetResponseTime,
        }
    }
}

impl From<file::MetricSource> for MetricSource {
    fn from(s: file::MetricSource) -> Self {
        match s {
            file::MetricSource::Cloudwatch => MetricSource::Cloudwatch,
            file::MetricSource::Local => MetricSource::Local,
        }
    }
}

impl From<file::ScalingMode> for ScalingMode {
    fn from(m: file::ScalingMode) -> Self {
        match m {
            file::ScalingMode::TargetTracking => ScalingMode::TargetTracking,
            file::ScalingMode::ApplicationAutoscaling => ScalingMode::ApplicationAutoscaling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let m = Metrics::default();
        match compile(CompileInput { name: "t.toml", text, previous: None, metrics: &m, generation: 1, base_dir: None })
        {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn collects_every_error_with_line_and_column() {
        let text = r#"
[[listeners]]
name = "web"
bind = "0.0.0.0:99999"

[[rules]]
name = "a"
listeners = ["web", "nope"]
priority = 5
source_ip = ["10.0.0.0/33"]
forward = "missing"

[[rules]]
name = "b"
listeners = ["web"]
priority = 5
fixed_response = { status = 200 }
forward = "api"

[[target_groups]]
name = "api"
targets = ["127.0.0.1"]
"#;
        let e = errors(text);
        let want = [
            "t.toml:4:8: bad bind address",
            "t.toml:8:21: rule \"a\" names unknown listener \"nope\"",
            "t.toml:10:14: bad CIDR",
            "t.toml:11:11: rule \"a\" forwards to unknown target group \"missing\"",
            "t.toml:14:8: rule \"b\" needs exactly one action",
            "t.toml:16:12: priority 5 on listener \"web\" is already used",
            "t.toml:22:12: bad target address",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn matchers_parse_like_alb() {
        assert_eq!(parse_matcher("200").unwrap(), vec![(200, 200)]);
        assert_eq!(parse_matcher("200,204").unwrap(), vec![(200, 200), (204, 204)]);
        assert_eq!(parse_matcher("200-399").unwrap(), vec![(200, 399)]);
        for bad in ["", "2xx", "399-200", "700", "200,"] {
            assert!(parse_matcher(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_located() {
        let e = errors("[server]\nidle_timout = \"5s\"\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:2:1: unknown field `idle_timout`")), "{e:?}");
        let e = errors("[server]\nidle_timeout = \"5 parsecs\"\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:2:16: invalid duration")), "{e:?}");
        let e = errors("[server]\nidle_timeout = \"5s\"\n[listenrs]\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:3:2: unknown key `listenrs`")), "{e:?}");
    }

    #[test]
    fn schema_errors_are_collected_like_semantic_ones() {
        // Key typos, bad durations, wrong types and an unknown target group: all of them, each at
        // its key or value. An element with a bad value is still read without it (the listener's
        // reference to "nope" is checked; the group "broken" exists for the rule, and is warned
        // about: its targets were set aside).
        let text = r#"
[server]
idle_timout = "5s"
header_read_timeout = "soon"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
max_request_body = "big"
default_action = { forward = "nope" }

[[rules]]
name = "a"
listeners = ["web"]
priority = 1
forward = "broken"

[[target_groups]]
name = "broken"
retries = "many"
targets = "127.0.0.1:9000"
"#;
        let e = errors(text);
        let want = [
            "t.toml:3:1: unknown field `idle_timout`",
            "t.toml:4:23: invalid duration",
            "t.toml:9:20: invalid type",
            "t.toml:10:30: default_action forwards to unknown target group \"nope\"",
            "t.toml:19:8: warning: target group \"broken\" has no targets",
            "t.toml:20:11: invalid type",
            "t.toml:21:11: invalid type",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }
}
