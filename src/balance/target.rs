//! A target: one upstream address with its live, lock-free state. A `Target` keeps its identity
//! (`Arc`) across snapshots and discovery updates, so in-flight counts, health, the slow-start
//! clock and the stable [`Target::id`] (which keys the workers' connection pools, see
//! `proxy::upstream`) survive reloads.
//!
//! The health state machine (ALB's): `initial` → one passing check → `healthy`;
//! `unhealthy_threshold` consecutive failures (active checks, or connect failures / resets /
//! timeouts on live traffic) → `unhealthy`; `healthy_threshold` consecutive passes → `healthy`
//! again; deregistered → `draining` → removed (`unused`).

use super::queue::Queue;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Lifecycle state of a target (ALB's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TargetState {
    /// Registered, not checked yet: no traffic until a check passes.
    Initial = 0,
    Healthy = 1,
    Unhealthy = 2,
    /// Deregistered: no new requests; in-flight ones finish.
    Draining = 3,
    Unused = 4,
}

impl TargetState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => TargetState::Initial,
            1 => TargetState::Healthy,
            2 => TargetState::Unhealthy,
            3 => TargetState::Draining,
            _ => TargetState::Unused,
        }
    }

    /// The lowercase name used in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [TargetState; 5] = [
        TargetState::Initial,
        TargetState::Healthy,
        TargetState::Unhealthy,
        TargetState::Draining,
        TargetState::Unused,
    ];
}

/// Why a target is in its state (ALB's reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    None = 0,
    InitialHealthChecking = 1,
    ResponseCodeMismatch = 2,
    Timeout = 3,
    FailedHealthChecks = 4,
    ConnectionFailed = 5,
    PassiveFailures = 6,
    DeregistrationInProgress = 7,
    HealthChecksDisabled = 8,
}

impl Reason {
    fn from_u8(v: u8) -> Self {
        use Reason::*;
        [
            None,
            InitialHealthChecking,
            ResponseCodeMismatch,
            Timeout,
            FailedHealthChecks,
            ConnectionFailed,
            PassiveFailures,
            DeregistrationInProgress,
            HealthChecksDisabled,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(None)
    }

    /// ALB's reason code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::InitialHealthChecking => "Elb.InitialHealthChecking",
            Reason::ResponseCodeMismatch => "Target.ResponseCodeMismatch",
            Reason::Timeout => "Target.Timeout",
            Reason::FailedHealthChecks => "Target.FailedHealthChecks",
            Reason::ConnectionFailed => "Target.ConnectionFailed",
            Reason::PassiveFailures => "Target.PassiveFailures",
            Reason::DeregistrationInProgress => "Target.DeregistrationInProgress",
            Reason::HealthChecksDisabled => "Target.HealthCheckDisabled",
        }
    }
}

/// Result of one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    Fail(Reason),
}

/// Milliseconds on a process-wide monotonic clock; never 0 (0 means "never" in timestamps).
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream address and its shared, lock-free state.
#[derive(Debug)]
pub struct Target {
    /// Unique for the process's life: what the data plane keys a target's connections by.
    pub id: u64,
    pub addr: SocketAddr,
    /// Relative weight for `weighted_random` (ALB range 0–999).
    weight: AtomicU32,
    in_flight: AtomicU32,
    state: AtomicU8,
    reason: AtomicU8,
    fail_streak: AtomicU32,
    pass_streak: AtomicU32,
    /// [`now_ms`] when the target last became healthy (slow-start clock); 0 = never.
    healthy_since: AtomicU64,
    /// [`now_ms`] when draining started.
    draining_since: AtomicU64,
    /// Unix milliseconds of the last active check, and its result (0 none, 1 pass, 2 fail).
    last_check_unix_ms: AtomicU64,
    last_check_result: AtomicU8,
    /// [`now_ms`] of the next active check (health checker only).
    pub(crate) next_check: AtomicU64,
}

impl Target {
    /// A new target in `state`.
    pub fn new(addr: SocketAddr, weight: u32, state: TargetState) -> Arc<Target> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let t = Target {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            weight: AtomicU32::new(weight),
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(state as u8),
            reason: AtomicU8::new(if state == TargetState::Initial {
                Reason::InitialHealthChecking
            } else {
                Reason::None
            } as u8),
            fail_streak: AtomicU32::new(0),
            pass_streak: AtomicU32::new(0),
            healthy_since: AtomicU64::new(0),
            draining_since: AtomicU64::new(0),
            last_check_unix_ms: AtomicU64::new(0),
            last_check_result: AtomicU8::new(0),
            next_check: AtomicU64::new(0),
        };
        // Targets that start healthy (no checks configured) keep healthy_since at 0: no slow start.
        Arc::new(t)
    }

    /// Relative weight for `weighted_random`.
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight (control plane; a weight change keeps the target's identity).
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed);
    }

    /// Requests currently outstanding on this target.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Current lifecycle state.
    #[inline]
    pub fn state(&self) -> TargetState {
        TargetState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Why the target is in its state.
    pub fn reason(&self) -> Reason {
        Reason::from_u8(self.reason.load(Ordering::Relaxed))
    }

    /// Sets the lifecycle state and reason (control plane, and passive ejection).
    pub fn set_state(&self, s: TargetState, reason: Reason) {
        let prev = self.state.swap(s as u8, Ordering::Relaxed);
        self.reason.store(reason as u8, Ordering::Relaxed);
        if s == TargetState::Healthy && prev != TargetState::Healthy as u8 {
            self.healthy_since.store(now_ms(), Ordering::Relaxed);
        }
        if s == TargetState::Draining && prev != TargetState::Draining as u8 {
            self.draining_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether new requests may go here in normal (not fail-open) operation.
    #[inline]
    pub fn is_routable(&self) -> bool {
        self.state.load(Ordering::Relaxed) == TargetState::Healthy as u8
    }

    /// How far through slow start this target is: `None` when done (or `window` is zero), else the
    /// share of its normal traffic it should get, rising linearly from 0.1 to 1.0.
    #[inline]
    pub fn slow_start_factor(&self, window: Duration, now: u64) -> Option<f64> {
        let since = self.healthy_since.load(Ordering::Relaxed);
        let window = window.as_millis() as u64;
        if window == 0 || since == 0 {
            return None;
        }
        let elapsed = now.saturating_sub(since);
        (elapsed < window).then(|| 0.1 + 0.9 * elapsed as f64 / window as f64)
    }

    /// Milliseconds spent draining so far (0 when not draining).
    pub fn draining_for(&self, now: u64) -> u64 {
        match self.state() {
            TargetState::Draining => now.saturating_sub(self.draining_since.load(Ordering::Relaxed)),
            _ => 0,
        }
    }

    /// Applies one active check result with the group's thresholds. Returns the new state if it changed.
    pub fn record_check(
        &self,
        result: CheckResult,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<TargetState> {
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_check_unix_ms.store(unix, Ordering::Relaxed);
        self.last_check_result.store(if result == CheckResult::Pass { 1 } else { 2 }, Ordering::Relaxed);
        let state = self.state();
        if matches!(state, TargetState::Draining | TargetState::Unused) {
            return None;
        }
        match result {
            CheckResult::Pass => {
                self.fail_streak.store(0, Ordering::Relaxed);
                let passes = self.pass_streak.fetch_add(1, Ordering::Relaxed) + 1;
                let promote = match state {
                    TargetState::Initial => true,
                    TargetState::Unhealthy => passes >= healthy_threshold,
                    _ => false,
                };
                if promote {
                    self.set_state(TargetState::Healthy, Reason::None);
                    return Some(TargetState::Healthy);
                }
                None
            }
            CheckResult::Fail(reason) => {
                self.pass_streak.store(0, Ordering::Relaxed);
                let fails = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
                if state != TargetState::Unhealthy && fails >= unhealthy_threshold {
                    self.set_state(TargetState::Unhealthy, reason);
                    return Some(TargetState::Unhealthy);
                }
                if state == TargetState::Unhealthy {
                    self.reason.store(reason as u8, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// A connect failure, reset or timeout seen on live traffic (passive check): counts as a
    /// failed check at once. Returns true if it ejected the target.
    #[inline]
    pub fn record_passive_failure(&self, unhealthy_threshold: u32) -> bool {
        self.pass_streak.store(0, Ordering::Relaxed);
        let fails = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= unhealthy_threshold && self.is_routable() {
            self.set_state(TargetState::Unhealthy, Reason::PassiveFailures);
            return true;
        }
        false
    }

    /// A request to this target got a response: ends a passive failure streak.
    #[inline]
    pub fn record_passive_success(&self) {
        if self.fail_streak.load(Ordering::Relaxed) != 0 && self.is_routable() {
            self.fail_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Last active check: unix milliseconds and "pass"/"fail" (None before the first).
    pub fn last_check(&self) -> Option<(u64, &'static str)> {
        match self.last_check_result.load(Ordering::Relaxed) {
            0 => None,
            r => Some((self.last_check_unix_ms.load(Ordering::Relaxed), if r == 1 { "pass" } else { "fail" })),
        }
    }

    /// Counts a request as outstanding until the returned guard drops.
    #[inline]
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { target: self.clone(), queue: None }
    }

    /// Counts a request as outstanding if fewer than `cap` are (0: no cap); the guard tells
    /// `queue` when the request ends.
    #[inline]
    pub fn try_start_request(self: &Arc<Self>, cap: u32, queue: Option<&Arc<Queue>>) -> Option<InFlightGuard> {
        if cap == 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            // SeqCst, as the queue's count: a waiter that finds the target full and a request
            // that ends and finds nobody waiting cannot both be right (no lost wakeup).
            self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cap).then_some(n + 1)).ok()?;
        }
        Some(InFlightGuard { target: self.clone(), queue: queue.cloned() })
    }
}

/// Decrements the target's in-flight count when dropped (with the response body), and lets the
/// group's queue know a slot is free.
#[derive(Debug)]
pub struct InFlightGuard {
    target: Arc<Target>,
    queue: Option<Arc<Queue>>,
}

impl InFlightGuard {
    /// The target this request is on.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            q.freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(state: TargetState) -> Arc<Target> {
        Target::new("127.0.0.1:1".parse().unwrap(), 1, state)
    }

    #[test]
    fn initial_needs_one_pass_and_thresholds_count_exactly() {
        let x = t(TargetState::Initial);
        assert_eq!(x.reason(), Reason::InitialHealthChecking);
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), Some(TargetState::Healthy));
        assert_eq!(x.record_check(CheckResult::Fail(Reason::Timeout), 3, 2), None);
        assert_eq!(x.record_check(CheckResult::Fail(Reason::Timeout), 3, 2), Some(TargetState::Unhealthy));
        assert_eq!(x.reason(), Reason::Timeout);
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), None);
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), None);
        assert_eq!(
            x.record_check(CheckResult::Fail(Reason::ResponseCodeMismatch), 3, 2),
            None,
            "a failure resets the pass streak"
        );
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), None);
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), None);
        assert_eq!(x.record_check(CheckResult::Pass, 3, 2), Some(TargetState::Healthy));
    }

    #[test]
    fn passive_failures_eject_after_the_threshold_and_success_resets() {
        let x = t(TargetState::Healthy);
        assert!(!x.record_passive_failure(3));
        assert!(!x.record_passive_failure(3));
        x.record_passive_success();
        assert!(!x.record_passive_failure(3));
        assert!(!x.record_passive_failure(3));
        assert!(x.record_passive_failure(3));
        assert_eq!((x.state(), x.reason()), (TargetState::Unhealthy, Reason::PassiveFailures));
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full() {
        let x = t(TargetState::Initial);
        let w = Duration::from_millis(1000);
        assert_eq!(x.slow_start_factor(w, now_ms()), None, "never healthy");
        x.set_state(TargetState::Healthy, Reason::None);
        let since = x.healthy_since.load(Ordering::Relaxed);
        assert!((x.slow_start_factor(w, since).unwrap() - 0.1).abs() < 1e-9);
        assert!((x.slow_start_factor(w, since + 500).unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(x.slow_start_factor(w, since + 1000), None);
        assert_eq!(x.slow_start_factor(Duration::ZERO, since), None);
        assert_eq!(t(TargetState::Healthy).slow_start_factor(w, since), None, "static targets skip slow start");
    }
}
