//! What the balancer tells operators: metrics ([`metrics`]), the access log ([`access_log`]) and
//! the admin API ([`admin`]).

pub mod access_log;
pub mod admin;
pub mod metrics;
