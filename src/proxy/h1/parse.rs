//! One strict parse per head: `httparse` finds the request or status line and the field lines,
//! and a single pass over the fields gathers every fact the proxy needs (host, framing,
//! connection options, upgrade, request id, ...) and applies RFC 9112's checks. The result keeps
//! only offsets into the read buffer ([`Span`]s): no field is copied and nothing is allocated per
//! field (the field list is a pooled `Vec`).
//!
//! Requests are refused with the status the client gets (`400`, `405`, `414`, `431`); responses
//! from targets with a reason for the log (the client gets `502`). Both refuse what lets two
//! parsers disagree on where a message ends: `Content-Length` with `Transfer-Encoding`, a repeated
//! or non-numeric `Content-Length`, a transfer coding other than a single `chunked`, obs-fold, a
//! bare CR, NUL or other controls in a field, a space before a colon (httparse refuses the last
//! ones itself, and obs-fold in requests always; in responses by its default configuration).
//! A bare LF as line end is accepted (RFC 9112 section 2.2 allows it) and never forwarded: heads
//! that use one are re-written line by line (see [`super::encode`]).

use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Fields parsed on the stack before falling back to a heap array (for `max_headers` above it).
const STACK_FIELDS: usize = 128;

/// A byte range in a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
    }

    /// The bytes this span covers in `data`.
    #[inline]
    pub fn of(self, data: &[u8]) -> &[u8] {
        &data[self.start as usize..self.end as usize]
    }

    /// Its length in bytes.
    #[inline]
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether it covers nothing.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// The same span as a `Range`.
    #[inline]
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The fields pilotfish looks at, told apart once per field by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    ProxyAuthenticate,
    ProxyAuthorization,
    Te,
    Trailer,
    Upgrade,
    XForwardedFor,
    XForwardedProto,
    XForwardedPort,
    XRequestId,
    Expect,
    ContentType,
    UserAgent,
    /// `X-Amzn-Mtls-*`: set by pilotfish from the TLS handshake, never taken from a client.
    XAmznMtls,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |n: &str| eq_lower(name, n.as_bytes());
        // By length and first letter first: most names are none of these and cost no string
        // comparison (httparse guarantees at least one byte).
        match (name.len(), name[0] | 0x20) {
            (2, b't') if is("te") => Kind::Te,
            (4, b'h') if is("host") => Kind::Host,
            (6, b'e') if is("expect") => Kind::Expect,
            (7, b't') if is("trailer") => Kind::Trailer,
            (7, b'u') if is("upgrade") => Kind::Upgrade,
            (10, b'c') if is("connection") => Kind::Connection,
            (10, b'k') if is("keep-alive") => Kind::KeepAlive,
            (10, b'u') if is("user-agent") => Kind::UserAgent,
            (12, b'c') if is("content-type") => Kind::ContentType,
            (12, b'x') if is("x-request-id") => Kind::XRequestId,
            (14, b'c') if is("content-length") => Kind::ContentLength,
            (15, b'x') if is("x-forwarded-for") => Kind::XForwardedFor,
            (16, b'p') if is("proxy-connection") => Kind::ProxyConnection,
            (16, b'x') if is("x-forwarded-port") => Kind::XForwardedPort,
            (17, b't') if is("transfer-encoding") => Kind::TransferEncoding,
            (17, b'x') if is("x-forwarded-proto") => Kind::XForwardedProto,
            (18, b'p') if is("proxy-authenticate") => Kind::ProxyAuthenticate,
            (19, b'p') if is("proxy-authorization") => Kind::ProxyAuthorization,
            (13.., b'x') if crate::tls::mtls::is_mtls_header(name) => Kind::XAmznMtls,
            _ => Kind::Other,
        }
    }
}

/// One field line.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: Span,
    /// The value without surrounding whitespace.
    pub value: Span,
    /// Where the line starts (its name) and ends (after its line break).
    pub line: Span,
    pub kind: Kind,
    /// Not forwarded: hop-by-hop, named by `Connection`, or replaced by pilotfish.
    pub drop: bool,
}

thread_local! {
    static FIELD_LISTS: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// A field list from this worker's pool (returned by [`give_fields`]).
fn take_fields() -> Vec<Field> {
    FIELD_LISTS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(32))
}

fn give_fields(mut v: Vec<Field>) {
    if (1..=256).contains(&v.capacity()) {
        v.clear();
        FIELD_LISTS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 256 {
                p.push(v);
            }
        });
    }
}

/// The parsed fields of a head, in order; the list goes back to the pool on drop.
#[derive(Debug, Default)]
pub struct Fields(Vec<Field>);

impl Fields {
    /// The fields, in order.
    #[inline]
    pub fn all(&self) -> &[Field] {
        &self.0
    }

    /// The first field of `kind`.
    pub fn first(&self, kind: Kind) -> Option<&Field> {
        self.0.iter().find(|f| f.kind == kind)
    }

    /// Fields of `kind`.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Field> {
        self.0.iter().filter(move |f| f.kind == kind)
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        give_fields(std::mem::take(&mut self.0));
    }
}

/// HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

impl BodyLen {
    /// Whether there are body bytes to read.
    pub fn is_none(self) -> bool {
        self == BodyLen::None
    }
}

/// The form of a request target (RFC 9112 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`: forwarded in origin form.
    Absolute,
    /// `*` (OPTIONS only).
    Asterisk,
}

/// A refused request head: the status the client gets and a reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> HeadError {
    HeadError { status: 400, reason }
}

/// The limits a request head must keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole head (request line, fields, final line break).
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// The request target.
    pub max_uri_bytes: usize,
}

/// Facts of the `Connection` field lines (all of them).
#[derive(Debug, Default, Clone, Copy)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Some option names another field (that field is hop-by-hop).
    names_fields: bool,
}

/// A parsed request head; offsets index the read buffer it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    pub fields: Fields,
    /// The request line's first byte and the first byte after the head.
    pub start: u32,
    pub end: u32,
    /// Where the request line ends (after its line break).
    pub line_end: u32,
    pub method: Span,
    pub target: Span,
    pub form: Form,
    /// Path (for an absolute-form target with no path: empty, meaning `/`).
    pub path: Span,
    pub query: Option<Span>,
    pub version: Version,
    /// The authority the request is for: the absolute-form target's, else the Host field's.
    pub authority: Option<Span>,
    pub body: BodyLen,
    /// The client asked to close after this exchange (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    pub close: bool,
    /// A protocol upgrade was asked for (`Upgrade` with `Connection: upgrade`, HTTP/1.1, no body).
    pub upgrade: bool,
    pub expect_continue: bool,
    pub request_id: Option<Span>,
    pub user_agent: Option<Span>,
    /// `content-type: application/grpc*`: answers carry `grpc-status`.
    pub grpc: bool,
    /// Some line ended with a bare LF: the head is re-written line by line when forwarded.
    pub bare_lf: bool,
}

impl RequestHead {
    /// The method as bytes.
    #[inline]
    pub fn method<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        self.method.of(data)
    }

    /// Whether the method is `HEAD` (its response has no body).
    pub fn is_head(&self, data: &[u8]) -> bool {
        self.method(data) == b"HEAD"
    }

    /// The path as a string ("/" for an absolute-form target without one).
    pub fn path_str<'a>(&self, data: &'a [u8]) -> &'a str {
        if self.path.is_empty() {
            return "/";
        }
        // httparse checked the target is UTF-8, and [`parse_target`] that it is ASCII.
        std::str::from_utf8(self.path.of(data)).unwrap_or("/")
    }

    /// The query, if any, as a string.
    pub fn query_str<'a>(&self, data: &'a [u8]) -> Option<&'a str> {
        self.query.and_then(|q| std::str::from_utf8(q.of(data)).ok())
    }

    /// The authority (host with port) as a string; "" when the request has none.
    pub fn authority_str<'a>(&self, data: &'a [u8]) -> &'a str {
        self.authority.and_then(|a| std::str::from_utf8(a.of(data)).ok()).unwrap_or("")
    }
}

/// A parsed response head from a target.
#[derive(Debug)]
pub struct ResponseHead {
    pub fields: Fields,
    pub start: u32,
    pub end: u32,
    pub version: Version,
    pub status: u16,
    /// The status code and reason phrase, without the line break: the rest of the status
    /// line after `HTTP/1.x `.
    pub status_line: Span,
    /// Framing as the response's headers declare it (see [`ResponseHead::body_len`]).
    pub declared: BodyLen,
    /// `Connection: close`, or HTTP/1.0 without `keep-alive`.
    pub close: bool,
    pub bare_lf: bool,
}

impl ResponseHead {
    /// How the body is delimited for a response to a request with `head_request` (RFC 9112
    /// section 6.3): no body for HEAD, 1xx, 204 and 304 whatever the fields say.
    pub fn body_len(&self, head_request: bool) -> BodyLen {
        if head_request || self.status < 200 || self.status == 204 || self.status == 304 {
            BodyLen::None
        } else {
            self.declared
        }
    }

    /// Whether this is an interim (1xx) response.
    pub fn is_interim(&self) -> bool {
        self.status < 200
    }
}

/// Case-insensitive equality with a lowercase literal of letters, digits and `-`, for bytes
/// httparse accepted in a field name or value: OR-ing 0x20 folds ASCII case, and the only other
/// bytes it maps onto the literal's are control characters (CR onto `-`, DLE onto `0`, ...),
/// which httparse never lets through. No early exit, so it compiles to a few wide operations
/// (`eq_ignore_ascii_case` goes byte by byte: a fifth of the parse's cost on small heads).
#[inline]
fn eq_lower(a: &[u8], lit: &[u8]) -> bool {
    a.len() == lit.len() && a.iter().zip(lit).fold(0, |d, (&x, &y)| d | ((x | 0x20) ^ y)) == 0
}

fn offset(data: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - data.as_ptr() as usize
}

/// Where the line that ends just before `next` (the start of the following line) has its
/// content end, and whether it ended with a bare LF.
fn line_content_end(data: &[u8], next: usize) -> (usize, bool) {
    if next >= 2 && data[next - 2] == b'\r' {
        (next - 2, false)
    } else {
        (next - 1, true)
    }
}

/// Gathers the fields httparse found (as offsets), marking each line's extent.
fn collect_fields(data: &[u8], headers: &[httparse::Header<'_>], head_end: usize, out: &mut Vec<Field>) -> bool {
    let mut bare_lf = false;
    // The final empty line: "\r\n" or "\n".
    let (last_end, lf) = line_content_end(data, head_end);
    bare_lf |= lf;
    let count = headers.len();
    for (i, h) in headers.iter().enumerate() {
        let name_start = offset(data, h.name.as_bytes());
        let name = Span::new(name_start, name_start + h.name.len());
        let value_start = offset(data, h.value);
        let value = Span::new(value_start, value_start + h.value.len());
        let line_end = if i + 1 < count { offset(data, headers[i + 1].name.as_bytes()) } else { last_end };
        bare_lf |= line_content_end(data, line_end).1;
        out.push(Field {
            name,
            value,
            line: Span::new(name_start, line_end),
            kind: Kind::of(h.name.as_bytes()),
            drop: false,
        });
    }
    bare_lf
}

/// Runs httparse with a stack array of fields, or a heap one when `max_headers` needs it.
fn with_headers<'b, R>(max_headers: usize, mut f: impl FnMut(&mut [MaybeUninit<httparse::Header<'b>>]) -> R) -> R {
    if max_headers <= STACK_FIELDS {
        let mut headers = [const { MaybeUninit::uninit() }; STACK_FIELDS];
        f(&mut headers[..max_headers])
    } else {
        let mut headers: Vec<MaybeUninit<httparse::Header<'b>>> = Vec::with_capacity(max_headers);
        headers.resize_with(max_headers, MaybeUninit::uninit);
        f(&mut headers)
    }
}

/// Parses the request head at `data[start..end]`. `Ok(None)`: incomplete (read more).
pub fn parse_request(data: &[u8], start: usize, end: usize, limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let bytes = &data[start..end];
    let mut fields = Fields(take_fields());
    let parsed = with_headers(limits.max_headers, |headers| {
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(bytes, headers) {
            Ok(httparse::Status::Complete(len)) => {
                let head_end = start + len;
                let bare_lf = collect_fields(data, req.headers, head_end, &mut fields.0);
                let method = req.method.unwrap_or("");
                let target = req.path.unwrap_or("");
                let (m, t) = (offset(data, method.as_bytes()), offset(data, target.as_bytes()));
                let line = (Span::new(m, m + method.len()), Span::new(t, t + target.len()), req.version.unwrap_or(1));
                Ok(Some((head_end, bare_lf, line)))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(HeadError { status: 431, reason: "too_many_headers" }),
            Err(_) => Err(bad("malformed_request")),
        }
    });
    let Some((head_end, mut bare_lf, (method, target, minor))) = parsed? else {
        return partial_request(bytes, limits).map(|()| None);
    };
    if head_end - start > limits.max_head_bytes {
        return Err(HeadError { status: 431, reason: "header_too_large" });
    }
    // The request line ends where the first field (or the final empty line) starts.
    let line_end = fields.all().first().map_or(line_content_end(data, head_end).0, |f| f.line.start as usize);
    bare_lf |= line_content_end(data, line_end).1;
    if target.len() > limits.max_uri_bytes {
        return Err(HeadError { status: 414, reason: "uri_too_long" });
    }
    let version = if minor == 0 { Version::Http10 } else { Version::Http11 };
    let t = parse_target(data, method, target)?;
    let mut head = RequestHead {
        fields,
        start: method.start,
        end: head_end as u32,
        line_end: line_end as u32,
        method,
        target,
        form: t.form,
        path: t.path,
        query: t.query,
        version,
        authority: t.authority,
        body: BodyLen::None,
        close: false,
        upgrade: false,
        expect_continue: false,
        request_id: None,
        user_agent: None,
        grpc: false,
        bare_lf,
    };
    check_request_fields(data, &mut head)?;
    Ok(Some(head))
}

/// An incomplete head is refused early when it can no longer fit its limits.
fn partial_request(bytes: &[u8], limits: &Limits) -> Result<(), HeadError> {
    if bytes.len() >= limits.max_head_bytes {
        return Err(HeadError { status: 431, reason: "header_too_large" });
    }
    // The request line alone is longer than any allowed target can make it.
    let line_room = limits.max_uri_bytes + 64;
    if bytes.len() > line_room && !bytes[..line_room].contains(&b'\n') {
        return Err(HeadError { status: 414, reason: "uri_too_long" });
    }
    Ok(())
}

struct Target {
    form: Form,
    path: Span,
    query: Option<Span>,
    authority: Option<Span>,
}

/// Checks the request target and splits it (RFC 9112 section 3.2).
fn parse_target(data: &[u8], method: Span, target: Span) -> Result<Target, HeadError> {
    let t = target.of(data);
    if t.iter().any(|&b| b >= 0x80 || b == b'#') {
        return Err(bad("invalid_request_target"));
    }
    let split = |from: usize| {
        let rest = &data[from..target.end as usize];
        match rest.iter().position(|&b| b == b'?') {
            Some(q) => (Span::new(from, from + q), Some(Span::new(from + q + 1, target.end as usize))),
            None => (Span::new(from, target.end as usize), None),
        }
    };
    let m = method.of(data);
    if m == b"CONNECT" {
        return Err(HeadError { status: 405, reason: "connect_not_supported" });
    }
    if t.first() == Some(&b'/') {
        let (path, query) = split(target.start as usize);
        return Ok(Target { form: Form::Origin, path, query, authority: None });
    }
    if t == b"*" {
        if m != b"OPTIONS" {
            return Err(bad("asterisk_form_not_options"));
        }
        return Ok(Target { form: Form::Asterisk, path: target, query: None, authority: None });
    }
    let scheme_len = if t.len() >= 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if t.len() >= 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(bad("invalid_request_target"));
    };
    let auth_start = target.start as usize + scheme_len;
    let auth_len = t[scheme_len..].iter().position(|&b| b == b'/' || b == b'?').unwrap_or(t.len() - scheme_len);
    let authority = Span::new(auth_start, auth_start + auth_len);
    if !std::str::from_utf8(authority.of(data)).is_ok_and(valid_host) {
        return Err(bad("invalid_host"));
    }
    let (path, query) = split(authority.end as usize);
    Ok(Target { form: Form::Absolute, path, query, authority: Some(authority) })
}

/// Splits a comma-separated field value into trimmed, non-empty elements.
fn elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|e| !e.is_empty())
}

/// A `Content-Length` value: digits only, fitting in a u64.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// What the framing fields of a message said.
#[derive(Default)]
struct Framing {
    content_lengths: u32,
    length: Option<u64>,
    transfer_encoding: bool,
    /// Every coding listed, over all `Transfer-Encoding` lines, was one `chunked`.
    chunked_only: bool,
    codings: u32,
}

impl Framing {
    fn add_length(&mut self, v: &[u8]) -> Result<(), &'static str> {
        self.content_lengths += 1;
        if self.content_lengths > 1 {
            return Err("duplicate_content_length");
        }
        self.length = Some(content_length(v).ok_or("invalid_content_length")?);
        Ok(())
    }

    fn add_coding(&mut self, v: &[u8]) {
        self.transfer_encoding = true;
        for c in elements(v) {
            self.codings += 1;
            self.chunked_only = self.codings == 1 && c.eq_ignore_ascii_case(b"chunked");
        }
        if self.codings != 1 {
            self.chunked_only = false;
        }
    }

    /// The body length these fields declare (without a message-specific rule).
    fn declared(&self) -> Result<BodyLen, &'static str> {
        if self.transfer_encoding {
            if self.content_lengths > 0 {
                return Err("content_length_and_transfer_encoding");
            }
            if !self.chunked_only {
                return Err("transfer_encoding_not_chunked");
            }
            return Ok(BodyLen::Chunked);
        }
        Ok(self.length.map_or(BodyLen::None, BodyLen::Length))
    }
}

/// Reads the `Connection` options of one line.
fn connection_options(v: &[u8], o: &mut ConnectionOptions) {
    for opt in elements(v) {
        if eq_lower(opt, b"close") {
            o.close = true;
        } else if eq_lower(opt, b"keep-alive") {
            o.keep_alive = true;
        } else if eq_lower(opt, b"upgrade") {
            o.upgrade = true;
        } else {
            o.names_fields = true;
        }
    }
}

/// Marks the fields that every `Connection` line names as dropped (never `Host`, nor the
/// framing fields pilotfish decides itself).
fn drop_connection_named(data: &[u8], fields: &mut [Field]) {
    let mut named: Vec<Span> = Vec::new();
    for f in fields.iter().filter(|f| f.kind == Kind::Connection) {
        let v = f.value.of(data);
        let mut at = f.value.start as usize;
        for part in v.split(|&b| b == b',') {
            let trimmed = part.trim_ascii();
            if !trimmed.is_empty() {
                let s = at + offset(part, trimmed);
                named.push(Span::new(s, s + trimmed.len()));
            }
            at += part.len() + 1;
        }
    }
    for f in fields.iter_mut() {
        // Upgrade is decided already: kept exactly when the upgrade goes ahead.
        if matches!(f.kind, Kind::Host | Kind::ContentLength | Kind::TransferEncoding | Kind::Upgrade) {
            continue;
        }
        let name = f.name.of(data);
        if named.iter().any(|n| n.of(data).eq_ignore_ascii_case(name)) {
            f.drop = true;
        }
    }
}

fn check_request_fields(data: &[u8], head: &mut RequestHead) -> Result<(), HeadError> {
    let mut framing = Framing::default();
    let mut conn = ConnectionOptions::default();
    let mut host: Option<Span> = None;
    let mut hosts = 0;
    let mut upgrade_field = false;
    for f in head.fields.0.iter_mut() {
        let v = f.value.of(data);
        match f.kind {
            Kind::Host => {
                hosts += 1;
                host = Some(f.value);
            }
            Kind::ContentLength => framing.add_length(v).map_err(bad)?,
            Kind::TransferEncoding => {
                framing.add_coding(v);
                f.drop = true; // re-framed: pilotfish writes its own
            }
            Kind::Connection => {
                connection_options(v, &mut conn);
                f.drop = true;
            }
            Kind::Upgrade => {
                upgrade_field = true;
                f.drop = true; // kept only when the upgrade goes ahead (below)
            }
            Kind::Te => f.drop = !v.eq_ignore_ascii_case(b"trailers"),
            Kind::KeepAlive
            | Kind::ProxyConnection
            | Kind::ProxyAuthenticate
            | Kind::ProxyAuthorization
            | Kind::Trailer
            | Kind::XForwardedFor
            | Kind::XForwardedProto
            | Kind::XForwardedPort
            | Kind::XAmznMtls => f.drop = true,
            Kind::Expect => head.expect_continue |= v.eq_ignore_ascii_case(b"100-continue"),
            Kind::XRequestId => head.request_id = head.request_id.or(Some(f.value)),
            Kind::UserAgent => head.user_agent = head.user_agent.or(Some(f.value)),
            Kind::ContentType => head.grpc |= v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc"),
            Kind::Other => {}
        }
    }
    if hosts > 1 {
        return Err(bad("duplicate_host"));
    }
    if let Some(h) = host {
        if !std::str::from_utf8(h.of(data)).is_ok_and(valid_host) {
            return Err(bad("invalid_host"));
        }
    }
    match (head.authority, host) {
        (Some(a), Some(h)) if !a.of(data).eq_ignore_ascii_case(h.of(data)) => return Err(bad("host_mismatch")),
        (Some(_), _) => {}
        (None, Some(h)) => head.authority = Some(h),
        (None, None) if head.version == Version::Http11 => return Err(bad("missing_host")),
        (None, None) => {}
    }
    if framing.transfer_encoding && head.version == Version::Http10 {
        return Err(bad("transfer_encoding_http10"));
    }
    head.body = match framing.declared().map_err(bad)? {
        BodyLen::Length(0) => BodyLen::None,
        b => b,
    };
    head.close = conn.close || (head.version == Version::Http10 && !conn.keep_alive);
    head.upgrade = upgrade_field && conn.upgrade && head.version == Version::Http11 && head.body.is_none();
    if head.upgrade {
        for f in head.fields.0.iter_mut().filter(|f| f.kind == Kind::Upgrade) {
            f.drop = false;
        }
    }
    if conn.names_fields {
        drop_connection_named(data, &mut head.fields.0);
    }
    Ok(())
}

/// Parses a target's response head at `data[start..end]`. `Ok(None)`: incomplete. The error is
/// a reason for the log; the client gets 502.
pub fn parse_response(
    data: &[u8],
    start: usize,
    end: usize,
    max_head_bytes: usize,
    max_headers: usize,
) -> Result<Option<ResponseHead>, &'static str> {
    let bytes = &data[start..end];
    let mut fields = Fields(take_fields());
    let parsed = with_headers(max_headers, |headers| {
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, bytes, headers) {
            Ok(httparse::Status::Complete(len)) => {
                let head_end = start + len;
                let bare_lf = collect_fields(data, resp.headers, head_end, &mut fields.0);
                Ok(Some((head_end, bare_lf, resp.version.unwrap_or(1), resp.code.unwrap_or(0))))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err("response_too_many_headers"),
            Err(_) => Err("malformed_response"),
        }
    });
    let Some((head_end, mut bare_lf, minor, status)) = parsed? else {
        if bytes.len() >= max_head_bytes {
            return Err("response_head_too_large");
        }
        return Ok(None);
    };
    if head_end - start > max_head_bytes {
        return Err("response_head_too_large");
    }
    if !(100..=599).contains(&status) {
        return Err("invalid_status");
    }
    // httparse skips empty lines before the status line; the line starts with "HTTP/1.x ".
    let line_start = start + bytes.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
    // The status line ends where the first field (or the final empty line) starts.
    let next_line = fields.all().first().map_or(line_content_end(data, head_end).0, |f| f.line.start as usize);
    let (status_end, lf) = line_content_end(data, next_line);
    bare_lf |= lf;
    let mut framing = Framing::default();
    let mut conn = ConnectionOptions::default();
    let mut head = ResponseHead {
        fields,
        start: start as u32,
        end: head_end as u32,
        version: if minor == 0 { Version::Http10 } else { Version::Http11 },
        status,
        status_line: Span::new(line_start + 9, status_end.max(line_start + 12)),
        declared: BodyLen::None,
        close: false,
        bare_lf,
    };
    for f in head.fields.0.iter_mut() {
        let v = f.value.of(data);
        match f.kind {
            Kind::ContentLength => framing.add_length(v)?,
            Kind::TransferEncoding => {
                framing.add_coding(v);
                f.drop = true;
            }
            Kind::Connection => {
                connection_options(v, &mut conn);
                f.drop = true;
            }
            Kind::KeepAlive | Kind::ProxyConnection | Kind::Trailer | Kind::Upgrade | Kind::Te => f.drop = true,
            _ => {}
        }
    }
    head.declared = match framing.declared()? {
        BodyLen::None if !framing.transfer_encoding && framing.length.is_none() => BodyLen::Close,
        b => b,
    };
    head.close = conn.close || (head.version == Version::Http10 && !conn.keep_alive);
    if status == 101 {
        for f in head.fields.0.iter_mut().filter(|f| f.kind == Kind::Upgrade) {
            f.drop = false;
        }
    }
    if conn.names_fields {
        drop_connection_named(data, &mut head.fields.0);
    }
    Ok(Some(head))
}

/// Bytes of a reg-name: unreserved, percent-encoded (`%`) or sub-delims.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// RFC 9110 section 7.2: `Host = uri-host [ ":" port ]`, where uri-host is a reg-name (unreserved,
/// percent-encoded or sub-delims characters), an IPv4 address or a bracketed IP literal. Checked
/// by hand: parsing into `http::uri::Authority` copies the value and also accepts userinfo
/// (`user@host`), which a Host field must not carry. An empty value is refused: every request
/// pilotfish forwards names its host.
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
    let reg_name_ok = b.first() == Some(&b'[') || (!host.is_empty() && host.iter().all(|&c| REG_NAME[usize::from(c)]));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    reg_name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head_bytes: 8192, max_headers: 100, max_uri_bytes: 1024 };

    fn req(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(bytes, 0, bytes.len(), &LIMITS)
    }

    fn ok(bytes: &[u8]) -> RequestHead {
        req(bytes).unwrap().expect("complete head")
    }

    fn refused(bytes: &[u8]) -> HeadError {
        req(bytes).expect_err("refused")
    }

    #[test]
    fn host_fields_follow_rfc_9110() {
        for ok in
            ["a", "a:80", "example.com", "127.0.0.1:8080", "[::1]:443", "[::1]", "xn--bcher-kva.example", "a_b", "a:"]
        {
            assert!(valid_host(ok), "{ok} should be accepted");
        }
        for bad in [
            "",
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

    #[test]
    fn a_request_head_is_parsed_into_spans_and_facts() {
        let b = b"POST /a/b?x=1 HTTP/1.1\r\nHost: Shop.example:8080\r\nContent-Length: 5\r\nConnection: close, X-Gone\r\nX-Gone: 1\r\nX-Request-Id: r1\r\nContent-Type: application/grpc+proto\r\n\r\nhello";
        let h = ok(b);
        assert_eq!(h.method(b), b"POST");
        assert_eq!(h.path_str(b), "/a/b");
        assert_eq!(h.query_str(b), Some("x=1"));
        assert_eq!(h.authority_str(b), "Shop.example:8080");
        assert_eq!(h.body, BodyLen::Length(5));
        assert!(h.close && h.grpc && !h.upgrade && !h.bare_lf);
        assert_eq!(h.request_id.unwrap().of(b), b"r1");
        assert_eq!(&b[h.end as usize..], b"hello");
        assert_eq!(&b[h.start as usize..h.line_end as usize], b"POST /a/b?x=1 HTTP/1.1\r\n");
        let dropped: Vec<&[u8]> = h.fields.all().iter().filter(|f| f.drop).map(|f| f.name.of(b)).collect();
        assert_eq!(dropped, [&b"Connection"[..], b"X-Gone"]);
        let lines: Vec<&[u8]> = h.fields.all().iter().map(|f| f.line.of(b)).collect();
        assert_eq!(lines[0], b"Host: Shop.example:8080\r\n");
        assert_eq!(lines[5], b"Content-Type: application/grpc+proto\r\n");
    }

    #[test]
    fn framing_that_parsers_could_disagree_on_is_refused() {
        for (bytes, reason) in [
            (
                &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"[..],
                "duplicate_content_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "content_length_and_transfer_encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                "content_length_and_transfer_encoding",
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", "invalid_content_length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", "invalid_content_length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", "invalid_content_length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer_encoding_not_chunked"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "transfer_encoding_not_chunked",
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "transfer_encoding_not_chunked"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "transfer_encoding_http10"),
            (b"GET / HTTP/1.1\r\n\r\n", "missing_host"),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "invalid_host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "duplicate_host"),
            (b"GET http://evil/ HTTP/1.1\r\nHost: good\r\n\r\n", "host_mismatch"),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk_form_not_options"),
            (b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", "invalid_request_target"),
            (b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", "invalid_request_target"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "malformed_request"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "malformed_request"),
        ] {
            let e = refused(bytes);
            assert_eq!((e.status, e.reason), (400, reason), "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(refused(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").status, 405);
    }

    #[test]
    fn limits_give_414_and_431_even_for_incomplete_heads() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1100));
        assert_eq!(refused(long.as_bytes()).status, 414);
        let long_partial = format!("GET /{}", "a".repeat(2000));
        assert_eq!(refused(long_partial.as_bytes()).status, 414);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "x".repeat(9000));
        assert_eq!(refused(big.as_bytes()).status, 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(refused(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).status, 431);
        assert!(req(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none(), "incomplete");
    }

    #[test]
    fn names_and_options_match_in_any_case_and_nothing_else() {
        assert!(eq_lower(b"Content-LENGTH", b"content-length") && eq_lower(b"keep-alive", b"keep-alive"));
        for other in [&b"content-lengtx"[..], b"content-length ", b"content_length", b"contentmlength", b""] {
            assert!(!eq_lower(other, b"content-length"), "{other:?}");
        }
        assert_eq!(Kind::of(b"TRANSFER-Encoding"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"Transfer-Encodinh"), Kind::Other);
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n");
        assert!(h.close);
    }

    #[test]
    fn http10_absolute_form_and_upgrades() {
        let h = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert!(h.close && h.authority.is_none() && h.version == Version::Http10);
        let h = ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!h.close);
        let b = b"GET HTTP://Example.com:81?q HTTP/1.1\r\n\r\n";
        let h = ok(b);
        assert_eq!(
            (h.form, h.authority_str(b), h.path_str(b), h.query_str(b)),
            (Form::Absolute, "Example.com:81", "/", Some("q"))
        );
        let b = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = ok(b);
        assert!(h.upgrade);
        assert!(!h.fields.first(Kind::Upgrade).unwrap().drop, "Upgrade is forwarded when upgrading");
        let b = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Hop\r\nUpgrade: websocket\r\nX-Hop: 1\r\n\r\n";
        let h = ok(b);
        assert!(h.upgrade && !h.fields.first(Kind::Upgrade).unwrap().drop, "Connection naming more than upgrade");
        assert!(h.fields.all().iter().find(|f| f.name.of(b) == b"X-Hop").unwrap().drop);
        let b =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade, x-hop\r\nUpgrade: websocket\r\nx-hop: 1\r\n\r\n";
        let r = resp(b).unwrap().unwrap();
        assert!(!r.fields.first(Kind::Upgrade).unwrap().drop, "a 101's Upgrade reaches the client");
        let h = ok(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!h.upgrade, "Upgrade without Connection: upgrade is not an upgrade");
        assert!(h.fields.first(Kind::Upgrade).unwrap().drop);
        let b = b"GET / HTTP/1.1\nHost: a\n\n";
        let h = ok(b);
        assert!(h.bare_lf);
        assert_eq!(h.fields.all()[0].line.of(b), b"Host: a\n");
    }

    fn resp(bytes: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
        parse_response(bytes, 0, bytes.len(), 8192, 100)
    }

    #[test]
    fn responses_are_as_strict_as_requests() {
        let b = b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc";
        let h = resp(b).unwrap().unwrap();
        assert_eq!((h.status, h.declared, h.close), (404, BodyLen::Length(3), false));
        assert_eq!(h.status_line.of(b), b"404 Not Found");
        assert_eq!(h.body_len(true), BodyLen::None, "a response to HEAD has no body");
        let h = resp(b"HTTP/1.1 200\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status_line.of(b"HTTP/1.1 200\r\n\r\n"), h.declared), (&b"200"[..], BodyLen::Close));
        assert_eq!(resp(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap().body_len(false), BodyLen::None);
        for (bytes, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "content_length_and_transfer_encoding",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "duplicate_content_length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid_content_length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer_encoding_not_chunked"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n", "transfer_encoding_not_chunked"),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 700 OK\r\n\r\n", "invalid_status"),
            (b"HTTP/2.0 200 OK\r\n\r\n", "malformed_response"),
        ] {
            assert_eq!(resp(bytes).unwrap_err(), why, "{:?}", String::from_utf8_lossy(bytes));
        }
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "x".repeat(9000));
        assert_eq!(resp(big.as_bytes()).unwrap_err(), "response_head_too_large");
    }
}
