//! Reading and compiling a configuration against its size: 100, 1 000 and 10 000 rules, valid, and
//! with one bad value in every tenth rule (the path that reads each element alone to collect every
//! error). Both must grow linearly with the file: a reload runs this on the control thread.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pilotfish::config::{compile, CompileInput};
use pilotfish::telemetry::metrics::Metrics;

fn config(rules: usize, broken_every: Option<usize>) -> String {
    let mut t = String::from(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\ndefault_action = { forward = \"g\" }\n\n\
         [[target_groups]]\nname = \"g\"\ntargets = [\"127.0.0.1:9000\"]\n",
    );
    for i in 0..rules {
        let priority = match broken_every {
            Some(k) if i % k == 0 => "\"high\"".to_string(),
            _ => (i + 1).to_string(),
        };
        t.push_str(&format!(
            "\n[[rules]]\nname = \"r{i}\"\nlisteners = [\"web\"]\npriority = {priority}\n\
             host = [\"h{i}.example.com\"]\npath = [\"/p{i}/*\"]\nforward = \"g\"\n"
        ));
    }
    t
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_compile");
    g.sample_size(10);
    for n in [100usize, 1_000, 10_000] {
        for (label, broken) in [("valid", None), ("errors", Some(10))] {
            let text = config(n, broken);
            let metrics = Metrics::default();
            g.bench_with_input(BenchmarkId::new(label, n), &text, |b, text| {
                b.iter(|| {
                    let out = compile(CompileInput {
                        name: "bench.toml",
                        text,
                        previous: None,
                        metrics: &metrics,
                        generation: 1,
                        base_dir: None,
                        material: &Default::default(),
                    });
                    assert_eq!(out.is_ok(), broken.is_none());
                    black_box(out.is_ok())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
