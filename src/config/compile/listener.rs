//! `[[listeners]]`: each element checked and turned into a [`ListenerDef`] in one pass (its bind
//! address parsed once, with the key's place in the file for bind errors). Its certificates and
//! its default action's target groups are names, resolved with the rest of the configuration
//! ([`super::resolve`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::config::file::Spanned;

use super::rule::{self, ActionDef};
use super::{check_name, optional, Ctx};
use crate::config::file;
use crate::config::snapshot::ListenerProtocol;
use crate::routing::rewrite::HeaderEdits;

/// The ALPN protocols an https listener offers when `alpn` is not set.
const DEFAULT_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// A checked listener.
pub(super) struct ListenerDef {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// The `bind` key's line and column.
    pub bind_at: (usize, usize),
    pub protocol: ListenerProtocol,
    /// https listeners: the certificates by name, not yet resolved.
    pub tls: Option<ListenerTls>,
    /// None: the built-in 404.
    pub default_action: Option<ActionDef>,
    pub max_request_body: Option<u64>,
    /// `response_headers` and `server_header = false`.
    pub response_edits: Option<HeaderEdits>,
}

/// An https listener's certificates (names) and ALPN list.
pub(super) struct ListenerTls {
    pub names: Vec<String>,
    /// The certificate for clients that send no (or an unknown) server name.
    pub default: String,
    pub alpn: Vec<String>,
    /// The `certificates` key, where errors building the server configuration are reported.
    pub span: Range<usize>,
}

/// Checks and compiles every listener (an element with an error is None).
pub(super) fn compile_all(cx: &mut Ctx<'_>, list: &[Spanned<file::Listener>]) -> Vec<Option<ListenerDef>> {
    let mut names = HashSet::new();
    let mut binds = HashMap::new();
    list.iter()
        .map(|l| {
            let mark = cx.mark();
            let l = l.get_ref();
            check_name(cx, "listener", &l.name, &mut names);
            compile(cx, l, &mut binds).filter(|_| cx.clean_since(mark))
        })
        .collect()
}

/// One listener; `binds` holds the addresses of those before it (one address, one listener).
fn compile<'a>(
    cx: &mut Ctx<'_>,
    l: &'a file::Listener,
    binds: &mut HashMap<SocketAddr, &'a str>,
) -> Option<ListenerDef> {
    let mark = cx.mark();
    let name = l.name.get_ref();
    let bind = l.bind.get_ref().parse::<SocketAddr>().ok();
    match bind {
        Some(a) => {
            if let Some(other) = binds.insert(a, name).filter(|_| a.port() != 0) {
                cx.err(l.bind.span(), format!("listener {name:?} binds {a}, already bound by listener {other:?}"));
            }
        }
        None => cx.err(
            l.bind.span(),
            format!("bad bind address {:?}: expected IP:PORT (e.g. \"0.0.0.0:80\")", l.bind.get_ref()),
        ),
    }
    let protocol: ListenerProtocol = (*l.protocol.get_ref()).into();
    let tls = match protocol {
        ListenerProtocol::Https => tls(cx, name, l),
        ListenerProtocol::Http => {
            for (span, key) in [
                (l.certificates.as_ref().map(|c| c.span()), "certificates"),
                (l.default_certificate.as_ref().map(|c| c.span()), "default_certificate"),
                (l.alpn.as_ref().map(|c| c.span()), "alpn"),
            ] {
                if let Some(span) = span {
                    cx.err(span, format!("{key} is only valid on https listeners"));
                }
            }
            None
        }
    };
    let default_action = match &l.default_action {
        Some(a) => {
            let a = a.get_ref();
            let owner_span = l.name.span();
            Some(rule::action(
                cx,
                a.forward.as_ref(),
                a.redirect.as_ref(),
                a.fixed_response.as_ref(),
                owner_span,
                "default_action",
            ))
        }
        None => None,
    };
    let response_edits = super::rewrite::listener_edits(cx, l, &format!("listener {:?}", l.name.get_ref()));
    let def = ListenerDef {
        name: name.as_str().into(),
        bind: bind?,
        bind_at: cx.map.line_col(l.bind.span().start),
        protocol,
        tls,
        default_action: optional(default_action)?,
        max_request_body: l.max_request_body.as_ref().map(|m| *m.get_ref()),
        response_edits,
    };
    cx.clean_since(mark).then_some(def)
}

/// The TLS keys of https listener `name` (None when they are wrong).
fn tls(cx: &mut Ctx<'_>, name: &str, l: &file::Listener) -> Option<ListenerTls> {
    let mark = cx.mark();
    if let Some(alpn) = &l.alpn {
        for p in alpn.get_ref() {
            if !DEFAULT_ALPN.contains(&p.as_str()) {
                cx.err(alpn.span(), format!("unsupported ALPN protocol {p:?}: \"h2\" or \"http/1.1\""));
            }
        }
        if alpn.get_ref().is_empty() {
            cx.err(alpn.span(), "alpn lists no protocol");
        }
    }
    let Some(list) = &l.certificates else {
        cx.err(l.name.span(), format!("https listener {name:?} needs certificates = [...]"));
        return None;
    };
    let names = list.get_ref();
    if names.is_empty() {
        cx.err(list.span(), format!("https listener {name:?} needs at least one certificate"));
    }
    if let Some(d) = &l.default_certificate {
        if !names.contains(d.get_ref()) {
            cx.err(d.span(), format!("default_certificate {:?} is not in the listener's certificates", d.get_ref()));
        }
    }
    let default = match &l.default_certificate {
        Some(d) => d.get_ref().clone(),
        None => names.first()?.clone(),
    };
    let alpn = l.alpn.as_ref().map_or_else(|| DEFAULT_ALPN.map(String::from).to_vec(), |a| a.get_ref().clone());
    let t = ListenerTls { names: names.clone(), default, alpn, span: list.span() };
    cx.clean_since(mark).then_some(t)
}

impl From<file::ListenerProtocol> for ListenerProtocol {
    fn from(p: file::ListenerProtocol) -> Self {
        match p {
            file::ListenerProtocol::Http => ListenerProtocol::Http,
            file::ListenerProtocol::Https => ListenerProtocol::Https,
        }
    }
}
