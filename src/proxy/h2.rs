//! HTTP/2 over hyper, on both sides, and the seams to the HTTP/1.1 engine.
//!
//! - HTTP/2 clients are served by hyper's server: [`Handler`] runs [`handle`] per request. To an
//!   `http2` target group the request goes through hyper's client (one multiplexed connection
//!   per target and worker); to an `http1` group through the engine's client side
//!   ([`super::h1::client`]): the head is encoded from the header map, the body streamed in
//!   HTTP/1.1 framing, and the response body read by the engine's decoder as hyper pulls it.
//! - HTTP/1.1 clients to `http2` groups: [`forward_from_h1`] builds the request from the parsed
//!   head, streams the client's body into it, and writes hyper's response back as HTTP/1.1.
//!
//! Conversions happen only where the versions differ; HTTP/1.1 to HTTP/1.1 never builds a
//! header map.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;

use super::answer::Answer;
use super::body::{BoxError, H1Source, RespBody};
use super::error::ProxyError;
use super::forward::{self, ClientInfo, X_REQUEST_ID};
use super::h1::body::{size_line, Decoder, Event};
use super::h1::buf::Buf;
use super::h1::client::{self, Outbound, SendError, Sending};
use super::h1::io::{self as hio, ClientIo, Timer};
use super::h1::parse::{self, BodyLen, Kind, RequestHead, Version as H1Version};
use super::h1::server::Next;
use super::service::{count_answer, redirect_location, Changes, ConnCtx, LogFields, RequestLog};
use super::upstream::{self, H2Body, Stream};
use crate::balance::Target;
use crate::config::snapshot::UpstreamProtocol;
use crate::config::snapshot::{Action, ForwardArm, ListenerConfig};
use crate::routing::{normalize_host, RequestView, WithClientCert};
use crate::telemetry::metrics::ListenerStats;
use crate::tls::mtls::is_mtls_header;

/// hyper's service for one HTTP/2 client connection. The request future is boxed: hyper keeps
/// one future of the service's type per connection, so an unboxed one would be held by every
/// connection for its life.
#[derive(Clone)]
pub struct Handler(pub Arc<ConnCtx>);

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, req: Request<Incoming>) -> HandlerFuture {
        Box::pin(handle(self.0.clone(), req))
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().len() >= 16 && v.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// The request's host as sent (`:authority` or `Host`, with port), checked like an HTTP/1.1
/// one's: at most one `Host`, valid, agreeing with the authority. A request with neither (HTTP/2
/// allows it) is for the address the client connected to.
fn request_host<B>(req: &Request<B>, local: Option<std::net::SocketAddr>) -> Result<String, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate_host"));
    }
    let host = match first {
        Some(v) => {
            let s = v.to_str().map_err(|_| ProxyError::BadRequest("invalid_host"))?;
            if !parse::valid_host(s) {
                return Err(ProxyError::BadRequest("invalid_host"));
            }
            Some(s)
        }
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => Err(ProxyError::BadRequest("host_mismatch")),
        (Some(a), _) if parse::valid_host(a.as_str()) => Ok(a.as_str().to_owned()),
        (Some(_), _) => Err(ProxyError::BadRequest("invalid_host")),
        (None, Some(h)) => Ok(h.to_owned()),
        (None, None) => local.map(|a| a.to_string()).ok_or(ProxyError::BadRequest("missing_host")),
    }
}

/// Serves one request of an HTTP/2 client.
pub async fn handle(ctx: Arc<ConnCtx>, mut req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    let snap = ctx.state.load();
    let listener = ctx.listener(&snap).clone();
    if !req.headers().contains_key(&X_REQUEST_ID) {
        req.headers_mut().insert(&X_REQUEST_ID, forward::new_request_id_value());
    }
    let grpc = is_grpc(req.headers());
    let declared: Option<u64> = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let (raw_host, host_error) = match request_host(&req, ctx.local) {
        Ok(h) => (h, None),
        Err(e) => (String::new(), Some(e)),
    };
    let raw_host = raw_host.as_str();
    let h = req.headers();
    let s = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok());
    let mut log = RequestLog::start(&ctx, &snap, started, || LogFields {
        method: req.method().as_str(),
        host: raw_host,
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        bytes_in: declared.unwrap_or(0),
        user_agent: s(&header::USER_AGENT),
        request_id: s(&X_REQUEST_ID),
    });
    let refused = match host_error {
        Some(e) => Some(e),
        None if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > ctx.server.max_uri_bytes => {
            Some(ProxyError::UriTooLong)
        }
        None if listener.max_request_body.is_some_and(|max| declared.is_some_and(|n| n > max)) => {
            Some(ProxyError::PayloadTooLarge)
        }
        None => None,
    };
    let mut edits = listener.response_edits.clone();
    let resp = if let Some(e) = refused {
        answered(Answer::error(&e, grpc), &listener.stats, &listener.own_codes, None, &mut log)
    } else {
        let host = normalize_host(raw_host).into_owned();
        let route = listener.router.route(&RequestView {
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            source_ip: ctx.client.addr.ip().to_canonical(),
            headers: &WithClientCert { fields: req.headers(), cert: ctx.client.cert.as_deref() },
        });
        let rule = route.rule.map(|r| r.name.clone());
        log.with(|r| r.rule = rule);
        let routed = route.action;
        edits.clone_from(&routed.response);
        // The rule's token check comes before its action.
        let refused = match routed.jwt.as_deref() {
            Some(jwt) => {
                let mut copies = req.headers().get_all(&jwt.header).iter();
                let value = copies.next().and_then(|v| v.to_str().ok());
                let verdict = Box::pin(jwt.check(value, copies.next().is_some())).await;
                log.with(|r| r.auth.jwt = Some(verdict.map_or_else(|e| e.as_str(), |()| "valid")));
                verdict.err()
            }
            None => None,
        };
        match &routed.action {
            _ if refused.is_some() => {
                let reason = refused.unwrap_or(crate::auth::jwt::Reason::Missing);
                answered(Answer::unauthorized(reason, grpc), &listener.stats, &listener.own_codes, None, &mut log)
            }
            Action::Fixed(f) => answered(Answer::fixed(&f.response), &listener.stats, &f.codes, None, &mut log),
            Action::Redirect(rd) => {
                let loc = redirect_location(&rd.to, &ctx.client, &host, req.uri().path(), req.uri().query());
                answered(Answer::redirect(rd.to.status, &loc), &listener.stats, &rd.codes, None, &mut log)
            }
            Action::Forward(fw) => {
                let mut changes = Changes::of(routed, &host, raw_host, req.uri().path());
                let arm = match &changes {
                    Ok(_) if fw.reads_cookies() => {
                        let secure = ctx.client.proto == "https";
                        let cookies: Vec<&[u8]> =
                            req.headers().get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
                        let (arm, group_cookie) = fw.choose_sticky(&cookies, secure);
                        if let Ok(c) = &mut changes {
                            c.stick(arm, &cookies, group_cookie, secure, None);
                        }
                        arm
                    }
                    _ => fw.choose(),
                };
                log.with(|r| r.target_group = Some(arm.group.name.clone()));
                let r = match changes {
                    Err(e) => Err(e),
                    Ok(changes) => {
                        let mut req = req;
                        let to_host = changes.rewrite_h2(&mut req);
                        let to_host = to_host.as_deref().unwrap_or(raw_host);
                        // Boxed: the forwarding state is most of a request's, and only forwards need it.
                        match arm.transport.protocol {
                            UpstreamProtocol::Http2 => {
                                Box::pin(to_h2_target(&ctx, &listener, arm, req, to_host, &changes, &mut log)).await
                            }
                            UpstreamProtocol::Http1 => {
                                Box::pin(to_h1_target(&ctx, &listener, arm, req, to_host, &changes, &mut log)).await
                            }
                        }
                    }
                };
                match r {
                    Ok(resp) => {
                        arm.codes.inc(resp.status().as_u16());
                        resp
                    }
                    Err(e) => {
                        tracing::debug!(target: "pilotfish::proxy", listener = %ctx.listener, error = %e, "answered by the balancer");
                        answered(Answer::error(&e, grpc), &listener.stats, &arm.codes, Some(arm), &mut log)
                    }
                }
            }
        }
    };
    let mut resp = resp;
    if let Some(e) = &edits {
        e.apply(resp.headers_mut());
    }
    listener.stats.processed_bytes.add(declared.unwrap_or(0));
    resp.body_mut().count_into(listener.stats.clone());
    resp.body_mut().log_on_end(log);
    Ok(resp)
}

/// Accounts an answer of the balancer's own and makes it a response.
fn answered(
    a: Answer,
    stats: &ListenerStats,
    codes: &crate::telemetry::metrics::CodeCounters,
    arm: Option<&ForwardArm>,
    log: &mut RequestLog,
) -> Response<RespBody> {
    count_answer(&a, codes, arm);
    log.head_sent(stats, a.logged_status(), None);
    if let Some(why) = a.reason {
        log.with(|r| r.error = Some(why));
    }
    a.into_response()
}

/// The head of a body-less idempotent request, kept to send it again on another target.
struct Replay {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

/// An HTTP/2 client's request to an `http2` group, through hyper's client.
async fn to_h2_target(
    ctx: &ConnCtx,
    listener: &ListenerConfig,
    arm: &ForwardArm,
    req: Request<Incoming>,
    host: &str,
    changes: &Changes<'_>,
    log: &mut RequestLog,
) -> Result<Response<RespBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    forward::prepare_head(&mut parts, &ctx.client, host, UpstreamProtocol::Http2);
    let limit = listener.max_request_body.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let replay =
        (arm.transport.retries > 0 && body.is_end_stream() && client::is_idempotent(parts.method.as_str().as_bytes()))
            .then(|| Replay { method: parts.method.clone(), uri: parts.uri.clone(), headers: parts.headers.clone() });
    let body: H2Body = Limited::new(body, limit)
        .map_frame(|f| match f.into_trailers() {
            Ok(mut t) => {
                forward::strip_mtls(&mut t);
                Frame::trailers(t)
            }
            Err(f) => f,
        })
        .map_err(BoxError::from)
        .boxed_unsync();
    send_h2(arm, &ctx.client, &listener.stats, Request::from_parts(parts, body), replay, changes, log).await
}

/// Sends `req` to an HTTP/2 target of `arm`'s group: retried on another target when connecting
/// fails, or, for a replayable request, when the target fails before responding.
async fn send_h2(
    arm: &ForwardArm,
    client: &ClientInfo,
    stats: &ListenerStats,
    req: Request<H2Body>,
    replay: Option<Replay>,
    changes: &Changes<'_>,
    log: &mut RequestLog,
) -> Result<Response<RespBody>, ProxyError> {
    let group = &arm.group;
    let settings = &*arm.transport;
    let set = group.targets();
    let mut pending = Some(req);
    let mut tried: Vec<Arc<Target>> = Vec::new();
    let mut last_err = None;
    let mut first = true;
    while tried.len() as u32 <= settings.retries {
        let (target, guard) = if std::mem::take(&mut first) {
            let preferred = changes.preferred();
            match client::claim_first(arm, &set, preferred.as_ref())? {
                Some(claimed) => claimed,
                None => client::wait_in_queue(arm, preferred.as_ref()).await?,
            }
        } else {
            match group.claim(&set, &tried, None) {
                Ok(c) => c,
                Err(_) => break,
            }
        };
        log.with(|r| r.target = Some(target.addr));
        let mut tx = match upstream::h2_sender(target.id, target.addr, settings, Some(client)).await {
            Ok(tx) => tx,
            Err(e) => {
                arm.group_stats.target_connection_errors.fetch_add(1, Ordering::Relaxed);
                client::passive_failure(arm, &target);
                last_err = Some(e);
                tried.push(target);
                continue;
            }
        };
        let Some(req) = pending.take().or_else(|| {
            replay.as_ref().map(|r| {
                let mut q = Request::new(Empty::<Bytes>::new().map_err(BoxError::from).boxed_unsync());
                *q.method_mut() = r.method.clone();
                *q.uri_mut() = r.uri.clone();
                *q.headers_mut() = r.headers.clone();
                q
            })
        }) else {
            break;
        };
        let sent_at = Instant::now();
        match tokio::time::timeout(settings.response_timeout, tx.send_request(req)).await {
            Err(_) => {
                client::passive_failure(arm, &target);
                return Err(ProxyError::ResponseTimeout(target.addr));
            }
            Ok(Ok(resp)) => {
                target.record_passive_success();
                let took = sent_at.elapsed();
                arm.target_response.observe(took);
                log.head_sent(stats, resp.status().as_u16(), Some(took));
                let (mut parts, body) = resp.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                changes.add_cookies(&target, &mut parts.headers);
                return Ok(Response::from_parts(parts, RespBody::h2(body, guard)));
            }
            Ok(Err(source)) => {
                if source.is_user() {
                    // The client's body failed (a reset, over the limit): the client's fault.
                    let too_large =
                        std::error::Error::source(&source).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
                    return Err(if too_large {
                        ProxyError::PayloadTooLarge
                    } else {
                        ProxyError::BadRequest("malformed_request_body")
                    });
                }
                client::passive_failure(arm, &target);
                last_err = Some(ProxyError::Upstream { addr: target.addr, source });
                tried.push(target);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoTarget(group.name.clone())))
}

/// An HTTP/2 client's request as it goes to an HTTP/1.1 target.
struct H2Out {
    head: Vec<u8>,
    written: usize,
    body: Incoming,
    /// The body was empty from the start.
    empty: bool,
    /// A body frame has been taken (the request can no longer be sent again).
    started: bool,
    chunked: bool,
    pre: [u8; 18],
    pre_len: usize,
    data: Bytes,
    post: Vec<u8>,
    off: usize,
    ending: bool,
    limit: Option<u64>,
    sent: u64,
    idempotent: bool,
    waiting_client: bool,
}

impl H2Out {
    fn piece_len(&self) -> usize {
        self.pre_len + self.data.len() + self.post.len()
    }
}

impl Outbound for H2Out {
    fn poll_head(&mut self, cx: &mut Context<'_>, target: &mut Stream) -> Poll<std::io::Result<()>> {
        while self.written < self.head.len() {
            let n = std::task::ready!(Pin::new(&mut *target).poll_write(cx, &self.head[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Pin::new(target).poll_flush(cx)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>, target: &mut Stream) -> Poll<Result<bool, SendError>> {
        let mut moved = false;
        loop {
            if self.off < self.piece_len() {
                let parts: [&[u8]; 3] = [&self.pre[..self.pre_len], &self.data, &self.post];
                let mut slices = [IoSlice::new(&[]); 3];
                let (mut n, mut skip) = (0, self.off);
                for p in parts {
                    if skip >= p.len() {
                        skip -= p.len();
                        continue;
                    }
                    slices[n] = IoSlice::new(&p[skip..]);
                    skip = 0;
                    n += 1;
                }
                if let Some(w) = client::poll_piece(cx, target, &slices[..n])? {
                    self.off += w;
                    moved = true;
                    continue;
                }
                self.waiting_client = false;
                return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending };
            }
            if self.ending {
                // Waiting on the target, not the client, while the end is flushed.
                self.waiting_client = false;
                return client::poll_body_end(cx, target, moved);
            }
            (self.off, self.pre_len, self.data, self.post) = (0, 0, Bytes::new(), Vec::new());
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.started = true;
                    match frame.into_data() {
                        Ok(d) => {
                            self.sent += d.len() as u64;
                            if self.limit.is_some_and(|max| self.sent > max) {
                                return Poll::Ready(Err(SendError::Client(ProxyError::PayloadTooLarge)));
                            }
                            if d.is_empty() {
                                continue;
                            }
                            if self.chunked {
                                self.pre_len = size_line(d.len(), &mut self.pre);
                                self.post = b"\r\n".to_vec();
                            }
                            self.data = d;
                        }
                        Err(frame) => {
                            if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                                let mut t = b"0\r\n".to_vec();
                                for (n, v) in trailers.iter().filter(|(n, _)| !is_mtls_header(n.as_str().as_bytes())) {
                                    t.extend_from_slice(n.as_str().as_bytes());
                                    t.extend_from_slice(b": ");
                                    t.extend_from_slice(v.as_bytes());
                                    t.extend_from_slice(b"\r\n");
                                }
                                t.extend_from_slice(b"\r\n");
                                self.post = t;
                            }
                            self.ending = true;
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    return Poll::Ready(Err(SendError::Client(ProxyError::BadRequest("request_body_incomplete"))))
                }
                Poll::Ready(None) => {
                    if self.chunked {
                        self.post = b"0\r\n\r\n".to_vec();
                    }
                    self.ending = true;
                }
                Poll::Pending => {
                    self.waiting_client = true;
                    return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending };
                }
            }
        }
    }

    fn body_pending(&self) -> bool {
        !(self.empty || self.ending && self.off >= self.piece_len())
    }

    fn waiting_for_client(&self) -> bool {
        self.waiting_client
    }

    fn rewind(&mut self) -> bool {
        if self.started {
            return false;
        }
        self.written = 0;
        true
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    fn has_body(&self) -> bool {
        !self.empty
    }
}

/// An HTTP/2 client's request to an `http1` group, through the engine's client side.
async fn to_h1_target(
    ctx: &ConnCtx,
    listener: &ListenerConfig,
    arm: &ForwardArm,
    req: Request<Incoming>,
    host: &str,
    changes: &Changes<'_>,
    log: &mut RequestLog,
) -> Result<Response<RespBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let empty = body.is_end_stream();
    let chunked = !empty && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let head_request = parts.method == Method::HEAD;
    let mut out = H2Out {
        head: forward::write_h1_head(&parts, &ctx.client, host, chunked),
        written: 0,
        body,
        empty,
        started: false,
        chunked,
        pre: [0; 18],
        pre_len: 0,
        data: Bytes::new(),
        post: Vec::new(),
        off: 0,
        ending: false,
        limit: listener.max_request_body,
        sent: 0,
        idempotent: client::is_idempotent(parts.method.as_str().as_bytes()),
        waiting_client: false,
    };
    let settings = &*arm.transport;
    let limits = client::Limits {
        max_head_bytes: ctx.server.max_header_bytes,
        max_headers: ctx.server.max_headers,
        response_timeout: settings.response_timeout,
        client_idle: ctx.server.idle_timeout,
    };
    let mut attempts =
        client::Attempts { preferred: changes.preferred(), client: Some(&ctx.client), ..Default::default() };
    // An HTTP/2 stream has no connection timer of its own: one for this request.
    let sleep = std::pin::pin!(tokio::time::sleep(settings.response_timeout));
    let mut timer = Timer::new(sleep);
    let sent = client::send(arm, &mut out, &limits, &mut attempts, &mut timer, log.started()).await;
    log.with(|r| r.target = attempts.target);
    let client::Answered { target, guard, conn, mut tbuf, mut head, mut sending, sent_at } = sent?;
    let mut conn = conn;
    // Interim responses cannot be relayed to an HTTP/2 client through hyper; skip them.
    while head.is_interim() {
        if head.status == 101 {
            return Err(ProxyError::BadResponse { addr: target.addr, reason: "unsolicited_101" });
        }
        tbuf.rewind_to(head.end as usize);
        head = match parse::parse_response(
            tbuf.data(),
            tbuf.start(),
            tbuf.end(),
            limits.max_head_bytes,
            limits.max_headers,
        ) {
            Ok(Some(h)) => h,
            Err(reason) => return Err(ProxyError::BadResponse { addr: target.addr, reason }),
            Ok(None) => match client::next_head(
                &mut out,
                &mut sending,
                &mut conn.io,
                &mut tbuf,
                &limits,
                &mut timer,
                tokio::time::Instant::now(),
            )
            .await
            {
                client::Got::Head(h) => h,
                client::Got::Bad(reason) => return Err(ProxyError::BadResponse { addr: target.addr, reason }),
                client::Got::TimedOut { waiting_for_client: true } => return Err(ProxyError::RequestTimeout),
                client::Got::TimedOut { .. } => return Err(ProxyError::ResponseTimeout(target.addr)),
                client::Got::Client(e) => return Err(e),
                client::Got::Closed { .. } => return Err(ProxyError::TargetReset(target.addr)),
            },
        };
    }
    let took = sent_at.elapsed();
    arm.target_response.observe(took);
    log.head_sent(&listener.stats, head.status, Some(took));
    let data = tbuf.data();
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(head.status)
        .map_err(|_| ProxyError::BadResponse { addr: target.addr, reason: "invalid_status" })?;
    *resp.version_mut() = Version::HTTP_2;
    let map = resp.headers_mut();
    for f in head.fields.all().iter().filter(|f| !f.drop) {
        match (HeaderName::from_bytes(f.name.of(data)), HeaderValue::from_bytes(f.value.of(data))) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => return Err(ProxyError::BadResponse { addr: target.addr, reason: "invalid_header_for_http2" }),
        }
    }
    changes.add_cookies(&target, map);
    let body_len = head.body_len(head_request);
    let reusable = sending != Sending::Aborted && !head.close && body_len != BodyLen::Close;
    // A target that answered before it had the whole body gets the rest while it responds.
    let rest = (sending == Sending::Body).then(|| Box::new(out) as Box<dyn Outbound + Send>);
    tbuf.rewind_to(head.end as usize);
    let (parts, ()) = resp.into_parts();
    let body = H1Source::new(conn, tbuf, Decoder::new(body_len), guard, reusable, settings.response_timeout, rest);
    Ok(Response::from_parts(parts, RespBody::h1(body)))
}

/// The client's next body frame for an HTTP/2 target, decoded from the read buffer (reading
/// more within `idle`); `None` at its end.
async fn client_frame<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    dec: &mut Decoder,
    floor: usize,
    idle: Duration,
) -> Result<Option<Frame<Bytes>>, ProxyError> {
    loop {
        let filled = rbuf.filled();
        let (used, ev) = dec.next(filled).map_err(ProxyError::BadRequest)?;
        let frame = match ev {
            Event::Data(r) => Some(Frame::data(Bytes::copy_from_slice(&filled[r]))),
            Event::Trailers(r) => {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut map = HeaderMap::new();
                if let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&filled[r], &mut fields) {
                    for f in fields {
                        if let (Ok(n), Ok(v)) =
                            (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                        {
                            map.append(n, v);
                        }
                    }
                }
                Some(Frame::trailers(map))
            }
            Event::End => {
                rbuf.consume(used);
                return Ok(None);
            }
            Event::More => None,
        };
        rbuf.consume(used);
        if frame.is_some() {
            return Ok(frame);
        }
        if rbuf.spare() < 1024 {
            rbuf.compact_to(floor);
            // A head near the limit may leave little room: the body gets a read's worth.
            rbuf.reserve(4096, floor + crate::proxy::h1::buf::BUF_SIZE);
        }
        match tokio::time::timeout(idle, rbuf.read_from(io)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(ProxyError::BadRequest("request_body_incomplete")),
            Err(_) => return Err(ProxyError::RequestTimeout),
        }
    }
}

/// A request body fed from the HTTP/1.1 session through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// An HTTP/1.1 client's request to an `http2` group: sent through hyper's client, the body
/// streamed from the session's buffer and socket, the response written back as HTTP/1.1.
#[allow(clippy::too_many_arguments)]
pub async fn forward_from_h1<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    head: &RequestHead,
    ctx: &ConnCtx,
    listener: &ListenerConfig,
    arm: &ForwardArm,
    request_id: Option<&[u8]>,
    changes: &Changes<'_>,
    mut log: RequestLog,
    timer: &mut Timer<'_>,
) -> Next {
    let data = rbuf.data();
    let idle = ctx.server.idle_timeout;
    let local = head.authority.is_none().then(|| io.local_addr()).flatten().map(|a| a.to_string());
    let authority = changes.host.as_deref().or(local.as_deref()).unwrap_or(head.authority_str(data));
    let path = changes.path.as_deref().unwrap_or(head.path_str(data));
    let mut uri = format!("http://{authority}{path}");
    if let Some(q) = head.query_str(data) {
        uri.push('?');
        uri.push_str(q);
    }
    let mut req = Request::new(());
    let built = (|| -> Option<()> {
        *req.method_mut() = Method::from_bytes(head.method(data)).ok()?;
        *req.uri_mut() = uri.parse().ok()?;
        let map = req.headers_mut();
        let mut xff = Vec::new();
        for f in head.fields.all() {
            if f.kind == Kind::XForwardedFor {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(f.value.of(data));
            } else if !f.drop && f.kind != Kind::Host && f.kind != Kind::Upgrade {
                map.append(
                    HeaderName::from_bytes(f.name.of(data)).ok()?,
                    HeaderValue::from_bytes(f.value.of(data)).ok()?,
                );
            }
        }
        if !xff.is_empty() {
            map.insert("x-forwarded-for", HeaderValue::from_bytes(&xff).ok()?);
        }
        if let Some(id) = request_id {
            map.insert(&X_REQUEST_ID, HeaderValue::from_bytes(id).ok()?);
        }
        if let Some(e) = changes.request_headers {
            e.apply(map);
        }
        Some(())
    })();
    if built.is_none() {
        let a = Answer::error(&ProxyError::BadRequest("not_representable_in_http2"), head.grpc)
            .with_headers(changes.answer_headers());
        count_answer(&a, &arm.codes, Some(arm));
        return super::h1::server::respond(io, rbuf, head, ctx, a, log, timer).await;
    }
    let (mut parts, ()) = req.into_parts();
    forward::prepare_head(&mut parts, &ctx.client, authority, UpstreamProtocol::Http2);
    let head_request = parts.method == Method::HEAD;
    let (tx, body): (Option<tokio::sync::mpsc::Sender<Frame<Bytes>>>, H2Body) = if head.body.is_none() {
        (None, Empty::<Bytes>::new().map_err(BoxError::from).boxed_unsync())
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Some(tx), ChannelBody(rx).boxed_unsync())
    };
    let replay = (tx.is_none() && arm.transport.retries > 0 && client::is_idempotent(head.method(data)))
        .then(|| Replay { method: parts.method.clone(), uri: parts.uri.clone(), headers: parts.headers.clone() });
    // Pump the client's body while waiting for the response.
    let mut dec = Decoder::new(head.body);
    let floor = head.end as usize;
    let mut tx = tx;
    let mut sent_body = 0u64;
    let limit = listener.max_request_body;
    let send = send_h2(arm, &ctx.client, &listener.stats, Request::from_parts(parts, body), replay, changes, &mut log);
    let result = async {
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => break r,
                frame = client_frame(io, rbuf, &mut dec, floor, idle), if tx.is_some() => match frame {
                    Ok(Some(f)) => {
                        sent_body += f.data_ref().map_or(0, |d| d.len() as u64);
                        if limit.is_some_and(|max| sent_body > max) {
                            break Err(ProxyError::PayloadTooLarge);
                        }
                        if tx.as_ref().expect("checked").send(f).await.is_err() {
                            tx = None;
                        }
                    }
                    Ok(None) => tx = None,
                    Err(e) => break Err(e),
                },
            }
        }
    }
    .await;
    let body_done = dec.is_done();
    drop(tx);
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let a = Answer::error(&e, head.grpc).with_headers(changes.answer_headers());
            count_answer(&a, &arm.codes, Some(arm));
            let mut a = a;
            a.close |= !body_done;
            return super::h1::server::respond(io, rbuf, head, ctx, a, log, timer).await;
        }
    };
    arm.codes.inc(resp.status().as_u16());
    let (mut parts, mut body) = resp.into_parts();
    if let Some(e) = changes.response_headers {
        e.apply(&mut parts.headers);
    }
    let no_body = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    let chunked = !no_body && !has_length && head.version == H1Version::Http11;
    let close = head.close || ctx.closing() || !body_done || (!no_body && !has_length && !chunked);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &parts.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(if close {
        b"connection: close\r\n\r\n"
    } else if head.version == H1Version::Http10 {
        b"connection: keep-alive\r\n\r\n"
    } else {
        b"\r\n"
    });
    let timeout = arm.transport.response_timeout;
    let mut total = 0u64;
    let relayed: Result<(), &'static str> = async {
        hio::write_bytes(io, &out, timer, idle).await.map_err(|_| "client_closed")?;
        if no_body {
            return Ok(());
        }
        loop {
            let frame = match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => return Err("target_read_timeout"),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err("response_truncated"),
                Ok(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(d) if d.is_empty() => {}
                Ok(d) => {
                    total += d.len() as u64;
                    let mut line = [0u8; 18];
                    let n = if chunked { size_line(d.len(), &mut line) } else { 0 };
                    let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
                    let mut slices = [IoSlice::new(&line[..n]), IoSlice::new(&d), IoSlice::new(tail)];
                    hio::write_all(io, &mut slices, timer, idle).await.map_err(|_| "client_closed")?;
                }
                Err(frame) => {
                    if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                        let mut t = b"0\r\n".to_vec();
                        for (n, v) in trailers.iter().filter(|(n, _)| !is_mtls_header(n.as_str().as_bytes())) {
                            t.extend_from_slice(n.as_str().as_bytes());
                            t.extend_from_slice(b": ");
                            t.extend_from_slice(v.as_bytes());
                            t.extend_from_slice(b"\r\n");
                        }
                        t.extend_from_slice(b"\r\n");
                        hio::write_bytes(io, &t, timer, idle).await.map_err(|_| "client_closed")?;
                        return Ok(());
                    }
                }
            }
        }
        if chunked {
            hio::write_bytes(io, b"0\r\n\r\n", timer, idle).await.map_err(|_| "client_closed")?;
        }
        Ok(())
    }
    .await;
    log.add_bytes_out(total);
    listener.stats.processed_bytes.add(total + sent_body);
    match relayed {
        Ok(()) => {
            log.finish(None);
            if close {
                Next::Close { linger: !body_done }
            } else {
                Next::KeepAlive(None)
            }
        }
        Err(why) => {
            log.finish(Some(why));
            Next::Close { linger: false }
        }
    }
}
