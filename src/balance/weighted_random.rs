//! Weighted random: draws proportionally to target weights with one random number and a binary
//! search over the set's precomputed cumulative weights; falls back to a linear weighted draw
//! over eligible targets when some are not eligible.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{Selector, Target, TargetSet};

/// Weighted random choice.
#[derive(Debug, Clone, Copy)]
pub struct WeightedRandom;

impl Selector for WeightedRandom {
    #[inline]
    fn pick<'a>(
        &self,
        set: &'a TargetSet,
        _cursor: &AtomicUsize,
        eligible: &dyn Fn(&Target) -> bool,
    ) -> Option<&'a Arc<Target>> {
        let targets = set.targets();
        let cumulative = set.cumulative_weights();
        let total = *cumulative.last()?;
        if total > 0 {
            let r = fastrand::u64(0..total);
            let i = cumulative.partition_point(|&c| c <= r);
            if eligible(&targets[i]) {
                return Some(&targets[i]);
            }
        }
        // Slow path: some targets are not eligible (or all weights are zero).
        let sum: u64 = targets.iter().filter(|t| eligible(t)).map(|t| u64::from(t.weight())).sum();
        if sum == 0 {
            return targets.iter().find(|t| eligible(t));
        }
        let mut r = fastrand::u64(0..sum);
        targets.iter().filter(|t| eligible(t)).find(|t| {
            let w = u64::from(t.weight());
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::group::TargetSpec;
    use crate::balance::TargetState;

    #[test]
    fn follows_weights() {
        let specs: Vec<_> = [(1, 100), (2, 300)]
            .iter()
            .map(|&(p, w)| TargetSpec { addr: format!("127.0.0.1:{p}").parse().unwrap(), weight: w })
            .collect();
        let set = TargetSet::build(&specs, TargetState::Healthy);
        let cursor = AtomicUsize::new(0);
        let heavy =
            (0..4000).filter(|_| WeightedRandom.pick(&set, &cursor, &|_| true).unwrap().addr.port() == 2).count();
        assert!((2700..3300).contains(&heavy), "expected ~3000 of 4000, got {heavy}");
        let only = WeightedRandom.pick(&set, &cursor, &|t| t.addr.port() == 1).unwrap();
        assert_eq!(only.addr.port(), 1);
    }
}
