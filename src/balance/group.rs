//! A target group: its settings and an atomically swappable [`TargetSet`]. A discovery update or
//! reload builds a new set (reusing the `Arc<Target>` of addresses it already had) and publishes it
//! with one store, so a request sees either the old set or the new one, never a mix. Targets
//! removed while requests are in flight stay in the set as `draining` (never picked) until they are
//! idle or `deregistration_delay` runs out.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::shard::Sharded;

use super::queue::Queue;
use super::target::{now_ms, InFlightGuard, Reason};
use super::{pick, Algorithm, Target, TargetState};

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
    /// A set of exactly `targets`.
    pub fn from_targets(targets: Vec<Arc<Target>>) -> TargetSet {
        let mut acc = 0u64;
        let cumulative = targets
            .iter()
            .map(|t| {
                if t.state() != TargetState::Draining {
                    acc += u64::from(t.weight());
                }
                acc
            })
            .collect();
        TargetSet { targets, cumulative }
    }

    /// A set of new targets for `specs`, all in `state` (benches and tests).
    pub fn build(specs: &[TargetSpec], state: TargetState) -> TargetSet {
        Self::from_targets(specs.iter().map(|s| Target::new(s.addr, s.weight, state)).collect())
    }

    /// The targets in configuration order (draining ones last).
    #[inline]
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Running sums of the targets' weights (draining targets add nothing).
    #[inline]
    pub fn cumulative_weights(&self) -> &[u64] {
        &self.cumulative
    }

    /// The registered (not draining) targets as specs.
    pub fn registered_specs(&self) -> Vec<TargetSpec> {
        self.targets
            .iter()
            .filter(|t| !matches!(t.state(), TargetState::Draining | TargetState::Unused))
            .map(|t| TargetSpec { addr: t.addr, weight: t.weight() })
            .collect()
    }

    /// The target at `addr`, if present.
    pub fn find(&self, addr: SocketAddr) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.addr == addr)
    }
}

/// Active health check settings (ALB defaults in [`HealthCheck::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    /// None = the traffic port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive status ranges that pass.
    pub matcher: Vec<(u16, u16)>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            port: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            matcher: vec![(200, 200)],
        }
    }
}

impl HealthCheck {
    /// Whether `status` passes the matcher.
    pub fn matches(&self, status: u16) -> bool {
        self.matcher.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// How a target group picks and checks its targets.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub algorithm: Algorithm,
    /// Active checks; None = targets are healthy on registration and never checked.
    pub health_check: Option<HealthCheck>,
    /// Linear ramp from 10% to 100% of a target's share after it becomes healthy; zero = off.
    pub slow_start: Duration,
    /// How long removed targets may drain before they are dropped (ALB default 300 s).
    pub deregistration_delay: Duration,
    /// In-flight requests each target takes at most; 0 = no cap.
    pub max_requests_per_target: u32,
    /// Where requests wait when every available target is at the cap: `(size, timeout)`.
    pub queue: Option<(usize, Duration)>,
}

impl GroupSettings {
    /// Settings with the defaults for everything but the algorithm.
    pub fn new(algorithm: Algorithm) -> Self {
        GroupSettings {
            algorithm,
            health_check: None,
            slow_start: Duration::ZERO,
            deregistration_delay: Duration::from_secs(300),
            max_requests_per_target: 0,
            queue: None,
        }
    }

    fn initial_state(&self) -> TargetState {
        if self.health_check.is_some() {
            TargetState::Initial
        } else {
            TargetState::Healthy
        }
    }
}

/// A named target group.
#[derive(Debug)]
pub struct TargetGroup {
    pub name: Arc<str>,
    pub settings: GroupSettings,
    set: ArcSwap<TargetSet>,
    /// The round-robin cursor, one per worker (as each nginx worker keeps its own): no cache
    /// line passes between cores per pick. Worker `i` starts at target `i`, so workers that get
    /// requests at the same time do not all send them to the same target.
    cursor: Sharded<AtomicUsize>,
    /// Cursor for second picks (slow-start re-picks, fail-open), so they do not shift the
    /// round-robin order of first picks.
    alt_cursor: AtomicUsize,
    /// Requests waiting for a target under the cap (`queue` set), kept across reloads that
    /// leave its size and timeout as they were.
    pub queue: Option<Arc<Queue>>,
}

/// Why no target could be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// No target takes traffic (none healthy, none to fail open to).
    NoTarget,
    /// Every available target is at `max_requests_per_target`.
    AtCap,
}

impl TargetGroup {
    /// A group with `specs` as its targets. Targets of `prev` (the same group in the previous
    /// snapshot) are reused by address; those no longer listed start draining.
    pub fn new(
        name: Arc<str>,
        settings: GroupSettings,
        specs: &[TargetSpec],
        prev: Option<&TargetGroup>,
    ) -> TargetGroup {
        let queue = settings.queue.map(|(size, timeout)| match prev.and_then(|p| p.queue.as_ref()) {
            Some(q) if q.size == size && q.timeout == timeout => q.clone(),
            _ => Queue::new(size, timeout),
        });
        let g = TargetGroup {
            name,
            settings,
            set: ArcSwap::from_pointee(TargetSet::default()),
            cursor: Sharded::new_with(AtomicUsize::new),
            alt_cursor: AtomicUsize::new(0),
            queue,
        };
        if let Some(p) = prev {
            g.set.store(p.set.load_full());
        }
        g.update(specs);
        g
    }

    /// The current target set.
    #[inline]
    pub fn targets(&self) -> arc_swap::Guard<Arc<TargetSet>> {
        self.set.load()
    }

    /// Replaces the registered targets with `specs` (control plane only). Listed targets keep
    /// their state; unlisted ones drain (or go at once when idle or the delay is zero); a set
    /// equal to the current one publishes nothing. Returns whether anything changed.
    pub fn update(&self, specs: &[TargetSpec]) -> bool {
        let cur = self.set.load_full();
        let registered: Vec<&Arc<Target>> = cur.targets.iter().filter(|t| t.state() != TargetState::Draining).collect();
        let unchanged = registered.len() == specs.len()
            && registered.iter().zip(specs).all(|(t, s)| t.addr == s.addr && t.weight() == s.weight);
        if unchanged {
            return false;
        }
        let mut next: Vec<Arc<Target>> = specs
            .iter()
            .map(|s| match cur.find(s.addr) {
                Some(t) => {
                    t.set_weight(s.weight);
                    if matches!(t.state(), TargetState::Draining | TargetState::Unused) {
                        // Registered again while draining: starts over.
                        let st = self.settings.initial_state();
                        let reason =
                            if st == TargetState::Initial { Reason::InitialHealthChecking } else { Reason::None };
                        t.set_state(st, reason);
                    }
                    t.clone()
                }
                None => Target::new(s.addr, s.weight, self.settings.initial_state()),
            })
            .collect();
        for t in cur.targets.iter().filter(|t| !specs.iter().any(|s| s.addr == t.addr)) {
            if self.settings.deregistration_delay.is_zero() || t.in_flight() == 0 {
                t.set_state(TargetState::Unused, Reason::None);
            } else {
                if t.state() != TargetState::Draining {
                    t.set_state(TargetState::Draining, Reason::DeregistrationInProgress);
                }
                next.push(t.clone());
            }
        }
        self.set.store(Arc::new(TargetSet::from_targets(next)));
        if let Some(q) = &self.queue {
            q.freed();
        }
        true
    }

    /// Drops draining targets that are idle or past `deregistration_delay` (control plane).
    /// Returns the addresses dropped.
    pub fn sweep_draining(&self) -> Vec<SocketAddr> {
        let cur = self.set.load_full();
        let now = now_ms();
        let delay = self.settings.deregistration_delay.as_millis() as u64;
        let done = |t: &Arc<Target>| {
            t.state() == TargetState::Draining && (t.in_flight() == 0 || t.draining_for(now) >= delay)
        };
        if !cur.targets.iter().any(done) {
            return Vec::new();
        }
        let (gone, keep): (Vec<_>, Vec<_>) = cur.targets.iter().cloned().partition(done);
        for t in &gone {
            t.set_state(TargetState::Unused, Reason::None);
        }
        self.set.store(Arc::new(TargetSet::from_targets(keep)));
        gone.iter().map(|t| t.addr).collect()
    }

    /// Whether the group is failing open: no healthy target but some unhealthy ones.
    pub fn is_fail_open(&self) -> bool {
        let set = self.targets();
        !set.targets.iter().any(|t| t.is_routable()) && set.targets.iter().any(|t| t.state() == TargetState::Unhealthy)
    }

    /// Picks a target for a new request, skipping `tried` (targets that already failed this
    /// request: a retry never goes back to one). Healthy targets first, each new one admitted at its slow-start share; when none
    /// is healthy, any unhealthy one (fail-open, ALB's rule). `initial` and `draining` targets
    /// never get new requests.
    #[inline]
    pub fn pick(&self, set: &TargetSet, tried: &[Arc<Target>]) -> Option<Arc<Target>> {
        let capped = self.settings.max_requests_per_target > 0;
        let now = if capped && !self.settings.slow_start.is_zero() { now_ms() } else { 0 };
        self.pick_under(set, tried, capped, now)
    }

    /// Picks and claims a slot on a target for a new request: `preferred` (a sticky session's
    /// target) when it takes traffic and has room, else a pick among the targets under
    /// `max_requests_per_target`, skipping `tried`.
    pub fn claim(
        &self,
        set: &TargetSet,
        tried: &[Arc<Target>],
        preferred: Option<&Arc<Target>>,
    ) -> Result<(Arc<Target>, InFlightGuard), Busy> {
        let capped = self.settings.max_requests_per_target > 0;
        let queue = self.queue.as_ref();
        if !capped {
            // No cap: the pick as it was before caps existed, and a plain in-flight count.
            let t = match preferred.filter(|t| tried.is_empty() && t.is_routable()) {
                Some(t) => t.clone(),
                None => self.pick_under(set, tried, false, 0).ok_or(Busy::NoTarget)?,
            };
            let guard = t.start_request();
            return Ok((t, guard));
        }
        let now = if capped && !self.settings.slow_start.is_zero() { now_ms() } else { 0 };
        if let Some(t) = preferred.filter(|t| tried.is_empty() && t.is_routable()) {
            if let Some(g) = t.try_start_request(self.cap_of(t, now), queue) {
                return Ok((t.clone(), g));
            }
        }
        // A pick can race another worker's for the last slot of a target: a few more picks.
        for _ in 0..4 {
            let Some(t) = self.pick_under(set, tried, capped, now) else { break };
            if let Some(g) = t.try_start_request(self.cap_of(&t, now), queue) {
                return Ok((t, g));
            }
        }
        match capped && self.pick_under(set, tried, false, now).is_some() {
            true => Err(Busy::AtCap),
            false => Err(Busy::NoTarget),
        }
    }

    /// The in-flight cap of `t` now (0: none): `max_requests_per_target`, scaled like its share
    /// while the target is in slow start (at least 1), so a fresh target is not flooded when
    /// the others are full (HAProxy scales `maxconn` with `slowstart` the same way).
    #[inline]
    fn cap_of(&self, t: &Target, now: u64) -> u32 {
        let cap = self.settings.max_requests_per_target;
        if cap == 0 || self.settings.slow_start.is_zero() {
            return cap;
        }
        match t.slow_start_factor(self.settings.slow_start, now) {
            Some(f) => ((f64::from(cap) * f) as u32).clamp(1, cap),
            None => cap,
        }
    }

    /// [`TargetGroup::pick`], among the targets under their cap when `capped`.
    fn pick_under(&self, set: &TargetSet, tried: &[Arc<Target>], capped: bool, now: u64) -> Option<Arc<Target>> {
        let not_skipped = |t: &Target| {
            !tried.iter().any(|s| std::ptr::eq(&**s, t)) && (!capped || t.in_flight() < self.cap_of(t, now))
        };
        let alg = self.settings.algorithm;
        let healthy = |t: &Target| t.is_routable() && not_skipped(t);
        if let Some(t) = pick(alg, set, self.cursor.local(), &healthy) {
            if !self.settings.slow_start.is_zero() {
                if let Some(f) = t.slow_start_factor(self.settings.slow_start, now_ms()) {
                    if fastrand::f64() >= f {
                        // Not admitted at its current share: let the others take this one.
                        let others = |x: &Target| healthy(x) && !std::ptr::eq(x, &**t);
                        if let Some(alt) = pick(alg, set, &self.alt_cursor, &others) {
                            return Some(alt.clone());
                        }
                    }
                }
            }
            return Some(t.clone());
        }
        // Fail open only when no target takes traffic, not when those that do are at their cap.
        let untried = |t: &Target| !tried.iter().any(|s| std::ptr::eq(&**s, t));
        if capped && set.targets().iter().any(|t| t.is_routable() && untried(t)) {
            return None;
        }
        pick(alg, set, &self.alt_cursor, &|t| t.state() == TargetState::Unhealthy && not_skipped(t)).cloned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn set_of(n: u16) -> TargetSet {
        let specs: Vec<_> = (0..n).map(|i| spec(10_000 + i)).collect();
        TargetSet::build(&specs, TargetState::Healthy)
    }

    fn spec(port: u16) -> TargetSpec {
        TargetSpec { addr: SocketAddr::from(([127, 0, 0, 1], port)), weight: 1 }
    }

    fn settings() -> GroupSettings {
        GroupSettings::new(Algorithm::RoundRobin)
    }

    #[test]
    fn update_keeps_identity_and_skips_no_op() {
        let (a, b) = (spec(1), spec(2));
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
    fn slow_start_admits_a_new_target_at_its_share() {
        let mut s = GroupSettings::new(Algorithm::LeastOutstandingRequests);
        s.health_check = Some(HealthCheck::default());
        s.slow_start = Duration::from_secs(3600);
        let g = TargetGroup::new("g".into(), s, &[spec(1), spec(2)], None);
        let set = g.targets();
        set.targets()[0].set_state(TargetState::Healthy, Reason::None);
        set.targets()[1].set_state(TargetState::Healthy, Reason::None);
        // Both just became healthy: each is at 10%, so rejections fall back to the other.
        let fresh = (0..2000).filter(|_| g.pick(&set, &[]).unwrap().addr == set.targets()[1].addr).count();
        assert!((800..1200).contains(&fresh), "two fresh targets still split evenly: {fresh}");
        let old = Target::new(SocketAddr::from(([127, 0, 0, 1], 3)), 1, TargetState::Healthy);
        let set2 = TargetSet::from_targets(vec![old, set.targets()[1].clone()]);
        let fresh = (0..4000).filter(|_| g.pick(&set2, &[]).unwrap().addr == set.targets()[1].addr).count();
        // share = 0.5 × 0.1 = 5% of 4000 = 200.
        assert!((100..320).contains(&fresh), "a fresh target gets ~5%: {fresh}");
    }

    #[test]
    fn least_outstanding_and_slow_start_hold_under_the_cap() {
        let mut s = GroupSettings::new(Algorithm::LeastOutstandingRequests);
        s.max_requests_per_target = 2;
        let g = TargetGroup::new("g".into(), s, &[spec(1), spec(2), spec(3)], None);
        let set = g.targets();
        let mut held: Vec<_> = (0..6).map(|_| g.claim(&set, &[], None).unwrap()).collect();
        for t in set.targets() {
            assert_eq!(t.in_flight(), 2, "least-outstanding fills the targets evenly up to the cap");
        }
        assert_eq!(g.claim(&set, &[], None).err(), Some(Busy::AtCap));
        let freed = held.iter().position(|(t, _)| t.addr == spec(2).addr).unwrap();
        held.remove(freed);
        let (t, _g) = g.claim(&set, &[], None).unwrap();
        assert_eq!(t.addr, spec(2).addr, "the freed slot is taken");
        assert_eq!(
            g.claim(&set, &[], Some(&set.targets()[0])).err(),
            Some(Busy::AtCap),
            "a full sticky target is full"
        );

        // Slow start: a fresh target's cap ramps with its share, from 1.
        let mut s = GroupSettings::new(Algorithm::LeastOutstandingRequests);
        s.max_requests_per_target = 10;
        s.slow_start = Duration::from_secs(3600);
        s.health_check = Some(HealthCheck::default());
        let g = TargetGroup::new("g".into(), s, &[spec(1)], None);
        let set = g.targets();
        set.targets()[0].set_state(TargetState::Healthy, Reason::None);
        let (_t, _g) = g.claim(&set, &[], None).unwrap();
        assert_eq!(g.claim(&set, &[], None).err(), Some(Busy::AtCap), "10% of 10: one request until it ramps");
        let none = GroupSettings::new(Algorithm::LeastOutstandingRequests);
        let g = TargetGroup::new("g".into(), none, &[spec(1)], None);
        let held: Vec<_> = (0..100).map(|_| g.claim(&g.targets(), &[], None).unwrap()).collect();
        assert_eq!(held[0].0.in_flight(), 100, "no cap: every claim succeeds");
    }

    #[test]
    fn removed_targets_drain_until_idle() {
        let (a, b) = (spec(1), spec(2));
        let g = TargetGroup::new("g".into(), settings(), &[a.clone(), b.clone()], None);
        let tb = g.targets().find(b.addr).unwrap().clone();
        let req = tb.start_request();
        assert!(g.update(std::slice::from_ref(&a)));
        assert_eq!(tb.state(), TargetState::Draining);
        let set = g.targets();
        for _ in 0..10 {
            assert_eq!(g.pick(&set, &[]).unwrap().addr, a.addr, "draining targets get no new requests");
        }
        assert!(g.sweep_draining().is_empty(), "still busy");
        drop(req);
        assert_eq!(g.sweep_draining(), vec![b.addr]);
        assert_eq!(tb.state(), TargetState::Unused);
        assert_eq!(g.targets().targets().len(), 1);
    }

    #[test]
    fn fails_open_over_unhealthy_targets_only_and_honours_skip() {
        let mut s = settings();
        s.health_check = Some(HealthCheck::default());
        let g = TargetGroup::new("g".into(), s, &[spec(1), spec(2)], None);
        let set = g.targets();
        let (t1, t2) = (set.targets()[0].clone(), set.targets()[1].clone());
        assert!(g.pick(&set, &[]).is_none(), "initial targets get no traffic");
        t1.set_state(TargetState::Unhealthy, Reason::Timeout);
        assert!(g.is_fail_open());
        assert_eq!(g.pick(&set, &[]).unwrap().addr, t1.addr);
        t2.set_state(TargetState::Unhealthy, Reason::Timeout);
        let picks: Vec<_> = (0..4).map(|_| g.pick(&set, &[]).unwrap().addr).collect();
        assert!(picks.contains(&t1.addr) && picks.contains(&t2.addr), "fail-open round-robins: {picks:?}");
        t2.set_state(TargetState::Initial, Reason::InitialHealthChecking);
        assert!(g.pick(&set, std::slice::from_ref(&t1)).is_none());
        t2.set_state(TargetState::Healthy, Reason::None);
        assert!(!g.is_fail_open());
        assert_eq!(g.pick(&set, &[]).unwrap().addr, t2.addr);
    }
}
