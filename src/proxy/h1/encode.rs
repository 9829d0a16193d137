//! Heads as they leave: the forwarded request head and the relayed response head, built from
//! the bytes read. The request or status line and every kept field line are written from the
//! read buffer as they are (runs of adjacent kept lines are one slice); only what pilotfish adds
//! (`X-Forwarded-*`, `x-request-id`, framing and connection fields) is new. The pieces go out
//! with one vectored write ([`super::io::write_all_vectored`]), with the first body bytes when
//! they are already buffered. A head that used bare LF line ends is written line by line with
//! CRLF instead, so what is forwarded is always well-formed HTTP/1.1.

use std::io::IoSlice;

use super::parse::{Field, Form, Kind, RequestHead, ResponseHead, Version};
use crate::proxy::forward::ClientInfo;
use crate::routing::rewrite::HeaderEdits;

/// Most slices one head is written with before it is copied into one buffer instead.
pub const MAX_SLICES: usize = 48;

/// Where the pieces of a head go: a list of slices, or (when that overflows) one buffer.
pub trait Sink<'a> {
    fn put(&mut self, bytes: &'a [u8]);
}

/// Up to [`MAX_SLICES`] borrowed slices, for one vectored write.
pub struct Slices<'a> {
    slices: [IoSlice<'a>; MAX_SLICES],
    n: usize,
    overflowed: bool,
}

impl Default for Slices<'_> {
    fn default() -> Self {
        Slices { slices: [IoSlice::new(&[]); MAX_SLICES], n: 0, overflowed: false }
    }
}

impl<'a> Slices<'a> {
    /// The slices put so far.
    pub fn as_mut_slice(&mut self) -> &mut [IoSlice<'a>] {
        &mut self.slices[..self.n]
    }

    /// Whether more slices were put than fit (the head must be copied instead).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.slices[..self.n].iter().map(|s| s.len()).sum()
    }

    /// Whether nothing was put.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl<'a> Sink<'a> for Slices<'a> {
    #[inline]
    fn put(&mut self, bytes: &'a [u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.n == MAX_SLICES {
            self.overflowed = true;
            return;
        }
        self.slices[self.n] = IoSlice::new(bytes);
        self.n += 1;
    }
}

impl<'a> Sink<'a> for Vec<u8> {
    fn put(&mut self, bytes: &'a [u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Puts the field lines `keep` keeps (those not marked `drop` by the parser, and not dropped by
/// an edit): runs of adjacent lines as one piece each, or line by line with CRLF when the head
/// used bare LF.
fn put_fields<'a>(
    out: &mut impl Sink<'a>,
    data: &'a [u8],
    fields: &[Field],
    bare_lf: bool,
    keep: impl Fn(&Field) -> bool,
) {
    if bare_lf {
        for f in fields.iter().filter(|f| keep(f)) {
            out.put(f.name.of(data));
            out.put(b": ");
            out.put(f.value.of(data));
            out.put(b"\r\n");
        }
        return;
    }
    let mut run: Option<(usize, usize)> = None;
    for f in fields {
        if !keep(f) {
            if let Some((s, e)) = run.take() {
                out.put(&data[s..e]);
            }
            continue;
        }
        run = match run {
            Some((s, e)) if e == f.line.start as usize => Some((s, f.line.end as usize)),
            Some((s, e)) => {
                out.put(&data[s..e]);
                Some((f.line.start as usize, f.line.end as usize))
            }
            None => Some((f.line.start as usize, f.line.end as usize)),
        };
    }
    if let Some((s, e)) = run {
        out.put(&data[s..e]);
    }
}

/// Puts the fields of `head` with `edits` applied: its removals and replaced fields left out,
/// the fields it sets added after the kept ones.
fn put_edited<'a>(
    out: &mut impl Sink<'a>,
    data: &'a [u8],
    fields: &[Field],
    bare_lf: bool,
    edits: Option<&'a HeaderEdits>,
    drop_host: bool,
) {
    match edits {
        None if !drop_host => put_fields(out, data, fields, bare_lf, |f| !f.drop),
        _ => {
            let keep = |f: &Field| {
                let dropped = f.drop || (drop_host && f.kind == Kind::Host);
                !dropped && !edits.is_some_and(|e| e.drops(f.name.of(data)))
            };
            put_fields(out, data, fields, bare_lf, keep);
            for (n, v) in edits.map(HeaderEdits::set).unwrap_or_default() {
                out.put(n.as_str().as_bytes());
                out.put(b": ");
                out.put(v.as_bytes());
                out.put(b"\r\n");
            }
        }
    }
}

/// What pilotfish adds to a forwarded request, formatted before the head is assembled.
pub struct RequestAdditions<'a> {
    pub client: &'a ClientInfo,
    /// A new request id when the client sent none.
    pub request_id: Option<&'a [u8]>,
    /// The `Host` to send when the request carried none usable (HTTP/1.0 without Host).
    pub host: Option<&'a [u8]>,
    /// The body is sent chunked (`transfer-encoding: chunked` is added).
    pub chunked: bool,
    /// The rule's `request_headers`.
    pub edits: Option<&'a HeaderEdits>,
    /// A rewritten host (`transforms.host`): sent instead of the client's.
    pub rewritten_host: Option<&'a [u8]>,
    /// A rewritten path (`transforms.url`): sent instead of the client's, with its query.
    pub rewritten_path: Option<&'a [u8]>,
}

/// The head of `head` as it goes to an HTTP/1.1 target.
pub fn request_head<'a>(out: &mut impl Sink<'a>, data: &'a [u8], head: &RequestHead, add: &RequestAdditions<'a>) {
    // Request line: always HTTP/1.1, an absolute-form target in origin form.
    match head.form {
        _ if add.rewritten_path.is_some() => {
            out.put(head.method.of(data));
            out.put(b" ");
            out.put(add.rewritten_path.unwrap_or(b"/"));
            if let Some(q) = head.query {
                out.put(b"?");
                out.put(q.of(data));
            }
        }
        Form::Absolute => {
            out.put(head.method.of(data));
            out.put(b" ");
            if head.path.is_empty() {
                out.put(b"/");
            } else {
                out.put(head.path.of(data));
            }
            if let Some(q) = head.query {
                out.put(b"?");
                out.put(q.of(data));
            }
        }
        Form::Origin | Form::Asterisk => out.put(&data[head.start as usize..head.target.end as usize]),
    }
    out.put(b" HTTP/1.1\r\n");
    let new_host = add.rewritten_host;
    put_edited(out, data, head.fields.all(), head.bare_lf, add.edits, new_host.is_some());
    if head.form == Form::Absolute && head.fields.first(Kind::Host).is_none() && new_host.is_none() {
        if let Some(a) = head.authority {
            out.put(b"host: ");
            out.put(a.of(data));
            out.put(b"\r\n");
        }
    }
    if let Some(h) = new_host.or(add.host) {
        out.put(b"host: ");
        out.put(h);
        out.put(b"\r\n");
    }
    // X-Forwarded-For: the client's values (every line), then this client.
    out.put(b"x-forwarded-for: ");
    for f in head.fields.of(Kind::XForwardedFor) {
        let v = f.value.of(data);
        if !v.is_empty() {
            out.put(v);
            out.put(b", ");
        }
    }
    out.put(add.client.ip_text());
    out.put(if add.client.proto == "https" {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    out.put(b"x-forwarded-port: ");
    out.put(add.client.port_text());
    out.put(b"\r\n");
    if let Some(c) = &add.client.cert {
        out.put(&c.lines);
    }
    if let Some(id) = add.request_id {
        out.put(b"x-request-id: ");
        out.put(id);
        out.put(b"\r\n");
    }
    if add.chunked {
        out.put(b"transfer-encoding: chunked\r\n");
    }
    if head.upgrade {
        out.put(b"connection: upgrade\r\n");
    }
    out.put(b"\r\n");
}

/// How a relayed response's body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// No body bytes follow (HEAD, 1xx, 204, 304), or as the target's `Content-Length` says.
    AsIs,
    /// Re-framed as chunked (`transfer-encoding: chunked` added).
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients of a chunked or close-delimited body).
    Close,
}

/// What pilotfish changes in a relayed response head.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEdits<'e> {
    pub framing: OutFraming,
    /// `connection: close` is added (the client connection closes after this response).
    pub close: bool,
    /// `connection: keep-alive` is added (an HTTP/1.0 client that asked for it).
    pub keep_alive: bool,
    /// A 101 to an upgrade: `connection: upgrade` is added.
    pub upgrade: bool,
    /// The response to a HEAD request whose target declared chunked framing.
    pub head_chunked: bool,
    /// The listener's and the rule's `response_headers` (and `server_header = false`).
    pub headers: Option<&'e HeaderEdits>,
    /// Whole field lines added (sticky sessions' `set-cookie`).
    pub extra: &'e [u8],
}

/// The head of a target's response as it goes to an HTTP/1.1 client.
pub fn response_head<'a>(out: &mut impl Sink<'a>, data: &'a [u8], head: &ResponseHead, edits: &ResponseEdits<'a>) {
    out.put(b"HTTP/1.1 ");
    out.put(head.status_line.of(data));
    out.put(b"\r\n");
    put_edited(out, data, head.fields.all(), head.bare_lf, edits.headers, false);
    out.put(edits.extra);
    if edits.framing == OutFraming::Chunked || edits.head_chunked {
        out.put(b"transfer-encoding: chunked\r\n");
    }
    if edits.upgrade {
        out.put(b"connection: upgrade\r\n");
    } else if edits.close {
        out.put(b"connection: close\r\n");
    } else if edits.keep_alive {
        out.put(b"connection: keep-alive\r\n");
    }
    out.put(b"\r\n");
}

/// Writes an interim (1xx) response as it goes to the client: its status line and fields.
pub fn interim_head<'a>(out: &mut impl Sink<'a>, data: &'a [u8], head: &ResponseHead) {
    out.put(b"HTTP/1.1 ");
    out.put(head.status_line.of(data));
    out.put(b"\r\n");
    put_fields(out, data, head.fields.all(), head.bare_lf, |f| !f.drop);
    out.put(b"\r\n");
}

/// How the response to a request of `version` from a target framed as `declared` goes out.
pub fn out_framing(body: super::parse::BodyLen, version: Version) -> OutFraming {
    use super::parse::BodyLen;
    match (body, version) {
        (BodyLen::None | BodyLen::Length(_), _) => OutFraming::AsIs,
        (BodyLen::Chunked | BodyLen::Close, Version::Http11) => OutFraming::Chunked,
        (BodyLen::Chunked | BodyLen::Close, Version::Http10) => OutFraming::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_request, parse_response, BodyLen, Limits};
    use super::*;

    const LIMITS: Limits = Limits { max_head_bytes: 8192, max_headers: 100, max_uri_bytes: 1024 };

    fn forwarded(bytes: &[u8], add: &RequestAdditions<'_>) -> String {
        let head = parse_request(bytes, 0, bytes.len(), &LIMITS).unwrap().unwrap();
        let mut slices = Slices::default();
        request_head(&mut slices, bytes, &head, add);
        assert!(!slices.overflowed());
        let mut v = Vec::new();
        request_head(&mut v, bytes, &head, add);
        let joined: Vec<u8> = slices.as_mut_slice().iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, v, "slices and copy agree");
        String::from_utf8(v).unwrap()
    }

    fn client() -> ClientInfo {
        ClientInfo::new("192.0.2.9:5000".parse().unwrap(), "http", 8080)
    }

    #[test]
    fn the_forwarded_head_keeps_the_clients_lines_and_adds_ours() {
        let c = client();
        let add = RequestAdditions {
            client: &c,
            request_id: Some(b"1-abc"),
            host: None,
            chunked: false,
            edits: None,
            rewritten_host: None,
            rewritten_path: None,
        };
        let got = forwarded(
            b"GET /x?y HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nAccept: */*\r\nUser-Agent: t\r\nx-forwarded-for: 10.0.0.1\r\nTE: trailers\r\n\r\n",
            &add,
        );
        assert_eq!(
            got,
            "GET /x?y HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: t\r\nTE: trailers\r\n\
             x-forwarded-for: 203.0.113.7, 10.0.0.1, 192.0.2.9\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8080\r\n\
             x-request-id: 1-abc\r\n\r\n"
        );
    }

    #[test]
    fn http10_absolute_form_bare_lf_and_chunked_bodies_become_valid_http11() {
        let c = client();
        let add = RequestAdditions {
            client: &c,
            request_id: None,
            host: Some(b"10.0.0.5:80"),
            chunked: false,
            edits: None,
            rewritten_host: None,
            rewritten_path: None,
        };
        let got = forwarded(b"GET / HTTP/1.0\nX-A: b\n\n", &add);
        assert!(got.starts_with("GET / HTTP/1.1\r\nX-A: b\r\nhost: 10.0.0.5:80\r\n"), "{got}");
        let add = RequestAdditions {
            client: &c,
            request_id: None,
            host: None,
            chunked: true,
            edits: None,
            rewritten_host: None,
            rewritten_path: None,
        };
        let got = forwarded(b"POST http://h:1/p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &add);
        assert!(got.starts_with("POST /p HTTP/1.1\r\nhost: h:1\r\nx-forwarded-for: 192.0.2.9\r\n"), "{got}");
        assert!(got.ends_with("transfer-encoding: chunked\r\n\r\n"), "{got}");
    }

    #[test]
    fn relayed_response_heads_lose_hop_by_hop_fields() {
        let b = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nTransfer-Encoding: chunked\r\nX-Keep: 1\r\n\r\n";
        let head = parse_response(b, 0, b.len(), 8192, 100).unwrap().unwrap();
        assert_eq!(head.declared, BodyLen::Chunked);
        let framing = out_framing(head.body_len(false), Version::Http11);
        let edits = ResponseEdits {
            framing,
            close: true,
            keep_alive: false,
            upgrade: false,
            head_chunked: false,
            headers: None,
            extra: &[],
        };
        let mut v = Vec::new();
        response_head(&mut v, b, &head, &edits);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Keep: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn edits_and_rewrites_change_only_what_they_name() {
        use http::{HeaderName, HeaderValue};
        let c = client();
        let edits = HeaderEdits::new(
            vec![(HeaderName::from_static("x-tenant"), HeaderValue::from_static("shop"))],
            vec![HeaderName::from_static("x-debug")],
        );
        let add = RequestAdditions {
            client: &c,
            request_id: None,
            host: None,
            chunked: false,
            edits: Some(&edits),
            rewritten_host: Some(b"www.example.com"),
            rewritten_path: Some(b"/orders"),
        };
        let got = forwarded(
            b"GET /api/orders?page=2 HTTP/1.1\r\nHost: api.example.com\r\nX-Debug: 1\r\nX-Tenant: forged\r\nAccept: */*\r\n\r\n",
            &add,
        );
        assert_eq!(
            got,
            "GET /orders?page=2 HTTP/1.1\r\nAccept: */*\r\nx-tenant: shop\r\nhost: www.example.com\r\n\
             x-forwarded-for: 192.0.2.9\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8080\r\n\r\n"
        );
        // An absolute-form request: the rewritten host replaces the one from the target too.
        let got = forwarded(b"GET http://api.example.com/api/x HTTP/1.1\r\n\r\n", &add);
        assert!(got.starts_with("GET /orders HTTP/1.1\r\nx-tenant: shop\r\nhost: www.example.com\r\n"), "{got}");
        assert_eq!(got.matches("host:").count(), 1, "{got}");

        let b = b"HTTP/1.1 200 OK\r\nServer: app\r\nX-Keep: 1\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response(b, 0, b.len(), 8192, 100).unwrap().unwrap();
        let set = HeaderEdits::new(
            vec![(HeaderName::from_static("strict-transport-security"), HeaderValue::from_static("max-age=1"))],
            vec![HeaderName::from_static("server")],
        );
        let framing = out_framing(head.body_len(false), Version::Http11);
        let edits = ResponseEdits {
            framing,
            close: false,
            keep_alive: false,
            upgrade: false,
            head_chunked: false,
            headers: Some(&set),
            extra: &[],
        };
        let mut v = Vec::new();
        response_head(&mut v, b, &head, &edits);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 0\r\nstrict-transport-security: max-age=1\r\n\r\n"
        );
    }
}
