//! What both HTTP versions' request paths share: the connection's context, the access log
//! record of a request (one constructor, honouring the current snapshot's `access_log`, written
//! when the exchange ends or, if it is cut, when it is dropped), the accounting of an answer in
//! the metrics, and redirects.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::answer::Answer;
use super::error::ProxyError;
use super::forward::ClientInfo;
use crate::balance::sticky::{CookieMemo, Session, Stickiness, StickyKind};
use crate::balance::Target;
use crate::config::snapshot::AccessLogFormat;
use crate::config::snapshot::{ForwardArm, ListenerConfig, Redirect, Routed, ServerSettings, Snapshot};
use crate::routing::rewrite::HeaderEdits;
use crate::state::SharedState;
use crate::telemetry::access_log::{secs, AccessLog, Record};
use crate::telemetry::metrics::{CodeCounters, ListenerStats};

/// What every request of one client connection shares.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub state: Arc<SharedState>,
    pub listener: Arc<str>,
    /// The listener's configuration when the connection was accepted (a reload that removes
    /// the listener leaves the connection draining on it).
    pub accepted_with: Arc<ListenerConfig>,
    /// `[server]` as it was when the connection was accepted (timeouts and head limits).
    pub server: ConnSettings,
    pub client: ClientInfo,
    /// Turns true when a reload removed or re-bound this listener.
    pub stop: watch::Receiver<bool>,
    /// The local address the client connected to, for a `Host` when a request has none (set
    /// for HTTP/2 connections; the HTTP/1.1 engine asks its socket when it needs it).
    pub local: Option<std::net::SocketAddr>,
}

/// The `[server]` settings a connection uses, copied when it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

impl From<&ServerSettings> for ConnSettings {
    fn from(s: &ServerSettings) -> Self {
        ConnSettings {
            idle_timeout: s.idle_timeout,
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_uri_bytes: s.max_uri_bytes,
        }
    }
}

/// The published snapshot and this connection's listener in it, as of the connection's last
/// request: refreshed when another snapshot has been published, so a request costs one load of
/// a counter instead of an `ArcSwap` load and a lookup by name (HTTP/1.1 connections; an HTTP/2
/// stream loads the snapshot). A request that races a reload may
/// run on the snapshot before it, as it could have started a moment earlier.
pub struct Current {
    published: u64,
    pub snap: Arc<Snapshot>,
    pub listener: Arc<ListenerConfig>,
}

impl Current {
    /// What is published now.
    pub fn new(ctx: &ConnCtx) -> Current {
        // The count first: a snapshot published after it is only ever newer.
        let published = ctx.state.published_count();
        let snap = ctx.state.load();
        let listener = ctx.listener(&snap).clone();
        Current { published, snap, listener }
    }

    /// Catches up with a reload, if one was published since.
    #[inline]
    pub fn refresh(&mut self, ctx: &ConnCtx) {
        if ctx.state.published_count() != self.published {
            *self = Current::new(ctx);
        }
    }
}

impl ConnCtx {
    /// The listener's current configuration.
    #[inline]
    pub fn listener<'a>(&'a self, snap: &'a Snapshot) -> &'a Arc<ListenerConfig> {
        snap.listener(&self.listener).unwrap_or(&self.accepted_with)
    }

    /// Whether the connection should close after the response in progress: the process is
    /// shutting down, or the listener was removed or re-bound.
    #[inline]
    pub fn closing(&self) -> bool {
        self.state.is_draining() || self.stop.has_changed().unwrap_or(true)
    }
}

/// The request fields an access log line names, copied when the request starts.
pub struct LogFields<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub bytes_in: u64,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

struct Pending {
    log: AccessLog,
    record: Record,
    head_sent: Option<Instant>,
    draining: Arc<SharedState>,
}

/// One request's accounting while the exchange runs: when it started (for
/// `pilotfish_request_duration_seconds`, observed as the response head goes out) and its access
/// log line, kept when the snapshot logs requests. The line is written by
/// [`RequestLog::finish`], or, if the exchange is cut (the client went away, or shutdown ended
/// the drain), when it is dropped, with the reason in `error`.
pub struct RequestLog {
    started: Instant,
    line: Option<Box<Pending>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog { started: Instant::now(), line: None }
    }
}

impl RequestLog {
    /// Starts the line of a request on `ctx`, when the current snapshot logs requests; `fields`
    /// is only called then.
    pub fn start<'a>(
        ctx: &ConnCtx,
        snap: &Snapshot,
        started: Instant,
        fields: impl FnOnce() -> LogFields<'a>,
    ) -> RequestLog {
        let Some(log) = ctx.state.access_log.as_ref().filter(|_| snap.access_log == AccessLogFormat::Json) else {
            return RequestLog { started, line: None };
        };
        let mut record = Record {
            time: SystemTime::now(),
            client: ctx.client.addr,
            listener: ctx.listener.clone(),
            rule: None,
            target_group: None,
            target: None,
            method: String::new(),
            host: String::new(),
            path: String::new(),
            status: 0,
            request_processing_time: 0.0,
            target_processing_time: None,
            response_processing_time: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            user_agent: None,
            request_id: None,
            error: None,
            auth: Default::default(),
        };
        if let Some(c) = &ctx.client.cert {
            record.auth.mtls = Some(c.mode.as_str());
            record.auth.subject = c.subject.clone();
        }
        fill(&mut record, &fields());
        RequestLog {
            started,
            line: Some(Box::new(Pending { log: log.clone(), record, head_sent: None, draining: ctx.state.clone() })),
        }
    }

    /// When the request started.
    pub fn started(&self) -> tokio::time::Instant {
        self.started.into()
    }

    /// Whether a line is being kept.
    pub fn is_on(&self) -> bool {
        self.line.is_some()
    }

    /// Changes the record (when on).
    #[inline]
    pub fn with(&mut self, f: impl FnOnce(&mut Record)) {
        if let Some(p) = &mut self.line {
            f(&mut p.record);
        }
    }

    /// The response head goes out now with `status`, `target_time` after forwarding.
    pub fn head_sent(&mut self, stats: &ListenerStats, status: u16, target_time: Option<Duration>) {
        self.head_sent_at(Instant::now(), stats, status, target_time);
    }

    /// The response head went out `at` with `status`, `target_time` after forwarding: observed
    /// in `stats`' request duration, and recorded in the line.
    pub fn head_sent_at(&mut self, at: Instant, stats: &ListenerStats, status: u16, target_time: Option<Duration>) {
        let took = at.saturating_duration_since(self.started);
        stats.request_duration.observe(took);
        if let Some(p) = &mut self.line {
            p.head_sent = Some(at);
            p.record.status = status;
            p.record.target_processing_time = target_time.map(secs);
            p.record.request_processing_time = secs(took.saturating_sub(target_time.unwrap_or_default()));
        }
    }

    /// Adds response body bytes.
    #[inline]
    pub fn add_bytes_out(&mut self, n: u64) {
        if let Some(p) = &mut self.line {
            p.record.bytes_out += n;
        }
    }

    /// Writes the line; `error` says why the exchange did not end normally.
    pub fn finish(mut self, error: Option<&'static str>) {
        if let Some(mut p) = self.line.take() {
            if error.is_some() {
                p.record.error = error;
            }
            write(*p);
        }
    }
}

fn fill(r: &mut Record, f: &LogFields<'_>) {
    r.method = f.method.to_owned();
    r.host = f.host.to_owned();
    r.path = f.path_and_query.to_owned();
    r.bytes_in = f.bytes_in;
    r.user_agent = f.user_agent.map(str::to_owned);
    r.request_id = f.request_id.map(str::to_owned);
}

fn write(mut p: Pending) {
    if let Some(h) = p.head_sent {
        p.record.response_processing_time = secs(h.elapsed());
    }
    p.log.log(p.record);
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if let Some(mut p) = self.line.take() {
            if p.record.error.is_none() {
                p.record.error =
                    Some(if p.draining.is_draining() { "shutdown_drain_elapsed" } else { "request_incomplete" });
            }
            write(*p);
        }
    }
}

/// Counts a response the balancer gave itself: in `codes` and, for errors of a forward, in its
/// group's `HTTPCode_ELB_*`.
pub fn count_answer(a: &Answer, codes: &CodeCounters, arm: Option<&ForwardArm>) {
    let status = a.logged_status();
    codes.inc(status);
    if let (true, Some(arm)) = (a.is_error(), arm) {
        let class = if a.status.is_server_error() || a.grpc.is_some_and(|(c, _)| c == 14 || c == 4) {
            &arm.group_stats.elb_5xx
        } else {
            &arm.group_stats.elb_4xx
        };
        class.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `Location` of a redirect: unset parts keep the request's protocol, host, port (the
/// listener's), path and query; default ports are left out.
pub fn redirect_location(rd: &Redirect, client: &ClientInfo, host: &str, path: &str, query: Option<&str>) -> String {
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
    let path = rd.path.as_deref().unwrap_or(path);
    let query = match &rd.query {
        Some(q) => (!q.is_empty()).then_some(&**q),
        None => query,
    };
    let default_port = (proto == "https" && port == 443) || (proto == "http" && port == 80);
    let mut loc = String::with_capacity(proto.len() + host.len() + path.len() + 16);
    loc.push_str(proto);
    loc.push_str("://");
    if host.contains(':') {
        loc.push('[');
        loc.push_str(host);
        loc.push(']');
    } else {
        loc.push_str(host);
    }
    if !default_port {
        loc.push(':');
        loc.push_str(&port.to_string());
    }
    loc.push_str(path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

/// What the matched rule changes in one request and its response: the host and path after its
/// transforms (None: unchanged), its request header edits, and the response header edits (the
/// listener's, then the rule's).
#[derive(Default)]
pub struct Changes<'a> {
    pub host: Option<String>,
    pub path: Option<String>,
    pub request_headers: Option<&'a HeaderEdits>,
    pub response_headers: Option<&'a Arc<HeaderEdits>>,
    /// Sticky sessions, when the forward reads cookies (boxed: most requests have none, and
    /// `Changes` lives in every request's future).
    cookies: Option<Box<Cookies<'a>>>,
}

/// What a request's cookies said, and what its response's cookies will say.
#[derive(Default)]
struct Cookies<'a> {
    /// The chosen group's sticky sessions, and the session the request's cookies name.
    sticky: Option<&'a Stickiness>,
    session: Session,
    /// A target group stickiness cookie to issue (`Set-Cookie` value).
    group_cookie: Option<String>,
    /// Cookies get `Secure` (an https listener).
    secure: bool,
}

impl<'a> Changes<'a> {
    /// What `routed` changes in a request for `host` (normalized: no port, lowercase) whose
    /// authority was `authority`, at `path`. A rewrite that makes an invalid host or path is an
    /// error (500).
    pub fn of(routed: &'a Routed, host: &str, authority: &str, path: &str) -> Result<Changes<'a>, ProxyError> {
        let mut c = Changes { response_headers: routed.response.as_ref(), ..Changes::default() };
        let Some(rw) = routed.request.as_deref() else { return Ok(c) };
        if let Some(t) = &rw.host {
            if let Some(mut new) = t.apply(host) {
                // The port the client named is kept.
                if let Some((_, port)) = authority.rsplit_once(':').filter(|(h, p)| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.starts_with('[') || h.ends_with(']'))
                }) {
                    new.push(':');
                    new.push_str(port);
                }
                if new.is_empty() || !super::h1::parse::valid_host(&new) {
                    return Err(ProxyError::RewriteInvalid("rewrite_invalid_host"));
                }
                c.host = Some(new);
            }
        }
        if let Some(t) = &rw.url {
            if let Some(new) = t.apply(path) {
                if !valid_path(&new) {
                    return Err(ProxyError::RewriteInvalid("rewrite_invalid_path"));
                }
                c.path = Some(new);
            }
        }
        c.request_headers = (!rw.headers.is_empty()).then_some(&rw.headers);
        Ok(c)
    }

    /// Applies the changes to an HTTP/2 client's request: its path (the query kept) and header
    /// edits. Returns the new host, which the caller sends instead of the request's (the
    /// request's own `Host` field, if any, is removed).
    pub fn rewrite_h2<B>(&self, req: &mut http::Request<B>) -> Option<String> {
        if let Some(p) = &self.path {
            let pq = match req.uri().query() {
                Some(q) => format!("{p}?{q}"),
                None => p.clone(),
            };
            let mut parts = req.uri().clone().into_parts();
            // A valid path and an already valid query make a valid path-and-query.
            parts.path_and_query = pq.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        if self.host.is_some() {
            req.headers_mut().remove(http::header::HOST);
        }
        if let Some(e) = self.request_headers {
            e.apply(req.headers_mut());
        }
        self.host.clone()
    }

    /// Notes the stickiness of the chosen `arm`: the session the request's `cookies` name, and
    /// the target group cookie to issue, if any.
    pub fn stick(
        &mut self,
        arm: &'a ForwardArm,
        cookies: &[&[u8]],
        group_cookie: Option<String>,
        secure: bool,
        memo: Option<&mut CookieMemo>,
    ) {
        let mut c = Cookies { group_cookie, secure, ..Cookies::default() };
        if let Some(st) = &arm.sticky {
            c.session = st.session(cookies, &arm.group.targets(), memo);
            c.sticky = Some(st);
        }
        if c.sticky.is_some() || c.group_cookie.is_some() {
            self.cookies = Some(Box::new(c));
        }
    }

    /// The chosen group's stickiness, when it has one.
    fn sticky(&self) -> Option<&'a Stickiness> {
        self.cookies.as_ref().and_then(|c| c.sticky)
    }

    /// The target the request's session is on (healthy and in the group), for the first pick.
    pub fn preferred(&self) -> Option<Arc<Target>> {
        self.cookies.as_ref()?.session.target.clone()
    }

    /// Whether responses may get cookies (a sticky group or a forward's group stickiness).
    #[inline]
    pub fn sets_cookies(&self) -> bool {
        self.cookies.is_some()
    }

    /// Whether the response's `Set-Cookie` fields matter (application-based stickiness).
    pub fn follows_app_cookie(&self) -> bool {
        self.sticky().is_some_and(|s| matches!(s.kind, StickyKind::AppCookie(_)))
    }

    /// Whether a response `Set-Cookie` value sets the application's cookie.
    pub fn sets_app_cookie(&self, set_cookie: &[u8]) -> bool {
        self.sticky().is_some_and(|s| s.sets_app_cookie(set_cookie))
    }

    /// The `Set-Cookie` values for a response from `served`; `app_set`: it sets the
    /// application's cookie.
    pub fn set_cookies(&self, served: &Target, app_set: bool) -> Vec<String> {
        let Some(c) = &self.cookies else { return Vec::new() };
        let mut out: Vec<String> = c.group_cookie.iter().cloned().collect();
        if let Some(st) = c.sticky {
            out.extend(st.set_cookies(&c.session, served, c.secure, app_set));
        }
        out
    }

    /// [`Changes::set_cookies`] added to a response's header map.
    pub fn add_cookies(&self, served: &Target, headers: &mut http::HeaderMap) {
        if !self.sets_cookies() {
            return;
        }
        let app_set = self.follows_app_cookie()
            && headers.get_all(http::header::SET_COOKIE).iter().any(|v| self.sets_app_cookie(v.as_bytes()));
        for c in self.set_cookies(served, app_set) {
            if let Ok(v) = http::HeaderValue::from_str(&c) {
                headers.append(http::header::SET_COOKIE, v);
            }
        }
    }

    /// The response edits, for an answer of the balancer's own.
    pub fn answer_headers(&self) -> Option<Arc<HeaderEdits>> {
        self.response_headers.cloned()
    }
}

/// Whether `p` is an origin-form path: `/`, then RFC 3986 path characters (no query, no
/// fragment, no spaces or controls).
pub fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 8192
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
}
