//! The data plane's request path: listeners and connections ([`listener`]), the HTTP/1.1
//! engine ([`h1`]), HTTP/2 over hyper and the version seams ([`h2`]), what both share
//! ([`service`]), every response the balancer makes itself ([`answer`]), worker-local target
//! connections ([`upstream`]), header rewriting for header maps ([`forward`]), the worker
//! runtimes ([`workers`]), HTTP/2 response bodies ([`body`]) and the error → status mapping
//! ([`error`]). Everything here only *reads* shared state.

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod answer;
pub mod body;
pub mod error;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod listener;
pub mod proxy_protocol;
pub mod service;
pub mod upstream;
pub mod workers;
