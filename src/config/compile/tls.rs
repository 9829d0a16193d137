//! TLS: `[[certificates]]` (loaded once, here), each https listener's server configuration
//! (its errors at the listener's `certificates` key), rule hosts no certificate covers, and the
//! client configuration of a target group's `tls`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::file::Spanned;
use rustls::pki_types::ServerName;

use super::listener::ListenerTls;
use super::{valid_name, Ctx};
use crate::config::file::{self, FileConfig};
use crate::config::material::{self, AwsCertificate, Material};
use crate::config::snapshot::UpstreamProtocol;
use crate::tls::client::{upstream_config, UpstreamTls};
use crate::tls::load::Origin;
use crate::tls::{CertStore, LoadedCert};

/// A certificate that loaded, and where it comes from.
pub(super) struct Cert {
    pub loaded: LoadedCert,
    /// None: files.
    pub source: Option<AwsCertificate>,
    pub refresh: Duration,
}

/// The certificates that loaded, by name.
pub(super) type Certificates = HashMap<String, Cert>;

/// How often an AWS-sourced certificate is read again, unless `refresh` says.
pub const REFRESH: Duration = Duration::from_secs(3600);

/// Loads every `[[certificates]]` element (an element with an error is left out): from its
/// files, or from what was fetched from AWS for it (`material`).
pub(super) fn certificates(cx: &mut Ctx<'_>, list: &[Spanned<file::Certificate>], material: &Material) -> Certificates {
    let mut certs = Certificates::new();
    for c in list {
        let c = c.get_ref();
        let name = c.name.get_ref();
        if !valid_name(name) {
            cx.err(c.name.span(), format!("bad certificate name {name:?}: use letters, digits, '-', '_' and '.'"));
            continue;
        }
        if certs.contains_key(name) {
            cx.err(c.name.span(), format!("duplicate certificate name {name:?}"));
            continue;
        }
        let files = c.cert.is_some() || c.key.is_some();
        let sources = [files, c.acm.is_some(), c.ssm.is_some(), c.secrets_manager.is_some()];
        if sources.iter().filter(|x| **x).count() != 1 {
            cx.err(
                c.name.span(),
                format!(
                    "certificate {name:?}: give exactly one source: cert + key (files), acm, ssm or secrets_manager"
                ),
            );
            continue;
        }
        let source = material::aws_certificate(c);
        let refresh = match (&c.refresh, &source) {
            (Some(r), None) => {
                cx.err(
                    r.span(),
                    format!("certificate {name:?}: refresh is for AWS sources (files are read again on reload)"),
                );
                continue;
            }
            (Some(r), Some(_)) if r.get_ref().0 < Duration::from_secs(1) => {
                cx.err(r.span(), format!("certificate {name:?}: refresh must be at least 1s"));
                continue;
            }
            (Some(r), Some(_)) => r.get_ref().0,
            (None, _) => REFRESH,
        };
        let (loaded, at) = match &source {
            None => {
                let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
                    cx.err(c.name.span(), format!("certificate {name:?}: files need both cert and key"));
                    continue;
                };
                (crate::tls::load(&cx.path(cert.get_ref()), &cx.path(key.get_ref())), cert.span())
            }
            Some(src) => {
                let at = c
                    .acm
                    .as_ref()
                    .map(Spanned::span)
                    .or_else(|| c.ssm.as_ref().map(Spanned::span))
                    .or_else(|| c.secrets_manager.as_ref().map(Spanned::span))
                    .unwrap_or_else(|| c.name.span());
                let what = format!("certificate {name:?}");
                let got = material.certificates.get(src);
                let Some(pem) = super::fetched(cx, at.clone(), &what, src, got, "the last good copy is served") else {
                    continue;
                };
                let what = src.to_string();
                let origin = Origin { cert: &what, key: &what };
                (crate::tls::load::from_pem(&origin, &pem.chain, (*pem.key).clone_key()), at)
            }
        };
        match loaded {
            Ok((loaded, warnings)) => {
                for w in warnings {
                    cx.warn(at.clone(), format!("certificate {name:?}: {w}"));
                }
                certs.insert(name.clone(), Cert { loaded, source, refresh });
            }
            Err(e) => cx.err(at, format!("certificate {name:?}: {e}")),
        }
    }
    certs
}

/// The server configuration of https listener `name` (None when one of its certificates did
/// not load, which was reported with the certificate, or when rustls refuses it, reported at the
/// listener's `certificates` key).
pub(super) fn listener_config(
    cx: &mut Ctx<'_>,
    certs: &Certificates,
    name: &str,
    t: &ListenerTls,
) -> Option<Arc<rustls::ServerConfig>> {
    let mut store = CertStore::new(&certs.get(&t.default)?.loaded);
    for n in &t.names {
        store.add(&certs.get(n)?.loaded);
    }
    let client_auth = match &t.mtls {
        Some(m) => match crate::tls::mtls::verifier(&m.settings) {
            Ok(v) => Some(v),
            Err(e) => {
                cx.err(m.span.clone(), format!("listener {name:?}: mutual_tls: {e}"));
                return None;
            }
        },
        None => None,
    };
    match crate::tls::server_config(store, &t.alpn, client_auth) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.err(t.span.clone(), format!("listener {name:?}: TLS: {e}"));
            None
        }
    }
}

/// Warns about rule hosts on https listeners that no certificate of the listener covers: those
/// clients get the default certificate, which browsers reject (check and reload both show it).
pub(super) fn uncovered_hosts(cx: &mut Ctx<'_>, certs: &Certificates, cfg: &FileConfig) {
    for r in &cfg.rules {
        let r = r.get_ref();
        let Some(hosts) = &r.host else { continue };
        for l in r.listeners.get_ref() {
            let Some(listener) = cfg.listeners.iter().map(|x| x.get_ref()).find(|x| x.name.get_ref() == l.get_ref())
            else {
                continue;
            };
            let Some(names) = listener
                .certificates
                .as_ref()
                .filter(|_| *listener.protocol.get_ref() == file::ListenerProtocol::Https)
            else {
                continue;
            };
            let mut store = CertStore::default();
            for c in names.get_ref().iter().filter_map(|c| certs.get(c)) {
                store.add(&c.loaded);
            }
            for h in hosts.get_ref() {
                let h = h.to_ascii_lowercase();
                let covered = if let Some(rest) = h.strip_prefix("*.") {
                    store.covers(&format!("x.{rest}"))
                } else if h.contains(['*', '?']) {
                    true // other wildcard shapes cannot be checked name by name
                } else {
                    store.covers(&h)
                };
                if !covered {
                    cx.warn(hosts.span(), format!("rule {:?}: host {h:?} is not covered by any certificate of https listener {:?}; clients will get the default certificate", r.name.get_ref(), l.get_ref()));
                }
            }
        }
    }
}

/// The client configuration of target group `group`'s `tls` (None when it is disabled or has an
/// error, which is reported).
pub(super) fn upstream(
    cx: &mut Ctx<'_>,
    group: &str,
    protocol: UpstreamProtocol,
    tls: &Spanned<file::UpstreamTls>,
) -> Option<UpstreamTls> {
    let span = tls.span();
    let t = tls.get_ref();
    if !t.enabled {
        return None;
    }
    let ca = match &t.ca {
        Some(ca) => match crate::tls::load::load_ca_bundle(&cx.path(ca.get_ref())) {
            Ok(c) => Some(c),
            Err(e) => {
                cx.err(ca.span(), format!("target group {group:?}: {e}"));
                None
            }
        },
        None => None,
    };
    let server_name = match &t.server_name {
        Some(sn) => match ServerName::try_from(sn.get_ref().clone()) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.err(sn.span(), format!("bad server_name {:?}: a DNS name or IP address", sn.get_ref()));
                None
            }
        },
        None => None,
    };
    if !t.verify {
        cx.warn(span.clone(), format!("target group {group:?}: verify = false: target certificates are not checked (encryption without authentication)"));
    }
    if t.ca.is_some() && !t.verify {
        cx.err(span.clone(), format!("target group {group:?}: ca is set but verify = false"));
    }
    if t.ca.is_some() && ca.is_none() {
        return None;
    }
    match upstream_config(protocol, t.verify, ca, server_name) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.err(span, format!("target group {group:?}: {e}"));
            None
        }
    }
}
