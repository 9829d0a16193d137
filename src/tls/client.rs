//! Connections to targets, for traffic and health checks alike: TCP, then TLS when the group
//! uses it ([`dial`]), and the client configurations for HTTPS to targets: verification against
//! the system roots or a configured CA bundle, or none (`verify = false`, warned about), and ALPN
//! by upstream protocol.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::snapshot::UpstreamProtocol;

/// How a target group talks TLS to its targets.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// The name to send and verify; None = the target's IP address.
    pub server_name: Option<ServerName<'static>>,
}

/// A byte stream to a target: TCP, or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Why [`dial`] failed.
#[derive(Debug)]
pub enum DialError {
    Connect(io::Error),
    Tls(io::Error),
    /// TCP and TLS together took longer than the budget.
    Timeout,
}

/// Opens a connection to `addr`: TCP within `timeout`, `preface` written (a PROXY header),
/// then TLS when `tls` is set (the whole handshake within the same budget).
pub async fn dial(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
    preface: Option<&[u8]>,
) -> Result<Stream, DialError> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(DialError::Connect)?;
        let _ = stream.set_nodelay(true);
        if let Some(p) = preface {
            tokio::io::AsyncWriteExt::write_all(&mut stream, p).await.map_err(DialError::Connect)?;
        }
        let Some(tls) = tls else { return Ok(Stream::Tcp(stream)) };
        let name = tls.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let s =
            tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, stream).await.map_err(DialError::Tls)?;
        Ok(Stream::Tls(Box::new(s)))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(DialError::Timeout))
}

/// The system's trusted roots, loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static R: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("loading system CA certificates: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        Arc::new(roots)
    })
    .clone()
}

/// Builds the client configuration. `ca` replaces the system roots when given.
pub fn upstream_config(
    protocol: UpstreamProtocol,
    verify: bool,
    ca: Option<Vec<CertificateDer<'static>>>,
    server_name: Option<ServerName<'static>>,
) -> Result<UpstreamTls, String> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = if !verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify)).with_no_client_auth()
    } else {
        let roots = match ca {
            Some(certs) => {
                let mut r = RootCertStore::empty();
                let (added, _) = r.add_parsable_certificates(certs);
                if added == 0 {
                    return Err("the CA file holds no usable certificate".into());
                }
                Arc::new(r)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(UpstreamTls { config: Arc::new(config), server_name })
}

/// Accepts any certificate: `verify = false` (encryption without authentication).
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider().signature_verification_algorithms.supported_schemes()
    }
}
