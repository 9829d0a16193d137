//! A target group: its settings and an atomically swappable [`TargetSet`]. A discovery update or
//! reload builds a new set (reusing the `Arc<Target>` of addresses it already had) and publishes it
//! with one store, so a request sees either the old set or the new one, never a mix.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{pick, Target, TargetState};
use crate::config::file::{Algorithm, UpstreamProtocol};

/// What a target group needs to know about one target it should contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// An immutable list of targets with precomputed cumulative weights.
#[derive(Debug, Default)]
pub struct TargetSet {
    targets: Vec<Arc<Target>>,
    cumulative: Vec<u64>,
}

impl TargetSet {
    /// Builds a set for `specs`, reusing targets of `prev` with the same address (and weight);
    /// new targets start in `initial_state`.
    pub fn build(specs: &[TargetSpec], prev: Option<&TargetSet>, initial_state: TargetState) -> TargetSet {
        let targets: Vec<Arc<Target>> = specs
            .iter()
            .map(|s| {
                prev.and_then(|p| p.find(s.addr))
                    .filter(|t| t.weight == s.weight)
                    .cloned()
                    .unwrap_or_else(|| Target::new(s.addr, s.weight, initial_state))
            })
            .collect();
        Self::from_targets(targets)
    }

    fn from_targets(targets: Vec<Arc<Target>>) -> TargetSet {
        let mut acc = 0u64;
        let cumulative = targets
            .iter()
            .map(|t| {
                acc += u64::from(t.weight);
                acc
            })
            .collect();
        TargetSet { targets, cumulative }
    }

    /// The targets in configuration order.
    #[inline]
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Running sums of the targets' weights.
    #[inline]
    pub fn cumulative_weights(&self) -> &[u64] {
        &self.cumulative
    }

    /// The target at `addr`, if present.
    pub fn find(&self, addr: SocketAddr) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.addr == addr)
    }

    /// Whether the set has the same addresses and weights as `specs`, in order.
    fn same_as(&self, specs: &[TargetSpec]) -> bool {
        self.targets.len() == specs.len()
            && self.targets.iter().zip(specs).all(|(t, s)| t.addr == s.addr && t.weight == s.weight)
    }
}

/// Settings of a target group that the request path reads.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub protocol: UpstreamProtocol,
    pub algorithm: Algorithm,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retries: u32,
}

/// A named target group.
#[derive(Debug)]
pub struct TargetGroup {
    pub name: Arc<str>,
    pub settings: GroupSettings,
    set: ArcSwap<TargetSet>,
    cursor: AtomicUsize,
}

impl TargetGroup {
    /// A group with `specs` as its targets, reusing targets of `prev` (the same group in the previous
    /// snapshot) so their state carries over.
    pub fn new(
        name: Arc<str>,
        settings: GroupSettings,
        specs: &[TargetSpec],
        prev: Option<&TargetGroup>,
    ) -> TargetGroup {
        let prev_set = prev.map(|g| g.set.load_full());
        let set = TargetSet::build(specs, prev_set.as_deref(), TargetState::Healthy);
        TargetGroup { name, settings, set: ArcSwap::from_pointee(set), cursor: AtomicUsize::new(0) }
    }

    /// The current target set.
    #[inline]
    pub fn targets(&self) -> arc_swap::Guard<Arc<TargetSet>> {
        self.set.load()
    }

    /// Replaces the targets with `specs` (control plane only). Unchanged targets keep their state;
    /// a set equal to the current one publishes nothing. Returns whether anything changed.
    pub fn update(&self, specs: &[TargetSpec]) -> bool {
        let cur = self.set.load_full();
        if cur.same_as(specs) {
            return false;
        }
        self.set.store(Arc::new(TargetSet::build(specs, Some(&cur), TargetState::Healthy)));
        true
    }

    /// Picks a target for a new request, skipping `skip` (targets that already failed this
    /// request). Healthy targets first; when none is healthy, any non-draining one (fail-open).
    #[inline]
    pub fn pick(&self, set: &TargetSet, skip: Option<&Arc<Target>>) -> Option<Arc<Target>> {
        let not_skipped = |t: &Target| skip.is_none_or(|s| !std::ptr::eq(&**s, t));
        pick(self.settings.algorithm, set, &self.cursor, &|t| t.is_routable() && not_skipped(t))
            .or_else(|| {
                pick(self.settings.algorithm, set, &self.cursor, &|t| {
                    t.state() != TargetState::Draining && not_skipped(t)
                })
            })
            .cloned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn set_of(n: u16) -> TargetSet {
        let specs: Vec<_> =
            (0..n).map(|i| TargetSpec { addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i)), weight: 1 }).collect();
        TargetSet::build(&specs, None, TargetState::Healthy)
    }

    fn settings() -> GroupSettings {
        GroupSettings {
            protocol: UpstreamProtocol::Http1,
            algorithm: Algorithm::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            retries: 1,
        }
    }

    #[test]
    fn update_keeps_identity_and_skips_no_op() {
        let a = TargetSpec { addr: "127.0.0.1:1".parse().unwrap(), weight: 1 };
        let b = TargetSpec { addr: "127.0.0.1:2".parse().unwrap(), weight: 1 };
        let g = TargetGroup::new("g".into(), settings(), std::slice::from_ref(&a), None);
        let before = g.targets().targets()[0].clone();
        let _req = before.start_request();
        assert!(!g.update(std::slice::from_ref(&a)));
        assert!(g.update(&[a.clone(), b]));
        let after = g.targets().targets()[0].clone();
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.in_flight(), 1);
    }

    #[test]
    fn fails_open_when_nothing_is_healthy_and_honours_skip() {
        let g = TargetGroup::new(
            "g".into(),
            settings(),
            &[TargetSpec { addr: "127.0.0.1:1".parse().unwrap(), weight: 1 }],
            None,
        );
        let set = g.targets();
        let t = set.targets()[0].clone();
        t.set_state(TargetState::Unhealthy);
        assert!(g.pick(&set, None).is_some());
        assert!(g.pick(&set, Some(&t)).is_none());
        t.set_state(TargetState::Draining);
        assert!(g.pick(&set, None).is_none());
    }
}
