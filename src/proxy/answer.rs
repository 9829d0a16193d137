//! Every response pilotfish makes itself — errors (400, 405, 408, 413, 414, 431, 502, 503, 504),
//! redirects and fixed responses — is one [`Answer`]: its status, whether the connection closes
//! after it, a reason for the log and a body. HTTP/1.1 sessions write it with
//! [`Answer::write_h1`], HTTP/2 ones send [`Answer::into_response`]. gRPC clients
//! (`content-type: application/grpc*`) get an error as gRPC does: HTTP 200 with `grpc-status`
//! and `grpc-message` (a "trailers-only" response), never a text body their client library
//! cannot read.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::RespBody;
use std::sync::Arc;

use super::error::ProxyError;
use crate::config::snapshot::FixedResponse;
use crate::routing::rewrite::HeaderEdits;

/// A response the balancer gives itself.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The connection closes after it (the request may not have been read to its end).
    pub close: bool,
    /// Why the balancer answered (for the access log); `None` for redirects and fixed responses.
    pub reason: Option<&'static str>,
    pub content_type: HeaderValue,
    pub body: Bytes,
    pub location: Option<HeaderValue>,
    /// `grpc-status` and `grpc-message`, for gRPC clients.
    pub grpc: Option<(u8, &'static str)>,
    /// The listener's and the rule's response header edits.
    pub headers: Option<Arc<HeaderEdits>>,
    /// `WWW-Authenticate`, for a 401.
    pub challenge: Option<&'static str>,
}

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

impl Answer {
    /// The answer to `e`; `grpc` when the client speaks gRPC.
    pub fn error(e: &ProxyError, grpc: bool) -> Answer {
        let status = e.status();
        let mut a = Answer {
            status,
            close: e.closes(),
            reason: Some(e.reason()),
            content_type: TEXT,
            body: Bytes::from_static(text(status).as_bytes()),
            location: None,
            grpc: None,
            headers: None,
            challenge: None,
        };
        if grpc {
            a.grpc = Some(grpc_status(status));
            a.status = StatusCode::OK;
            a.content_type = HeaderValue::from_static("application/grpc");
            a.body = Bytes::new();
        }
        a
    }

    /// A configured `fixed_response`.
    pub fn fixed(f: &FixedResponse) -> Answer {
        Answer {
            status: f.status,
            close: false,
            reason: None,
            content_type: f.content_type.clone(),
            body: f.body.clone(),
            location: None,
            grpc: None,
            headers: None,
            challenge: None,
        }
    }

    /// A redirect to `location` (a request whose parts make no valid `Location` gets 400).
    pub fn redirect(status: StatusCode, location: &str) -> Answer {
        match HeaderValue::from_str(location) {
            Ok(v) => Answer {
                status,
                close: false,
                reason: None,
                content_type: TEXT,
                body: Bytes::new(),
                location: Some(v),
                grpc: None,
                headers: None,
                challenge: None,
            },
            Err(_) => Answer::error(&ProxyError::BadRequest("cannot_build_redirect"), false),
        }
    }

    /// 401 for a request whose token a rule's `jwt` refused (`Unauthenticated` for gRPC).
    pub fn unauthorized(reason: crate::auth::jwt::Reason, grpc: bool) -> Answer {
        let mut a = Answer {
            status: StatusCode::UNAUTHORIZED,
            close: false,
            reason: Some(reason.log_error()),
            content_type: TEXT,
            body: Bytes::from_static(b"401 Unauthorized\n"),
            location: None,
            grpc: None,
            headers: None,
            challenge: Some(reason.challenge()),
        };
        if grpc {
            a.grpc = Some((16, "the request's token was refused"));
            a.status = StatusCode::OK;
            a.content_type = HeaderValue::from_static("application/grpc");
            a.body = Bytes::new();
        }
        a
    }

    /// The answer with the response header edits of its listener and rule.
    pub fn with_headers(mut self, headers: Option<Arc<HeaderEdits>>) -> Answer {
        self.headers = headers;
        self
    }

    /// Whether the balancer answered because something failed (counted as `HTTPCode_ELB_*`).
    pub fn is_error(&self) -> bool {
        self.reason.is_some()
    }

    /// The status the access log and metrics record (for gRPC, the HTTP status it stands for).
    pub fn logged_status(&self) -> u16 {
        self.status.as_u16()
    }

    /// Appends the answer as an HTTP/1.1 response; no body bytes for a HEAD request.
    pub fn write_h1(&self, out: &mut Vec<u8>, head_request: bool, close: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.extend_from_slice(b"\r\n");
        let edits = self.headers.as_deref();
        if !edits.is_some_and(|e| e.drops(b"content-type")) {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(self.content_type.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in edits.map(HeaderEdits::set).unwrap_or_default() {
            out.extend_from_slice(n.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(l) = self.location.as_ref().filter(|_| !edits.is_some_and(|e| e.drops(b"location"))) {
            out.extend_from_slice(b"location: ");
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(c) = self.challenge {
            out.extend_from_slice(b"www-authenticate: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some((code, message)) = self.grpc {
            out.extend_from_slice(b"grpc-status: ");
            out.extend_from_slice(itoa(usize::from(code)).as_bytes());
            out.extend_from_slice(b"\r\ngrpc-message: ");
            out.extend_from_slice(message.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(&self.body);
        }
    }

    /// The answer as a response for the HTTP/2 server.
    pub fn into_response(self) -> Response<RespBody> {
        let mut r = Response::new(RespBody::full(self.body));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, self.content_type);
        if let Some(l) = self.location {
            h.insert(header::LOCATION, l);
        }
        if let Some(c) = self.challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some((code, message)) = self.grpc {
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            h.insert("grpc-message", HeaderValue::from_static(message));
        }
        if let Some(e) = &self.headers {
            e.apply(h);
        }
        r
    }
}

fn itoa(n: usize) -> String {
    n.to_string()
}

/// The short text body of a balancer error.
fn text(status: StatusCode) -> &'static str {
    match status.as_u16() {
        503 => "503 Service Unavailable: no healthy target\n",
        502 => "502 Bad Gateway: the target refused, reset or sent a bad response\n",
        504 => "504 Gateway Timeout: the target did not respond in time\n",
        408 => "408 Request Timeout\n",
        413 => "413 Content Too Large\n",
        414 => "414 URI Too Long\n",
        431 => "431 Request Header Fields Too Large\n",
        405 => "405 Method Not Allowed\n",
        500 => "500 Internal Server Error: the rule's rewrite made an invalid request\n",
        _ => "400 Bad Request\n",
    }
}

/// The gRPC status for a balancer error, and its message (gRPC's HTTP-to-gRPC mapping, with
/// timeouts as DEADLINE_EXCEEDED and limits as RESOURCE_EXHAUSTED, which say more).
fn grpc_status(status: StatusCode) -> (u8, &'static str) {
    match status.as_u16() {
        502 => (14, "the target refused, reset or sent a bad response"),
        503 => (14, "no healthy target"),
        504 => (4, "the target did not respond in time"),
        408 => (4, "the request did not arrive in time"),
        413 | 414 | 431 => (8, "the request is larger than the balancer allows"),
        405 => (12, "method not supported"),
        500 => (13, "the rule's rewrite made an invalid request"),
        _ => (13, "the balancer refused a malformed request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_text_for_http_clients_and_grpc_status_for_grpc_ones() {
        let e = ProxyError::ResponseTimeout("127.0.0.1:1".parse().unwrap());
        let a = Answer::error(&e, false);
        let mut out = Vec::new();
        a.write_h1(&mut out, false, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n504 Gateway Timeout: the target did not respond in time\n"), "{s}");
        let g = Answer::error(&e, true).into_response();
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "4");
        assert_eq!(g.headers()["content-type"], "application/grpc");
        let a = Answer::error(&ProxyError::BadRequest("x"), false);
        assert!(a.close, "a malformed request closes the connection");
        let mut out = Vec::new();
        a.write_h1(&mut out, true, true);
        assert!(String::from_utf8(out).unwrap().ends_with("connection: close\r\n\r\n"), "HEAD: no body");
    }
}
