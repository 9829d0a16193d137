//! Listener rules compiled into an index, and the lookup that picks a request's action.
//!
//! No I/O here: the proxy hands in a [`RequestView`] and gets back the winning rule (lowest
//! priority whose conditions all hold) or the listener's default action. Lookup cost does not grow
//! with the rule count: rules are bucketed by exact host (hash map), by the dotted suffix of
//! wildcard hosts, or as host-less; inside a bucket, by the path's first segment. Only the few
//! candidate lists a request can hit are scanned, each in priority order, stopping at the first hit.

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod pattern;
pub mod rewrite;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use rustc_hash::FxHashMap;

pub use pattern::Pattern;

/// A request's header fields as rules look them up: an `http::HeaderMap` (HTTP/2) or the field
/// list of a parsed HTTP/1.1 head, without building a map for it.
pub trait HeaderLookup {
    /// Whether some value of field `name` (a lowercase name) is visible ASCII and satisfies `f`.
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl HeaderLookup for HeaderMap {
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.get_all(name).iter().any(|v| v.to_str().is_ok_and(&mut *f))
    }
}

/// A request's fields as rules see them on a connection with (or without) a client certificate:
/// `X-Amzn-Mtls-*` conditions match the values pilotfish sends the target, never a client's.
pub struct WithClientCert<'a, H: ?Sized> {
    pub fields: &'a H,
    pub cert: Option<&'a crate::tls::mtls::ClientCert>,
}

impl<H: HeaderLookup + ?Sized> HeaderLookup for WithClientCert<'_, H> {
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool {
        if crate::tls::mtls::is_mtls_header(name.as_str().as_bytes()) {
            let Some(c) = self.cert else { return false };
            return c.fields.iter().filter(|(n, _)| n == name).any(|(_, v)| v.to_str().is_ok_and(&mut *f));
        }
        self.fields.any_value(name, f)
    }
}

/// The parts of a request that rules look at, borrowed from it.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// Host without port, ASCII-lowercased, without trailing dot; "" when absent.
    pub host: &'a str,
    /// Path only (no query), as sent.
    pub path: &'a str,
    /// Raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub source_ip: IpAddr,
    pub headers: &'a dyn HeaderLookup,
}

/// A rule's conditions: AND across kinds, OR within one kind; an empty list is "any".
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    pub hosts: Vec<Pattern>,
    pub paths: Vec<Pattern>,
    pub methods: Vec<Method>,
    pub source_ips: Vec<IpNet>,
    pub headers: Vec<(HeaderName, Vec<Pattern>)>,
    pub query: Vec<(String, Vec<Pattern>)>,
}

impl Conditions {
    /// Whether every condition holds for `req`.
    #[inline]
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|p| p.matches(req.host)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(req.path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && (self.source_ips.is_empty() || self.source_ips.iter().any(|n| n.contains(&req.source_ip)))
            && self
                .headers
                .iter()
                .all(|(name, pats)| req.headers.any_value(name, &mut |v| pats.iter().any(|p| p.matches(v))))
            && self.query.iter().all(|(key, pats)| query_matches(req.query, key, pats))
    }
}

/// Whether some `key=value` pair of `query` has the key and a value matching one of `pats`.
/// Keys and values are compared after percent-decoding (and `+` as space), like ALB.
fn query_matches(query: Option<&str>, key: &str, pats: &[Pattern]) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        decode(k) == key && {
            let v = decode(v);
            pats.iter().any(|p| p.matches(&v))
        }
    })
}

/// Percent-decodes a query component; borrows when there is nothing to decode. Invalid escapes
/// are kept literally (a rule can still match them), invalid UTF-8 is replaced.
fn decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// One compiled rule with its action.
#[derive(Debug)]
pub struct Rule<A> {
    pub name: Box<str>,
    pub priority: u32,
    pub conditions: Conditions,
    pub action: A,
}

/// The result of a lookup: the rule that matched (None = default action) and its action.
#[derive(Debug)]
pub struct Route<'a, A> {
    pub rule: Option<&'a Rule<A>>,
    pub action: &'a A,
}

/// Rule ids bucketed by the first path segment of their path patterns.
#[derive(Debug, Default)]
struct Bucket {
    /// First path segment (e.g. `/v1`) → rule ids in priority order.
    by_segment: FxHashMap<Box<str>, Vec<u32>>,
    /// Rules with no path condition or a path pattern whose first segment is not literal.
    other: Vec<u32>,
}

impl Bucket {
    fn insert(&mut self, id: u32, paths: &[Pattern]) {
        let keys: Vec<Option<&str>> =
            if paths.is_empty() { vec![None] } else { paths.iter().map(segment_key).collect() };
        for key in keys {
            let list = match key {
                Some(k) => self.by_segment.entry(k.into()).or_default(),
                None => &mut self.other,
            };
            if list.last() != Some(&id) {
                list.push(id);
            }
        }
    }
}

/// The first path segment a pattern fixes, if its literal prefix contains all of it.
fn segment_key(p: &Pattern) -> Option<&str> {
    let lit = p.literal_prefix();
    let rest = lit.strip_prefix('/')?;
    match rest.find('/') {
        Some(i) => Some(&lit[..i + 1]),
        None if matches!(p, Pattern::Exact(_)) => Some(lit),
        None => None,
    }
}

/// The first segment of a request path (`/v1/users` → `/v1`).
#[inline]
fn first_segment(path: &str) -> &str {
    match path.get(1..).and_then(|r| r.find('/')) {
        Some(i) => &path[..i + 1],
        None => path,
    }
}

/// A listener's compiled rules and default action.
#[derive(Debug)]
pub struct Router<A> {
    rules: Vec<Rule<A>>,
    exact_hosts: FxHashMap<Box<str>, Bucket>,
    /// Wildcard host patterns keyed by the dotted tail of their literal suffix (`.example.com`).
    wildcard_hosts: FxHashMap<Box<str>, Bucket>,
    /// Wildcard host patterns without a dotted literal suffix (`www.*`).
    wildcard_other: Bucket,
    any_host: Bucket,
    default: A,
}

impl<A> Router<A> {
    /// Builds the index; `rules` may come in any order (priorities are unique per listener).
    pub fn new(mut rules: Vec<Rule<A>>, default: A) -> Self {
        rules.sort_by_key(|r| r.priority);
        let mut router = Router {
            rules: Vec::new(),
            exact_hosts: FxHashMap::default(),
            wildcard_hosts: FxHashMap::default(),
            wildcard_other: Bucket::default(),
            any_host: Bucket::default(),
            default,
        };
        for (id, rule) in rules.iter().enumerate() {
            let id = id as u32;
            let paths = &rule.conditions.paths;
            if rule.conditions.hosts.is_empty() {
                router.any_host.insert(id, paths);
            }
            for host in &rule.conditions.hosts {
                match host {
                    Pattern::Exact(h) => router.exact_hosts.entry(h.clone()).or_default().insert(id, paths),
                    other => match other.literal_suffix().find('.') {
                        Some(i) => {
                            let key = &other.literal_suffix()[i..];
                            router.wildcard_hosts.entry(key.into()).or_default().insert(id, paths)
                        }
                        None => router.wildcard_other.insert(id, paths),
                    },
                }
            }
        }
        router.rules = rules;
        router
    }

    /// The rules in priority order.
    pub fn rules(&self) -> &[Rule<A>] {
        &self.rules
    }

    /// What a request no rule matches gets.
    pub fn default_action(&self) -> &A {
        &self.default
    }

    /// Finds the action for `req`.
    #[inline]
    pub fn route(&self, req: &RequestView<'_>) -> Route<'_, A> {
        let seg = first_segment(req.path);
        let mut best = u32::MAX;
        let scan_bucket = |b: &Bucket, best: &mut u32| {
            if let Some(list) = b.by_segment.get(seg) {
                self.scan(list, best, req);
            }
            self.scan(&b.other, best, req);
        };
        if !req.host.is_empty() {
            if let Some(b) = self.exact_hosts.get(req.host) {
                scan_bucket(b, &mut best);
            }
            if !self.wildcard_hosts.is_empty() {
                for (i, _) in req.host.match_indices('.') {
                    if let Some(b) = self.wildcard_hosts.get(&req.host[i..]) {
                        scan_bucket(b, &mut best);
                    }
                }
            }
        }
        scan_bucket(&self.wildcard_other, &mut best);
        scan_bucket(&self.any_host, &mut best);
        match self.rules.get(best as usize) {
            Some(rule) => Route { rule: Some(rule), action: &rule.action },
            None => Route { rule: None, action: &self.default },
        }
    }

    /// Lowers `best` to the first rule in `list` (ids ascending) below it that matches.
    #[inline]
    fn scan(&self, list: &[u32], best: &mut u32, req: &RequestView<'_>) {
        for &id in list {
            if id >= *best {
                return;
            }
            if self.rules[id as usize].conditions.matches(req) {
                *best = id;
                return;
            }
        }
    }
}

/// Normalises a `Host` header or `:authority` for matching: drops the port and a trailing dot
/// and lowercases (borrowing when already lowercase).
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, priority: u32, hosts: &[&str], paths: &[&str]) -> Rule<String> {
        Rule {
            name: name.into(),
            priority,
            conditions: Conditions {
                hosts: hosts.iter().map(|h| Pattern::new(h, true)).collect(),
                paths: paths.iter().map(|p| Pattern::new(p, false)).collect(),
                ..Default::default()
            },
            action: name.to_string(),
        }
    }

    fn route<'a>(r: &'a Router<String>, host: &str, path_q: &str, headers: &HeaderMap) -> &'a str {
        let (path, query) = path_q.split_once('?').map_or((path_q, None), |(p, q)| (p, Some(q)));
        let view =
            RequestView { host, path, query, method: &Method::GET, source_ip: "10.1.2.3".parse().unwrap(), headers };
        r.route(&view).action
    }

    #[test]
    fn lowest_priority_wins_across_buckets() {
        let r = Router::new(
            vec![
                rule("exact-api", 30, &["api.example.com"], &["/v1/*"]),
                rule("wild", 20, &["*.example.com"], &[]),
                rule("any-health", 10, &[], &["/health"]),
                rule("other-wild", 5, &["www.*"], &["/x"]),
            ],
            "default".to_string(),
        );
        let h = HeaderMap::new();
        assert_eq!(route(&r, "api.example.com", "/v1/users", &h), "wild");
        assert_eq!(route(&r, "api.example.com", "/health", &h), "any-health");
        assert_eq!(route(&r, "www.example.com", "/x", &h), "other-wild");
        assert_eq!(route(&r, "example.com", "/v1/users", &h), "default");
        assert_eq!(route(&r, "other.org", "/health?x=1", &h), "any-health");
    }

    #[test]
    fn path_index_keeps_non_literal_segments() {
        let r = Router::new(
            vec![
                rule("v1", 1, &[], &["/v1/*"]),
                rule("glob", 2, &[], &["/*/admin"]),
                rule("exact", 3, &[], &["/v1"]),
                rule("prefixy", 4, &[], &["/v2*"]),
            ],
            "default".to_string(),
        );
        let h = HeaderMap::new();
        assert_eq!(route(&r, "", "/v1/x", &h), "v1");
        assert_eq!(route(&r, "", "/a/admin", &h), "glob");
        assert_eq!(route(&r, "", "/v1", &h), "exact");
        assert_eq!(route(&r, "", "/v2beta/x", &h), "prefixy");
        assert_eq!(route(&r, "", "/v3", &h), "default");
    }

    #[test]
    fn headers_query_method_and_source_ip() {
        let mut c = Conditions::default();
        c.headers
            .push((HeaderName::from_static("x-canary"), vec![Pattern::new("on", false), Pattern::new("y*", false)]));
        c.query.push(("version".into(), vec![Pattern::new("v2*", false)]));
        c.methods.push(Method::GET);
        c.source_ips.push("10.0.0.0/8".parse().unwrap());
        let r = Router::new(
            vec![Rule { name: "r".into(), priority: 1, conditions: c, action: "hit".to_string() }],
            "miss".to_string(),
        );
        let mut h = HeaderMap::new();
        h.insert("x-canary", "yes".parse().unwrap());
        assert_eq!(route(&r, "", "/?a=1&version=v2.1", &h), "hit");
        assert_eq!(route(&r, "", "/?version=v2%2E1", &h), "hit");
        assert_eq!(route(&r, "", "/?version=v1", &h), "miss");
        assert_eq!(route(&r, "", "/", &h), "miss");
        h.insert("x-canary", "off".parse().unwrap());
        assert_eq!(route(&r, "", "/?version=v2", &h), "miss");
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("a.b"), "a.b");
    }

    #[test]
    fn decode_handles_escapes() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
