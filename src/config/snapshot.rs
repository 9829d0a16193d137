//! The compiled configuration: immutable, fully validated, published with one `ArcSwap::store`.
//! The request path reads only this (and the targets' atomics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use rustc_hash::FxHashMap;

use crate::balance::sticky::{GroupStickiness, Stickiness};
use crate::balance::TargetGroup;
use crate::routing::rewrite::{HeaderEdits, RequestRewrite};
use crate::routing::Router;
use crate::telemetry::metrics::{CodeCounters, Histogram, ListenerStats};

/// Process-wide settings from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub worker_threads: usize,
    pub admin_bind: SocketAddr,
    pub shutdown_drain: Duration,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    /// The admin API's Bearer token (its SHA-256; None: no token).
    pub admin_token: Option<AdminToken>,
    /// The key of stickiness cookies (None: a random one per process).
    pub cookie_key: Option<CookieKey>,
}

/// The admin token, kept as its SHA-256 so that every comparison takes the same time whatever
/// the length of what a client sends.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token `secret`.
    pub fn new(secret: &[u8]) -> Self {
        AdminToken(sha256(secret))
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &sha256(presented)).is_ok()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// A 32-byte key for stickiness cookies (AES-256-GCM).
#[derive(Clone, PartialEq, Eq)]
pub struct CookieKey(pub [u8; 32]);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(<redacted>)")
    }
}

/// A certificate in force: what `pilotfish_certificate_expiry_seconds` reports and what the
/// control thread refreshes.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub name: Arc<str>,
    /// Where it is read from (None: files, read again on reload only).
    pub source: Option<crate::config::material::AwsCertificate>,
    pub refresh: Duration,
    pub not_after: std::time::SystemTime,
    /// The leaf's serial number (hex pairs).
    pub serial: String,
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    Http,
    Https,
}

impl ListenerProtocol {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        }
    }
}

/// The access log's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    #[default]
    Json,
    Off,
}

impl AccessLogFormat {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Off => "off",
        }
    }
}

/// The protocol spoken to a group's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

impl UpstreamProtocol {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }
}

/// How the proxy and the health checker reach a group's targets.
#[derive(Debug, Clone)]
pub struct Transport {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Further attempts on other targets when connecting fails (and, for idempotent requests,
    /// when the target resets before answering).
    pub retries: u32,
    /// HTTPS to targets.
    pub tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// `send_proxy_protocol`: the PROXY header every connection to a target starts with.
    pub proxy_protocol: Option<crate::proxy::proxy_protocol::Version>,
}

impl Transport {
    /// The defaults (ALB's where it has one) for `protocol`.
    pub fn new(protocol: UpstreamProtocol) -> Transport {
        Transport {
            protocol,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            retries: 1,
            tls: None,
            proxy_protocol: None,
        }
    }
}

/// A target group as the data plane and the health checker use it: the targets and how they are
/// picked ([`TargetGroup`]), and how they are reached ([`Transport`]).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub group: Arc<TargetGroup>,
    pub transport: Arc<Transport>,
    /// The group's sticky sessions, if any.
    pub sticky: Option<Arc<Stickiness>>,
}

/// One arm of a forward action.
#[derive(Debug)]
pub struct ForwardArm {
    pub group: Arc<TargetGroup>,
    pub transport: Arc<Transport>,
    /// The group's sticky sessions, if any.
    pub sticky: Option<Arc<Stickiness>>,
    pub weight: u32,
    /// Responses of this listener × group.
    pub codes: Arc<CodeCounters>,
    pub target_response: Arc<Histogram>,
    pub group_stats: Arc<crate::telemetry::metrics::GroupStats>,
}

/// `forward`: one group, or several split by weight.
#[derive(Debug)]
pub struct ForwardAction {
    pub arms: Vec<ForwardArm>,
    pub total_weight: u32,
    /// Target group stickiness (a weighted forward's `stickiness`).
    pub stickiness: Option<Arc<GroupStickiness>>,
}

impl ForwardAction {
    /// Chooses the arm for one request: the group its target group stickiness cookie names
    /// (among `cookies`, the request's `Cookie` values), else by weight. Returns the arm and,
    /// when a stickiness cookie must be (re-)issued, its `Set-Cookie` value.
    pub fn choose_sticky(&self, cookies: &[&[u8]], secure: bool) -> (&ForwardArm, Option<String>) {
        let Some(st) = &self.stickiness else { return (self.choose(), None) };
        let names: Vec<&str> = self.arms.iter().map(|a| &*a.group.name).collect();
        if let Some(i) = st.group(cookies, &names) {
            return (&self.arms[i], None);
        }
        let arm = self.choose();
        (arm, Some(st.set_cookie(&arm.group.name, secure)))
    }

    /// Whether cookies decide anything here (target group or target stickiness).
    #[inline]
    pub fn reads_cookies(&self) -> bool {
        self.stickiness.is_some() || self.arms.iter().any(|a| a.sticky.is_some())
    }

    /// Chooses the arm for one request (by weight).
    #[inline]
    pub fn choose(&self) -> &ForwardArm {
        if self.arms.len() == 1 {
            return &self.arms[0];
        }
        let mut r = fastrand::u32(0..self.total_weight);
        for arm in &self.arms {
            if r < arm.weight {
                return arm;
            }
            r -= arm.weight;
        }
        &self.arms[self.arms.len() - 1]
    }
}

/// Where a `redirect` sends the client: unset parts keep the request's values.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub protocol: Option<Box<str>>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<Box<str>>,
    pub query: Option<Box<str>>,
    pub status: StatusCode,
}

/// What a `fixed_response` answers.
#[derive(Debug, Clone)]
pub struct FixedResponse {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

/// `redirect` on one listener, with the counters of its answers.
#[derive(Debug)]
pub struct RedirectAction {
    pub to: Redirect,
    pub codes: Arc<CodeCounters>,
}

/// `fixed_response` on one listener, with the counters of its answers.
#[derive(Debug)]
pub struct FixedAction {
    pub response: FixedResponse,
    pub codes: Arc<CodeCounters>,
}

/// What a rule (or a listener's default) does with a request.
#[derive(Debug)]
pub enum Action {
    Forward(ForwardAction),
    Redirect(RedirectAction),
    Fixed(FixedAction),
}

/// What the router gives a request: the action, and what the rule (and its listener) change in
/// the request and the response.
#[derive(Debug)]
pub struct Routed {
    pub action: Action,
    /// The rule's transforms and request header edits (forward rules only).
    pub request: Option<Arc<RequestRewrite>>,
    /// Response header edits: the listener's, then the rule's.
    pub response: Option<Arc<HeaderEdits>>,
    /// The rule's token check, before its action.
    pub jwt: Option<Arc<crate::auth::jwt::JwtCheck>>,
}

/// A compiled listener.
#[derive(Debug)]
pub struct ListenerConfig {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// Where the `bind` key is in the file (line, column; 1-based), for bind errors.
    pub bind_at: Option<(usize, usize)>,
    pub protocol: ListenerProtocol,
    pub router: Router<Routed>,
    pub stats: Arc<ListenerStats>,
    /// Responses the balancer gives before any rule applies (400, 408, …).
    pub own_codes: Arc<CodeCounters>,
    /// TLS server configuration (https listeners).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Mutual TLS: what targets are told about client certificates.
    pub mtls: Option<crate::tls::mtls::Mode>,
    /// Request body limit in bytes (None: unlimited).
    pub max_request_body: Option<u64>,
    /// The listener's own response edits (`response_headers`, `server_header`), for the
    /// answers it gives before a rule applies.
    pub response_edits: Option<Arc<HeaderEdits>>,
    /// `proxy_protocol.trusted`: peers whose connections must start with a PROXY header (and
    /// the only ones whose header is believed).
    pub proxy_trusted: Option<Arc<[ipnet::IpNet]>>,
}

/// `[aws]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Where a target group's targets come from when not static.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    CloudMap {
        namespace: String,
        service: String,
        health_status: String,
        port: Option<u16>,
        refresh: Duration,
    },
    Ecs {
        cluster: String,
        service: String,
        container_name: Option<String>,
        container_port: u16,
        refresh: Duration,
    },
    /// A / AAAA records (with `port`) or SRV records of `name`, from `resolver` (None: the
    /// system's).
    Dns {
        name: String,
        kind: crate::config::file::DnsType,
        port: Option<u16>,
        refresh: Duration,
        resolver: Option<SocketAddr>,
    },
}

impl DiscoverySpec {
    /// Cloud Map instances returned when `health_status` is not set.
    pub const CLOUD_MAP_HEALTH_STATUS: &'static str = "HEALTHY";
    /// How often Cloud Map is asked when `refresh` is not set.
    pub const CLOUD_MAP_REFRESH: Duration = Duration::from_secs(10);
    /// How often ECS is asked when `refresh` is not set.
    pub const ECS_REFRESH: Duration = Duration::from_secs(15);
    /// The longest time between DNS lookups when `refresh` is not set (a shorter TTL asks
    /// sooner).
    pub const DNS_REFRESH: Duration = Duration::from_secs(30);

    /// `cloud_map`, `ecs` or `dns`, as `/targets` shows it.
    pub fn source(&self) -> &'static str {
        match self {
            DiscoverySpec::CloudMap { .. } => "cloud_map",
            DiscoverySpec::Ecs { .. } => "ecs",
            DiscoverySpec::Dns { .. } => "dns",
        }
    }

    /// How often the source is asked.
    pub fn refresh(&self) -> Duration {
        match self {
            DiscoverySpec::CloudMap { refresh, .. }
            | DiscoverySpec::Ecs { refresh, .. }
            | DiscoverySpec::Dns { refresh, .. } => *refresh,
        }
    }
}

/// `[cloudwatch]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudWatchSettings {
    pub namespace: String,
    pub load_balancer: String,
    pub interval: Duration,
}

impl CloudWatchSettings {
    /// How often metrics are published when `interval` is not set.
    pub const INTERVAL: Duration = Duration::from_secs(60);
}

/// The ECS service an autoscaling policy scales.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsService {
    pub cluster: String,
    pub service: String,
}

/// The metric target tracking follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingMetric {
    /// Requests per target per minute.
    RequestCountPerTarget,
    /// Average target response time in seconds.
    TargetResponseTime,
}

/// Where the scaling metric is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricSource {
    /// CloudWatch GetMetricData: the sum over every replica publishing the same LoadBalancer.
    Cloudwatch,
    /// This process's own counters.
    Local,
}

/// Who scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingMode {
    /// pilotfish decides and calls ECS UpdateService.
    TargetTracking,
    /// pilotfish registers a target-tracking policy with AWS Application Auto Scaling.
    ApplicationAutoscaling,
}

/// A target group's autoscaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingSpec {
    pub ecs: EcsService,
    pub min: u32,
    pub max: u32,
    pub metric: ScalingMetric,
    pub target: f64,
    pub source: MetricSource,
    pub period: Duration,
    pub scale_out_cooldown: Duration,
    pub scale_in_cooldown: Duration,
    pub mode: ScalingMode,
}

impl AutoscalingSpec {
    /// The metric period when `period` is not set.
    pub const PERIOD: Duration = Duration::from_secs(60);
    /// The wait after scaling out when `scale_out_cooldown` is not set.
    pub const SCALE_OUT_COOLDOWN: Duration = Duration::from_secs(60);
    /// The wait after scaling in when `scale_in_cooldown` is not set.
    pub const SCALE_IN_COOLDOWN: Duration = Duration::from_secs(120);
}

/// The whole compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub server: ServerSettings,
    pub access_log: AccessLogFormat,
    pub listeners: Vec<Arc<ListenerConfig>>,
    listener_index: FxHashMap<Arc<str>, usize>,
    /// Every target group with its transport, by name.
    pub upstreams: Vec<Upstream>,
    /// Discovered target groups and their sources.
    pub discovery: Vec<(Arc<str>, DiscoverySpec)>,
    pub aws: AwsSettings,
    pub cloudwatch: Option<CloudWatchSettings>,
    /// Autoscaled target groups and their policies.
    pub autoscaling: Vec<(Arc<str>, AutoscalingSpec)>,
    /// Every certificate, by name.
    pub certificates: Vec<CertificateInfo>,
    /// The key sets rules verify tokens with.
    pub jwks: Vec<Arc<crate::auth::jwks::KeySet>>,
    /// Trust stores and CRLs kept in AWS, and how often each is read again.
    pub trust_sources: Vec<(crate::config::material::AwsSecret, Duration)>,
    /// The active configuration for `GET /config` (paths, never key contents).
    pub json: serde_json::Value,
    /// Some target group sends PROXY headers: connections note the address clients reached.
    pub announces_clients: bool,
}

impl Snapshot {
    /// Assembles a snapshot (used by [`super::compile`]).
    pub fn new(
        generation: u64,
        server: ServerSettings,
        access_log: AccessLogFormat,
        listeners: Vec<Arc<ListenerConfig>>,
        upstreams: Vec<Upstream>,
        json: serde_json::Value,
    ) -> Self {
        let listener_index = listeners.iter().enumerate().map(|(i, l)| (l.name.clone(), i)).collect();
        let announces_clients = upstreams.iter().any(|u| u.transport.proxy_protocol.is_some());
        Snapshot {
            announces_clients,
            generation,
            server,
            access_log,
            listeners,
            listener_index,
            upstreams,
            discovery: Vec::new(),
            aws: AwsSettings::default(),
            cloudwatch: None,
            autoscaling: Vec::new(),
            certificates: Vec::new(),
            jwks: Vec::new(),
            trust_sources: Vec::new(),
            json,
        }
    }

    /// The discovery source of group `name`, if it is discovered.
    pub fn discovery_of(&self, name: &str) -> Option<&DiscoverySpec> {
        self.discovery.iter().find(|(g, _)| &**g == name).map(|(_, d)| d)
    }

    /// The listener called `name`.
    #[inline]
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerConfig>> {
        self.listener_index.get(name).map(|&i| &self.listeners[i])
    }

    /// Every target group, by name.
    pub fn target_groups(&self) -> impl Iterator<Item = &Arc<TargetGroup>> {
        self.upstreams.iter().map(|u| &u.group)
    }

    /// The target group called `name`.
    pub fn target_group(&self, name: &str) -> Option<&Arc<TargetGroup>> {
        self.upstream(name).map(|u| &u.group)
    }

    /// The target group called `name`, with its transport.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.group.name == name)
    }
}
