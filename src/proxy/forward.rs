//! Forwarding facts of a client connection ([`ClientInfo`]), request ids, and the header
//! rewriting of requests and responses that travel as `http` header maps (to and from HTTP/2
//! peers; the HTTP/1.1 engine edits heads in place, see [`super::h1::encode`]).

use std::io::Write as _;
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Uri, Version};

use crate::config::snapshot::UpstreamProtocol;

/// Where a request came from, for the forwarding headers. The client's IP and the listener's
/// port are formatted once per connection, inline (no allocation per connection).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    pub listener_port: u16,
    /// What the client's certificate tells targets (mutual TLS listeners).
    pub cert: Option<std::sync::Arc<crate::tls::mtls::ClientCert>>,
    /// The address the client connected to: a PROXY header's destination, or this socket's
    /// (noted only when some target group announces clients).
    pub dst: Option<SocketAddr>,
    /// This client connection's number in the process (unique, never 0 once accepted): what
    /// keeps target connections that announced it to its own requests.
    pub conn_id: u64,
    ip: [u8; 46],
    ip_len: u8,
    port: [u8; 5],
    port_len: u8,
}

impl ClientInfo {
    /// The forwarding facts of a connection from `addr` to a `proto` listener on `listener_port`.
    pub fn new(addr: SocketAddr, proto: &'static str, listener_port: u16) -> Self {
        let mut ip = [0u8; 46];
        let mut w = &mut ip[..];
        let _ = write!(w, "{}", addr.ip().to_canonical());
        let ip_len = (46 - w.len()) as u8;
        let mut port = [0u8; 5];
        let mut w = &mut port[..];
        let _ = write!(w, "{listener_port}");
        let port_len = (5 - w.len()) as u8;
        ClientInfo { addr, proto, listener_port, cert: None, dst: None, conn_id: 0, ip, ip_len, port, port_len }
    }

    /// The client's endpoints as a PROXY header announces them: its address and the one it
    /// connected to (unspecified, with the listener's port, when not noted).
    #[inline]
    pub fn endpoints(&self) -> (SocketAddr, SocketAddr) {
        let dst = self.dst.unwrap_or_else(|| {
            let any: std::net::IpAddr = if self.addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, self.listener_port)
        });
        (self.addr, dst)
    }

    /// The client's IP address as text (IPv4-mapped addresses as IPv4).
    #[inline]
    pub fn ip_text(&self) -> &[u8] {
        &self.ip[..usize::from(self.ip_len)]
    }

    /// The listener's port as text.
    #[inline]
    pub fn port_text(&self) -> &[u8] {
        &self.port[..usize::from(self.port_len)]
    }

    fn ip_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.ip_text()).expect("an IP address is a valid header value")
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

/// Removes every `X-Amzn-Mtls-*` field: pilotfish sets them from the TLS handshake, and a
/// client's would pass for its own.
pub fn strip_mtls(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| crate::tls::mtls::is_mtls_header(n.as_str().as_bytes())) {
        return;
    }
    let names: Vec<HeaderName> =
        headers.keys().filter(|n| crate::tls::mtls::is_mtls_header(n.as_str().as_bytes())).cloned().collect();
    for n in names {
        headers.remove(n);
    }
}

thread_local! {
    /// A monotonic instant and the Unix seconds it corresponds to, re-read once a minute.
    static UNIX_BASE: std::cell::Cell<Option<(std::time::Instant, u64)>> = const { std::cell::Cell::new(None) };
}

/// Unix seconds at `now`, from a per-thread base: no second clock read per request.
fn unix_secs(now: std::time::Instant) -> u64 {
    UNIX_BASE.with(|b| match b.get().map(|(at, secs)| (now.checked_duration_since(at), secs)) {
        Some((Some(since), secs)) if since.as_secs() < 60 => secs + since.as_secs(),
        _ => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            b.set(Some((now, secs)));
            secs
        }
    })
}

/// A new request id in ALB's trace-id shape: `1-<epoch seconds hex>-<24 hex random>`.
pub fn new_request_id() -> [u8; 35] {
    new_request_id_at(std::time::Instant::now())
}

/// [`new_request_id`] for a request that started at `now`.
pub fn new_request_id_at(now: std::time::Instant) -> [u8; 35] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let secs = unix_secs(now) as u32;
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
    buf
}

/// [`new_request_id`] as a header value.
pub fn new_request_id_value() -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id()).expect("hex is a valid header value")
}

/// Rewrites a client request head for a target: hop-by-hop stripped, forwarding headers set,
/// URI and version made right for the upstream protocol. `host` is the client's host (with port).
pub fn prepare_head(parts: &mut request::Parts, client: &ClientInfo, host: &str, protocol: UpstreamProtocol) {
    strip_hop_by_hop(&mut parts.headers);
    strip_mtls(&mut parts.headers);
    if let Some(c) = &client.cert {
        for (n, v) in &c.fields {
            parts.headers.insert(n, v.clone());
        }
    }
    let prev: Vec<&HeaderValue> = parts.headers.get_all(&X_FORWARDED_FOR).iter().collect();
    let xff = if prev.iter().all(|v| v.as_bytes().trim_ascii().is_empty()) {
        // The common case (no XFF yet) reuses the connection's value.
        Some(client.ip_value())
    } else {
        // Every line the client sent, in order, then the client's address.
        let mut v = Vec::with_capacity(64);
        join(&mut v, &prev, b", ");
        v.extend_from_slice(b", ");
        v.extend_from_slice(client.ip_text());
        HeaderValue::from_bytes(&v).ok()
    };
    if let Some(v) = xff {
        parts.headers.insert(&X_FORWARDED_FOR, v);
    }
    parts.headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    parts.headers.insert(&X_FORWARDED_PORT, HeaderValue::from(client.listener_port));
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

/// The HTTP/1.1 head for a target of an HTTP/2 client's request, written straight from its header
/// map: what [`prepare_head`] and writing the map would give for an `http1` group, without
/// touching the map (inserting the forwarding headers into it hashes each and may grow it).
/// Hop-by-hop fields, `Transfer-Encoding` and the client's forwarding headers are left out as the
/// fields are written; then the forwarding headers, and `chunked` framing when asked.
pub fn write_h1_head(parts: &request::Parts, client: &ClientInfo, host: &str, chunked: bool) -> Vec<u8> {
    let headers = &parts.headers;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // `host` is the request's, already checked (`h2::request_host`).
    if !host.is_empty() && !headers.contains_key(header::HOST) {
        field(&mut out, b"host", host.as_bytes());
    }
    // HTTP/2 has no `Connection` (h2 refuses a request with one), so nothing else is named
    // hop-by-hop by it. Cookie crumbs are joined into one field (RFC 9113 section 8.2.3): many
    // HTTP/1.1 applications read only the first `Cookie` line.
    let (mut xff, mut cookies) = (Vec::new(), Vec::new());
    for (n, v) in headers {
        if hop_by_hop_length(n.as_str().len()) && (HOP_BY_HOP.contains(n) || (n == header::TE && v != "trailers")) {
            continue;
        }
        if n == X_FORWARDED_FOR {
            xff.push(v);
        } else if n == header::COOKIE {
            cookies.push(v);
        } else if n != header::TRANSFER_ENCODING
            && n != X_FORWARDED_PROTO
            && n != X_FORWARDED_PORT
            && !crate::tls::mtls::is_mtls_header(n.as_str().as_bytes())
        {
            field(&mut out, n.as_str().as_bytes(), v.as_bytes());
        }
    }
    if !cookies.is_empty() {
        out.extend_from_slice(b"cookie: ");
        join(&mut out, &cookies, b"; ");
        out.extend_from_slice(b"\r\n");
    }
    // Every X-Forwarded-For line the client sent, in order, as the HTTP/1.1 engine forwards
    // them, then the client's address.
    out.extend_from_slice(b"x-forwarded-for: ");
    let before = out.len();
    join(&mut out, &xff, b", ");
    if out.len() > before {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip_text());
    out.extend_from_slice(b"\r\n");
    field(&mut out, b"x-forwarded-proto", client.proto.as_bytes());
    field(&mut out, b"x-forwarded-port", client.port_text());
    if let Some(c) = &client.cert {
        out.extend_from_slice(&c.lines);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the non-empty `values` separated by `sep`.
fn join(out: &mut Vec<u8>, values: &[&HeaderValue], sep: &[u8]) {
    let mut first = true;
    for v in values.iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty()) {
        if !first {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(v);
        first = false;
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    fn an_h1_head_written_from_the_map_is_the_prepared_map_written() {
        let c = ClientInfo::new("10.9.8.7:5555".parse().unwrap(), "https", 8443);
        let req = http::Request::post("http://a.example:8443/p?q=1")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .header("x-forwarded-proto", "ftp")
            .header("x-forwarded-port", "1")
            .header("te", "trailers")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-app", "v")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let written = String::from_utf8(write_h1_head(&parts, &c, "a.example:8443", true)).unwrap();
        let mut prepared = parts;
        prepare_head(&mut prepared, &c, "a.example:8443", UpstreamProtocol::Http1);
        prepared.headers.remove(header::TRANSFER_ENCODING);
        let fields = |t: &str| -> Vec<String> {
            let mut f: Vec<String> = t.split("\r\n").skip(1).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            f.sort();
            f
        };
        let mut want = vec!["transfer-encoding: chunked".to_string()];
        for (n, v) in &prepared.headers {
            want.push(format!("{n}: {}", v.to_str().unwrap()));
        }
        want.sort();
        assert!(written.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{written}");
        assert_eq!(fields(&written), want, "{written}");
        assert!(written.contains("x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.9.8.7\r\n"), "{written}");
        assert!(!written.contains("keep-alive"), "{written}");
        // Cookie crumbs of an HTTP/2 request go out as one field.
        let req = http::Request::get("/").header("cookie", "a=1").header("cookie", "b=2").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let written = String::from_utf8(write_h1_head(&parts, &c, "h", false)).unwrap();
        assert!(written.contains("\r\ncookie: a=1; b=2\r\n") && written.matches("cookie").count() == 1, "{written}");
    }

    #[test]
    fn request_ids_have_alb_shape() {
        let id = new_request_id_value();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 35);
        assert!(s.starts_with("1-") && s.as_bytes()[10] == b'-');
        assert_ne!(new_request_id_value(), id);
    }

    #[test]
    fn client_addresses_are_formatted_once() {
        let c = ClientInfo::new("[::ffff:10.1.2.3]:9".parse().unwrap(), "http", 443);
        assert_eq!((c.ip_text(), c.port_text()), (&b"10.1.2.3"[..], &b"443"[..]));
        let c = ClientInfo::new("[2001:db8:1:2:3:4:5:6]:9".parse().unwrap(), "https", 65535);
        assert_eq!((c.ip_text(), c.port_text()), (&b"2001:db8:1:2:3:4:5:6"[..], &b"65535"[..]));
    }
}
