//! Per-worker shards of hot counters. Every request bumps a handful of counters (responses by
//! code, latency histograms, processed bytes, the round-robin cursor); one atomic shared by every
//! worker makes their cores pass its cache line back and forth on each request. A [`Sharded`]
//! value keeps one copy per worker, each on its own cache line: a worker only writes its own,
//! and readers (a scrape, the CloudWatch publisher, the autoscaler) sum the copies, so every
//! reader sees the same totals.
//!
//! There are [`count`] shards (the machine's cores, at most 64); worker `i` uses shard
//! `i % count()`, threads that are not workers (the control thread, tests) shard 0.

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

thread_local! {
    /// The calling thread's shard (its worker index modulo the shard count).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards every [`Sharded`] value has.
pub fn count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 64))
}

/// Makes the calling thread use worker `index`'s shard (called once by each worker thread).
pub fn enter_worker(index: usize) {
    SHARD.with(|s| s.set(index % count()));
}

/// The calling thread's shard.
#[inline]
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// A value on a cache line of its own (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One `T` per shard.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded::new_with(|_| T::default())
    }
}

impl<T> Sharded<T> {
    /// Shard `i` starts as `make(i)`.
    pub fn new_with(mut make: impl FnMut(usize) -> T) -> Self {
        Sharded { shards: (0..count()).map(|i| Padded(make(i))).collect() }
    }

    /// The calling worker's copy.
    #[inline]
    pub fn local(&self) -> &T {
        // Every Sharded has count() shards and current() < count().
        &self.shards[current()].0
    }

    /// Every copy, for summing.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

/// A monotonic counter, sharded per worker.
#[derive(Debug, Default)]
pub struct Counter(Sharded<AtomicU64>);

impl Counter {
    /// Adds `n` on the calling worker's shard.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.local().fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over every shard.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_write_their_own_shard_and_readers_see_the_sum() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    enter_worker(i);
                    for _ in 0..1000 {
                        c.add(1);
                    }
                    current()
                })
            })
            .collect();
        let used: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(c.get(), 4000);
        assert!(used.iter().all(|&s| s < count()));
        if count() >= 2 {
            assert_ne!(used[0], used[1], "workers 0 and 1 share a shard on a multi-core machine");
        }
    }
}
