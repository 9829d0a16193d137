//! Forwarding one request to a target group: header rewriting, target choice, retries on another
//! target, timeouts, and relaying the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, Uri, Version};
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;

use super::body::{ProxiedBody, RespBody};
use super::error::ProxyError;
use super::upstream::{Sender, UpBody};
use crate::balance::Target;
use crate::config::file::UpstreamProtocol;
use crate::config::snapshot::ForwardArm;

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    pub listener_port: u16,
    /// The client's IP and the listener's port as header values, formatted once per connection.
    ip_value: HeaderValue,
    port_value: HeaderValue,
}

impl ClientInfo {
    /// The forwarding facts of a connection from `addr` to a `proto` listener on `listener_port`.
    pub fn new(addr: SocketAddr, proto: &'static str, listener_port: u16) -> Self {
        let ip_value = HeaderValue::from_str(&addr.ip().to_canonical().to_string())
            .expect("an IP address is a valid header value");
        ClientInfo { addr, proto, listener_port, ip_value, port_value: HeaderValue::from(listener_port) }
    }
}

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1, plus the legacy ones Go's proxy drops).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// The request id header added when absent.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a name this long can be hop-by-hop: the lengths of `HOP_BY_HOP` and `TE` (te,
/// trailer/upgrade, connection/keep-alive, proxy-connection/..., transfer-encoding/...), so most
/// names are skipped without a comparison. A unit test checks it against the list.
const fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16..=19)
}

/// Removes hop-by-hop headers and those the `Connection` header names (never `Host`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first, then only the removals needed: each removal is a hash
    // lookup, and most messages carry none of these or only `Connection`.
    let mut present = 0u16;
    let mut te = false;
    for n in headers.keys() {
        if !hop_by_hop_length(n.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == n) {
            present |= 1 << i;
        } else if n == header::TE {
            te = true;
        }
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0] is Connection: drop what it names.
        let conn = headers.get(header::CONNECTION);
        if conn.is_some_and(|c| c != "close" && c != "keep-alive") {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .filter(|n| n != header::HOST)
                .collect();
            for n in named {
                headers.remove(n);
            }
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    // `TE: trailers` is end-to-end meaningful (gRPC needs it); any other TE is hop-by-hop.
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// A new request id in ALB's trace-id shape: `1-<epoch seconds hex>-<24 hex random>`.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as u32;
    let mut buf = [0u8; 35];
    buf[0] = b'1';
    buf[1] = b'-';
    for i in 0..8 {
        buf[2 + i] = HEX[((secs >> (28 - 4 * i)) & 0xf) as usize];
    }
    buf[10] = b'-';
    let (a, b) = (fastrand::u64(..), fastrand::u32(..));
    for i in 0..16 {
        buf[11 + i] = HEX[((a >> (60 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..8 {
        buf[27 + i] = HEX[((b >> (28 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// Rewrites a client request head for a target: hop-by-hop stripped, forwarding headers set,
/// URI and version made right for the upstream protocol. `host` is the client's host (with port).
pub fn prepare_head(parts: &mut request::Parts, client: &ClientInfo, host: &str, protocol: UpstreamProtocol) {
    strip_hop_by_hop(&mut parts.headers);
    let xff = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            // Appending needs a new value; the common case (no XFF yet) reuses the connection's.
            HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip().to_canonical())).ok()
        }
        _ => Some(client.ip_value.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(&X_FORWARDED_FOR, v);
    }
    parts.headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    parts.headers.insert(&X_FORWARDED_PORT, client.port_value.clone());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match protocol {
        UpstreamProtocol::Http1 => {
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
            }
            if !parts.headers.contains_key(header::HOST) && !host.is_empty() {
                if let Ok(v) = HeaderValue::from_str(host) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            // h2 carries the host as :authority, built from the URI.
            parts.headers.remove(header::HOST);
            let authority = if host.is_empty() { "localhost" } else { host };
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .unwrap_or_else(|_| Uri::from_static("/"));
            parts.version = Version::HTTP_2;
        }
    }
}

/// The head of a body-less idempotent request, kept to send it again on another target.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn request(&self) -> Request<UpBody> {
        let mut r = Request::new(Either::Right(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The request to send first and, when it may be sent again (a body-less idempotent request and
/// retries configured), a copy of its head. A plain function: the parts it splits and joins would
/// otherwise keep their room in the forwarding future for the whole exchange.
fn for_retries(req: Request<Limited<Incoming>>, retries: u32) -> (Request<UpBody>, Option<Replay>) {
    let (parts, body) = req.into_parts();
    let replay =
        (retries > 0 && http_body::Body::is_end_stream(&body) && is_idempotent(&parts.method)).then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        });
    (Request::from_parts(parts, Either::Left(body)), replay)
}

/// What happened on the way, for logs and metrics.
#[derive(Debug, Default)]
pub struct ForwardInfo {
    pub target: Option<SocketAddr>,
    pub target_time: Option<std::time::Duration>,
    pub attempts: u32,
}

/// Connection attempts through a pooled connection that turned out closed before the request was
/// written: not the target's fault and not counted as retries, but bounded.
const MAX_STALE: u32 = 3;

/// Sends `req` (head already prepared) to a target of `arm`'s group and returns its response.
pub async fn forward(
    arm: &ForwardArm,
    req: Request<Limited<Incoming>>,
    info: &mut ForwardInfo,
) -> Result<Response<RespBody>, ProxyError> {
    let group = &arm.group;
    let settings = &group.settings;
    let set = group.targets();
    let (pending, replay) = for_retries(req, settings.retries);
    let mut pending = Some(pending);
    let mut failed: Option<Arc<Target>> = None;
    let mut last_err = None;
    let mut stale = 0;
    let mut attempt = 0;
    while attempt <= settings.retries {
        let Some(target) = group.pick(&set, failed.as_ref()) else { break };
        info.attempts += 1;
        info.target = Some(target.addr);
        let guard = target.start_request();
        let sender = match target.pool.checkout(target.addr, settings).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(target: "pilotfish::proxy", error = %e, "connect failed");
                arm.group_stats.target_connection_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                passive_failure(arm, &target);
                last_err = Some(e);
                failed = Some(target);
                attempt += 1;
                continue;
            }
        };
        let Some(req) = pending.take().or_else(|| replay.as_ref().map(Replay::request)) else { break };
        let sent_at = Instant::now();
        let (result, conn) = match sender {
            Sender::H1(mut tx) => {
                (tokio::time::timeout(settings.response_timeout, tx.try_send_request(req)).await, Some(tx))
            }
            Sender::H2(mut tx) => {
                (tokio::time::timeout(settings.response_timeout, tx.try_send_request(req)).await, None)
            }
        };
        match result {
            Err(_elapsed) => {
                passive_failure(arm, &target);
                return Err(ProxyError::ResponseTimeout(target.addr));
            }
            Ok(Ok(resp)) => {
                target.record_passive_success();
                let took = sent_at.elapsed();
                info.target_time = Some(took);
                arm.target_response.observe(took);
                let (mut parts, body) = resp.into_parts();
                let conn = conn.filter(|_| !closes(&parts.headers));
                strip_hop_by_hop(&mut parts.headers);
                return Ok(Response::from_parts(parts, RespBody::proxied(ProxiedBody::new(body, guard, conn))));
            }
            Ok(Err(mut e)) => {
                if let Some(req) = e.take_message() {
                    // Not written: the pooled connection was already closing. Try a fresh one.
                    pending = Some(req);
                    stale += 1;
                    if stale <= MAX_STALE {
                        continue;
                    }
                }
                let source = e.into_error();
                if source.is_user() {
                    // The client's body failed (a malformed chunk, a reset, over the limit): the
                    // client's fault, not the target's. The target saw a cleanly framed,
                    // incomplete request.
                    let too_large =
                        std::error::Error::source(&source).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
                    return Err(if too_large {
                        ProxyError::PayloadTooLarge
                    } else {
                        ProxyError::BadRequest("malformed_request_body")
                    });
                }
                tracing::debug!(target: "pilotfish::proxy", addr = %target.addr, error = %source, "target failed before responding");
                passive_failure(arm, &target);
                last_err = Some(ProxyError::Upstream { addr: target.addr, source });
                failed = Some(target);
                attempt += 1;
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoTarget(group.name.clone())))
}

/// A transport failure on live traffic counts as a failed health check at once (outlier
/// ejection). Only with active checks configured: they are what brings a target back.
fn passive_failure(arm: &ForwardArm, target: &Target) {
    if let Some(hc) = &arm.group.settings.health_check {
        if target.record_passive_failure(hc.unhealthy_threshold) {
            tracing::warn!(target_group = %arm.group.name, target = %target.addr, "target ejected after failures on live traffic");
        }
    }
}

fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret, host".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get(header::TE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::HOST).unwrap(), "a");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn the_length_filter_admits_every_hop_by_hop_name() {
        for n in HOP_BY_HOP.iter().chain([&header::TE]) {
            assert!(hop_by_hop_length(n.as_str().len()), "{n} is skipped by hop_by_hop_length");
        }
    }

    #[test]
    fn request_ids_have_alb_shape() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 35);
        assert!(s.starts_with("1-") && s.as_bytes()[10] == b'-');
        assert_ne!(new_request_id(), id);
    }
}
