//! Arbitrary bytes through the request path of the HTTP/1.1 engine: parse → the forwarded head.
//! Nothing may panic, and what is forwarded must itself parse as a valid HTTP/1.1 request with
//! the same method and path, exactly one Host, and no hop-by-hop field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilotfish::proxy::forward::ClientInfo;
use pilotfish::proxy::h1::encode::{request_head, RequestAdditions};
use pilotfish::proxy::h1::parse::{parse_request, Kind, Limits};

const LIMITS: Limits = Limits { max_head_bytes: 65536, max_headers: 100, max_uri_bytes: 8192 };
/// What a target must accept of a forwarded head: pilotfish adds up to five fields of its own.
const FORWARDED: Limits = Limits { max_head_bytes: 65536 + 1024, max_headers: 100 + 8, max_uri_bytes: 8192 };

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_request(data, 0, data.len(), &LIMITS) else { return };
    let client = ClientInfo::new("127.0.0.1:40000".parse().unwrap(), "http", 80);
    let add = RequestAdditions {
        client: &client,
        request_id: Some(b"1-00000000-000000000000000000000000"),
        host: head.authority.is_none().then_some(&b"127.0.0.1:80"[..]),
        chunked: head.body == pilotfish::proxy::h1::parse::BodyLen::Chunked,
    };
    let mut out = Vec::new();
    request_head(&mut out, data, &head, &add);
    let again = parse_request(&out, 0, out.len(), &FORWARDED)
        .unwrap_or_else(|e| panic!("forwarded head refused ({e:?}): {:?}", String::from_utf8_lossy(&out)))
        .expect("the forwarded head is complete");
    assert_eq!(again.method(&out), head.method(data));
    assert_eq!(again.path_str(&out), head.path_str(data));
    assert_eq!(again.fields.of(Kind::Host).count(), 1);
    for k in [Kind::Connection, Kind::KeepAlive, Kind::ProxyConnection, Kind::ProxyAuthorization, Kind::Trailer] {
        assert!(again.fields.first(k).is_none(), "{k:?} forwarded");
    }
    assert!(!again.bare_lf);
});
