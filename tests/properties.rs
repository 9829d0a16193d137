//! Property tests: the wildcard matcher agrees with a naive reference, the rule index finds the
//! same rule as a linear scan in priority order, and the config compiler never panics.

use http::{HeaderMap, Method};
use pilotfish::config::{compile, CompileInput};
use pilotfish::routing::{Conditions, Pattern, RequestView, Router, Rule};
use pilotfish::telemetry::metrics::Metrics;
use proptest::prelude::*;

/// The obvious recursive definition of `*` / `?` matching.
fn reference(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
        (Some(b'?'), Some(_)) => reference(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
        _ => false,
    }
}

fn pattern() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ab./*?]{0,8}").unwrap()
}

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ab./]{0,10}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn wildcard_matching_agrees_with_the_reference(p in pattern(), t in text()) {
        prop_assert_eq!(Pattern::new(&p, false).matches(&t), reference(p.as_bytes(), t.as_bytes()), "pattern {:?} text {:?}", p, t);
    }
}

fn host_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[ab]{1,2}\\.(x|y)\\.com").unwrap(),
        proptest::string::string_regex("\\*\\.[ab]\\.(x|y)\\.com").unwrap(),
        proptest::string::string_regex("[ab]\\*\\.com").unwrap(),
        proptest::string::string_regex("[ab]?\\.x\\.\\*").unwrap(),
    ]
}

fn path_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("/[ab]{1,2}").unwrap(),
        proptest::string::string_regex("/[ab]{1,2}/\\*").unwrap(),
        proptest::string::string_regex("/[ab]\\*").unwrap(),
        proptest::string::string_regex("/\\*/[ab]").unwrap(),
        Just("*".to_string()),
    ]
}

#[derive(Debug, Clone)]
struct RuleSpec {
    hosts: Vec<String>,
    paths: Vec<String>,
}

fn rules() -> impl Strategy<Value = Vec<RuleSpec>> {
    proptest::collection::vec(
        (proptest::collection::vec(host_pattern(), 0..3), proptest::collection::vec(path_pattern(), 0..3))
            .prop_map(|(hosts, paths)| RuleSpec { hosts, paths }),
        0..25,
    )
}

fn request() -> impl Strategy<Value = (String, String)> {
    (
        proptest::string::string_regex("([ab]{1,2}\\.)?[ab]{1,2}\\.(x|y)\\.(com|org)").unwrap(),
        proptest::string::string_regex("/[ab]{1,2}(/[ab]{1,2})?").unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_index_finds_what_a_linear_scan_finds(specs in rules(), reqs in proptest::collection::vec(request(), 1..20)) {
        let compiled: Vec<Rule<usize>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Rule {
                name: format!("r{i}").into(),
                // Priorities in reverse of list order, to exercise the sort.
                priority: (1000 - i) as u32,
                conditions: Conditions {
                    hosts: s.hosts.iter().map(|h| Pattern::new(h, true)).collect(),
                    paths: s.paths.iter().map(|p| Pattern::new(p, false)).collect(),
                    ..Default::default()
                },
                action: i,
            })
            .collect();
        let mut by_priority: Vec<&Rule<usize>> = compiled.iter().collect();
        by_priority.sort_by_key(|r| r.priority);
        let linear: Vec<(Vec<Pattern>, Vec<Pattern>, usize)> =
            by_priority.iter().map(|r| (r.conditions.hosts.clone(), r.conditions.paths.clone(), r.action)).collect();
        let router = Router::new(compiled, usize::MAX);
        let headers = HeaderMap::new();
        for (host, path) in reqs {
            let view = RequestView { host: &host, path: &path, query: None, method: &Method::GET, source_ip: [127, 0, 0, 1].into(), headers: &headers };
            let want = linear
                .iter()
                .find(|(hs, ps, _)| (hs.is_empty() || hs.iter().any(|h| h.matches(&host))) && (ps.is_empty() || ps.iter().any(|p| p.matches(&path))))
                .map_or(usize::MAX, |(_, _, a)| *a);
            prop_assert_eq!(*router.route(&view).action, want, "host {:?} path {:?}", host, path);
        }
    }

    #[test]
    fn compiling_arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let m = Metrics::default();
        let _ = compile(CompileInput { name: "p.toml", text: &text, previous: None, metrics: &m, generation: 1, base_dir: None });
    }

    #[test]
    fn compiling_mutated_configs_never_panics(cut in 0usize..900, insert in "[\\[\\]={}\",.a-z0-9 \n*/?]{0,12}") {
        let base = include_str!("../config/example.toml");
        let cut = cut.min(base.len());
        let cut = (0..=cut).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        let m = Metrics::default();
        if let Err(d) = compile(CompileInput { name: "p.toml", text: &text, previous: None, metrics: &m, generation: 1, base_dir: None }) {
            // Every error is located.
            for e in &d.0 {
                prop_assert!(e.line >= 1 && e.col >= 1, "{}", e);
            }
        }
    }
}
