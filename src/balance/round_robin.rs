//! Round robin: a cursor (the calling worker's) advanced once per pick, skipping ineligible targets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Selector, Target, TargetSet};

/// Round robin over eligible targets.
#[derive(Debug, Clone, Copy)]
pub struct RoundRobin;

impl Selector for RoundRobin {
    #[inline]
    fn pick<'a>(
        &self,
        set: &'a TargetSet,
        cursor: &AtomicUsize,
        eligible: &dyn Fn(&Target) -> bool,
    ) -> Option<&'a Arc<Target>> {
        let targets = set.targets();
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let start = cursor.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|k| &targets[(start + k) % n]).find(|t| eligible(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::group::tests::set_of;

    #[test]
    fn cycles_evenly_and_skips_ineligible() {
        let set = set_of(3);
        let cursor = AtomicUsize::new(0);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let t = RoundRobin.pick(&set, &cursor, &|_| true).unwrap();
            counts[set.targets().iter().position(|x| Arc::ptr_eq(x, t)).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        let first = set.targets()[0].addr;
        for _ in 0..10 {
            assert_ne!(RoundRobin.pick(&set, &cursor, &|t| t.addr != first).unwrap().addr, first);
        }
        assert!(RoundRobin.pick(&set, &cursor, &|_| false).is_none());
    }
}
