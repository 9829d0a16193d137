//! Errors of the request path and the one place that maps them to what the client sees (the
//! status here; the response itself is an [`super::answer::Answer`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

/// Why the balancer answered a request itself instead of relaying a target's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("target group {0:?} has no available target")]
    NoTarget(Arc<str>),
    #[error("connecting to target {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connecting to target {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS with target {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP/2 handshake with target {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("HTTP/2 target {addr} failed before sending a response: {source}")]
    Upstream { addr: SocketAddr, source: hyper::Error },
    #[error("target {0} closed or reset the connection before sending a response")]
    TargetReset(SocketAddr),
    #[error("target {addr} sent a malformed response ({reason})")]
    BadResponse { addr: SocketAddr, reason: &'static str },
    #[error("target {0} did not send a response head within response_timeout")]
    ResponseTimeout(SocketAddr),
    /// A malformed request (the reason says what).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head or body did not arrive in time.
    #[error("the client was too slow sending its request")]
    RequestTimeout,
    #[error("request head larger than max_header_bytes or max_headers ({0})")]
    HeadTooLarge(&'static str),
    #[error("request body larger than the listener's max_request_body")]
    PayloadTooLarge,
    #[error("request target longer than max_uri_bytes")]
    UriTooLong,
    #[error("method not supported ({0})")]
    MethodNotAllowed(&'static str),
    #[error("target group {0:?}: every target is at max_requests_per_target and the queue is full")]
    QueueFull(Arc<str>),
    #[error("target group {0:?}: no target freed up within the queue's timeout")]
    QueueTimeout(Arc<str>),
    /// A rule's transform made an invalid host or path.
    #[error("the rule's transform made an invalid request ({0})")]
    RewriteInvalid(&'static str),
}

impl ProxyError {
    /// The status the client gets (ALB's choices).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoTarget(_) | ProxyError::QueueFull(_) | ProxyError::QueueTimeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::TargetReset(_)
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RewriteInvalid(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable reason for the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoTarget(_) => "no_target",
            ProxyError::QueueFull(_) => "queue_full",
            ProxyError::QueueTimeout(_) => "queue_timeout",
            ProxyError::Connect { .. } => "target_connect_failed",
            ProxyError::ConnectTimeout(_) => "target_connect_timeout",
            ProxyError::Tls { .. } => "target_tls_failed",
            ProxyError::Handshake { .. } => "target_handshake_failed",
            ProxyError::Upstream { .. } | ProxyError::TargetReset(_) => "target_reset",
            ProxyError::BadResponse { reason, .. } => reason,
            ProxyError::ResponseTimeout(_) => "target_response_timeout",
            ProxyError::BadRequest(r)
            | ProxyError::HeadTooLarge(r)
            | ProxyError::MethodNotAllowed(r)
            | ProxyError::RewriteInvalid(r) => r,
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::PayloadTooLarge => "request_body_too_large",
            ProxyError::UriTooLong => "uri_too_long",
        }
    }

    /// Whether the client connection closes after this answer: the request may not have been
    /// read to its end, or the client is misbehaving.
    pub fn closes(&self) -> bool {
        self.status().is_client_error()
    }

    /// The error for a refused request head.
    pub fn from_head(e: super::h1::parse::HeadError) -> ProxyError {
        match e.status {
            431 => ProxyError::HeadTooLarge(e.reason),
            414 => ProxyError::UriTooLong,
            405 => ProxyError::MethodNotAllowed(e.reason),
            _ => ProxyError::BadRequest(e.reason),
        }
    }
}
