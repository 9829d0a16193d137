//! The control plane: a dedicated OS thread with its own current-thread tokio runtime
//! ([`thread`]). It owns every background task (the admin API, reloads, signals, health checks,
//! discovery, CloudWatch, autoscaling) and is the only writer of shared state: [`Control`]
//! compiles snapshots, binds and closes listeners, and publishes with one atomic swap.

pub mod admin;
pub mod autoscale;
pub mod aws;
pub mod cloudwatch;
pub mod discovery;
pub mod health;
pub mod reload;
pub mod thread;

pub use reload::{Control, ReloadOutcome};
