//! What the balancer tells operators: metrics ([`metrics`]) and the access log ([`access_log`]).
//! The admin API that serves them is the control thread's ([`crate::control::admin`]).

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod access_log;
pub mod metrics;
