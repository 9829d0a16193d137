//! The TOML file schema, mirrored exactly: every table denies unknown keys, durations are strings
//! (`"500ms"`, `"10s"`), and every value a later check may complain about is [`Spanned`] so the
//! error can name its line and column. Nothing here validates meaning; that is [`super::compile`].
//! The types serialize back in the same spellings: `GET /config` is the file as it is in force.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{IntoDeserializer, MapAccess, Visitor};

/// A value and where the file has it. Read like `toml::Spanned` (the same protocol with the
/// TOML deserializer), and unlike it also where the file has no text for the value: a table the
/// file makes implicitly (`[listeners.default_action.redirect]` makes `default_action`, as does
/// the dotted key `default_action.redirect = {...}`) is valid TOML that `toml::Spanned` refuses
/// ("expected a borrowed string"); here it is read with an empty span at the file's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    span: Range<usize>,
    value: T,
}

impl<T> Spanned<T> {
    /// `value` at `span`.
    pub fn new(span: Range<usize>, value: T) -> Self {
        Spanned { span, value }
    }

    /// Where the value is in the file (bytes).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn get_ref(&self) -> &T {
        &self.value
    }

    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

// The names the TOML deserializer answers with a span (serde_spanned's protocol).
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                use serde::de::Error;
                let first: Option<String> = map.next_key()?;
                if first.as_deref() == Some(SPANNED_START) {
                    let start: usize = map.next_value()?;
                    let end = match map.next_key::<String>()?.as_deref() {
                        Some(SPANNED_END) => map.next_value::<usize>()?,
                        _ => return Err(A::Error::custom("a span without its end")),
                    };
                    return match map.next_key::<String>()?.as_deref() {
                        Some(SPANNED_VALUE) => Ok(Spanned { span: start..end, value: map.next_value()? }),
                        _ => Err(A::Error::custom("a span without its value")),
                    };
                }
                // No span on offer: the map is the (table) value itself.
                let value = T::deserialize(serde::de::value::MapAccessDeserializer::new(Prepended { first, map }))?;
                Ok(Spanned { span: 0..0, value })
            }
        }
        d.deserialize_struct(SPANNED, &[SPANNED_START, SPANNED_END, SPANNED_VALUE], V(PhantomData))
    }
}

/// A map whose first key was already read.
struct Prepended<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Prepended<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(k) => seed.deserialize(IntoDeserializer::<A::Error>::into_deserializer(k)).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A duration written as a human string in the file (`"250ms"`, `"30s"`, `"1m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"10s\" or \"1m\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s).map(Dur).map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// The whole configuration file.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Names of `[[...]]` elements that could not be read (their errors are reported; references
    /// to them are not reported again as unknown). Not a configuration key.
    #[serde(skip)]
    pub unreadable: Vec<String>,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub access_log: AccessLog,
    pub aws: Option<Spanned<Aws>>,
    pub cloudwatch: Option<Spanned<CloudWatch>>,
    #[serde(default)]
    pub certificates: Vec<Spanned<Certificate>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<Listener>>,
    #[serde(default)]
    pub rules: Vec<Spanned<Rule>>,
    #[serde(default)]
    pub target_groups: Vec<Spanned<TargetGroup>>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub worker_threads: Spanned<usize>,
    pub admin_bind: Spanned<String>,
    /// Allow a non-loopback `admin_bind` (then `admin_token` is required).
    pub admin_public: Spanned<bool>,
    /// The Bearer token of every admin path but `/healthz` and `/readyz`.
    pub admin_token: Option<Spanned<SecretRef>>,
    /// The key of stickiness cookies: 32 bytes as standard base64.
    pub cookie_key: Option<Spanned<SecretRef>>,
    pub shutdown_drain: Dur,
    pub idle_timeout: Dur,
    pub header_read_timeout: Dur,
    pub max_header_bytes: Spanned<usize>,
    /// Longer request targets (path and query) get 414.
    pub max_uri_bytes: Spanned<usize>,
    /// More header fields in a request head get 431.
    pub max_headers: Spanned<usize>,
    pub max_connections: Spanned<usize>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            worker_threads: Spanned::new(0..0, 0),
            admin_bind: Spanned::new(0..0, "127.0.0.1:9901".into()),
            admin_public: Spanned::new(0..0, false),
            admin_token: None,
            cookie_key: None,
            shutdown_drain: Dur(Duration::from_secs(25)),
            idle_timeout: Dur(Duration::from_secs(60)),
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_bytes: Spanned::new(0..0, 65536),
            max_uri_bytes: Spanned::new(0..0, 8192),
            max_headers: Spanned::new(0..0, 100),
            max_connections: Spanned::new(0..0, 50_000),
        }
    }
}

/// `[access_log]`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    pub format: AccessLogFormat,
}

/// Access log output format.
#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Off,
}

/// Listener protocol.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Http,
    Https,
}

/// `[[listeners]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    #[serde(default = "default_listener_protocol")]
    pub protocol: Spanned<ListenerProtocol>,
    pub certificates: Option<Spanned<Vec<String>>>,
    pub default_certificate: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<String>>>,
    pub default_action: Option<Spanned<Action>>,
    /// Larger request bodies get 413 (bytes; unlimited when absent, like ALB).
    pub max_request_body: Option<Spanned<u64>>,
    /// Set on every response of the listener, replacing the target's value.
    pub response_headers: Option<Spanned<BTreeMap<String, String>>>,
    /// false: `Server` is removed from responses.
    pub server_header: Option<Spanned<bool>>,
    /// Client certificates (https listeners): verified against a trust store, or passed through.
    pub mutual_tls: Option<Spanned<MutualTls>>,
    /// `{ trusted = [CIDRs] }`: connections from these peers start with a PROXY header (v1 or
    /// v2) naming the client.
    pub proxy_protocol: Option<Spanned<ProxyProtocol>>,
}

/// `proxy_protocol = { trusted = ["10.0.0.0/16"] }` of a listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Peers (CIDRs or addresses) that must send the header; from any other it is refused.
    pub trusted: Spanned<Vec<Spanned<String>>>,
}

/// `send_proxy_protocol` of a target group.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SendProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// `mutual_tls = { mode, trust_store, crl, ignore_client_certificate_expiry, advertise_ca_names }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    pub mode: Spanned<MtlsMode>,
    /// PEM bundle of the CAs (roots and intermediates) client certificates must chain to.
    pub trust_store: Option<Spanned<Blob>>,
    /// Certificate revocation lists (PEM or DER).
    pub crl: Option<Spanned<Vec<Blob>>>,
    pub ignore_client_certificate_expiry: Option<Spanned<bool>>,
    pub advertise_ca_names: Option<Spanned<bool>>,
    /// How often a trust store or CRL kept in AWS is read again (default 1h).
    pub refresh: Option<Spanned<Dur>>,
}

/// Bytes from a file (a path), or kept in AWS: `{ s3 = "s3://BUCKET/KEY" }`, `{ ssm = "/name" }`
/// or `{ secrets_manager = "name", field = "key" }` (field optional).
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Blob {
    Path(String),
    Aws(AwsBlob),
}

/// Where AWS keeps a [`Blob`].
#[derive(Debug, Deserialize, Serialize, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsBlob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_manager: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// ALB's mutual authentication modes.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    Off,
    Verify,
    Passthrough,
}

fn default_listener_protocol() -> Spanned<ListenerProtocol> {
    Spanned::new(0..0, ListenerProtocol::Http)
}

/// An action: exactly one of its fields is set (checked in compile).
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub forward: Option<Spanned<Forward>>,
    pub redirect: Option<Spanned<Redirect>>,
    pub fixed_response: Option<Spanned<FixedResponse>>,
}

/// `forward = "group"`, `forward = [{ target_group, weight }, …]`, or the table form
/// `forward = { target_groups = [...], stickiness = "1h" }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Forward {
    One(String),
    Weighted(Vec<WeightedGroup>),
    Table(ForwardTable),
}

/// The table form of a weighted forward.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTable {
    pub target_groups: Vec<WeightedGroup>,
    /// Keeps a client on the group it was first sent to (ALB's target group stickiness).
    pub stickiness: Option<Dur>,
}

impl Forward {
    /// The groups and weights (one group: weight 1).
    pub fn arms(&self) -> Vec<(&str, u32)> {
        match self {
            Forward::One(g) => vec![(g.as_str(), 1)],
            Forward::Weighted(arms) | Forward::Table(ForwardTable { target_groups: arms, .. }) => {
                arms.iter().map(|a| (a.target_group.as_str(), a.weight)).collect()
            }
        }
    }
}

/// One arm of a weighted forward.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    pub target_group: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `redirect = { protocol, host, port, path, query, status }`; unset parts keep the request's.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub protocol: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub query: Option<String>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    301
}

/// `fixed_response = { status, content_type, body }`.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

fn default_content_type() -> String {
    "text/plain".into()
}

/// `[[rules]]`: conditions (all optional) and exactly one action.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: Spanned<String>,
    pub listeners: Spanned<Vec<Spanned<String>>>,
    pub priority: Spanned<u32>,
    pub host: Option<Spanned<Vec<String>>>,
    pub path: Option<Spanned<Vec<String>>>,
    pub method: Option<Spanned<Vec<String>>>,
    pub source_ip: Option<Spanned<Vec<Spanned<String>>>>,
    pub headers: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    pub query: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    pub forward: Option<Spanned<Forward>>,
    pub redirect: Option<Spanned<Redirect>>,
    pub fixed_response: Option<Spanned<FixedResponse>>,
    /// Header fields set and removed on the request before it is forwarded.
    pub request_headers: Option<Spanned<HeaderEdits>>,
    /// Header fields set and removed on the rule's responses.
    pub response_headers: Option<Spanned<HeaderEdits>>,
    /// ALB's host-header-rewrite and url-rewrite, applied after matching.
    pub transforms: Option<Spanned<Transforms>>,
    /// JSON Web Token verification before the rule's action.
    pub jwt: Option<Spanned<Jwt>>,
}

/// `jwt = { issuer, jwks, audience, claims, header, ca, refresh, min_refresh }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    pub issuer: Spanned<String>,
    /// The HTTPS URL of the issuer's JSON Web Key Set.
    pub jwks: Spanned<String>,
    pub audience: Option<Spanned<Vec<String>>>,
    /// Claims the token must carry: a string (the claim equals it) or a list (the claim, a
    /// space-separated string or an array, holds every value).
    pub claims: Option<Spanned<BTreeMap<String, ClaimValues>>>,
    /// The request header that carries the token (default `authorization`, `Bearer ` prefix).
    pub header: Option<Spanned<String>>,
    /// PEM bundle to verify the JWKS endpoint with (default: the system's roots).
    pub ca: Option<Spanned<String>>,
    /// How often the key set is read again (default 10m).
    pub refresh: Option<Spanned<Dur>>,
    /// A token naming an unknown key reads the key set again at most this often (default 30s).
    pub min_refresh: Option<Spanned<Dur>>,
}

/// A required claim: one string, or values that must all be present.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(untagged)]
pub enum ClaimValues {
    One(String),
    All(Vec<String>),
}

/// `{ set = { name = value }, remove = [names] }`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `{ host = { regex, replace }, url = { regex, replace } }`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Transforms {
    pub host: Option<Spanned<Rewrite>>,
    pub url: Option<Spanned<Rewrite>>,
}

/// A regex and its replacement (`$1`-style captures).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub regex: Spanned<String>,
    pub replace: Spanned<String>,
}

/// Upstream protocol of a target group.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

/// Target picking algorithm.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
    WeightedRandom,
}

/// A static target: `"10.0.0.1:80"` or `{ address = "10.0.0.1:80", weight = 3 }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TargetEntry {
    Addr(String),
    Weighted { address: String, weight: u32 },
}

/// `[[target_groups]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: Spanned<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub algorithm: Algorithm,
    pub slow_start: Option<Spanned<Dur>>,
    pub deregistration_delay: Option<Spanned<Dur>>,
    pub connect_timeout: Option<Dur>,
    pub response_timeout: Option<Dur>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub targets: Vec<Spanned<TargetEntry>>,
    pub health_check: Option<Spanned<HealthCheck>>,
    pub discovery: Option<Spanned<Discovery>>,
    pub autoscaling: Option<Spanned<Autoscaling>>,
    pub tls: Option<Spanned<UpstreamTls>>,
    /// Sticky sessions: `{ type = "lb_cookie" | "app_cookie", duration, cookie_name }`.
    pub stickiness: Option<Spanned<Stickiness>>,
    /// In-flight requests each target takes at most; 0 = no cap (the default).
    pub max_requests_per_target: Option<Spanned<u32>>,
    /// `queue = { size, timeout }`: where requests wait when every available target is at the cap.
    pub queue: Option<Spanned<Queue>>,
    /// `"v1"` | `"v2"`: every connection to a target starts with a PROXY header naming the
    /// client (health checks: `LOCAL`).
    #[serde(default)]
    pub send_proxy_protocol: SendProxyProtocol,
}

/// `queue` of a target group (HAProxy's backend queue in front of `maxconn`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub size: Spanned<u32>,
    pub timeout: Option<Spanned<Dur>>,
}

/// `stickiness` of a target group (ALB's duration-based and application-based stickiness).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stickiness {
    #[serde(rename = "type")]
    pub kind: Spanned<StickinessType>,
    pub duration: Option<Spanned<Dur>>,
    /// `app_cookie`: the application's cookie.
    pub cookie_name: Option<Spanned<String>>,
}

/// How a sticky session is kept.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StickinessType {
    LbCookie,
    AppCookie,
}

/// `port = "traffic-port"` or a number.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum HealthPort {
    Number(u16),
    Named(String),
}

/// `[target_groups.health_check]` (ALB defaults when a key is absent).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: Option<Spanned<String>>,
    pub port: Option<Spanned<HealthPort>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub matcher: Option<Spanned<String>>,
}

/// `[[certificates]]`: exactly one source: files (`cert` + `key`: a PEM chain, leaf first, and
/// its private key), `acm`, `ssm` or `secrets_manager`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub name: Spanned<String>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// The ARN of an exportable ACM certificate.
    pub acm: Option<Spanned<String>>,
    pub ssm: Option<Spanned<SsmCertificate>>,
    pub secrets_manager: Option<Spanned<SecretsManagerCertificate>>,
    /// How often an AWS-sourced certificate is read again.
    pub refresh: Option<Spanned<Dur>>,
}

/// `ssm = { cert, key }`: two Parameter Store parameters (the key a SecureString).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SsmCertificate {
    pub cert: String,
    pub key: String,
}

/// `secrets_manager = { secret, cert_field, key_field }`: a JSON secret holding both PEMs.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerCertificate {
    pub secret: String,
    #[serde(default = "cert_field")]
    pub cert_field: String,
    #[serde(default = "key_field")]
    pub key_field: String,
}

fn cert_field() -> String {
    "cert".into()
}

fn key_field() -> String {
    "key".into()
}

/// A secret reference: exactly one of `{ file }`, `{ env }`, `{ ssm }` (a SecureString, read
/// with decryption) or `{ secrets_manager, field }` (`field`: a key of a JSON secret; without
/// it the whole secret string). Shown by `GET /config` as the reference, never the value.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub file: Option<Spanned<String>>,
    pub env: Option<Spanned<String>>,
    pub ssm: Option<Spanned<String>>,
    pub secrets_manager: Option<Spanned<String>>,
    pub field: Option<Spanned<String>>,
}

/// `tls = { enabled, verify, ca, server_name }` on a target group: HTTPS to targets.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub verify: bool,
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// `[aws]`: where the control thread's AWS calls go. Credentials come from the standard chain.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    pub region: Option<String>,
    pub endpoint_url: Option<Spanned<String>>,
}

/// `[target_groups.discovery]`: exactly one source.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    pub cloud_map: Option<Spanned<CloudMap>>,
    pub ecs: Option<Spanned<Ecs>>,
    pub dns: Option<Spanned<Dns>>,
}

/// `dns = { name, type, port, refresh, resolver }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    pub name: Spanned<String>,
    /// A (default) | AAAA | SRV
    #[serde(rename = "type", default)]
    pub kind: DnsType,
    /// The targets' port (A and AAAA; SRV records carry their own).
    pub port: Option<Spanned<u16>>,
    /// The longest time between two lookups (a shorter TTL asks sooner).
    pub refresh: Option<Spanned<Dur>>,
    /// `"IP"` or `"IP:PORT"` of the DNS server (default: /etc/resolv.conf's).
    pub resolver: Option<Spanned<String>>,
}

/// The record type a `dns` discovery asks for.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsType {
    #[default]
    A,
    AAAA,
    SRV,
}

/// `cloud_map = { namespace, service, refresh, health_status, port }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudMap {
    pub namespace: String,
    pub service: String,
    pub refresh: Option<Dur>,
    /// HEALTHY (default) | UNHEALTHY | ALL | HEALTHY_OR_ELSE_ALL
    pub health_status: Option<Spanned<String>>,
    /// Overrides the instances' AWS_INSTANCE_PORT.
    pub port: Option<u16>,
}

/// `ecs = { cluster, service, container_name, container_port, refresh }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ecs {
    pub cluster: String,
    pub service: String,
    pub container_name: Option<String>,
    pub container_port: Spanned<u16>,
    pub refresh: Option<Dur>,
}

/// `[cloudwatch]`: publish ALB-named metrics.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatch {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_load_balancer")]
    pub load_balancer: String,
    pub interval: Option<Spanned<Dur>>,
}

fn default_namespace() -> String {
    "Pilotfish".into()
}

fn default_load_balancer() -> String {
    "pilotfish".into()
}

/// The ECS service an autoscaling policy scales.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EcsService {
    pub cluster: String,
    pub service: String,
}

/// The metric target tracking follows.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
pub enum ScalingMetric {
    /// Requests per target per minute.
    RequestCountPerTarget,
    /// Average target response time in seconds.
    TargetResponseTime,
}

/// Where the metric is read.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricSource {
    /// CloudWatch GetMetricData: the sum over every replica publishing the same LoadBalancer.
    #[default]
    Cloudwatch,
    /// This process's own counters.
    Local,
}

/// Who scales.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScalingMode {
    /// pilotfish decides and calls ECS UpdateService.
    #[default]
    TargetTracking,
    /// pilotfish registers a target-tracking policy with AWS Application Auto Scaling.
    ApplicationAutoscaling,
}

/// `[target_groups.autoscaling]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub ecs: EcsService,
    pub min: Spanned<u32>,
    pub max: Spanned<u32>,
    pub metric: ScalingMetric,
    pub target: Spanned<f64>,
    #[serde(default)]
    pub source: MetricSource,
    pub period: Option<Spanned<Dur>>,
    pub scale_out_cooldown: Option<Dur>,
    pub scale_in_cooldown: Option<Dur>,
    #[serde(default)]
    pub mode: ScalingMode,
}
