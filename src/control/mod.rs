//! The control plane: a dedicated OS thread with its own current-thread tokio runtime. It owns
//! every background task (admin API, reloads, signals) and is the only writer of shared state:
//! it compiles snapshots, binds and closes listeners, and publishes with one atomic swap.

pub mod autoscale;
pub mod aws;
pub mod cloudwatch;
pub mod discovery;
pub mod health;
pub mod reload;

pub use reload::{Control, ReloadOutcome};
