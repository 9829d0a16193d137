//! What a matched rule changes: ALB's transforms (`host-header-rewrite`, `url-rewrite`) and the
//! header fields set and removed on a request or a response. Compiled once per snapshot (the
//! regexes too); applied after routing, so they never change which rule matched. No I/O here:
//! the HTTP/1.1 engine asks [`HeaderEdits::drops`] for each field line it writes and appends
//! [`HeaderEdits::set`]; HTTP/2 messages go through [`HeaderEdits::apply`] on their header map.

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

/// Header fields removed and set. A field that is set replaces every field of its name.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// The names whose fields are dropped: those removed and those set.
    drop: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Edits that set `set` (each replacing the fields of its name) and remove `remove`.
    pub fn new(set: Vec<(HeaderName, HeaderValue)>, remove: Vec<HeaderName>) -> HeaderEdits {
        let mut drop = remove;
        for (n, _) in &set {
            if !drop.contains(n) {
                drop.push(n.clone());
            }
        }
        HeaderEdits { drop, set }
    }

    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty()
    }

    /// These edits, then `later`'s: a field `later` sets or removes is its to decide (a rule's
    /// edits after its listener's).
    pub fn then(&self, later: &HeaderEdits) -> HeaderEdits {
        let mut drop = self.drop.clone();
        for n in &later.drop {
            if !drop.contains(n) {
                drop.push(n.clone());
            }
        }
        let mut set: Vec<(HeaderName, HeaderValue)> =
            self.set.iter().filter(|(n, _)| !later.drop.contains(n)).cloned().collect();
        set.extend(later.set.iter().cloned());
        HeaderEdits { drop, set }
    }

    /// Whether a field named `name` (as sent: any case) is left out.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drop.iter().any(|n| n.as_str().len() == name.len() && n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields added, in the configuration's order.
    #[inline]
    pub fn set(&self) -> &[(HeaderName, HeaderValue)] {
        &self.set
    }

    /// Applies the edits to a header map.
    pub fn apply(&self, map: &mut HeaderMap) {
        for n in &self.drop {
            map.remove(n);
        }
        for (n, v) in &self.set {
            map.append(n.clone(), v.clone());
        }
    }
}

/// A regex and its replacement: the first match in a value is replaced (`$1`, `${name}`
/// captures), the rest kept; a value the regex does not match is left as it is.
#[derive(Debug, Clone)]
pub struct Rewrite {
    regex: Regex,
    replace: Box<str>,
}

/// The most a compiled rewrite regex may take (the regex crate's guard against huge automata).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Rewrite {
    /// Compiles `regex` (the `regex` crate's syntax: linear time, no backtracking).
    pub fn new(regex: &str, replace: &str) -> Result<Rewrite, regex::Error> {
        let regex = regex::RegexBuilder::new(regex).size_limit(REGEX_SIZE_LIMIT).build()?;
        Ok(Rewrite { regex, replace: replace.into() })
    }

    /// The value rewritten, or None when the regex does not match it.
    pub fn apply(&self, value: &str) -> Option<String> {
        let m = self.regex.captures(value)?;
        let whole = m.get(0).expect("group 0 is the match");
        let mut out = String::with_capacity(value.len() + self.replace.len());
        out.push_str(&value[..whole.start()]);
        m.expand(&self.replace, &mut out);
        out.push_str(&value[whole.end()..]);
        Some(out)
    }

    /// The number of capture groups the regex has (group 0, the whole match, included).
    pub fn groups(&self) -> usize {
        self.regex.captures_len()
    }

    /// The capture group names of the regex.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.regex.capture_names().flatten()
    }

    /// The replacement as configured.
    pub fn replacement(&self) -> &str {
        &self.replace
    }
}

/// What a rule changes in a request before it is forwarded.
#[derive(Debug, Clone, Default)]
pub struct RequestRewrite {
    /// `transforms.host`: the host without its port (a port the client sent is kept).
    pub host: Option<Rewrite>,
    /// `transforms.url`: the path, without the query (which is kept).
    pub url: Option<Rewrite>,
    /// `request_headers`.
    pub headers: HeaderEdits,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(set: &[(&'static str, &'static str)], remove: &[&'static str]) -> HeaderEdits {
        HeaderEdits::new(
            set.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect(),
            remove.iter().map(|n| HeaderName::from_static(n)).collect(),
        )
    }

    #[test]
    fn a_set_replaces_and_a_rule_decides_after_its_listener() {
        let listener = edits(&[("strict-transport-security", "max-age=1"), ("x-a", "1")], &["server"]);
        let rule = edits(&[("x-a", "2")], &["strict-transport-security"]);
        let both = listener.then(&rule);
        assert!(both.drops(b"Server") && both.drops(b"STRICT-transport-security") && both.drops(b"x-a"));
        assert!(!both.drops(b"x-b") && !both.drops(b"serve"));
        let set: Vec<_> = both.set().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(set, [("x-a", "2")]);
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("target"));
        map.append("x-a", HeaderValue::from_static("target2"));
        map.append("server", HeaderValue::from_static("app"));
        map.append("x-b", HeaderValue::from_static("kept"));
        both.apply(&mut map);
        assert_eq!(map.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        assert!(map.get("server").is_none() && map.get("x-b").is_some());
        assert!(HeaderEdits::default().is_empty() && !both.is_empty());
    }

    #[test]
    fn a_rewrite_replaces_the_first_match_with_its_captures_and_leaves_a_miss_alone() {
        let r = Rewrite::new(r"^/api/(.*)$", "/$1").unwrap();
        assert_eq!(r.apply("/api/v1/orders").as_deref(), Some("/v1/orders"));
        assert_eq!(r.apply("/other"), None);
        let h = Rewrite::new(r"^api\.(?P<rest>.+)$", "www.${rest}").unwrap();
        assert_eq!(h.apply("api.example.com").as_deref(), Some("www.example.com"));
        let part = Rewrite::new("v1", "v2").unwrap();
        assert_eq!(part.apply("/v1/x/v1").as_deref(), Some("/v2/x/v1"), "the first match only");
        assert!(Rewrite::new("(", "x").is_err());
    }
}
