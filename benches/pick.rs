//! Target picking cost for each algorithm at 3, 100 and 1 000 targets.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pilotfish::balance::{Algorithm, GroupSettings, TargetGroup, TargetSpec};

fn group(n: u16, algorithm: Algorithm) -> TargetGroup {
    let specs: Vec<TargetSpec> = (0..n)
        .map(|i| TargetSpec {
            addr: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080)),
            weight: 1 + u32::from(i % 5),
        })
        .collect();
    let settings = GroupSettings::new(algorithm);
    TargetGroup::new("bench".into(), settings, &specs, None)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for (name, alg) in [
        ("round_robin", Algorithm::RoundRobin),
        ("least_outstanding_requests", Algorithm::LeastOutstandingRequests),
        ("weighted_random", Algorithm::WeightedRandom),
    ] {
        for n in [3u16, 100, 1_000] {
            let grp = group(n, alg);
            let set = grp.targets();
            // Some load so least-outstanding has real work: every target but a few is busy.
            let _busy: Vec<_> = set.targets().iter().skip(3).map(|t| t.start_request()).collect();
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| b.iter(|| black_box(grp.pick(&set, &[]))));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
