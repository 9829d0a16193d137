//! `[[target_groups]]`: each element checked and turned into a [`GroupDef`] in one pass: how its
//! targets are picked and checked, how they are reached, where they come from, how the group
//! scales. The group itself ([`crate::balance::TargetGroup`]) is built only when the whole
//! configuration compiles: building it takes over the running group's targets.

use crate::proxy::proxy_protocol::Version;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::file::Spanned;

use super::{check_name, optional, Ctx, MAX_WEIGHT};
use crate::balance::sticky::StickyKind;
use crate::balance::{Algorithm, GroupSettings, HealthCheck, TargetSpec};
use crate::config::file::{self, TargetEntry};
use crate::config::snapshot::{
    AutoscalingSpec, DiscoverySpec, EcsService, MetricSource, ScalingMetric, ScalingMode, Transport, UpstreamProtocol,
};

/// ALB's limit on retries, which pilotfish follows so configs move between the two.
const MAX_RETRIES: u32 = 5;
/// Bounds of the per-target cap and its queue: a larger cap is no cap; a larger queue or a longer
/// wait only hides an outage from the clients (and holds their connections).
const MAX_REQUESTS_PER_TARGET: u32 = 1_000_000;
const MAX_QUEUE_SIZE: u32 = 1_000_000;
const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a request waits when `queue.timeout` is unset (HAProxy's `timeout queue` falls back to
/// `timeout connect`; 5 s is the design's example and ALB's connect timeout order of magnitude).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// The weight of a target written without one.
const DEFAULT_TARGET_WEIGHT: u32 = 100;

/// A checked target group, not yet built.
pub(super) struct GroupDef {
    pub name: Arc<str>,
    pub settings: GroupSettings,
    pub transport: Transport,
    pub targets: Targets,
    pub autoscaling: Option<AutoscalingSpec>,
    /// `stickiness`: how and for how long (the cookie is made with the snapshot's key).
    pub stickiness: Option<(StickyKind, Duration)>,
}

/// Where a group's targets come from.
pub(super) enum Targets {
    Static(Vec<TargetSpec>),
    /// Discovered: the group keeps what discovery last found; the discovery loop updates it.
    Discovered(DiscoverySpec),
}

/// Checks and compiles every target group (an element with an error is None).
pub(super) fn compile_all(
    cx: &mut Ctx<'_>,
    list: &[Spanned<file::TargetGroup>],
    has_cloudwatch: bool,
) -> Vec<Option<GroupDef>> {
    let mut names = HashSet::new();
    list.iter()
        .map(|tg| {
            let mark = cx.mark();
            check_name(cx, "target group", &tg.get_ref().name, &mut names);
            let def = compile(cx, tg, has_cloudwatch);
            def.filter(|_| cx.clean_since(mark))
        })
        .collect()
}

fn compile(cx: &mut Ctx<'_>, tg: &Spanned<file::TargetGroup>, has_cloudwatch: bool) -> Option<GroupDef> {
    let mark = cx.mark();
    let span = tg.span();
    let tg = tg.get_ref();
    let name = tg.name.get_ref();
    let specs = targets(cx, name, &tg.targets);
    let protocol: UpstreamProtocol = tg.protocol.into();
    let mut transport = Transport::new(protocol);
    if let Some(r) = tg.retries {
        if r > MAX_RETRIES {
            cx.err(span.clone(), format!("target group {name:?}: retries must be 0..={MAX_RETRIES}"));
        }
        transport.retries = r;
    }
    for (d, what, field) in [
        (&tg.connect_timeout, "connect_timeout", &mut transport.connect_timeout),
        (&tg.response_timeout, "response_timeout", &mut transport.response_timeout),
    ] {
        if let Some(d) = d {
            if d.0.is_zero() {
                cx.err(span.clone(), format!("target group {name:?}: {what} must be greater than 0"));
            }
            *field = d.0;
        }
    }
    transport.proxy_protocol = match tg.send_proxy_protocol {
        file::SendProxyProtocol::Off => None,
        file::SendProxyProtocol::V1 => Some(Version::V1),
        file::SendProxyProtocol::V2 => Some(Version::V2),
    };
    let mut settings = GroupSettings::new(tg.algorithm.into());
    if let Some(v) = &tg.slow_start {
        if v.get_ref().0 > Duration::from_secs(3600) {
            cx.err(v.span(), "slow_start must be at most 1h (0s = off)");
        }
        settings.slow_start = v.get_ref().0;
    }
    if let Some(v) = &tg.deregistration_delay {
        if v.get_ref().0 > Duration::from_secs(3600) {
            cx.err(v.span(), "deregistration_delay must be at most 1h");
        }
        settings.deregistration_delay = v.get_ref().0;
    }
    concurrency(cx, name, tg, &mut settings);
    let stickiness = tg.stickiness.as_ref().and_then(|st| stickiness(cx, name, st));
    let health = tg.health_check.as_ref().map(|hc| health_check(cx, hc.get_ref()));
    let discovery = tg.discovery.as_ref().map(|d| discovery(cx, name, d, !tg.targets.is_empty()));
    let autoscaling = tg.autoscaling.as_ref().map(|a| autoscaling(cx, name, a, has_cloudwatch));
    transport.tls = match &tg.tls {
        Some(t) => super::tls::upstream(cx, name, protocol, t).map(Arc::new),
        None => None,
    };
    settings.health_check = optional(health)?;
    let targets = match discovery {
        Some(d) => Targets::Discovered(d?),
        None => Targets::Static(specs?),
    };
    let def = GroupDef {
        name: name.as_str().into(),
        settings,
        transport,
        targets,
        autoscaling: optional(autoscaling)?,
        stickiness,
    };
    cx.clean_since(mark).then_some(def)
}

/// `max_requests_per_target` and `queue = { size, timeout }`.
fn concurrency(cx: &mut Ctx<'_>, group: &str, tg: &file::TargetGroup, settings: &mut GroupSettings) {
    if let Some(m) = &tg.max_requests_per_target {
        if *m.get_ref() > MAX_REQUESTS_PER_TARGET {
            cx.err(m.span(), format!("max_requests_per_target must be 0..={MAX_REQUESTS_PER_TARGET} (0 = no cap)"));
        }
        settings.max_requests_per_target = *m.get_ref();
    }
    let Some(q) = &tg.queue else { return };
    let v = q.get_ref();
    if settings.max_requests_per_target == 0 {
        cx.err(q.span(), format!("target group {group:?}: a queue needs max_requests_per_target (requests wait for a target under the cap)"));
    }
    let size = *v.size.get_ref();
    if !(1..=MAX_QUEUE_SIZE).contains(&size) {
        cx.err(v.size.span(), format!("queue size must be 1..={MAX_QUEUE_SIZE}"));
    }
    let timeout = v.timeout.as_ref().map_or(QUEUE_TIMEOUT, |t| t.get_ref().0);
    if timeout.is_zero() || timeout > MAX_QUEUE_TIMEOUT {
        let at = v.timeout.as_ref().map_or(q.span(), Spanned::span);
        cx.err(at, "queue timeout must be greater than 0 and at most 10m");
    }
    settings.queue = Some((size as usize, timeout));
}

/// `stickiness = { type, duration, cookie_name }`: ALB's defaults (1 day) and limits (1s..=7d).
fn stickiness(cx: &mut Ctx<'_>, group: &str, st: &Spanned<file::Stickiness>) -> Option<(StickyKind, Duration)> {
    let s = st.get_ref();
    let duration = s.duration.as_ref().map_or(Duration::from_secs(86_400), |d| d.get_ref().0);
    if !(super::rule::STICKINESS_MIN..=super::rule::STICKINESS_MAX).contains(&duration) {
        let at = s.duration.as_ref().map_or(st.span(), Spanned::span);
        cx.err(at, format!("target group {group:?}: stickiness duration must be 1s..=7d"));
    }
    let kind = match (s.kind.get_ref(), &s.cookie_name) {
        (file::StickinessType::LbCookie, None) => StickyKind::LbCookie,
        (file::StickinessType::LbCookie, Some(c)) => {
            cx.err(c.span(), format!("target group {group:?}: cookie_name is for type = \"app_cookie\""));
            return None;
        }
        (file::StickinessType::AppCookie, None) => {
            cx.err(s.kind.span(), format!("target group {group:?}: app_cookie needs cookie_name"));
            return None;
        }
        (file::StickinessType::AppCookie, Some(c)) => {
            let n = c.get_ref();
            let token = !n.is_empty()
                && n.len() <= 128
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                cx.err(c.span(), format!("target group {group:?}: cookie_name {n:?} is not a cookie name"));
            } else if n.starts_with("PILOTFISH") || n.starts_with("AWSALB") {
                cx.err(
                    c.span(),
                    format!("target group {group:?}: cookie_name {n:?} is reserved for the balancer's own cookies"),
                );
            }
            StickyKind::AppCookie(n.as_str().into())
        }
    };
    Some((kind, duration))
}

/// The static targets (None when one is wrong).
fn targets(cx: &mut Ctx<'_>, group: &str, list: &[Spanned<TargetEntry>]) -> Option<Vec<TargetSpec>> {
    let mark = cx.mark();
    let mut addrs = HashSet::new();
    let mut specs = Vec::with_capacity(list.len());
    for t in list {
        let (addr, weight) = match t.get_ref() {
            TargetEntry::Addr(a) => (a, DEFAULT_TARGET_WEIGHT),
            TargetEntry::Weighted { address, weight } => (address, *weight),
        };
        match addr.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => cx.err(t.span(), format!("target {addr:?} needs a non-zero port")),
            Ok(a) => {
                if !addrs.insert(a) {
                    cx.err(t.span(), format!("duplicate target {a} in target group {group:?}"));
                }
                specs.push(TargetSpec { addr: a, weight });
            }
            Err(_) => {
                cx.err(t.span(), format!("bad target address {addr:?}: expected IP:PORT (e.g. \"10.0.1.5:8080\")"))
            }
        }
        if weight > MAX_WEIGHT {
            cx.err(t.span(), format!("target weight must be 0..={MAX_WEIGHT}"));
        }
    }
    cx.clean_since(mark).then_some(specs)
}

/// `[target_groups.health_check]`, ALB's defaults ([`HealthCheck::default`]) for unset keys.
fn health_check(cx: &mut Ctx<'_>, hc: &file::HealthCheck) -> Option<HealthCheck> {
    let mark = cx.mark();
    let mut check = HealthCheck::default();
    let default_timeout = check.timeout;
    if let Some(p) = &hc.path {
        let v = p.get_ref();
        if !v.starts_with('/') || v.len() > 1024 || v.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            cx.err(p.span(), format!("bad health check path {v:?}: must start with '/', no spaces, max 1024"));
        }
        check.path = v.clone();
    }
    if let Some(p) = &hc.port {
        match p.get_ref() {
            file::HealthPort::Number(0) => cx.err(p.span(), "health check port must be 1..=65535 or \"traffic-port\""),
            file::HealthPort::Number(n) => check.port = Some(*n),
            file::HealthPort::Named(n) if n != "traffic-port" => {
                cx.err(p.span(), format!("bad health check port {n:?}: a number or \"traffic-port\""))
            }
            file::HealthPort::Named(_) => {}
        }
    }
    if let Some(i) = &hc.interval {
        if i.get_ref().0 < Duration::from_millis(50) || i.get_ref().0 > Duration::from_secs(300) {
            cx.err(i.span(), "health check interval must be between 50ms and 300s");
        }
        check.interval = i.get_ref().0;
    }
    if let Some(t) = &hc.timeout {
        if t.get_ref().0.is_zero() || t.get_ref().0 > check.interval {
            cx.err(t.span(), "health check timeout must be greater than 0 and at most the interval");
        }
        check.timeout = t.get_ref().0;
    } else if check.interval < default_timeout {
        // The default timeout would exceed a short interval: say which key to set.
        cx.err(
            hc.interval.as_ref().map_or(0..0, |i| i.span()),
            format!(
                "health check interval is shorter than the default timeout ({}): set timeout too",
                humantime::format_duration(default_timeout)
            ),
        );
    }
    for (t, field) in [
        (&hc.healthy_threshold, &mut check.healthy_threshold),
        (&hc.unhealthy_threshold, &mut check.unhealthy_threshold),
    ] {
        if let Some(t) = t {
            if !(1..=10).contains(t.get_ref()) {
                cx.err(t.span(), "health check thresholds must be 1..=10");
            }
            *field = *t.get_ref();
        }
    }
    if let Some(m) = &hc.matcher {
        match parse_matcher(m.get_ref()) {
            Ok(ranges) => check.matcher = ranges,
            Err(e) => cx.err(m.span(), e),
        }
    }
    cx.clean_since(mark).then_some(check)
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

/// `[target_groups.discovery]`: exactly one source.
fn discovery(cx: &mut Ctx<'_>, group: &str, d: &Spanned<file::Discovery>, has_targets: bool) -> Option<DiscoverySpec> {
    let mark = cx.mark();
    if has_targets {
        cx.err(d.span(), format!("target group {group:?}: use either targets or discovery, not both"));
    }
    let d_ref = d.get_ref();
    let spec = match (&d_ref.cloud_map, &d_ref.ecs, &d_ref.dns) {
        (None, None, Some(dn)) => dns(cx, dn)?,
        (Some(cm), None, None) => {
            let c = cm.get_ref();
            let health_status = match &c.health_status {
                Some(h) => {
                    if !["HEALTHY", "UNHEALTHY", "ALL", "HEALTHY_OR_ELSE_ALL"].contains(&h.get_ref().as_str()) {
                        cx.err(h.span(), "health_status must be HEALTHY, UNHEALTHY, ALL or HEALTHY_OR_ELSE_ALL");
                    }
                    h.get_ref().clone()
                }
                None => DiscoverySpec::CLOUD_MAP_HEALTH_STATUS.to_string(),
            };
            if c.refresh.is_some_and(|r| r.0 < Duration::from_millis(100)) {
                cx.err(cm.span(), "cloud_map refresh must be at least 100ms");
            }
            DiscoverySpec::CloudMap {
                namespace: c.namespace.clone(),
                service: c.service.clone(),
                health_status,
                port: c.port,
                refresh: c.refresh.map_or(DiscoverySpec::CLOUD_MAP_REFRESH, |r| r.0),
            }
        }
        (None, Some(ecs), None) => {
            let e = ecs.get_ref();
            if *e.container_port.get_ref() == 0 {
                cx.err(e.container_port.span(), "container_port must be 1..=65535");
            }
            if e.refresh.is_some_and(|r| r.0 < Duration::from_millis(100)) {
                cx.err(ecs.span(), "ecs refresh must be at least 100ms");
            }
            DiscoverySpec::Ecs {
                cluster: e.cluster.clone(),
                service: e.service.clone(),
                container_name: e.container_name.clone(),
                container_port: *e.container_port.get_ref(),
                refresh: e.refresh.map_or(DiscoverySpec::ECS_REFRESH, |r| r.0),
            }
        }
        _ => {
            cx.err(d.span(), format!("target group {group:?}: discovery needs exactly one of cloud_map, ecs or dns"));
            return None;
        }
    };
    cx.clean_since(mark).then_some(spec)
}

/// `discovery.dns`.
fn dns(cx: &mut Ctx<'_>, d: &Spanned<file::Dns>) -> Option<DiscoverySpec> {
    let v = d.get_ref();
    let name = v.name.get_ref().trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        cx.err(
            v.name.span(),
            format!(
                "bad DNS name {:?}: expected e.g. \"api.prod.local\" or \"_http._tcp.api.prod.local\"",
                v.name.get_ref()
            ),
        );
    }
    let port = match (v.kind, &v.port) {
        (file::DnsType::SRV, Some(p)) => {
            cx.err(p.span(), "SRV records carry the port: remove port (or ask for A / AAAA records)");
            None
        }
        (file::DnsType::SRV, None) => None,
        (_, Some(p)) if *p.get_ref() == 0 => {
            cx.err(p.span(), "port must be 1..=65535");
            None
        }
        (_, Some(p)) => Some(*p.get_ref()),
        (_, None) => {
            cx.err(v.name.span(), "A and AAAA records name no port: set port (the targets' port)");
            None
        }
    };
    if let Some(r) = &v.refresh {
        if r.get_ref().0 < Duration::from_millis(100) {
            cx.err(r.span(), "dns refresh must be at least 100ms");
        }
    }
    let resolver = match &v.resolver {
        None => None,
        Some(r) => {
            let text = r.get_ref();
            let parsed = text
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| text.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            if parsed.is_none() {
                cx.err(
                    r.span(),
                    format!("bad resolver {text:?}: expected \"IP\" or \"IP:PORT\" (e.g. \"10.0.0.2:53\")"),
                );
            }
            parsed
        }
    };
    Some(DiscoverySpec::Dns {
        name: name.to_string(),
        kind: v.kind,
        port,
        refresh: v.refresh.as_ref().map_or(DiscoverySpec::DNS_REFRESH, |r| r.get_ref().0),
        resolver,
    })
}

/// `[target_groups.autoscaling]`.
fn autoscaling(
    cx: &mut Ctx<'_>,
    group: &str,
    a: &Spanned<file::Autoscaling>,
    has_cloudwatch: bool,
) -> Option<AutoscalingSpec> {
    let mark = cx.mark();
    let v = a.get_ref();
    if *v.max.get_ref() == 0 || v.min.get_ref() > v.max.get_ref() {
        cx.err(v.max.span(), format!("target group {group:?}: autoscaling needs 0 <= min <= max and max >= 1"));
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
    let needs_cw = v.source == file::MetricSource::Cloudwatch || v.mode == file::ScalingMode::ApplicationAutoscaling;
    if needs_cw && !has_cloudwatch {
        cx.err(a.span(), format!("target group {group:?}: autoscaling from CloudWatch needs a [cloudwatch] section (the metrics it reads are the ones pilotfish publishes)"));
    }
    let spec = AutoscalingSpec {
        ecs: EcsService { cluster: v.ecs.cluster.clone(), service: v.ecs.service.clone() },
        min: *v.min.get_ref(),
        max: *v.max.get_ref(),
        metric: v.metric.into(),
        target: *v.target.get_ref(),
        source: v.source.into(),
        period: v.period.as_ref().map_or(AutoscalingSpec::PERIOD, |p| p.get_ref().0),
        scale_out_cooldown: v.scale_out_cooldown.map_or(AutoscalingSpec::SCALE_OUT_COOLDOWN, |d| d.0),
        scale_in_cooldown: v.scale_in_cooldown.map_or(AutoscalingSpec::SCALE_IN_COOLDOWN, |d| d.0),
        mode: v.mode.into(),
    };
    cx.clean_since(mark).then_some(spec)
}

// The file's spellings → the compiled types their users own.

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

    #[test]
    fn matchers_parse_like_alb() {
        assert_eq!(parse_matcher("200").unwrap(), vec![(200, 200)]);
        assert_eq!(parse_matcher("200,204").unwrap(), vec![(200, 200), (204, 204)]);
        assert_eq!(parse_matcher("200-399").unwrap(), vec![(200, 399)]);
        for bad in ["", "2xx", "399-200", "700", "200,"] {
            assert!(parse_matcher(bad).is_err(), "{bad:?}");
        }
    }
}
