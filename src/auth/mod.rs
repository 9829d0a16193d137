//! Who may come in, checked per rule before its action: JSON Web Tokens ([`jwt`]) verified with
//! the issuer's key sets ([`jwks`]). (Client certificates are checked in the TLS handshake:
//! [`crate::tls::mtls`].)

#![deny(clippy::disallowed_types)] // no lock on the data plane (.clippy.toml)

pub mod jwks;
pub mod jwt;
