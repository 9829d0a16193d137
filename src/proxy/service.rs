//! The request pipeline: one snapshot load, request checks, route lookup, the action, then
//! metrics and the access log.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::RespBody;
use super::error::ProxyError;
use super::forward::{self, ClientInfo, ForwardInfo};
use crate::config::snapshot::{Action, ForwardArm, ListenerConfig, RedirectAction};
use crate::routing::{normalize_host, RequestView};
use crate::state::SharedState;
use crate::telemetry::access_log::{secs, Record};

/// Per-connection state shared between the service and the connection's IO wrapper.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Requests whose head has been read on this connection.
    pub started: AtomicU64,
    /// Requests whose response head has not been produced yet.
    pub active: AtomicU32,
}

struct ActiveGuard<'a>(&'a ConnShared);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection's requests share.
#[derive(Debug)]
pub struct ConnCtx {
    pub state: Arc<SharedState>,
    pub listener: Arc<str>,
    /// The listener's configuration when the connection was accepted.
    pub accepted_with: Arc<crate::config::snapshot::ListenerConfig>,
    pub client: ClientInfo,
    pub conn: Arc<ConnShared>,
}

/// Serves one request.
pub async fn handle(ctx: Arc<ConnCtx>, mut req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    if !req.headers().contains_key(&forward::X_REQUEST_ID) {
        req.headers_mut().insert(&forward::X_REQUEST_ID, forward::new_request_id());
    }
    ctx.conn.started.fetch_add(1, Ordering::Relaxed);
    ctx.conn.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&ctx.conn);

    let snap = ctx.state.load();
    // A reload that removed this connection's listener leaves it draining on the configuration it
    // was accepted with (the connection is closing; see `listener::serve_http`).
    let listener = snap.listener(&ctx.listener).unwrap_or(&ctx.accepted_with);
    // Parsed once: the body limit, ProcessedBytes and the access log all use it.
    let declared_len: Option<u64> =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes_in = declared_len.unwrap_or(0);
    let log = ctx.state.access_log.as_ref().filter(|_| snap.access_log == crate::config::file::AccessLogFormat::Json);
    // Boxed: only with the access log on, and the request's future stays small without it.
    let logged = log.map(|_| Box::new(LogHead::of(&req, bytes_in)));

    let mut info = ForwardInfo::default();
    let mut rule_name = None;
    let mut group_name = None;
    let checked = check_limits(&req, declared_len, &snap.server, listener.max_request_body)
        .and_then(|()| check_framing(&req))
        .and_then(|()| request_host(&req));
    let (resp, codes, error) = match checked {
        Err(e) => {
            let r = error_response(&e);
            (r, &listener.own_codes, Some(e.reason()))
        }
        Ok(raw_host) => {
            let host = normalize_host(raw_host);
            let view = RequestView {
                host: &host,
                path: req.uri().path(),
                query: req.uri().query(),
                method: req.method(),
                source_ip: ctx.client.addr.ip().to_canonical(),
                headers: req.headers(),
            };
            let route = listener.router.route(&view);
            rule_name = route.rule.map(|r| r.name.clone());
            match route.action {
                Action::Fixed(f) => {
                    let mut r = Response::new(RespBody::full(f.body.clone()));
                    *r.status_mut() = f.status;
                    r.headers_mut().insert(header::CONTENT_TYPE, f.content_type.clone());
                    (r, &f.codes, None)
                }
                Action::Redirect(rd) => {
                    let r = redirect(rd, &ctx.client, &host, &req);
                    (r, &rd.codes, None)
                }
                Action::Forward(fw) => {
                    let arm = fw.choose();
                    group_name = Some(arm.group.name.clone());
                    let outbound = outbound(req, &ctx.client, listener, arm);
                    // Boxed: the forwarding state is most of a request's, and only requests that
                    // are forwarded need it.
                    match Box::pin(forward::forward(arm, outbound, &mut info)).await {
                        Ok(r) => (r, &arm.codes, None),
                        Err(e) => {
                            tracing::debug!(target: "pilotfish::proxy", listener = %ctx.listener, error = %e, "answered by the balancer");
                            let class = if e.status().is_server_error() {
                                &arm.group_stats.elb_5xx
                            } else {
                                &arm.group_stats.elb_4xx
                            };
                            class.fetch_add(1, Ordering::Relaxed);
                            (error_response(&e), &arm.codes, Some(e.reason()))
                        }
                    }
                }
            }
        }
    };
    let mut resp = resp;
    let status = resp.status().as_u16();
    codes.inc(status);
    listener.stats.processed_bytes.fetch_add(bytes_in, Ordering::Relaxed);
    resp.body_mut().count_into(listener.stats.clone());
    let elapsed = started.elapsed();
    listener.stats.request_duration.observe(elapsed);
    if let (Some(log), Some(head)) = (log, logged) {
        let head = *head;
        let target_time = info.target_time.map(secs);
        let record = Record {
            time: SystemTime::now(),
            client: ctx.client.addr,
            listener: ctx.listener.clone(),
            rule: rule_name,
            target_group: group_name,
            target: info.target,
            method: head.method,
            host: head.host,
            path: head.path,
            status,
            request_processing_time: secs(elapsed - info.target_time.unwrap_or_default()),
            target_processing_time: target_time,
            response_processing_time: 0.0,
            bytes_in: head.bytes_in,
            bytes_out: 0,
            user_agent: head.user_agent,
            request_id: head.request_id,
            error,
        };
        resp.body_mut().log_on_end(log.clone(), record);
    }
    Ok(resp)
}

/// The request as it goes to a target: head prepared for `arm`'s protocol, body within the
/// listener's limit. A plain function: the parts it splits and joins would otherwise keep their
/// room in the request's future while it waits for the target.
fn outbound(
    req: Request<Incoming>,
    client: &ClientInfo,
    listener: &ListenerConfig,
    arm: &ForwardArm,
) -> Request<http_body_util::Limited<Incoming>> {
    // The host outlives the request's split into parts: keep the field (a refcount, not a copy);
    // absolute-form targets (rare) are copied.
    let host_field = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let raw_host = host_field.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
    let (mut parts, body) = req.into_parts();
    forward::prepare_head(&mut parts, client, raw_host, arm.group.settings.protocol);
    let limit = listener.max_request_body.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    Request::from_parts(parts, http_body_util::Limited::new(body, limit))
}

/// The request fields the access log needs, copied before the request moves on.
struct LogHead {
    method: String,
    host: String,
    path: String,
    bytes_in: u64,
    user_agent: Option<String>,
    request_id: Option<String>,
}

impl LogHead {
    fn of(req: &Request<Incoming>, bytes_in: u64) -> LogHead {
        let h = req.headers();
        let s = |n: &header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        LogHead {
            method: req.method().to_string(),
            host: request_host(req).unwrap_or("").to_owned(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            bytes_in,
            user_agent: s(&header::USER_AGENT),
            request_id: s(&forward::X_REQUEST_ID),
        }
    }
}

/// Limits hyper does not apply itself: the request target's length (414) and a declared body
/// larger than the listener allows (413, before anything is forwarded).
fn check_limits<B>(
    req: &Request<B>,
    declared_len: Option<u64>,
    server: &crate::config::snapshot::ServerSettings,
    max_body: Option<u64>,
) -> Result<(), ProxyError> {
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > server.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if max_body.is_some_and(|max| declared_len.is_some_and(|n| n > max)) {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}

/// RFC 9112 framing checks on the parsed head (hyper rejects bad or conflicting Content-Length
/// values, a final coding other than chunked and chunked on HTTP/1.0 itself): any coding but a
/// single `chunked` is refused, so no target can frame it differently than we do. hyper drops the
/// evidence of Content-Length with Transfer-Encoding and of a repeated identical Content-Length
/// before this runs; those are refused on the raw stream by [`super::framing`], and the two checks
/// here are only a second line for heads that did not come through it.
pub fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.version() >= Version::HTTP_2 {
        return Ok(()); // HTTP/2 frames messages itself; hyper rejects these headers there.
    }
    let h = req.headers();
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    let has_cl = cl.next().is_some();
    if cl.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate_content_length"));
    }
    let mut te = h.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_none() {
        return Ok(());
    }
    if has_cl {
        return Err(ProxyError::BadRequest("content_length_and_transfer_encoding"));
    }
    let mut codings = te.flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(|c| c.trim_ascii());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::BadRequest("transfer_encoding_not_chunked")),
    }
}

/// The request's host as sent (`Host` or the URI authority, with port), checked per RFC 9112:
/// exactly one valid `Host` on HTTP/1.1, agreeing with an absolute-form target.
pub fn request_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate_host"));
    }
    let host = match first {
        Some(v) => {
            let s = v.to_str().map_err(|_| ProxyError::BadRequest("invalid_host"))?;
            if !s.is_empty() && !valid_host(s) {
                return Err(ProxyError::BadRequest("invalid_host"));
            }
            Some(s)
        }
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => Err(ProxyError::BadRequest("host_mismatch")),
        (Some(a), _) => Ok(a.as_str()),
        (None, Some(h)) => Ok(h),
        (None, None) if req.version() == Version::HTTP_11 => Err(ProxyError::BadRequest("missing_host")),
        (None, None) => Ok(""),
    }
}

/// RFC 9110 section 7.2: `Host = uri-host [ ":" port ]`, where uri-host is a reg-name (unreserved,
/// percent-encoded or sub-delims characters), an IPv4 address or a bracketed IP literal. Checked
/// by hand because parsing into `http::uri::Authority` copies the value (an allocation on every
/// request) and also accepts userinfo (`user@host`), which a Host field must not carry.
pub fn valid_host(s: &str) -> bool {
    let b = s.as_bytes();
    let (host, port) = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|&c| c == b']') else { return false };
        let literal = &b[1..end];
        if literal.is_empty()
            || !literal.iter().all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &b[end + 1..] {
            [] => (literal, None),
            [b':', port @ ..] => (literal, Some(port)),
            _ => return false,
        }
    } else {
        match b.iter().rposition(|&c| c == b':') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        }
    };
    let reg_name_ok = b.first() == Some(&b'[')
        || (!host.is_empty() && host.iter().all(|&c| c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&c)));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    reg_name_ok && port_ok
}

fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The response the balancer itself gives for `e`.
pub fn error_response(e: &ProxyError) -> Response<RespBody> {
    let mut r = text(e.status(), e.body());
    if matches!(e.status(), StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG) {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Builds the `Location` of a redirect: unset parts keep the request's protocol, host, port
/// (the listener's), path and query; default ports are left out.
fn redirect<B>(rd: &RedirectAction, client: &ClientInfo, host: &str, req: &Request<B>) -> Response<RespBody> {
    let proto = rd.protocol.as_deref().unwrap_or(client.proto);
    let host = rd.host.as_deref().unwrap_or(host);
    let port = rd.port.unwrap_or(if rd.protocol.is_some() && rd.protocol.as_deref() != Some(client.proto) {
        if proto == "https" {
            443
        } else {
            80
        }
    } else {
        client.listener_port
    });
    let path = rd.path.as_deref().unwrap_or(req.uri().path());
    let query = match &rd.query {
        Some(q) => (!q.is_empty()).then_some(&**q),
        None => req.uri().query(),
    };
    let default_port = (proto == "https" && port == 443) || (proto == "http" && port == 80);
    let host_fmt = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let mut loc = format!("{proto}://{host_fmt}");
    if !default_port {
        loc.push_str(&format!(":{port}"));
    }
    loc.push_str(path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    let mut r = Response::new(RespBody::empty());
    *r.status_mut() = rd.status;
    match HeaderValue::from_str(&loc) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "400 Bad Request: cannot build redirect\n"),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_fields_follow_rfc_9110() {
        for ok in
            ["a", "a:80", "example.com", "127.0.0.1:8080", "[::1]:443", "[::1]", "xn--bcher-kva.example", "a_b", "a:"]
        {
            assert!(valid_host(ok), "{ok} should be accepted");
        }
        for bad in [
            "a/b",
            "a b",
            "user@host",
            "a:80x",
            "a:123456",
            "[::1",
            "[::1]x",
            "[]",
            ":80",
            "a:b:c",
            "a?b",
            "a#b",
            "a\\b",
        ] {
            assert!(!valid_host(bad), "{bad} should be refused");
        }
    }
}
