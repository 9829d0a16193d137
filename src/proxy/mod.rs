//! The data plane's request path: listeners and connections ([`listener`]), the per-request
//! pipeline ([`service`]), forwarding and header rewriting ([`forward`]), target connections
//! ([`upstream`]), response bodies ([`body`]) and the error → status mapping ([`error`]).
//! Everything here only *reads* shared state.

pub mod body;
pub mod error;
pub mod forward;
pub mod listener;
pub mod service;
pub mod upstream;
