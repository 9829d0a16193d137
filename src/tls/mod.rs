//! TLS: one rustls crypto provider (aws-lc-rs) for the whole process, certificate loading from
//! PEM ([`load`]), the SNI certificate store that rustls asks on every handshake ([`store`]),
//! and client configurations for HTTPS to targets ([`client`]).
//!
//! Session tickets and the stateful session cache are created once per process and shared by
//! every server configuration, so TLS resumption survives reloads.

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod client;
pub mod load;
pub mod mtls;
pub mod pkcs8;
pub mod store;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

pub use load::{load, LoadedCert};
pub use store::CertStore;

/// The process's crypto provider: rustls' default aws-lc-rs, with its post-quantum hybrid key
/// exchange (X25519MLKEM768) preferred.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

fn ticketer() -> Arc<dyn ProducesTickets> {
    static T: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    T.get_or_init(|| rustls::crypto::aws_lc_rs::Ticketer::new().expect("aws-lc-rs ticketer")).clone()
}

fn session_cache() -> Arc<dyn StoresServerSessions> {
    static C: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    C.get_or_init(|| ServerSessionMemoryCache::new(64 * 1024)).clone()
}

/// A server configuration for one listener: TLS 1.2 and 1.3, the listener's certificates
/// resolved by SNI, its ALPN list, and the process-wide ticketer and session cache; with
/// `client_auth` (mutual TLS), that verifier and no session resumption (a resumed session
/// presents no certificate).
pub fn server_config(
    store: CertStore,
    alpn: &[String],
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mutual = client_auth.is_some();
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(store));
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if mutual {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    } else {
        cfg.ticketer = ticketer();
        cfg.session_storage = session_cache();
    }
    Ok(Arc::new(cfg))
}
