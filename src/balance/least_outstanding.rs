//! Least outstanding requests: the eligible target with the fewest in-flight requests; ties are
//! broken uniformly at random (reservoir sampling), so idle targets share load instead of the
//! first one taking every request.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{Selector, Target, TargetSet};

/// Least outstanding requests with random tie-break.
#[derive(Debug, Clone, Copy)]
pub struct LeastOutstanding;

impl Selector for LeastOutstanding {
    #[inline]
    fn pick<'a>(
        &self,
        set: &'a TargetSet,
        _cursor: &AtomicUsize,
        eligible: &dyn Fn(&Target) -> bool,
    ) -> Option<&'a Arc<Target>> {
        let mut best: Option<&Arc<Target>> = None;
        let mut best_load = u32::MAX;
        let mut ties = 0u32;
        for t in set.targets() {
            let load = t.in_flight();
            if load > best_load || !eligible(t) {
                continue;
            }
            if load < best_load {
                best = Some(t);
                best_load = load;
                ties = 1;
            } else {
                ties += 1;
                if fastrand::u32(0..ties) == 0 {
                    best = Some(t);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::group::tests::set_of;

    #[test]
    fn avoids_busy_targets_and_spreads_ties() {
        let set = set_of(3);
        let cursor = AtomicUsize::new(0);
        let _busy = set.targets()[0].start_request();
        let mut seen = [0; 3];
        for _ in 0..600 {
            let t = LeastOutstanding.pick(&set, &cursor, &|_| true).unwrap();
            seen[set.targets().iter().position(|x| Arc::ptr_eq(x, t)).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 200 && seen[2] > 200, "ties must be spread: {seen:?}");
    }
}
