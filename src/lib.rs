//! pilotfish: a Layer-7 load balancer with service discovery.
//!
//! The data plane ([`proxy`]) only reads an immutable [`config::Snapshot`] published through
//! [`state::SharedState`]; the control plane ([`control`]) is the only writer. [`routing`] and
//! [`balance`] do no I/O. [`server::Server`] wires the two runtimes together.
#![forbid(unsafe_code)]

pub mod auth;
pub mod balance;
pub mod config;
pub mod control;
pub mod demo;
pub mod import;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod shard;
pub mod state;
pub mod telemetry;
pub mod tls;
