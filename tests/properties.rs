//! Property tests: the wildcard matcher agrees with a naive reference, the rule index finds the
//! same rule as a linear scan in priority order, the config compiler never panics and locates
//! each error at its cause, and the HTTP/1.1 engine parses the same bytes the same way however
//! they are split into reads.

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
        let _ = compile(CompileInput { name: "p.toml", text: &text, previous: None, metrics: &m, generation: 1, base_dir: None, material: &Default::default() });
    }

    #[test]
    fn compiling_mutated_configs_never_panics(cut in 0usize..900, insert in "[\\[\\]={}\",.a-z0-9 \n*/?]{0,12}") {
        let base = include_str!("../config/example.toml");
        let cut = cut.min(base.len());
        let cut = (0..=cut).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        let m = Metrics::default();
        let _ = compile(CompileInput { name: "p.toml", text: &text, previous: None, metrics: &m, generation: 1, base_dir: None, material: &Default::default() });
    }
}

/// The tables of a generated config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Server,
    Listener,
    Group,
    /// The one rule, written as an inline table on one line (`rules = [{ ... }]`) whose first
    /// key holds non-ASCII text: columns count characters, not bytes.
    Rule,
}

use Table::*;

/// Every key of the generated config, with a valid value.
const KEYS: &[(Table, &str, &str)] = &[
    (Server, "admin_bind", "\"127.0.0.1:0\""),
    (Server, "max_header_bytes", "16384"),
    (Server, "max_uri_bytes", "8192"),
    (Server, "max_headers", "100"),
    (Server, "max_connections", "1000"),
    (Server, "idle_timeout", "\"60s\""),
    (Listener, "name", "\"web\""),
    (Listener, "bind", "\"127.0.0.1:0\""),
    (Group, "name", "\"g\""),
    (Group, "algorithm", "\"round_robin\""),
    (Group, "targets", "[\"127.0.0.1:8080\"]"),
    (Group, "slow_start", "\"30s\""),
    (Group, "deregistration_delay", "\"5s\""),
    (Rule, "name", "\"r\""),
    (Rule, "listeners", "[\"web\"]"),
    (Rule, "priority", "1"),
    (Rule, "path", "[\"/x\"]"),
    (Rule, "method", "[\"GET\"]"),
    (Rule, "source_ip", "[\"10.0.0.0/8\"]"),
];

/// One thing wrong: (table, key, bad value, the text the error must be located at). A key that
/// is not in [`KEYS`] is added (an unknown key); the others get the bad value instead of theirs.
/// The faults cover both kinds of errors: the TOML schema's (located by the parser's spans:
/// a wrong type, an unknown variant or key, a bad duration) and pilotfish's own validation (by
/// the value's span kept through deserialization).
const FAULTS: &[(Table, &str, &str, &str)] = &[
    (Server, "max_header_bytes", "100", "100"),
    (Server, "max_uri_bytes", "10", "10"),
    (Server, "max_headers", "2", "2"),
    (Server, "max_connections", "0", "0"),
    (Server, "admin_bind", "\"localhost\"", "\"localhost\""),
    (Server, "admin_bind", "\"10.1.2.3:9901\"", "\"10.1.2.3:9901\""),
    (Server, "idle_timeout", "\"3 parsecs\"", "\"3 parsecs\""),
    (Server, "max_header_byte", "9000", "max_header_byte"),
    (Listener, "bind", "\"127.0.0.1\"", "\"127.0.0.1\""),
    (Group, "algorithm", "\"fastest\"", "\"fastest\""),
    (Group, "targets", "[\"127.0.0.1:8080\", \"127.0.0.1:0\"]", "\"127.0.0.1:0\""),
    (Group, "targets", "[\"127.0.0.1:8080\", \"127.0.0.1:8080\"]", "\"127.0.0.1:8080\"]"),
    (Group, "slow_start", "\"2h\"", "\"2h\""),
    (Group, "deregistration_delay", "\"2h\"", "\"2h\""),
    (Rule, "priority", "0", "0"),
    (Rule, "priority", "\"high\"", "\"high\""),
    (Rule, "path", "[\"x\"]", "[\"x\"]"),
    (Rule, "method", "[\"get\"]", "[\"get\"]"),
    (Rule, "source_ip", "[\"10.0.0.0/8\", \"10.0.0.0/99\"]", "\"10.0.0.0/99\""),
    (Rule, "colour", "\"blue\"", "colour"),
];

/// How a generated config is laid out: everything that may move the faulty text around.
#[derive(Debug, Clone)]
struct Layout {
    /// The order of [`KEYS`] (within each table).
    order: Vec<usize>,
    /// Where in its table an added key goes.
    added_at: prop::sample::Index,
    /// Comment lines at the top (non-ASCII among them).
    comments: Vec<String>,
    /// Before each key of a table.
    indent: String,
    /// Between a key and its value: `=` with some blanks.
    eq: &'static str,
    /// The body of the rule's fixed response (non-ASCII), before its other keys on its line.
    body: String,
    crlf: bool,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        Just((0..KEYS.len()).collect::<Vec<_>>()).prop_shuffle(),
        any::<prop::sample::Index>(),
        proptest::collection::vec("[a-zé—ü日 ]{0,20}", 0..4),
        "[ \t]{0,3}",
        prop_oneof![Just(" = "), Just("="), Just("  =\t")],
        "[a-zé—ü日]{0,6}",
        any::<bool>(),
    )
        .prop_map(|(order, added_at, comments, indent, eq, body, crlf)| Layout {
            order,
            added_at,
            comments,
            indent,
            eq,
            body,
            crlf,
        })
}

/// The config laid out by `l`, with `fault` (an index into [`FAULTS`]) applied if given.
fn faulty_config(l: &Layout, fault: Option<usize>) -> String {
    let fault = fault.map(|i| FAULTS[i]);
    let keys = |table: Table| -> Vec<(&str, &str)> {
        let mut keys: Vec<(&str, &str)> = l
            .order
            .iter()
            .map(|&i| KEYS[i])
            .filter(|k| k.0 == table)
            .map(|(_, key, good)| match fault {
                Some((t, k, bad, _)) if t == table && k == key => (key, bad),
                _ => (key, good),
            })
            .collect();
        if let Some((_, k, bad, _)) = fault.filter(|f| f.0 == table && !KEYS.iter().any(|k| (k.0, k.1) == (f.0, f.1))) {
            keys.insert(l.added_at.index(keys.len() + 1), (k, bad));
        }
        keys
    };
    let mut lines: Vec<String> = l.comments.iter().map(|c| format!("# {c}")).collect();
    let rule: Vec<String> = keys(Rule).iter().map(|(k, v)| format!("{k}{}{v}", l.eq)).collect();
    lines.push(format!(
        "rules = [{{ fixed_response{eq}{{ status{eq}200, body{eq}\"{body}\" }}, {} }}]",
        rule.join(", "),
        eq = l.eq,
        body = l.body
    ));
    for (header, table) in [("[server]", Server), ("[[listeners]]", Listener), ("[[target_groups]]", Group)] {
        lines.push(String::new());
        lines.push(header.to_string());
        lines.extend(keys(table).iter().map(|(k, v)| format!("{}{k}{}{v}", l.indent, l.eq)));
    }
    lines.join(if l.crlf { "\r\n" } else { "\n" }) + "\n"
}

fn compile_text(text: &str) -> Result<(), pilotfish::config::Diagnostics> {
    let m = Metrics::default();
    compile(CompileInput {
        name: "p.toml",
        text,
        previous: None,
        metrics: &m,
        generation: 1,
        base_dir: None,
        material: &Default::default(),
    })
    .map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// An error's line:column is where its cause is written: the text there starts with the
    /// bad value (or the unknown key), wherever the layout put it.
    #[test]
    fn an_error_is_located_at_its_cause(l in layout(), fault in 0..FAULTS.len()) {
        let good = faulty_config(&l, None);
        prop_assert!(compile_text(&good).is_ok(), "the config without the fault is valid:\n{}\n{:?}", good, compile_text(&good).err());
        let text = faulty_config(&l, Some(fault));
        let errors: Vec<_> = match compile_text(&text) {
            Ok(()) => return Err(TestCaseError::fail(format!("{:?} is accepted:\n{text}", FAULTS[fault]))),
            Err(d) => d.0.into_iter().filter(|e| e.severity == pilotfish::config::Severity::Error).collect(),
        };
        prop_assert_eq!(errors.len(), 1, "one fault, one error: {:?}\n{}", errors, text);
        let e = &errors[0];
        prop_assert_eq!(&e.file, "p.toml");
        let line = text.split('\n').nth(e.line - 1).unwrap_or_else(|| panic!("{e}: no such line in\n{text}"));
        let there: String = line.chars().skip(e.col - 1).collect();
        let at = FAULTS[fault].3;
        prop_assert!(there.starts_with(at), "{} points at {:?}, not at {:?}, in\n{}", e, there, at, text);
    }
}

/// A chunked body: chunks of generated sizes, some with extensions, maybe trailers.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(
            (0usize..40, proptest::option::of("(;[a-z]{1,3}(=[a-z0-9]{1,3})?|;q=\"[ a-z\\\\\"]{0,4}\")")),
            0..5,
        ),
        proptest::option::of("[A-Z][a-z]{0,5}: [a-z0-9 ]{0,8}"),
    )
        .prop_map(|(chunks, trailer)| {
            let mut b = Vec::new();
            for (i, (n, ext)) in chunks.iter().enumerate() {
                let n = n + 1;
                b.extend_from_slice(format!("{n:x}{}\r\n", ext.as_deref().unwrap_or("")).as_bytes());
                b.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, n));
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n");
            if let Some(t) = trailer {
                b.extend_from_slice(t.as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b
        })
}

/// An HTTP/1.1 message (request or response) with framing fields and a body, followed by the
/// start of the next one; sometimes with one byte changed, so refusals are exercised too.
fn message() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (
        any::<bool>(),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
        chunked_body(),
        "[a-z]{0,30}",
        proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        proptest::sample::subsequence(
            vec![
                "X-A: 1\r\n",
                "Connection: keep-alive, x-a\r\n",
                "TE: trailers\r\n",
                "X-Forwarded-For: 10.0.0.1\r\n",
                "Accept: */*\n",
            ],
            0..5,
        ),
    )
        .prop_map(|(response, framing, chunked, plain, mutation, extra)| {
            let mut m = if response {
                b"HTTP/1.1 200 OK\r\n".to_vec()
            } else {
                b"POST /p?q=1 HTTP/1.1\r\nHost: a.example\r\n".to_vec()
            };
            for f in extra {
                m.extend_from_slice(f.as_bytes());
            }
            match framing {
                0 => {
                    m.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    m.extend_from_slice(&chunked);
                }
                1 => m.extend_from_slice(format!("Content-Length: {}\r\n\r\n{plain}", plain.len()).as_bytes()),
                2 => m.extend_from_slice(
                    format!("Content-Length: {}\r\nContent-Length: 1\r\n\r\n{plain}", plain.len()).as_bytes(),
                ),
                _ => m.extend_from_slice(format!("\r\n{plain}").as_bytes()),
            }
            m.extend_from_slice(if response { b"HTTP/1.1 204 N" } else { b"GET /next HT" });
            if let Some((i, b)) = mutation {
                let i = i.index(m.len());
                m[i] = b;
            }
            (response, m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The HTTP/1.1 engine judges a message (head, framing, body, where it ends) the same way
    /// however its bytes are split into reads: one read, or pieces of 1..=16 bytes (every
    /// boundary, with step 1).
    #[test]
    fn the_same_bytes_parse_the_same_in_any_reads((response, m) in message()) {
        let whole = pilotfish::proxy::h1::verdict_in_reads(&m, m.len(), response);
        for step in 1..=16 {
            let split = pilotfish::proxy::h1::verdict_in_reads(&m, step, response);
            prop_assert_eq!(&whole, &split, "reads of {} bytes: {:?}", step, String::from_utf8_lossy(&m));
        }
    }
}

mod proxy_protocol {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use pilotfish::proxy::proxy_protocol::{encode, parse, Addresses, Parsed, Version, MAX_HEADER};
    use proptest::prelude::*;

    fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        let v4 = (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(a, b)| (IpAddr::from(Ipv4Addr::from(a)), IpAddr::from(Ipv4Addr::from(b))));
        let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(a, b)| {
            // Not IPv4-mapped: those are announced as IPv4.
            let (mut a, mut b) = (a, b);
            a[0] |= 0x20;
            b[0] |= 0x20;
            (IpAddr::from(Ipv6Addr::from(a)), IpAddr::from(Ipv6Addr::from(b)))
        });
        (prop_oneof![v4, v6], any::<u16>(), any::<u16>())
            .prop_map(|((s, d), sp, dp)| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever pilotfish writes, it reads back: the same endpoints, exactly the header's
        /// bytes (not one of what follows), and every shorter prefix is incomplete.
        #[test]
        fn encoded_headers_parse_back(ends in endpoints(), v2 in any::<bool>(), local in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let version = if v2 { Version::V2 } else { Version::V1 };
            let announced = (!local).then_some(ends);
            let h = encode(version, announced);
            let want = match announced {
                None => Addresses::Local,
                Some((src, dst)) => Addresses::Tcp { src, dst },
            };
            let mut with_tail = h.clone();
            with_tail.extend_from_slice(&tail);
            prop_assert_eq!(parse(&with_tail), Ok(Parsed::Done { len: h.len(), addrs: want }));
            for cut in 0..h.len() {
                prop_assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete), "cut at {}", cut);
            }
        }

        /// Any bytes: no panic, a complete header never claims more than it was given or the
        /// bound, and an incomplete verdict never flips to a refusal of a prefix.
        #[test]
        fn arbitrary_bytes_are_judged_safely(prefix in prop_oneof![Just(b"PROXY ".to_vec()), Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()), Just(Vec::new())], bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = prefix;
            input.extend_from_slice(&bytes);
            match parse(&input) {
                Ok(Parsed::Done { len, .. }) => prop_assert!(len <= input.len() && len <= MAX_HEADER),
                Ok(Parsed::Incomplete) => prop_assert!(input.len() < MAX_HEADER),
                Err(_) => {}
            }
            for cut in 0..input.len() {
                if parse(&input).is_ok() {
                    prop_assert!(parse(&input[..cut]).is_ok(), "a prefix of an acceptable input refused at {}", cut);
                }
            }
        }
    }
}
