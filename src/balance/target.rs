//! A target: one upstream address with its live counters. A `Target` keeps its identity
//! (`Arc`) across snapshots and discovery updates, so in-flight counts, health and the
//! connection pool survive reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use crate::proxy::upstream::Pool;

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
}

/// One upstream address and its shared, lock-free state.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Relative weight for `weighted_random` (ALB range 0–999).
    pub weight: u32,
    in_flight: AtomicU32,
    state: AtomicU8,
    /// Keep-alive connections to this target.
    pub pool: Pool,
}

impl Target {
    /// A new target in `state`.
    pub fn new(addr: SocketAddr, weight: u32, state: TargetState) -> Arc<Target> {
        Arc::new(Target {
            addr,
            weight,
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(state as u8),
            pool: Pool::new(),
        })
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

    /// Sets the lifecycle state (control plane only).
    pub fn set_state(&self, s: TargetState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Whether new requests may go here in normal (not fail-open) operation.
    #[inline]
    pub fn is_routable(&self) -> bool {
        self.state.load(Ordering::Relaxed) == TargetState::Healthy as u8
    }

    /// Counts a request as outstanding until the returned guard drops.
    #[inline]
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

/// Decrements the target's in-flight count when dropped (with the response body).
#[derive(Debug)]
pub struct InFlightGuard(Arc<Target>);

impl InFlightGuard {
    /// The target this request is on.
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
