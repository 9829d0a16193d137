//! `[[listeners]]`: each element checked and turned into a [`ListenerDef`] in one pass (its bind
//! address parsed once, with the key's place in the file for bind errors). Its certificates and
//! its default action's target groups are names, resolved with the rest of the configuration
//! ([`super::resolve`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::config::file::Spanned;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::rule::{self, ActionDef};
use super::{check_name, optional, Ctx};
use crate::config::file;
use crate::config::material::{AwsSecret, Material};
use crate::config::snapshot::ListenerProtocol;
use crate::routing::rewrite::HeaderEdits;
use crate::tls::mtls;
use std::time::Duration;

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
    /// `proxy_protocol.trusted`: peers whose connections start with a PROXY header.
    pub proxy_trusted: Option<Arc<[ipnet::IpNet]>>,
}

/// An https listener's certificates (names) and ALPN list.
pub(super) struct ListenerTls {
    pub names: Vec<String>,
    /// The certificate for clients that send no (or an unknown) server name.
    pub default: String,
    pub alpn: Vec<String>,
    /// The `certificates` key, where errors building the server configuration are reported.
    pub span: Range<usize>,
    /// `mutual_tls` (mode not off), with its trust store and CRLs loaded.
    pub mtls: Option<MtlsDef>,
}

/// A listener's mutual TLS, loaded, and where it is written.
pub(super) struct MtlsDef {
    pub settings: mtls::Settings,
    pub span: Range<usize>,
    /// The trust store and CRLs kept in AWS, read again every `refresh`.
    pub sources: Vec<AwsSecret>,
    pub refresh: Duration,
}

/// Checks and compiles every listener (an element with an error is None).
pub(super) fn compile_all(
    cx: &mut Ctx<'_>,
    list: &[Spanned<file::Listener>],
    material: &Material,
) -> Vec<Option<ListenerDef>> {
    let mut names = HashSet::new();
    let mut binds = HashMap::new();
    list.iter()
        .map(|l| {
            let mark = cx.mark();
            let l = l.get_ref();
            check_name(cx, "listener", &l.name, &mut names);
            compile(cx, l, &mut binds, material).filter(|_| cx.clean_since(mark))
        })
        .collect()
}

/// One listener; `binds` holds the addresses of those before it (one address, one listener).
fn compile<'a>(
    cx: &mut Ctx<'_>,
    l: &'a file::Listener,
    binds: &mut HashMap<SocketAddr, &'a str>,
    material: &Material,
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
        ListenerProtocol::Https => tls(cx, name, l, material),
        ListenerProtocol::Http => {
            for (span, key) in [
                (l.certificates.as_ref().map(|c| c.span()), "certificates"),
                (l.default_certificate.as_ref().map(|c| c.span()), "default_certificate"),
                (l.alpn.as_ref().map(|c| c.span()), "alpn"),
                (
                    l.mutual_tls
                        .as_ref()
                        .filter(|m| *m.get_ref().mode.get_ref() != file::MtlsMode::Off)
                        .map(|c| c.span()),
                    "mutual_tls",
                ),
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
        proxy_trusted: l.proxy_protocol.as_ref().map(|p| proxy_trusted(cx, p.get_ref())),
    };
    cx.clean_since(mark).then_some(def)
}

/// `proxy_protocol = { trusted = [...] }`: the networks, every entry a CIDR or an address.
fn proxy_trusted(cx: &mut Ctx<'_>, p: &file::ProxyProtocol) -> Arc<[ipnet::IpNet]> {
    let mut nets = Vec::new();
    for ip in p.trusted.get_ref() {
        match rule::parse_cidr(ip.get_ref()) {
            Some(net) => nets.push(net),
            None => cx.err(
                ip.span(),
                format!(
                    "bad CIDR {:?} in proxy_protocol.trusted: expected e.g. \"10.0.0.0/16\" (the NLB's subnets)",
                    ip.get_ref()
                ),
            ),
        }
    }
    if p.trusted.get_ref().is_empty() {
        cx.err(p.trusted.span(), "proxy_protocol.trusted lists no peer: name the balancer's addresses (CIDRs)");
    }
    nets.into()
}

/// The TLS keys of https listener `name` (None when they are wrong).
fn tls(cx: &mut Ctx<'_>, name: &str, l: &file::Listener, material: &Material) -> Option<ListenerTls> {
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
    let mtls = l.mutual_tls.as_ref().and_then(|m| mutual_tls(cx, name, m, material));
    let t = ListenerTls { names: names.clone(), default, alpn, span: list.span(), mtls };
    cx.clean_since(mark).then_some(t)
}

/// Checks `mutual_tls` and loads its trust store and CRLs (None: off, or an error reported).
fn mutual_tls(cx: &mut Ctx<'_>, name: &str, m: &Spanned<file::MutualTls>, material: &Material) -> Option<MtlsDef> {
    let mark = cx.mark();
    let span = m.span();
    let m = m.get_ref();
    let mode = match m.mode.get_ref() {
        file::MtlsMode::Off => return None,
        file::MtlsMode::Verify => mtls::Mode::Verify,
        file::MtlsMode::Passthrough => mtls::Mode::Passthrough,
    };
    let what = format!("listener {name:?}: mutual_tls");
    if mode == mtls::Mode::Passthrough {
        let unused = [
            (m.trust_store.as_ref().map(|t| t.span()), "trust_store"),
            (m.crl.as_ref().map(|t| t.span()), "crl"),
            (m.ignore_client_certificate_expiry.as_ref().map(|t| t.span()), "ignore_client_certificate_expiry"),
            (m.advertise_ca_names.as_ref().map(|t| t.span()), "advertise_ca_names"),
            (m.refresh.as_ref().map(|t| t.span()), "refresh"),
        ];
        for (at, key) in unused {
            if let Some(at) = at {
                cx.err(at, format!("{what}: {key} is for mode = \"verify\" (passthrough verifies nothing)"));
            }
        }
    }
    let mut trust = Vec::new();
    let mut sources = Vec::new();
    if mode == mtls::Mode::Verify {
        match &m.trust_store {
            None => cx.err(span.clone(), format!("{what}: mode = \"verify\" needs trust_store = \"ca-bundle.pem\"")),
            Some(t) => {
                let read = read_blob(cx, t.span(), &what, "trust store", t.get_ref(), material, &mut sources);
                if let Some((bytes, origin)) = read {
                    match trust_store(&bytes, &origin) {
                        Ok((certs, warnings)) => {
                            for w in warnings {
                                cx.warn(t.span(), format!("{what}: {w}"));
                            }
                            trust = certs;
                        }
                        Err(e) => cx.err(t.span(), format!("{what}: {e}")),
                    }
                }
            }
        }
    }
    let mut crls = Vec::new();
    if let (Some(list), mtls::Mode::Verify) = (&m.crl, mode) {
        for f in list.get_ref() {
            let Some((bytes, origin)) = read_blob(cx, list.span(), &what, "CRL file", f, material, &mut sources) else {
                continue;
            };
            match crl(bytes, &origin, &trust) {
                Ok((mut c, warnings)) => {
                    for w in warnings {
                        cx.warn(list.span(), format!("{what}: {w}"));
                    }
                    crls.append(&mut c);
                }
                Err(e) => cx.err(list.span(), format!("{what}: {e}")),
            }
        }
    }
    let refresh = match &m.refresh {
        Some(r) if sources.is_empty() && mode == mtls::Mode::Verify => {
            cx.err(
                r.span(),
                format!("{what}: refresh is for a trust store or CRL kept in AWS (files are read again on reload)"),
            );
            REFRESH
        }
        Some(r) if r.get_ref().0 < Duration::from_secs(1) => {
            cx.err(r.span(), format!("{what}: refresh must be at least 1s"));
            REFRESH
        }
        Some(r) => r.get_ref().0,
        None => REFRESH,
    };
    let settings = mtls::Settings {
        mode,
        trust,
        crls,
        ignore_expiry: m.ignore_client_certificate_expiry.as_ref().is_some_and(|b| *b.get_ref()),
        advertise_ca_names: m.advertise_ca_names.as_ref().is_none_or(|b| *b.get_ref()),
    };
    if !cx.clean_since(mark) {
        return None;
    }
    if let Err(e) = mtls::verifier(&settings) {
        cx.err(m.trust_store.as_ref().map_or(span.clone(), |t| t.span()), format!("{what}: {e}"));
        return None;
    }
    Some(MtlsDef { settings, span, sources, refresh })
}

/// How often a trust store or CRL kept in AWS is read again, unless `refresh` says.
pub const REFRESH: Duration = Duration::from_secs(3600);

/// The bytes of `b` (a `kind` of listener mutual TLS) and how messages name it: a file's, or what
/// was fetched from AWS for it (its source noted in `sources`). None: an error was reported.
fn read_blob(
    cx: &mut Ctx<'_>,
    at: Range<usize>,
    what: &str,
    kind: &str,
    b: &file::Blob,
    material: &Material,
    sources: &mut Vec<AwsSecret>,
) -> Option<(Vec<u8>, String)> {
    match crate::config::material::aws_blob(b) {
        Err(e) => {
            cx.err(at, format!("{what}: {kind}: {e}"));
            None
        }
        Ok(None) => {
            let file::Blob::Path(p) = b else { return None };
            let path = cx.path(p);
            match std::fs::read(&path) {
                Ok(bytes) => Some((bytes, path.display().to_string())),
                Err(e) => {
                    cx.err(at, format!("{what}: cannot read {kind} {}: {e}", path.display()));
                    None
                }
            }
        }
        Ok(Some(src)) => {
            let origin = src.to_string();
            let got = super::fetched(cx, at, what, &origin, material.secrets.get(&src), "the last good copy is used")
                .map(|v| v.0.clone());
            sources.push(src);
            got.map(|bytes| (bytes, origin))
        }
    }
}

/// The CA certificates of a trust store (PEM; each must be a CA), and warnings (a CA that has
/// expired).
fn trust_store(bytes: &[u8], origin: &str) -> Result<(Vec<CertificateDer<'static>>, Vec<String>), String> {
    let certs = crate::tls::load::ca_bundle(bytes, &format!("trust store {origin}"))?;
    let mut warnings = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let (_, x) =
            X509Certificate::from_der(c).map_err(|e| format!("certificate {} of trust store {origin}: {e}", i + 1))?;
        let subject = x.subject().to_string();
        if !x.is_ca() {
            // Every certificate of the store is a trust anchor: a leaf there would let its key
            // holder issue client certificates for any subject.
            return Err(format!("{subject:?} in {origin} is not a CA certificate (basicConstraints CA:TRUE)"));
        }
        if x.validity().not_after.timestamp() < now_unix() {
            warnings.push(format!("CA certificate {subject:?} in {origin} has expired"));
        }
    }
    Ok((certs, warnings))
}

/// The revocation lists of a CRL (PEM blocks, or one DER list), and a warning for a list whose
/// issuer is not in the trust store (it can revoke nothing).
fn crl(
    bytes: Vec<u8>,
    origin: &str,
    trust: &[CertificateDer<'static>],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Vec<String>), String> {
    let mut lists: Vec<CertificateRevocationListDer<'static>> = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in CRL {origin}: {e}"))?;
    if lists.is_empty() {
        if bytes.first() != Some(&0x30) {
            return Err(format!("no X509 CRL block in {origin} (PEM or DER expected)"));
        }
        lists.push(CertificateRevocationListDer::from(bytes));
    }
    let subjects: Vec<Vec<u8>> = trust
        .iter()
        .filter_map(|c| X509Certificate::from_der(c).ok().map(|(_, x)| x.subject().as_raw().to_vec()))
        .collect();
    let mut warnings = Vec::new();
    for l in &lists {
        let (_, parsed) =
            CertificateRevocationList::from_der(l).map_err(|e| format!("cannot parse CRL {origin}: {e}"))?;
        if !subjects.iter().any(|s| s == parsed.issuer().as_raw()) {
            warnings.push(format!(
                "the CRL in {origin} is issued by {:?}, which is not in the trust store: it applies only to certificates of an intermediate CA that clients send",
                parsed.issuer().to_string()
            ));
        }
    }
    Ok((lists, warnings))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl From<file::ListenerProtocol> for ListenerProtocol {
    fn from(p: file::ListenerProtocol) -> Self {
        match p {
            file::ListenerProtocol::Http => ListenerProtocol::Http,
            file::ListenerProtocol::Https => ListenerProtocol::Https,
        }
    }
}
