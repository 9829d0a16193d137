//! Errors of the request path and the one place that maps them to what the client sees.

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
    #[error("HTTP handshake with target {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("target {addr} failed before sending a response: {source}")]
    Upstream { addr: SocketAddr, source: hyper::Error },
    #[error("target {0} did not send a response head within response_timeout")]
    ResponseTimeout(SocketAddr),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body larger than the listener's max_request_body")]
    PayloadTooLarge,
    #[error("request target longer than max_uri_bytes")]
    UriTooLong,
}

impl ProxyError {
    /// The status the client gets (ALB's choices).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoTarget(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// A short machine-readable reason for the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoTarget(_) => "no_target",
            ProxyError::Connect { .. } => "target_connect_failed",
            ProxyError::ConnectTimeout(_) => "target_connect_timeout",
            ProxyError::Tls { .. } => "target_tls_failed",
            ProxyError::Handshake { .. } => "target_handshake_failed",
            ProxyError::Upstream { .. } => "target_reset",
            ProxyError::ResponseTimeout(_) => "target_response_timeout",
            ProxyError::BadRequest(r) => r,
            ProxyError::PayloadTooLarge => "request_body_too_large",
            ProxyError::UriTooLong => "uri_too_long",
        }
    }

    /// The short text body sent to the client.
    pub fn body(&self) -> &'static str {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable: no healthy target\n",
            StatusCode::BAD_GATEWAY => "502 Bad Gateway: the target refused, reset or sent a bad response\n",
            StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout: the target did not respond in time\n",
            StatusCode::PAYLOAD_TOO_LARGE => "413 Content Too Large\n",
            StatusCode::URI_TOO_LONG => "414 URI Too Long\n",
            _ => "400 Bad Request\n",
        }
    }
}
