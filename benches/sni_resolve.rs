//! SNI certificate resolution against the number of certificates on a listener: 10, 1 000 and
//! 10 000 (half exact names, half wildcards). Must stay flat (hash lookups, no scan).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pilotfish::tls::load::KeyKind;
use pilotfish::tls::CertStore;
use rustls::sign::CertifiedKey;

fn key() -> Arc<CertifiedKey> {
    let k = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()]).unwrap().self_signed(&k).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(k.serialize_der().into());
    Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], der, &pilotfish::tls::provider()).unwrap())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sni_resolve");
    // Resolution cost does not depend on the key, so one key serves every name.
    let k = key();
    for n in [10usize, 1_000, 10_000] {
        let mut store = CertStore::default();
        for i in 0..n {
            let name = if i % 2 == 0 { format!("site{i}.example.com") } else { format!("*.tenant{i}.example.net") };
            store.add_names(&[name], if i % 3 == 0 { KeyKind::Rsa } else { KeyKind::Ecdsa }, &k);
        }
        let exact = format!("site{}.example.com", (n - 2) / 2 * 2);
        let wild = format!("app.tenant{}.example.net", (n - 1) / 2 * 2 + 1);
        for (case, sni) in [
            ("exact", Some(exact.as_str())),
            ("wildcard", Some(wild.as_str())),
            ("default", Some("nothing.test")),
            ("no_sni", None),
        ] {
            g.bench_with_input(BenchmarkId::new(case, n), &sni, |b, sni| {
                b.iter(|| black_box(store.lookup(black_box(*sni), true)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
