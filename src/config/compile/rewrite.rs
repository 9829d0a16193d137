//! Header edits and transforms: a listener's `response_headers` and `server_header`, a rule's
//! `request_headers`, `response_headers` and `transforms`, checked at their spans and compiled
//! into [`crate::routing::rewrite`]'s types (regexes compiled here, once per snapshot).

use http::{HeaderName, HeaderValue};

use super::Ctx;
use crate::config::file::{self, Spanned};
use crate::routing::rewrite::{HeaderEdits, RequestRewrite, Rewrite};

/// Which message edits apply to: the names pilotfish owns differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

/// Fields of a message's framing and hop-by-hop fields: never set or removed by an edit.
const FRAMING: [&str; 9] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Why a request field is pilotfish's own, or None.
fn owned(side: Side, name: &str) -> Option<&'static str> {
    if FRAMING.contains(&name) {
        return Some("it frames the message or is hop-by-hop");
    }
    match (side, name) {
        (Side::Request, "host") => Some("pilotfish sends the request's host: rewrite it with transforms.host"),
        (Side::Request, "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-port") => {
            Some("pilotfish sets it from the connection")
        }
        (Side::Request, "x-request-id") => Some("pilotfish passes or sets the request id"),
        (Side::Request, n) if n.starts_with("x-amzn-mtls-") => Some("pilotfish sets it from the TLS handshake"),
        _ => None,
    }
}

/// A field name of an edit, checked.
fn name(cx: &mut Ctx<'_>, at: std::ops::Range<usize>, side: Side, n: &str, owner: &str) -> Option<HeaderName> {
    let Ok(name) = HeaderName::from_bytes(n.as_bytes()) else {
        cx.err(at, format!("{owner}: bad header name {n:?}"));
        return None;
    };
    if let Some(why) = owned(side, name.as_str()) {
        cx.err(at, format!("{owner}: {n:?} cannot be set or removed: {why}"));
        return None;
    }
    Some(name)
}

fn value(cx: &mut Ctx<'_>, at: std::ops::Range<usize>, n: &str, v: &str, owner: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(v) {
        Ok(v) if v.len() <= 8192 => Some(v),
        _ => {
            cx.err(at, format!("{owner}: bad value for header {n:?}: visible ASCII and spaces, at most 8192 bytes"));
            None
        }
    }
}

/// `{ set, remove }` of a rule.
pub(super) fn header_edits(
    cx: &mut Ctx<'_>,
    e: &Spanned<file::HeaderEdits>,
    side: Side,
    owner: &str,
) -> Option<HeaderEdits> {
    let mark = cx.mark();
    let (at, edits) = (e.span(), e.get_ref());
    let set = set_fields(cx, at.clone(), side, &edits.set, owner);
    let mut remove = Vec::new();
    for n in &edits.remove {
        if let Some(name) = name(cx, at.clone(), side, n, owner) {
            if set.iter().any(|(s, _)| *s == name) {
                cx.err(at.clone(), format!("{owner}: header {n:?} is both set and removed"));
            }
            remove.push(name);
        }
    }
    if edits.set.is_empty() && edits.remove.is_empty() {
        cx.err(at, format!("{owner}: header edits set and remove nothing"));
    }
    cx.clean_since(mark).then(|| HeaderEdits::new(set, remove))
}

fn set_fields(
    cx: &mut Ctx<'_>,
    at: std::ops::Range<usize>,
    side: Side,
    set: &std::collections::BTreeMap<String, String>,
    owner: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (n, v) in set {
        let (name, value) = (name(cx, at.clone(), side, n, owner), value(cx, at.clone(), n, v, owner));
        if let (Some(name), Some(value)) = (name, value) {
            if out.iter().any(|(s, _)| *s == name) {
                cx.err(at.clone(), format!("{owner}: header {n:?} is set twice (names are case-insensitive)"));
            }
            out.push((name, value));
        }
    }
    out
}

/// A listener's `response_headers` and `server_header = false`, as one set of edits (None when
/// it changes nothing).
pub(super) fn listener_edits(cx: &mut Ctx<'_>, l: &file::Listener, owner: &str) -> Option<HeaderEdits> {
    let set = match &l.response_headers {
        Some(h) => {
            if h.get_ref().is_empty() {
                cx.err(h.span(), format!("{owner}: response_headers sets nothing"));
            }
            set_fields(cx, h.span(), Side::Response, h.get_ref(), owner)
        }
        None => Vec::new(),
    };
    let remove = match &l.server_header {
        Some(s) if !*s.get_ref() => {
            if set.iter().any(|(n, _)| n == http::header::SERVER) {
                cx.err(s.span(), format!("{owner}: server_header = false, but response_headers sets server"));
            }
            vec![http::header::SERVER]
        }
        _ => Vec::new(),
    };
    let edits = HeaderEdits::new(set, remove);
    (!edits.is_empty()).then_some(edits)
}

/// A rule's `transforms` and `request_headers`.
pub(super) fn request_rewrite(cx: &mut Ctx<'_>, r: &file::Rule, owner: &str) -> Option<RequestRewrite> {
    let mark = cx.mark();
    let mut out = RequestRewrite::default();
    if let Some(t) = &r.transforms {
        let t = t.get_ref();
        if t.host.is_none() && t.url.is_none() {
            cx.err(
                r.transforms.as_ref().map(Spanned::span).unwrap_or_default(),
                format!("{owner}: transforms is empty"),
            );
        }
        out.host = t.host.as_ref().and_then(|h| rewrite(cx, h, &format!("{owner}: transforms.host")));
        out.url = t.url.as_ref().and_then(|u| rewrite(cx, u, &format!("{owner}: transforms.url")));
    }
    if let Some(e) = &r.request_headers {
        out.headers = header_edits(cx, e, Side::Request, &format!("{owner}: request_headers")).unwrap_or_default();
    }
    cx.clean_since(mark).then_some(out)
}

/// One `{ regex, replace }`: the regex compiles, the replacement names only groups it has.
fn rewrite(cx: &mut Ctx<'_>, r: &Spanned<file::Rewrite>, owner: &str) -> Option<Rewrite> {
    let r = r.get_ref();
    let compiled = match Rewrite::new(r.regex.get_ref(), r.replace.get_ref()) {
        Ok(c) => c,
        Err(e) => {
            let e = e.to_string();
            let first = e.lines().last().unwrap_or(&e).trim().trim_start_matches("error: ");
            cx.err(r.regex.span(), format!("{owner}: bad regex: {first}"));
            return None;
        }
    };
    for g in group_refs(r.replace.get_ref()) {
        let known = match g.parse::<usize>() {
            Ok(i) => i < compiled.groups(),
            Err(_) => compiled.names().any(|n| n == g),
        };
        if !known {
            cx.err(
                r.replace.span(),
                format!(
                    "{owner}: replace refers to ${{{g}}}, a group the regex does not have (write $$ for a literal $)"
                ),
            );
        }
    }
    Some(compiled)
}

/// The groups a replacement refers to: `$1`, `$name`, `${name}` (`$$` is a literal `$`), as the
/// regex crate reads them.
fn group_refs(replace: &str) -> Vec<&str> {
    let (b, mut i, mut out) = (replace.as_bytes(), 0, Vec::new());
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => match replace[i + 2..].find('}') {
                Some(end) => {
                    out.push(&replace[i + 2..i + 2 + end]);
                    i += end + 3;
                }
                None => i += 1,
            },
            _ => {
                let len = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
                if len > 0 {
                    out.push(&replace[i + 1..i + 1 + len]);
                }
                i += len + 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::group_refs;

    #[test]
    fn replacement_group_references_are_read_as_the_regex_crate_reads_them() {
        assert_eq!(group_refs("/$1/${name}/$$x/$rest-"), ["1", "name", "rest"]);
        assert_eq!(group_refs("$1a"), ["1a"], "a name: the regex crate reads $1a as group \"1a\"");
        assert!(group_refs("plain $").is_empty());
    }
}
