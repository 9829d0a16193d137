//! Target groups, targets and the algorithms that pick one. No I/O: selectors read an immutable
//! [`TargetSet`] and the targets' atomics, so they unit-test and bench in isolation.

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod group;
pub mod least_outstanding;
pub mod queue;
pub mod round_robin;
pub mod sticky;
pub mod target;
pub mod weighted_random;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub use group::{GroupSettings, HealthCheck, TargetGroup, TargetSet, TargetSpec};
pub use target::{CheckResult, InFlightGuard, Reason, Target, TargetState};

/// How a group picks a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
    WeightedRandom,
}

impl Algorithm {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
            Algorithm::WeightedRandom => "weighted_random",
        }
    }
}

/// A picking algorithm over an immutable target set.
pub trait Selector {
    /// Picks a target for which `eligible` holds, or None.
    fn pick<'a>(
        &self,
        set: &'a TargetSet,
        cursor: &AtomicUsize,
        eligible: &dyn Fn(&Target) -> bool,
    ) -> Option<&'a Arc<Target>>;
}

/// Picks with the named algorithm (static dispatch over the three).
#[inline]
pub fn pick<'a>(
    algorithm: Algorithm,
    set: &'a TargetSet,
    cursor: &AtomicUsize,
    eligible: &dyn Fn(&Target) -> bool,
) -> Option<&'a Arc<Target>> {
    match algorithm {
        Algorithm::RoundRobin => round_robin::RoundRobin.pick(set, cursor, eligible),
        Algorithm::LeastOutstandingRequests => least_outstanding::LeastOutstanding.pick(set, cursor, eligible),
        Algorithm::WeightedRandom => weighted_random::WeightedRandom.pick(set, cursor, eligible),
    }
}
