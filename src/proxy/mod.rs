//! The data plane's request path: listeners and connections ([`listener`]), the per-request
//! pipeline ([`service`]), forwarding and header rewriting ([`forward`]), strict HTTP/1.1 framing on the raw stream
//! ([`framing`]), target connections
//! ([`upstream`]), the worker runtimes ([`workers`]), response bodies ([`body`]) and the error → status mapping ([`error`]).
//! Everything here only *reads* shared state.

pub mod body;
pub mod error;
pub mod forward;
pub mod framing;
pub mod listener;
pub mod service;
pub mod upstream;
pub mod workers;
