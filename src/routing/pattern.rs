//! Wildcard patterns for host, path, header and query values: `*` matches any run of characters
//! (including none), `?` exactly one. Patterns are classified once at compile time so the common
//! shapes (exact, `prefix*`, `*suffix`) never run the general matcher.

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// No wildcard: byte equality.
    Exact(Box<str>),
    /// `literal*`.
    Prefix(Box<str>),
    /// `*literal`.
    Suffix(Box<str>),
    /// `*` alone.
    Any,
    /// Anything else: the general matcher.
    Glob(Box<[u8]>),
}

impl Pattern {
    /// Compiles `src`; `lowercase` folds it for case-insensitive use (hosts, header names).
    pub fn new(src: &str, lowercase: bool) -> Pattern {
        let s: String = if lowercase { src.to_ascii_lowercase() } else { src.to_owned() };
        let stars = s.bytes().filter(|&b| b == b'*').count();
        let has_q = s.contains('?');
        if s == "*" {
            Pattern::Any
        } else if stars == 0 && !has_q {
            Pattern::Exact(s.into())
        } else if stars == 1 && !has_q && s.ends_with('*') {
            Pattern::Prefix(s[..s.len() - 1].into())
        } else if stars == 1 && !has_q && s.starts_with('*') {
            Pattern::Suffix(s[1..].into())
        } else {
            Pattern::Glob(s.into_bytes().into())
        }
    }

    /// Whether `text` matches (case-sensitively; fold `text` first for case-insensitive use).
    #[inline]
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(p) => &**p == text,
            Pattern::Prefix(p) => text.starts_with(&**p),
            Pattern::Suffix(p) => text.ends_with(&**p),
            Pattern::Any => true,
            Pattern::Glob(p) => glob(p, text.as_bytes()),
        }
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> &str {
        match self {
            Pattern::Exact(p) | Pattern::Prefix(p) => p,
            Pattern::Suffix(_) | Pattern::Any => "",
            Pattern::Glob(p) => {
                let end = p.iter().position(|&b| b == b'*' || b == b'?').unwrap_or(p.len());
                // The pattern came from a &str and the cut is at an ASCII byte.
                std::str::from_utf8(&p[..end]).unwrap_or("")
            }
        }
    }

    /// The literal text after the last wildcard.
    pub fn literal_suffix(&self) -> &str {
        match self {
            Pattern::Exact(p) | Pattern::Suffix(p) => p,
            Pattern::Prefix(_) | Pattern::Any => "",
            Pattern::Glob(p) => {
                let start = p.iter().rposition(|&b| b == b'*' || b == b'?').map_or(0, |i| i + 1);
                std::str::from_utf8(&p[start..]).unwrap_or("")
            }
        }
    }
}

/// Iterative wildcard match with single-star backtracking: O(len(p) × len(t)) worst case, no
/// recursion and no allocation. `?` matches one byte; patterns and inputs that matter (hosts,
/// paths after percent-encoding) are ASCII.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::new(p, false).matches(t)
    }

    #[test]
    fn shapes_are_classified() {
        assert_eq!(Pattern::new("/a", false), Pattern::Exact("/a".into()));
        assert_eq!(Pattern::new("/v1/*", false), Pattern::Prefix("/v1/".into()));
        assert_eq!(Pattern::new("*.example.com", false), Pattern::Suffix(".example.com".into()));
        assert_eq!(Pattern::new("*", false), Pattern::Any);
        assert!(matches!(Pattern::new("/a/*/b", false), Pattern::Glob(_)));
    }

    #[test]
    fn wildcards_match_like_alb() {
        assert!(m("/v1/*", "/v1/users"));
        assert!(m("/v1/*", "/v1/"));
        assert!(!m("/v1/*", "/v2/users"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(m("api-?.example.com", "api-1.example.com"));
        assert!(!m("api-?.example.com", "api-12.example.com"));
        assert!(m("/a/*/c/*", "/a/b/c/d"));
        assert!(m("/a/*/c*", "/a/x/y/c"));
        assert!(!m("/a/*/c", "/a/x/y/d"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("?", "x"));
        assert!(!m("?", ""));
        assert!(!m("/Path", "/path"));
    }

    #[test]
    fn case_folding_applies_to_the_pattern() {
        assert!(Pattern::new("WWW.Example.COM", true).matches("www.example.com"));
    }

    #[test]
    fn literal_prefix_and_suffix() {
        assert_eq!(Pattern::new("/v1/*/x", false).literal_prefix(), "/v1/");
        assert_eq!(Pattern::new("*.api.example.com", false).literal_suffix(), ".api.example.com");
        assert_eq!(Pattern::new("a?b*.com", false).literal_suffix(), ".com");
    }
}
