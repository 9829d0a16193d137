//! The control plane: a dedicated OS thread with its own current-thread tokio runtime
//! ([`thread`]). It owns every background task (the admin API, reloads, signals, health checks,
//! discovery, CloudWatch, autoscaling) and is the only writer of shared state: [`Control`]
//! compiles snapshots, binds and closes listeners, and publishes with one atomic swap.

pub mod admin;
pub mod autoscale;
pub mod aws;
pub mod certificates;
pub mod cloudwatch;
pub mod discovery;
pub mod health;
pub mod material;
pub mod reload;
pub mod source;
pub mod stats;
pub mod thread;

pub use reload::{Control, InForce, ReloadOutcome};

/// Runs `f` to completion on a runtime of its own, on a thread of its own, so that it can be
/// waited for from anywhere (start-up, `check`, a test inside another runtime). The SDK clients
/// `f` makes live and die with that runtime.
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for AWS calls")
                .block_on(f)
        })
        .join()
        .expect("the AWS call thread panicked")
    })
}
