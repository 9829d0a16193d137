//! The engine's server side: one HTTP/1.1 client connection, request after request.
//!
//! The connection waits for its next request without a buffer (see [`super::buf`]); when bytes
//! arrive it takes one, reads the head (bounded by `header_read_timeout` from its first byte:
//! 408), parses it once ([`super::parse`]), routes it, and answers or forwards it. Requests on a
//! connection are answered in order: the next head is read only after the previous response
//! ended (pipelined bytes wait in the buffer). A target that answers before it has the whole
//! body gets the rest while its response is relayed: one poll loop reads the client's body and
//! writes the response to the same client stream ([`relay_body`]). The connection closes after
//! a response when the client asked (`Connection: close`, HTTP/1.0 without keep-alive), when
//! the request was not read to its end at the response head (an early answer, a refused body),
//! or when the process drains or the listener goes away; it then lingers briefly so a client
//! still sending does not turn the close into a reset that would destroy the response it has
//! not read yet.
//!
//! Each request's work is one boxed future, allocated while the request runs: what an idle
//! connection holds is the connection future alone (a few hundred bytes, bounded by a unit
//! test), the socket and its timer.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Method;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::body::{size_line, Decoder, Event};
use super::buf::{self, poll_read_pooled, Buf};
use super::client::{self, Answered, Outbound, SendError, Sending};
use super::encode::{self, OutFraming, RequestAdditions, ResponseEdits, Slices};
use super::io::{self as hio, ClientIo, Timer};
use super::parse::{self, BodyLen, Field, Limits, RequestHead, ResponseHead, Version};
use crate::balance::sticky::CookieMemo;
use crate::config::snapshot::UpstreamProtocol;
use crate::config::snapshot::{Action, ForwardArm, ListenerConfig};
use crate::proxy::answer::Answer;
use crate::proxy::error::ProxyError;
use crate::proxy::service::{count_answer, redirect_location, Changes, ConnCtx, Current, LogFields, RequestLog};
use crate::proxy::upstream::{self, Stream};
use crate::routing::{normalize_host, HeaderLookup, RequestView, WithClientCert};
use crate::telemetry::metrics::ListenerStats;

/// What the connection does after an exchange.
pub enum Next {
    /// Read the next request; the buffer holds bytes of it already read (pipelining).
    KeepAlive(Option<Buf>),
    /// Close; `linger` when the client may still be sending.
    Close { linger: bool },
    /// The client sent the HTTP/2 preface: hand the connection (and the bytes read) to hyper.
    Http2(Buf),
}

/// Serves HTTP/1.1 on `io` until the connection ends. `h2c`: the connection may turn out to be
/// HTTP/2 prior knowledge (plaintext); then it is handed back with the bytes read.
pub async fn serve<S: ClientIo, C: Future<Output = ()> + Send>(
    mut io: S,
    ctx: &ConnCtx,
    h2c: bool,
    closing: Pin<&mut C>,
) -> Option<(S, Buf)> {
    let mut closing = closing;
    let mut carry: Option<Buf> = None;
    let mut first = h2c;
    let idle = ctx.server.idle_timeout;
    let sleep = pin!(tokio::time::sleep(idle));
    let mut timer = Timer::new(sleep);
    let mut current = Current::new(ctx);
    let mut memo = CookieMemo::default();
    loop {
        if carry.as_ref().is_none_or(Buf::is_empty) {
            carry = None;
            if !wait_for_request(&mut io, &mut carry, idle, closing.as_mut(), &mut timer).await {
                break;
            }
        }
        let buf = carry.take().expect("bytes of a request");
        current.refresh(ctx);
        match Box::pin(exchange(&mut io, buf, ctx, &current, first, &mut timer, &mut memo)).await {
            Next::KeepAlive(rest) => carry = rest,
            Next::Close { linger } => {
                hio::close(&mut io, linger).await;
                return None;
            }
            Next::Http2(buf) => return Some((io, buf)),
        }
        first = false;
        if ctx.closing() {
            break;
        }
    }
    hio::close(&mut io, false).await;
    None
}

/// Waits for the first bytes of the next request without holding a buffer. False: the client
/// closed, stayed silent for `idle`, or the connection must close (drain, listener stopped).
async fn wait_for_request<S: ClientIo>(
    io: &mut S,
    slot: &mut Option<Buf>,
    idle: Duration,
    mut closing: Pin<&mut (impl Future<Output = ()> + Send)>,
    timer: &mut Timer<'_>,
) -> bool {
    // The idle time counts from the first time the read had to wait.
    let mut deadline = None;
    poll_fn(|cx| {
        match poll_read_pooled(slot, io, cx) {
            Poll::Ready(Ok(n)) => return Poll::Ready(n > 0),
            Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Pending => {}
        }
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        let d = *deadline.get_or_insert_with(|| Instant::now() + idle);
        if timer.poll_expired(cx, d) {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// A parsed head's fields, as rules look them up.
struct FieldView<'a> {
    data: &'a [u8],
    fields: &'a [Field],
}

impl HeaderLookup for FieldView<'_> {
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool {
        let name = name.as_str().as_bytes();
        self.fields.iter().filter(|fl| fl.name.of(self.data).eq_ignore_ascii_case(name)).any(|fl| {
            let v = fl.value.of(self.data);
            // Visible ASCII only, as `HeaderValue::to_str` accepts.
            v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) && std::str::from_utf8(v).is_ok_and(&mut *f)
        })
    }
}

/// Why reading a head ended without one.
enum NoHead {
    /// The client closed (or failed) before a complete head: nothing to answer.
    Gone,
    Refused(ProxyError),
    Http2,
}

/// Reads until `rbuf` holds a complete request head and parses it.
async fn read_head<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    ctx: &ConnCtx,
    h2c: bool,
    timer: &mut Timer<'_>,
    started: Instant,
) -> Result<(RequestHead, Instant), NoHead> {
    let s = &ctx.server;
    let limits =
        Limits { max_head_bytes: s.max_header_bytes, max_headers: s.max_headers, max_uri_bytes: s.max_uri_bytes };
    let deadline = started + s.header_read_timeout;
    let mut reads = 0;
    loop {
        if h2c && rbuf.filled().starts_with(b"PRI ") {
            return Err(NoHead::Http2);
        }
        match parse::parse_request(rbuf.data(), rbuf.start(), rbuf.end(), &limits) {
            // When it came whole with the first read, the head is complete as of `started`.
            Ok(Some(head)) => return Ok((head, if reads == 0 { started } else { Instant::now() })),
            Err(e) => return Err(NoHead::Refused(ProxyError::from_head(e))),
            Ok(None) => {}
        }
        if rbuf.spare() < 1024 {
            rbuf.compact_to(0);
            rbuf.reserve(4096, limits.max_head_bytes + 1);
        }
        match hio::within(timer, deadline, rbuf.read_from(io)).await {
            Some(Ok(n)) if n > 0 => reads += 1,
            Some(_) => return Err(NoHead::Gone),
            None => return Err(NoHead::Refused(ProxyError::RequestTimeout)),
        }
    }
}

/// One request: read, route, answer or forward, account.
async fn exchange<S: ClientIo>(
    io: &mut S,
    mut rbuf: Buf,
    ctx: &ConnCtx,
    current: &Current,
    h2c: bool,
    timer: &mut Timer<'_>,
    memo: &mut CookieMemo,
) -> Next {
    let started = Instant::now();
    rbuf.compact_to(0);
    let (head, head_at) = match read_head(io, &mut rbuf, ctx, h2c, timer, started).await {
        Ok(h) => h,
        Err(NoHead::Gone) => return Next::Close { linger: false },
        Err(NoHead::Http2) => return Next::Http2(rbuf),
        Err(NoHead::Refused(e)) => return refuse_head(io, &rbuf, ctx, current, e, started, timer).await,
    };
    rbuf.rewind_to(head.end as usize);
    let (snap, listener) = (&*current.snap, &current.listener);
    let data = rbuf.data();
    let authority = head.authority_str(data);
    let host = normalize_host(authority);
    let method = Method::from_bytes(head.method(data)).unwrap_or(Method::GET);
    let path = head.path_str(data);
    let query = head.query_str(data);
    let route = listener.router.route(&RequestView {
        host: &host,
        path,
        query,
        method: &method,
        source_ip: ctx.client.addr.ip().to_canonical(),
        headers: &WithClientCert {
            fields: &FieldView { data, fields: head.fields.all() },
            cert: ctx.client.cert.as_deref(),
        },
    });
    let new_id = head.request_id.is_none().then(|| crate::proxy::forward::new_request_id_at(started.into_std()));
    let mut log = RequestLog::start(ctx, snap, started.into_std(), || LogFields {
        method: std::str::from_utf8(head.method(data)).unwrap_or(""),
        host: authority,
        path_and_query: std::str::from_utf8(head.target.of(data)).unwrap_or(""),
        bytes_in: match head.body {
            BodyLen::Length(n) => n,
            _ => 0,
        },
        user_agent: head.user_agent.and_then(|u| std::str::from_utf8(u.of(data)).ok()),
        request_id: match &new_id {
            Some(id) => std::str::from_utf8(id).ok(),
            None => head.request_id.and_then(|r| std::str::from_utf8(r.of(data)).ok()),
        },
    });
    let rule = route.rule.map(|r| r.name.clone());
    log.with(|r| r.rule = rule);
    let routed = route.action;
    let edits = || routed.response.clone();
    let too_large = listener.max_request_body.is_some_and(|max| matches!(head.body, BodyLen::Length(n) if n > max));
    // The rule's token check comes before its action (boxed: most rules have none).
    let refused = match routed.jwt.as_deref() {
        Some(jwt) if !too_large => {
            let name = jwt.header.as_str().as_bytes();
            let mut copies = head.fields.all().iter().filter(|f| f.name.of(data).eq_ignore_ascii_case(name));
            let value = copies.next().and_then(|f| std::str::from_utf8(f.value.of(data)).ok());
            let verdict = Box::pin(jwt.check(value, copies.next().is_some())).await;
            log.with(|r| r.auth.jwt = Some(verdict.map_or_else(|e| e.as_str(), |()| "valid")));
            verdict.err()
        }
        _ => None,
    };
    let next = match &routed.action {
        _ if refused.is_some() => {
            let reason = refused.unwrap_or(crate::auth::jwt::Reason::Missing);
            let a = Answer::unauthorized(reason, head.grpc).with_headers(edits());
            count_answer(&a, &listener.own_codes, None);
            respond(io, &mut rbuf, &head, ctx, a, log, timer).await
        }
        _ if too_large => {
            let a = Answer::error(&ProxyError::PayloadTooLarge, head.grpc).with_headers(edits());
            count_answer(&a, &listener.own_codes, None);
            respond(io, &mut rbuf, &head, ctx, a, log, timer).await
        }
        Action::Fixed(f) => {
            let a = Answer::fixed(&f.response).with_headers(edits());
            count_answer(&a, &f.codes, None);
            respond(io, &mut rbuf, &head, ctx, a, log, timer).await
        }
        Action::Redirect(rd) => {
            let loc = redirect_location(&rd.to, &ctx.client, &host, path, query);
            let a = Answer::redirect(rd.to.status, &loc).with_headers(edits());
            count_answer(&a, &rd.codes, None);
            respond(io, &mut rbuf, &head, ctx, a, log, timer).await
        }
        Action::Forward(fw) => {
            let id = new_id.as_ref().map(|id| &id[..]);
            match Changes::of(routed, &host, authority, path) {
                Err(e) => {
                    let arm = fw.choose();
                    log.with(|r| r.target_group = Some(arm.group.name.clone()));
                    let a = Answer::error(&e, head.grpc).with_headers(edits());
                    count_answer(&a, &arm.codes, Some(arm));
                    respond(io, &mut rbuf, &head, ctx, a, log, timer).await
                }
                Ok(mut changes) => {
                    let arm = if fw.reads_cookies() {
                        let secure = ctx.client.proto == "https";
                        let cookies = cookie_values(data, head.fields.all());
                        let (arm, group_cookie) = fw.choose_sticky(&cookies, secure);
                        changes.stick(arm, &cookies, group_cookie, secure, Some(memo));
                        arm
                    } else {
                        fw.choose()
                    };
                    log.with(|r| r.target_group = Some(arm.group.name.clone()));
                    match arm.transport.protocol {
                        UpstreamProtocol::Http1 => {
                            forward(io, &mut rbuf, &head, head_at, ctx, listener, arm, id, &changes, log, timer).await
                        }
                        UpstreamProtocol::Http2 => {
                            let to = crate::proxy::h2::forward_from_h1(
                                io, &mut rbuf, &head, ctx, listener, arm, id, &changes, log, timer,
                            );
                            to.await
                        }
                    }
                }
            }
        }
    };
    match next {
        Next::KeepAlive(_) => {
            rbuf.reset_if_empty();
            Next::KeepAlive((!rbuf.is_empty()).then_some(rbuf))
        }
        n => n,
    }
}

/// The values of a request's `Cookie` fields.
fn cookie_values<'d>(data: &'d [u8], fields: &[Field]) -> Vec<&'d [u8]> {
    fields
        .iter()
        .filter(|f| f.kind == parse::Kind::Other && f.name.of(data).eq_ignore_ascii_case(b"cookie"))
        .map(|f| f.value.of(data))
        .collect()
}

/// The `set-cookie` field lines sticky sessions add to a response from `served` (empty when
/// nothing is sticky).
fn set_cookie_lines(
    changes: &Changes<'_>,
    served: &crate::balance::Target,
    data: &[u8],
    resp: &ResponseHead,
) -> Vec<u8> {
    let app_set =
        changes.follows_app_cookie()
            && resp.fields.all().iter().any(|f| {
                f.name.of(data).eq_ignore_ascii_case(b"set-cookie") && changes.sets_app_cookie(f.value.of(data))
            });
    let mut out = Vec::new();
    for c in changes.set_cookies(served, app_set) {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Answers a head that could not be read or was refused, and closes.
async fn refuse_head<S: ClientIo>(
    io: &mut S,
    rbuf: &Buf,
    ctx: &ConnCtx,
    current: &Current,
    e: ProxyError,
    started: Instant,
    timer: &mut Timer<'_>,
) -> Next {
    let (snap, listener) = (&*current.snap, &current.listener);
    let a = Answer::error(&e, false).with_headers(listener.response_edits.clone());
    count_answer(&a, &listener.own_codes, None);
    tracing::debug!(target: "pilotfish::proxy", listener = %ctx.listener, client = %ctx.client.addr, reason = e.reason(), "request refused");
    // The log names what can be read of the request line.
    let (method, target) = request_line_guess(rbuf.filled());
    let mut log = RequestLog::start(ctx, snap, started.into_std(), || LogFields {
        method,
        host: "",
        path_and_query: target,
        bytes_in: 0,
        user_agent: None,
        request_id: None,
    });
    let mut out = Vec::with_capacity(256);
    a.write_h1(&mut out, false, true);
    log.head_sent(&listener.stats, a.logged_status(), None);
    let _ = hio::write_bytes(io, &out, timer, ctx.server.idle_timeout).await;
    log.finish(a.reason);
    Next::Close { linger: true }
}

/// The method and target of a request line that did not parse, as far as they look like ones
/// (printable ASCII only), for the access log.
fn request_line_guess(bytes: &[u8]) -> (&str, &str) {
    fn word(w: Option<&[u8]>) -> &str {
        w.filter(|w| w.len() <= 2048 && w.iter().all(|b| b.is_ascii_graphic()))
            .and_then(|w| std::str::from_utf8(w).ok())
            .unwrap_or("")
    }
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    (word(parts.next()), word(parts.next()))
}

/// Skips the request body when all of it is already buffered; false when it is not (the
/// connection must then close).
fn skip_body(rbuf: &mut Buf, head: &RequestHead) -> bool {
    let mut d = Decoder::new(head.body);
    let mut pos = rbuf.start();
    loop {
        match d.next(&rbuf.data()[pos..rbuf.end()]) {
            Ok((used, Event::End)) => {
                rbuf.rewind_to(pos + used);
                return true;
            }
            Ok((_, Event::More)) | Err(_) => return false,
            Ok((used, _)) => pos += used,
        }
    }
}

/// Writes an answer of the balancer's own; keeps the connection when the request was read to
/// its end and nothing asks to close.
pub(crate) async fn respond<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    head: &RequestHead,
    ctx: &ConnCtx,
    a: Answer,
    mut log: RequestLog,
    timer: &mut Timer<'_>,
) -> Next {
    let read_all = skip_body(rbuf, head);
    let close = a.close || head.close || !read_all || ctx.closing();
    let mut out = Vec::with_capacity(128 + a.body.len());
    a.write_h1(&mut out, head.is_head(rbuf.data()), close);
    log.head_sent(&ctx.accepted_with.stats, a.logged_status(), None);
    let written = hio::write_bytes(io, &out, timer, ctx.server.idle_timeout).await;
    log.add_bytes_out(a.body.len() as u64);
    log.finish(a.reason.or(written.is_err().then_some("client_closed")));
    if close || written.is_err() {
        Next::Close { linger: !read_all }
    } else {
        Next::KeepAlive(None)
    }
}

/// One piece of request body on its way to the target: a chunk-size line, bytes of the read
/// buffer, and what follows them (the chunk's CRLF, or the last chunk).
#[derive(Default)]
struct Piece {
    pre: [u8; 18],
    pre_len: usize,
    data: Range<usize>,
    post: &'static [u8],
    /// Bytes of the piece already written.
    off: usize,
}

impl Piece {
    fn len(&self) -> usize {
        self.pre_len + self.data.len() + self.post.len()
    }

    fn is_done(&self) -> bool {
        self.off >= self.len()
    }

    /// The unwritten rest as up to three slices.
    fn slices<'a>(&'a self, data: &'a [u8]) -> ([IoSlice<'a>; 3], usize) {
        let parts: [&[u8]; 3] = [&self.pre[..self.pre_len], &data[self.data.clone()], self.post];
        let mut out = [IoSlice::new(&[]); 3];
        let (mut n, mut skip) = (0, self.off);
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            out[n] = IoSlice::new(&p[skip..]);
            skip = 0;
            n += 1;
        }
        (out, n)
    }
}

/// An HTTP/1.1 client's request on its way to an HTTP/1.1 target: the head and body in the
/// session's read buffer.
struct H1Out<'a, S> {
    io: &'a mut S,
    rbuf: &'a mut Buf,
    head: &'a RequestHead,
    add: RequestAdditions<'a>,
    /// The decoder as it was after the body bytes sent with the head (for a new attempt).
    initial: Decoder,
    decoder: Decoder,
    /// Body bytes sent with the head (a `Content-Length` body's buffered start).
    prefix: usize,
    /// Bytes of the head (and prefix) written in this attempt.
    written: usize,
    /// The head copied into one buffer, when it needs more slices than a write takes.
    flat: Option<Vec<u8>>,
    piece: Piece,
    /// The last piece (terminator) has been queued.
    ending: bool,
    chunked: bool,
    limit: Option<u64>,
    sent: u64,
    /// Every body byte sent is still in the buffer (the request can be sent again).
    kept: bool,
    waiting_client: bool,
    idempotent: bool,
    /// What the rule changes (response header edits, sticky cookies).
    changes: &'a Changes<'a>,
}

impl<'a, S: ClientIo> H1Out<'a, S> {
    fn new(
        io: &'a mut S,
        rbuf: &'a mut Buf,
        head: &'a RequestHead,
        add: RequestAdditions<'a>,
        limit: Option<u64>,
        changes: &'a Changes<'a>,
    ) -> Self {
        let body_at = head.end as usize;
        let buffered = rbuf.end() - body_at;
        let (prefix, initial) = match head.body {
            BodyLen::Length(n) => {
                let p = buffered.min(usize::try_from(n).unwrap_or(usize::MAX));
                (p, Decoder::new(BodyLen::Length(n - p as u64)))
            }
            b => (0, Decoder::new(b)),
        };
        rbuf.rewind_to(body_at + prefix);
        let idempotent = client::is_idempotent(head.method(rbuf.data()));
        let chunked = head.body == BodyLen::Chunked;
        H1Out {
            io,
            rbuf,
            head,
            add,
            initial,
            decoder: initial,
            prefix,
            written: 0,
            flat: None,
            piece: Piece::default(),
            ending: false,
            chunked,
            limit,
            sent: prefix as u64,
            kept: true,
            waiting_client: false,
            idempotent,
            changes,
        }
    }

    fn body_start(&self) -> usize {
        self.head.end as usize
    }

    /// Queues the next piece of body from the buffer; false when more client bytes are needed.
    fn next_piece(&mut self) -> Result<bool, SendError> {
        let (start, end) = (self.rbuf.start(), self.rbuf.end());
        let (used, ev) = self
            .decoder
            .next(&self.rbuf.data()[start..end])
            .map_err(|why| SendError::Client(ProxyError::BadRequest(why)))?;
        let mut piece = Piece::default();
        match ev {
            Event::Data(r) => {
                self.sent += r.len() as u64;
                if self.limit.is_some_and(|max| self.sent > max) {
                    return Err(SendError::Client(ProxyError::PayloadTooLarge));
                }
                if self.chunked {
                    piece.pre_len = size_line(r.len(), &mut piece.pre);
                    piece.post = b"\r\n";
                }
                piece.data = start + r.start..start + r.end;
            }
            Event::Trailers(r) => {
                piece.pre[..3].copy_from_slice(b"0\r\n");
                piece.pre_len = 3;
                piece.data = start + r.start..start + r.end;
                self.ending = true;
            }
            Event::End => {
                if self.chunked {
                    piece.post = b"0\r\n\r\n";
                }
                self.ending = true;
            }
            Event::More => return Ok(false),
        }
        self.rbuf.rewind_to(start + used);
        self.piece = piece;
        Ok(true)
    }
}

impl<S: ClientIo> Outbound for H1Out<'_, S> {
    fn poll_head(&mut self, cx: &mut Context<'_>, target: &mut Stream) -> Poll<std::io::Result<()>> {
        let data = self.rbuf.data();
        let body = self.body_start()..self.body_start() + self.prefix;
        loop {
            let n = if let Some(flat) = &self.flat {
                if self.written >= flat.len() {
                    break;
                }
                std::task::ready!(Pin::new(&mut *target).poll_write(cx, &flat[self.written..]))?
            } else {
                let mut s = Slices::default();
                encode::request_head(&mut s, data, self.head, &self.add);
                encode::Sink::put(&mut s, &data[body.clone()]);
                if s.overflowed() {
                    // More pieces than one vectored write takes (the body's included): one copy.
                    let mut flat = Vec::with_capacity(s.len() + 1024);
                    encode::request_head(&mut flat, data, self.head, &self.add);
                    flat.extend_from_slice(&data[body.clone()]);
                    self.flat = Some(flat);
                    continue;
                }
                let total = s.len();
                if self.written >= total {
                    break;
                }
                let mut slices = s.as_mut_slice();
                IoSlice::advance_slices(&mut slices, self.written);
                std::task::ready!(Pin::new(&mut *target).poll_write_vectored(cx, slices))?
            };
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
            if !self.piece.is_done() {
                let (slices, n) = self.piece.slices(self.rbuf.data());
                if let Some(w) = client::poll_piece(cx, target, &slices[..n])? {
                    self.piece.off += w;
                    moved = true;
                    continue;
                }
                self.waiting_client = false;
                return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending };
            }
            if self.ending {
                self.waiting_client = false;
                return client::poll_body_end(cx, target, moved);
            }
            if self.next_piece()? {
                continue;
            }
            // More client bytes are needed. Sent bytes are overwritten from here on.
            if self.rbuf.spare() < 1024 {
                self.rbuf.compact_to(self.body_start());
                // A head near the limit may leave little room: the body gets a read's worth.
                self.rbuf.reserve(4096, self.body_start() + buf::BUF_SIZE);
                self.kept = false;
            }
            let io = &mut *self.io;
            match self.rbuf.poll_read_from(io, cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(SendError::Client(ProxyError::BadRequest("request_body_incomplete"))))
                }
                Poll::Ready(Ok(_)) => {
                    moved = true;
                    self.kept = false;
                }
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(SendError::Client(ProxyError::BadRequest("request_body_incomplete"))))
                }
                Poll::Pending => {
                    self.waiting_client = true;
                    return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending };
                }
            }
        }
    }

    fn body_pending(&self) -> bool {
        !(self.decoder.is_done() && self.piece.is_done() && (self.ending || !self.chunked))
    }

    fn waiting_for_client(&self) -> bool {
        self.waiting_client
    }

    fn rewind(&mut self) -> bool {
        if !self.kept {
            return false;
        }
        self.written = 0;
        self.decoder = self.initial;
        self.piece = Piece::default();
        self.ending = false;
        self.sent = self.prefix as u64;
        self.rbuf.rewind_to(self.body_start() + self.prefix);
        true
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    fn has_body(&self) -> bool {
        !self.head.body.is_none()
    }
}

/// Forwards the request to an HTTP/1.1 target of `arm` and relays the response.
#[allow(clippy::too_many_arguments)]
async fn forward<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    head: &RequestHead,
    head_at: Instant,
    ctx: &ConnCtx,
    listener: &ListenerConfig,
    arm: &ForwardArm,
    request_id: Option<&[u8]>,
    changes: &Changes<'_>,
    mut log: RequestLog,
    timer: &mut Timer<'_>,
) -> Next {
    let settings = &*arm.transport;
    let limits = client::Limits {
        max_head_bytes: ctx.server.max_header_bytes,
        max_headers: ctx.server.max_headers,
        response_timeout: settings.response_timeout,
        client_idle: ctx.server.idle_timeout,
    };
    // A request without a Host (HTTP/1.0) names the address the client connected to.
    let local = head.authority.is_none().then(|| io.local_addr()).flatten().map(|a| a.to_string());
    let add = RequestAdditions {
        client: &ctx.client,
        request_id,
        host: local.as_deref().map(str::as_bytes),
        chunked: head.body == BodyLen::Chunked,
        edits: changes.request_headers,
        rewritten_host: changes.host.as_deref().map(str::as_bytes),
        rewritten_path: changes.path.as_deref().map(str::as_bytes),
    };
    let mut attempts =
        client::Attempts { preferred: changes.preferred(), client: Some(&ctx.client), ..Default::default() };
    let mut out = H1Out::new(io, rbuf, head, add, listener.max_request_body, changes);
    let sent = client::send(arm, &mut out, &limits, &mut attempts, timer, head_at).await;
    log.with(|r| r.target = attempts.target);
    let answered = match sent {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(target: "pilotfish::proxy", listener = %ctx.listener, error = %e, "answered by the balancer");
            let a = Answer::error(&e, head.grpc).with_headers(changes.answer_headers());
            count_answer(&a, &arm.codes, Some(arm));
            let kept = out.kept;
            drop(out);
            return respond_after_forward(io, rbuf, head, ctx, a, log, kept, timer).await;
        }
    };
    relay(out, answered, ctx, arm, &limits, &listener.stats, log, timer).await
}

/// Answers after a failed forward: the body may be partly consumed (then the connection closes).
#[allow(clippy::too_many_arguments)]
async fn respond_after_forward<S: ClientIo>(
    io: &mut S,
    rbuf: &mut Buf,
    head: &RequestHead,
    ctx: &ConnCtx,
    a: Answer,
    log: RequestLog,
    kept: bool,
    timer: &mut Timer<'_>,
) -> Next {
    if kept {
        rbuf.rewind_to(head.end as usize);
    }
    let mut a = a;
    a.close |= !kept;
    respond(io, rbuf, head, ctx, a, log, timer).await
}

/// The most interim (1xx) responses relayed before a final one.
const MAX_INTERIM: usize = 16;

/// Relays the target's response (after interim ones) to the client.
#[allow(clippy::too_many_arguments)]
async fn relay<S: ClientIo>(
    mut out: H1Out<'_, S>,
    answered: Answered,
    ctx: &ConnCtx,
    arm: &ForwardArm,
    limits: &client::Limits,
    stats: &ListenerStats,
    mut log: RequestLog,
    timer: &mut Timer<'_>,
) -> Next {
    let Answered { target, guard, mut conn, mut tbuf, head: mut resp, mut sending, sent_at } = answered;
    let head = out.head;
    let idle = ctx.server.idle_timeout;
    // Interim responses: 100 and 103 go to HTTP/1.1 clients; 101 only to an upgrade. A target
    // that keeps sending them never gets to a final answer: it is cut after MAX_INTERIM.
    let mut interim = 0;
    while resp.is_interim() {
        interim += 1;
        if interim > MAX_INTERIM {
            return bad_response(out, ctx, arm, log, target.addr, "too_many_interim_responses", timer).await;
        }
        if resp.status == 101 {
            if head.upgrade && sending == Sending::Done {
                return tunnel(out, conn, tbuf, resp, guard, ctx, log, sent_at, arm, timer).await;
            }
            return bad_response(out, ctx, arm, log, target.addr, "unsolicited_101", timer).await;
        }
        if head.version == Version::Http11 {
            let mut s = Slices::default();
            encode::interim_head(&mut s, tbuf.data(), &resp);
            let wrote = if s.overflowed() {
                let mut flat = Vec::new();
                encode::interim_head(&mut flat, tbuf.data(), &resp);
                hio::write_bytes(out.io, &flat, timer, idle).await
            } else {
                hio::write_all(out.io, s.as_mut_slice(), timer, idle).await
            };
            if wrote.is_err() {
                log.finish(Some("client_closed"));
                return Next::Close { linger: false };
            }
        }
        tbuf.rewind_to(resp.end as usize);
        resp = match parse::parse_response(
            tbuf.data(),
            tbuf.start(),
            tbuf.end(),
            limits.max_head_bytes,
            limits.max_headers,
        ) {
            Ok(Some(h)) => h,
            Err(why) => return bad_response(out, ctx, arm, log, target.addr, why, timer).await,
            Ok(None) => {
                match client::next_head(&mut out, &mut sending, &mut conn.io, &mut tbuf, limits, timer, Instant::now())
                    .await
                {
                    client::Got::Head(h) => h,
                    client::Got::TimedOut { waiting_for_client: false } => {
                        return error_after_interim(out, ctx, arm, log, ProxyError::ResponseTimeout(target.addr), timer)
                            .await
                    }
                    client::Got::TimedOut { waiting_for_client: true } => {
                        return error_after_interim(out, ctx, arm, log, ProxyError::RequestTimeout, timer).await
                    }
                    client::Got::Client(e) => return error_after_interim(out, ctx, arm, log, e, timer).await,
                    client::Got::Bad(why) => return bad_response(out, ctx, arm, log, target.addr, why, timer).await,
                    client::Got::Closed { .. } => {
                        return error_after_interim(out, ctx, arm, log, ProxyError::TargetReset(target.addr), timer)
                            .await
                    }
                }
            }
        };
    }
    let head_at = Instant::now();
    let took = head_at - sent_at;
    arm.target_response.observe(took);
    let data_head_request = head.is_head(out.rbuf.data());
    let body_len = resp.body_len(data_head_request);
    let framing = encode::out_framing(body_len, head.version);
    let request_done = sending == Sending::Done;
    let close = head.close || framing == OutFraming::Close || !request_done || ctx.closing();
    let cookies = if out.changes.sets_cookies() {
        set_cookie_lines(out.changes, &target, tbuf.data(), &resp)
    } else {
        Vec::new()
    };
    let edits = ResponseEdits {
        framing,
        close,
        keep_alive: head.version == Version::Http10 && !close,
        upgrade: false,
        head_chunked: data_head_request && resp.declared == BodyLen::Chunked && head.version == Version::Http11,
        headers: out.changes.response_headers.map(|h| &**h),
        extra: &cookies,
    };
    log.head_sent_at(head_at.into_std(), stats, resp.status, Some(took));
    let ended = relay_body(
        &mut out,
        &mut sending,
        &mut conn.io,
        &mut tbuf,
        &resp,
        &edits,
        Decoder::new(body_len),
        idle,
        limits.response_timeout,
        &mut log,
        timer,
    )
    .await;
    drop(guard);
    if !matches!(ended, Err((_, false))) {
        arm.codes.inc(resp.status);
    }
    match ended {
        Ok((bytes, read_more)) => {
            stats.processed_bytes.add(bytes + out.sent);
            // The body may have been finished while the response was relayed.
            let body_sent = sending == Sending::Done;
            let reusable = body_sent && !resp.close && body_len != BodyLen::Close && tbuf.is_empty();
            if reusable {
                drop(tbuf);
                // Idle since the body's end: the head's time when it came with the head.
                upstream::checkin(conn, if read_more { Instant::now() } else { head_at });
            }
            log.finish(None);
            if close {
                // Unfinished at the head, the client may have sent more than was read: linger.
                Next::Close { linger: !request_done }
            } else {
                Next::KeepAlive(None)
            }
        }
        // Nothing of the response went out yet: the client gets a 502 instead.
        Err((why, false)) => bad_response(out, ctx, arm, log, target.addr, why, timer).await,
        Err((why, true)) => {
            if why != "client_closed" {
                tracing::debug!(target: "pilotfish::proxy", addr = %target.addr, reason = why, "response cut short");
            }
            log.finish(Some(why));
            Next::Close { linger: false }
        }
    }
}

/// The target's response was malformed: 502 to the client, the target connection closed.
async fn bad_response<S: ClientIo>(
    out: H1Out<'_, S>,
    ctx: &ConnCtx,
    arm: &ForwardArm,
    log: RequestLog,
    addr: std::net::SocketAddr,
    why: &'static str,
    timer: &mut Timer<'_>,
) -> Next {
    tracing::debug!(target: "pilotfish::proxy", %addr, reason = why, "malformed response from target");
    error_after_interim(out, ctx, arm, log, ProxyError::BadResponse { addr, reason: why }, timer).await
}

/// The balancer answers after the target failed (possibly after interim responses).
async fn error_after_interim<S: ClientIo>(
    out: H1Out<'_, S>,
    ctx: &ConnCtx,
    arm: &ForwardArm,
    log: RequestLog,
    e: ProxyError,
    timer: &mut Timer<'_>,
) -> Next {
    let a = Answer::error(&e, out.head.grpc).with_headers(out.changes.answer_headers());
    count_answer(&a, &arm.codes, Some(arm));
    let kept = out.kept;
    let H1Out { io, rbuf, head, .. } = out;
    respond_after_forward(io, rbuf, head, ctx, a, log, kept, timer).await
}

const MAX_EVENTS: usize = 8;

/// The body pieces of one relay round: data ranges of the buffer (kind 0) or a trailer section
/// (kind 1), with the chunk-size lines made for them.
struct Round<'a> {
    data: &'a [u8],
    events: &'a [(u8, usize, usize)],
    lines: &'a [[u8; 18]; MAX_EVENTS],
    line_len: &'a [usize; MAX_EVENTS],
    chunked: bool,
    end: bool,
}

impl<'a> Round<'a> {
    fn put(&self, s: &mut impl encode::Sink<'a>) {
        for (i, &(kind, a, b)) in self.events.iter().enumerate() {
            match kind {
                0 if self.chunked => {
                    s.put(&self.lines[i][..self.line_len[i]]);
                    s.put(&self.data[a..b]);
                    s.put(b"\r\n");
                }
                0 => s.put(&self.data[a..b]),
                _ if self.chunked => {
                    s.put(b"0\r\n");
                    s.put(&self.data[a..b]);
                }
                _ => {}
            }
        }
        if self.end && self.chunked && !self.events.iter().any(|e| e.0 == 1) {
            s.put(b"0\r\n\r\n");
        }
    }
}

/// Relays a response's head and body to the client, re-framing as `edits` says; returns the
/// body bytes relayed, or why it was cut and whether the head had gone out (the client
/// connection then closes without a valid end of message, so the client never takes a cut body
/// for a complete one; if nothing went out, the caller answers 502).
///
/// A target may answer before it has read the whole request body and go on reading it (an
/// echo, a streaming service): while the response is relayed, what is left of the body keeps
/// going to the target ([`pump`]). A target that does not read it any more only stops that.
#[allow(clippy::too_many_arguments)]
async fn relay_body<S: ClientIo>(
    out: &mut H1Out<'_, S>,
    sending: &mut Sending,
    target: &mut Stream,
    tbuf: &mut Buf,
    resp: &parse::ResponseHead,
    edits: &ResponseEdits<'_>,
    mut dec: Decoder,
    client_idle: Duration,
    target_idle: Duration,
    log: &mut RequestLog,
    timer: &mut Timer<'_>,
) -> Result<(u64, bool), (&'static str, bool)> {
    let chunked = edits.framing == OutFraming::Chunked;
    let mut first = true;
    let mut first_round = true;
    // Body bytes relayed so far; `logged` of them are in the access log's bytes_out already
    // (counted as each round goes out, so a cut response logs what the client got).
    let (mut total, mut logged) = (0u64, 0u64);
    loop {
        // What is buffered: up to MAX_EVENTS pieces, their chunk-size lines made first.
        let mut events: [(u8, usize, usize); MAX_EVENTS] = [(0, 0, 0); MAX_EVENTS];
        let mut lines = [[0u8; 18]; MAX_EVENTS];
        let mut line_len = [0usize; MAX_EVENTS];
        let (mut n, mut end) = (0, false);
        let mut pos = if first { resp.end as usize } else { tbuf.start() };
        while n < MAX_EVENTS {
            let (used, ev) = dec.next(&tbuf.data()[pos..tbuf.end()]).map_err(|why| (why, !first))?;
            match ev {
                Event::Data(r) => {
                    events[n] = (0, pos + r.start, pos + r.end);
                    if chunked {
                        line_len[n] = size_line(r.len(), &mut lines[n]);
                    }
                    total += r.len() as u64;
                    n += 1;
                }
                Event::Trailers(r) => {
                    events[n] = (1, pos + r.start, pos + r.end);
                    n += 1;
                    end = true;
                }
                Event::End => end = true,
                Event::More => {}
            }
            pos += used;
            if end || used == 0 {
                break;
            }
        }
        let data = tbuf.data();
        let round = Round { data, events: &events[..n], lines: &lines, line_len: &line_len, chunked, end };
        let mut s = Slices::default();
        if first {
            encode::response_head(&mut s, data, resp, edits);
        }
        round.put(&mut s);
        let written = if s.overflowed() {
            let mut flat = Vec::new();
            if first {
                encode::response_head(&mut flat, data, resp, edits);
            }
            round.put(&mut flat);
            write_pumping(out, sending, target, &mut [IoSlice::new(&flat)], timer, client_idle).await
        } else if !s.is_empty() {
            write_pumping(out, sending, target, s.as_mut_slice(), timer, client_idle).await
        } else {
            Ok(())
        };
        written.map_err(|e| (cut_reason(&e, "client_closed"), true))?;
        log.add_bytes_out(total - logged);
        logged = total;
        first = false;
        tbuf.rewind_to(pos);
        if end {
            return Ok((total, !first_round));
        }
        if n == MAX_EVENTS {
            // The round was full: more may be buffered already. Relay it before reading.
            first_round = false;
            continue;
        }
        match read_pumping(out, sending, target, tbuf, timer, target_idle).await {
            Ok(0) => {
                dec.at_eof().map_err(|_| ("response_truncated", true))?;
                // Close-delimited: the end of the stream is the end of the body.
                if chunked {
                    write_pumping(out, sending, target, &mut [IoSlice::new(b"0\r\n\r\n")], timer, client_idle)
                        .await
                        .map_err(|e| (cut_reason(&e, "client_closed"), true))?;
                }
                return Ok((total, true));
            }
            Ok(_) => first_round = false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(("target_read_timeout", true)),
            Err(e) => return Err((cut_reason(&e, "response_truncated"), true)),
        }
    }
}

/// The request body broke off on the client's side while the response was relayed (a bad
/// chunk, more than `max_request_body`, the client gone): the target would wait for the rest
/// for ever, so the exchange ends (the response is cut, the target connection closed).
#[derive(Debug)]
struct BodyBroke;

impl std::fmt::Display for BodyBroke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body broke off")
    }
}

impl std::error::Error for BodyBroke {}

/// The log's reason for a relay cut by `e`: `otherwise`, unless the request body broke.
fn cut_reason(e: &std::io::Error, otherwise: &'static str) -> &'static str {
    if e.get_ref().is_some_and(|r| r.is::<BodyBroke>()) {
        "request_body_incomplete"
    } else {
        otherwise
    }
}

/// What [`pump`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    Idle,
    Moved,
    ClientBroke,
}

/// Sends what the client has of the request body to the target, as far as both go without
/// waiting (the task is woken when either can go on). A target that stops taking the body only
/// ends this (the connection is then not reused); a body that breaks off on the client's side
/// ends the exchange ([`BodyBroke`]).
fn pump<S: ClientIo>(
    cx: &mut Context<'_>,
    out: &mut H1Out<'_, S>,
    sending: &mut Sending,
    target: &mut Stream,
) -> Pumped {
    let mut moved = Pumped::Idle;
    while *sending == Sending::Body {
        match out.poll_body(cx, target) {
            Poll::Ready(Ok(true)) => (*sending, moved) = (Sending::Done, Pumped::Moved),
            Poll::Ready(Ok(false)) => return Pumped::Moved,
            Poll::Pending => break,
            Poll::Ready(Err(SendError::Target(_))) => *sending = Sending::Aborted,
            Poll::Ready(Err(SendError::Client(_))) => {
                *sending = Sending::Aborted;
                return Pumped::ClientBroke;
            }
        }
    }
    moved
}

/// [`hio::write_all`] to the client, pumping the request body meanwhile.
async fn write_pumping<S: ClientIo>(
    out: &mut H1Out<'_, S>,
    sending: &mut Sending,
    target: &mut Stream,
    mut slices: &mut [IoSlice<'_>],
    timer: &mut Timer<'_>,
    idle: Duration,
) -> std::io::Result<()> {
    if *sending != Sending::Body {
        return hio::write_all(out.io, slices, timer, idle).await;
    }
    let mut deadline = None;
    poll_fn(|cx| {
        if pump(cx, out, sending, target) == Pumped::ClientBroke {
            return Poll::Ready(Err(std::io::Error::other(BodyBroke)));
        }
        hio::poll_write_all(cx, &mut *out.io, &mut slices, &mut deadline, timer, idle)
    })
    .await
}

/// [`client::read_more`] from the target, pumping the request body meanwhile.
async fn read_pumping<S: ClientIo>(
    out: &mut H1Out<'_, S>,
    sending: &mut Sending,
    target: &mut Stream,
    tbuf: &mut Buf,
    timer: &mut Timer<'_>,
    idle: Duration,
) -> std::io::Result<usize> {
    if *sending != Sending::Body {
        return client::read_more(target, tbuf, timer, idle).await;
    }
    client::make_room(tbuf);
    let mut deadline = None;
    poll_fn(|cx| {
        match pump(cx, out, sending, target) {
            Pumped::ClientBroke => return Poll::Ready(Err(std::io::Error::other(BodyBroke))),
            // The target is reading what it is sent: it has not gone silent.
            Pumped::Moved => deadline = None,
            Pumped::Idle => {}
        }
        client::poll_read_more(cx, target, tbuf, &mut deadline, timer, idle)
    })
    .await
}

/// How one direction of a tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Open,
    /// The source ended: pass the end on (shut the destination's write side down).
    Ending,
    Done,
}

/// Moves bytes from `src` to `dst` through `buf` until it would wait; `Ready` when this
/// direction is finished. `moved` counts the bytes written.
fn poll_dir<R: tokio::io::AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    buf: &mut Buf,
    st: &mut Dir,
    moved: &mut u64,
) -> Poll<std::io::Result<()>> {
    loop {
        match st {
            Dir::Open if !buf.is_empty() => {
                let n = std::task::ready!(Pin::new(&mut *dst).poll_write(cx, buf.filled()))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                buf.consume(n);
                *moved += n as u64;
            }
            Dir::Open => {
                std::task::ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                buf.reset_if_empty();
                if std::task::ready!(buf.poll_read_from(src, cx))? == 0 {
                    *st = Dir::Ending;
                }
            }
            Dir::Ending => {
                std::task::ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                *st = Dir::Done;
            }
            Dir::Done => return Poll::Ready(Ok(())),
        }
    }
}

/// After a 101 to an upgrade request: the two connections become a byte tunnel, both ways,
/// each direction's end passed on (half-close), until both ended, either fails, or nothing
/// moved for `idle_timeout`. Counted in flight on its target while open.
#[allow(clippy::too_many_arguments)]
async fn tunnel<S: ClientIo>(
    out: H1Out<'_, S>,
    mut conn: upstream::Conn,
    mut tbuf: Buf,
    resp: parse::ResponseHead,
    guard: crate::balance::InFlightGuard,
    ctx: &ConnCtx,
    mut log: RequestLog,
    sent_at: Instant,
    arm: &ForwardArm,
    timer: &mut Timer<'_>,
) -> Next {
    let idle = ctx.server.idle_timeout;
    let head_at = Instant::now();
    let took = head_at - sent_at;
    arm.target_response.observe(took);
    arm.codes.inc(101);
    log.head_sent_at(head_at.into_std(), &ctx.accepted_with.stats, 101, Some(took));
    let H1Out { io, rbuf, changes, .. } = out;
    // The 101 and whatever the target sent after it (already the new protocol).
    let edits = ResponseEdits {
        framing: OutFraming::AsIs,
        close: false,
        keep_alive: false,
        upgrade: true,
        head_chunked: false,
        headers: changes.response_headers.map(|h| &**h),
        extra: &[],
    };
    let mut s = Slices::default();
    let after = &tbuf.data()[resp.end as usize..tbuf.end()];
    encode::response_head(&mut s, tbuf.data(), &resp, &edits);
    encode::Sink::put(&mut s, after);
    let wrote = if s.overflowed() {
        let mut flat = Vec::new();
        encode::response_head(&mut flat, tbuf.data(), &resp, &edits);
        flat.extend_from_slice(after);
        hio::write_bytes(io, &flat, timer, idle).await
    } else {
        hio::write_all(io, s.as_mut_slice(), timer, idle).await
    };
    if wrote.is_err() {
        log.finish(Some("client_closed"));
        return Next::Close { linger: false };
    }
    tbuf.rewind_to(tbuf.end());
    tbuf.reset_if_empty();
    // rbuf holds what the client sent after the upgrade request: it goes first.
    let (mut up, mut down) = (0u64, 0u64);
    let (mut c2t, mut t2c) = (Dir::Open, Dir::Open);
    let mut last = Instant::now();
    let target = &mut conn.io;
    let ended = poll_fn(|cx| {
        let (u, d) = (up, down);
        let a = poll_dir(cx, io, target, rbuf, &mut c2t, &mut up);
        let b = poll_dir(cx, target, io, &mut tbuf, &mut t2c, &mut down);
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(Some("tunnel_reset")),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(None),
            _ => {}
        }
        if (up, down) != (u, d) {
            last = Instant::now();
        }
        if timer.poll_expired(cx, last + idle) {
            return Poll::Ready(Some("tunnel_idle_timeout"));
        }
        Poll::Pending
    })
    .await;
    drop(guard);
    log.add_bytes_out(down);
    log.with(|r| r.bytes_in = up);
    log.finish(ended);
    Next::Close { linger: false }
}
