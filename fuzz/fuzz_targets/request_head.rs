//! Arbitrary bytes through the head path after the framing guard: httparse (hyper's parser, with
//! hyper's header limit) → `http::Request` → pilotfish's RFC 9112 checks → the head rewrite for
//! both upstream protocols. Nothing may panic, and an accepted head must leave with exactly one
//! valid Host for HTTP/1.1 targets and no hop-by-hop fields.
#![no_main]

use http::{header, HeaderName, HeaderValue, Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use pilotfish::config::file::UpstreamProtocol;
use pilotfish::proxy::forward::{prepare_head, ClientInfo};
use pilotfish::proxy::service::{check_framing, request_host};

fn to_request(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(data).ok()? else { return None };
    let mut b = Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(req.path?).ok()?)
        .version(if req.version? == 1 { Version::HTTP_11 } else { Version::HTTP_10 });
    for h in req.headers.iter() {
        b = b.header(HeaderName::from_bytes(h.name.as_bytes()).ok()?, HeaderValue::from_bytes(h.value).ok()?);
    }
    b.body(()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = to_request(data) else { return };
    if check_framing(&req).is_err() {
        return;
    }
    let Ok(host) = request_host(&req) else { return };
    let host = host.to_owned();
    let client = ClientInfo::new("127.0.0.1:40000".parse().unwrap(), "http", 80);
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::Http2] {
        let (mut parts, ()) = req.clone().into_parts();
        prepare_head(&mut parts, &client, &host, protocol);
        assert!(parts.headers.get(header::CONNECTION).is_none());
        assert!(parts.headers.get(header::TRANSFER_ENCODING).is_none());
        if protocol == UpstreamProtocol::Http1 && !host.is_empty() {
            assert_eq!(parts.headers.get_all(header::HOST).iter().count(), 1);
        }
    }
});
