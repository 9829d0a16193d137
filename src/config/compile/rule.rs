//! `[[rules]]`: each element checked and turned into a [`RuleDef`] in one pass (its conditions
//! parsed once: methods, CIDRs, header names, patterns), and the actions rules and listeners'
//! `default_action` share. Which listeners a rule is on and which groups it forwards to are
//! names, resolved with the rest of the configuration ([`super::resolve`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;

use crate::config::file::Spanned;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;

use super::rewrite::{self, Side};
use super::{check_name, Ctx, MAX_WEIGHT};
use crate::config::file::{self, Forward};
use crate::config::snapshot::{FixedResponse, Redirect};
use crate::routing::rewrite::{HeaderEdits, RequestRewrite};
use crate::routing::{Conditions, Pattern};

/// ALB's limits, which pilotfish follows so configs move between the two.
const MAX_PRIORITY: u32 = 50_000;
const MAX_FIXED_BODY: usize = 64 * 1024;
/// ALB's range for stickiness durations (both kinds).
pub(super) const STICKINESS_MIN: std::time::Duration = std::time::Duration::from_secs(1);
pub(super) const STICKINESS_MAX: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// A checked rule, its listeners and forward targets not yet resolved.
pub(super) struct RuleDef {
    pub name: Box<str>,
    pub priority: u32,
    pub conditions: Conditions,
    pub action: ActionDef,
    /// `transforms` and `request_headers` (forward rules).
    pub request: Option<RequestRewrite>,
    /// `response_headers`.
    pub response: Option<HeaderEdits>,
    /// `jwt`: the token check before the action.
    pub jwt: Option<super::jwt::JwtDef>,
}

/// A checked action. A forward's target groups are references, resolved from its `forward` key.
pub(super) enum ActionDef {
    /// `stickiness`: target group stickiness of a weighted forward.
    Forward {
        stickiness: Option<std::time::Duration>,
    },
    Redirect(Redirect),
    Fixed(FixedResponse),
}

/// Checks and compiles every rule (an element with an error is None).
pub(super) fn compile_all(cx: &mut Ctx<'_>, list: &[Spanned<file::Rule>]) -> Vec<Option<RuleDef>> {
    let mut names = HashSet::new();
    list.iter()
        .map(|r| {
            let mark = cx.mark();
            let r = r.get_ref();
            check_name(cx, "rule", &r.name, &mut names);
            compile(cx, r).filter(|_| cx.clean_since(mark))
        })
        .collect()
}

fn compile(cx: &mut Ctx<'_>, r: &file::Rule) -> Option<RuleDef> {
    let mark = cx.mark();
    let name = r.name.get_ref();
    let priority = *r.priority.get_ref();
    if !(1..=MAX_PRIORITY).contains(&priority) {
        cx.err(r.priority.span(), format!("priority must be 1..={MAX_PRIORITY}"));
    }
    if r.listeners.get_ref().is_empty() {
        cx.err(r.listeners.span(), format!("rule {name:?} names no listener"));
    }
    let conditions = conditions(cx, r);
    let action = action(
        cx,
        r.forward.as_ref(),
        r.redirect.as_ref(),
        r.fixed_response.as_ref(),
        r.name.span(),
        &format!("rule {name:?}"),
    );
    let owner = format!("rule {name:?}");
    let request_keys =
        r.transforms.as_ref().map(Spanned::span).or_else(|| r.request_headers.as_ref().map(Spanned::span));
    let request = match request_keys {
        Some(at) if r.forward.is_none() => {
            cx.err(at, format!("{owner}: transforms and request_headers apply to forward rules only"));
            None
        }
        Some(_) => rewrite::request_rewrite(cx, r, &owner),
        None => None,
    };
    let response = r
        .response_headers
        .as_ref()
        .and_then(|e| rewrite::header_edits(cx, e, Side::Response, &format!("{owner}: response_headers")));
    let jwt = r.jwt.as_ref().and_then(|j| super::jwt::compile(cx, name, j));
    let def = RuleDef {
        name: name.as_str().into(),
        priority,
        conditions: conditions?,
        action: action?,
        request,
        response,
        jwt,
    };
    cx.clean_since(mark).then_some(def)
}

fn conditions(cx: &mut Ctx<'_>, r: &file::Rule) -> Option<Conditions> {
    let mark = cx.mark();
    let mut c = Conditions::default();
    if let Some(hosts) = &r.host {
        for h in hosts.get_ref() {
            if h.is_empty() || h.len() > 128 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*?_".contains(&b)) {
                cx.err(
                    hosts.span(),
                    format!("bad host pattern {h:?}: letters, digits, '-', '.', '_', '*' and '?' (max 128)"),
                );
            }
            c.hosts.push(Pattern::new(h.strip_suffix('.').unwrap_or(h), true));
        }
        empty_list(cx, hosts, "host");
    }
    if let Some(paths) = &r.path {
        for p in paths.get_ref() {
            if !(p.starts_with('/') || p.starts_with('*'))
                || p.len() > 128
                || p.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                cx.err(
                    paths.span(),
                    format!("bad path pattern {p:?}: must start with '/' (or '*'), no spaces, max 128"),
                );
            }
            c.paths.push(Pattern::new(p, false));
        }
        empty_list(cx, paths, "path");
    }
    if let Some(methods) = &r.method {
        for m in methods.get_ref() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if !m.bytes().any(|b| b.is_ascii_lowercase()) => c.methods.push(method),
                _ => cx.err(methods.span(), format!("bad method {m:?}: an uppercase HTTP method token like \"GET\"")),
            }
        }
        empty_list(cx, methods, "method");
    }
    if let Some(ips) = &r.source_ip {
        for ip in ips.get_ref() {
            match parse_cidr(ip.get_ref()) {
                Some(net) => c.source_ips.push(net),
                None => cx.err(
                    ip.span(),
                    format!("bad CIDR {:?}: expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"", ip.get_ref()),
                ),
            }
        }
        empty_list(cx, ips, "source_ip");
    }
    if let Some(h) = &r.headers {
        for (k, v) in h.get_ref() {
            let name = HeaderName::from_bytes(k.as_bytes());
            if name.is_err() {
                cx.err(h.span(), format!("bad header name {k:?}"));
            }
            if v.is_empty() {
                cx.err(h.span(), format!("header condition {k:?} lists no value"));
            }
            if let Ok(name) = name {
                c.headers.push((name, v.iter().map(|p| Pattern::new(p, false)).collect()));
            }
        }
    }
    if let Some(q) = &r.query {
        for (k, v) in q.get_ref() {
            if k.is_empty() || v.is_empty() {
                cx.err(q.span(), format!("query condition {k:?} needs a key and at least one value"));
            }
            c.query.push((k.clone(), v.iter().map(|p| Pattern::new(p, false)).collect()));
        }
    }
    cx.clean_since(mark).then_some(c)
}

pub(super) fn empty_list<T>(cx: &mut Ctx<'_>, list: &Spanned<Vec<T>>, what: &str) {
    if list.get_ref().is_empty() {
        cx.err(list.span(), format!("empty {what} list: remove the condition to match any {what}"));
    }
}

/// Parses a CIDR; a bare address is a single-host network.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc()).or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Checks the action of `owner` (a rule, or a listener's `default_action`): exactly one of
/// `forward`, `redirect`, `fixed_response`, each well-formed. Errors are at `owner_span` when
/// the count is wrong, else at the action's key.
pub(super) fn action(
    cx: &mut Ctx<'_>,
    forward: Option<&Spanned<Forward>>,
    redirect: Option<&Spanned<file::Redirect>>,
    fixed: Option<&Spanned<file::FixedResponse>>,
    owner_span: Range<usize>,
    owner: &str,
) -> Option<ActionDef> {
    let mark = cx.mark();
    let n = forward.is_some() as u8 + redirect.is_some() as u8 + fixed.is_some() as u8;
    if n != 1 {
        cx.err(
            owner_span,
            format!("{owner} needs exactly one action: forward, redirect or fixed_response (found {n})"),
        );
    }
    let mut def = None;
    if let Some(f) = forward {
        let (arms, stickiness) = match f.get_ref() {
            Forward::One(_) => (None, None),
            Forward::Weighted(arms) => (Some(arms), None),
            Forward::Table(t) => (Some(&t.target_groups), t.stickiness.as_ref()),
        };
        if let Some(arms) = arms {
            if arms.is_empty() {
                cx.err(f.span(), format!("{owner}: weighted forward lists no target group"));
            }
            let mut seen = HashSet::new();
            for a in arms {
                if !seen.insert(&a.target_group) {
                    cx.err(
                        f.span(),
                        format!("{owner}: target group {:?} appears twice in one forward", a.target_group),
                    );
                }
                if a.weight > MAX_WEIGHT {
                    cx.err(f.span(), format!("{owner}: forward weight must be 0..={MAX_WEIGHT}"));
                }
            }
            if !arms.is_empty() && arms.iter().all(|a| a.weight == 0) {
                cx.err(f.span(), format!("{owner}: forward weights are all zero"));
            }
        }
        let stickiness = stickiness.map(|d| d.0);
        if stickiness.is_some_and(|d| !(STICKINESS_MIN..=STICKINESS_MAX).contains(&d)) {
            cx.err(f.span(), format!("{owner}: forward stickiness must be 1s..=7d"));
        }
        def = Some(ActionDef::Forward { stickiness });
    }
    if let Some(r) = redirect {
        let rd = r.get_ref();
        let status = match rd.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(rd.status).ok(),
            _ => None,
        };
        if status.is_none() {
            cx.err(r.span(), format!("{owner}: redirect status must be 301, 302, 303, 307 or 308"));
        }
        if rd.protocol.as_deref().is_some_and(|p| p != "http" && p != "https") {
            cx.err(r.span(), format!("{owner}: redirect protocol must be \"http\" or \"https\""));
        }
        if rd.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            cx.err(r.span(), format!("{owner}: redirect path must start with '/'"));
        }
        if rd.host.as_deref().is_some_and(|h| h.is_empty() || h.contains(['/', ' ', '?', '#'])) {
            cx.err(r.span(), format!("{owner}: redirect host must be a bare host name"));
        }
        if rd.port == Some(0) {
            cx.err(r.span(), format!("{owner}: redirect port must be 1..=65535"));
        }
        def = status.map(|status| {
            ActionDef::Redirect(Redirect {
                protocol: rd.protocol.as_deref().map(Into::into),
                host: rd.host.as_deref().map(Into::into),
                port: rd.port,
                path: rd.path.as_deref().map(Into::into),
                query: rd.query.as_deref().map(Into::into),
                status,
            })
        });
    }
    if let Some(f) = fixed {
        let fr = f.get_ref();
        let status = StatusCode::from_u16(fr.status).ok().filter(|_| (200..=599).contains(&fr.status));
        if status.is_none() {
            cx.err(f.span(), format!("{owner}: fixed_response status must be 200..=599"));
        }
        let content_type = HeaderValue::from_str(&fr.content_type).ok();
        if content_type.is_none() {
            cx.err(f.span(), format!("{owner}: bad content_type {:?}", fr.content_type));
        }
        if fr.body.len() > MAX_FIXED_BODY {
            cx.err(f.span(), format!("{owner}: fixed_response body is larger than {MAX_FIXED_BODY} bytes"));
        }
        def = status.zip(content_type).map(|(status, content_type)| {
            ActionDef::Fixed(FixedResponse { status, content_type, body: Bytes::from(fr.body.clone()) })
        });
    }
    def.filter(|_| cx.clean_since(mark))
}
