//! Route lookup cost against the rule count: 10, 100, 1 000 and 10 000 rules mixing exact hosts,
//! wildcard hosts, host-less path rules and header conditions. The index must keep it flat.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use pilotfish::routing::{Conditions, Pattern, RequestView, Router, Rule};

fn rules(n: usize) -> Vec<Rule<usize>> {
    (0..n)
        .map(|i| {
            let mut c = Conditions::default();
            match i % 4 {
                0 => {
                    c.hosts.push(Pattern::new(&format!("svc{i}.example.com"), true));
                    c.paths.push(Pattern::new(&format!("/api/v{}/*", i % 7), false));
                }
                1 => c.hosts.push(Pattern::new(&format!("*.tenant{i}.example.net"), true)),
                2 => c.paths.push(Pattern::new(&format!("/p{i}/*"), false)),
                _ => {
                    c.hosts.push(Pattern::new(&format!("h{i}.example.org"), true));
                    c.headers.push((http::HeaderName::from_static("x-canary"), vec![Pattern::new("on", false)]));
                }
            }
            Rule { name: format!("r{i}").into(), priority: i as u32 + 1, conditions: c, action: i }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 100, 1_000, 10_000] {
        let router = Router::new(rules(n), usize::MAX);
        // Requests that hit the last rule of each kind (worst case for a linear scan) and a miss.
        let last = |kind: usize| (n - 1 - kind) / 4 * 4 + kind;
        let exact_host = format!("svc{}.example.com", last(0));
        let exact_path = format!("/api/v{}/users", last(0) % 7);
        let wild_host = format!("a.tenant{}.example.net", last(1));
        let path = format!("/p{}/x", last(2));
        let cases = [
            ("exact_host_path", exact_host.as_str(), exact_path.as_str()),
            ("wildcard_host", wild_host.as_str(), "/"),
            ("path_only", "other.example", path.as_str()),
            ("miss", "nothing.example", "/nothing"),
        ];
        for (name, host, path) in cases {
            let view = RequestView {
                host,
                path,
                query: None,
                method: &Method::GET,
                source_ip: [10, 0, 0, 1].into(),
                headers: &headers,
            };
            let hit = *router.route(&view).action != usize::MAX;
            assert_eq!(hit, name != "miss", "bench case {name}");
            g.bench_with_input(BenchmarkId::new(name, n), &view, |b, v| {
                b.iter(|| black_box(router.route(black_box(v)).action))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
