//! TLS on the plain-HTTP port: the server's certificate, and telling a TLS client (its first
//! byte is a handshake record, `0x16`) from an HTTP one (a method name) on each connection.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use super::ListenerError;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Loads a PEM certificate chain (leaf first) and its private key for the listener.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ListenerError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    fn pem(
        what: &'static str,
        path: &Path,
    ) -> impl Fn(rustls_pki_types::pem::Error) -> ListenerError {
        let path = path.display().to_string();
        move |source| ListenerError::Pem {
            what,
            path: path.clone(),
            source,
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem("the certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("the certificate", cert))?;
    if chain.is_empty() {
        return Err(ListenerError::NoCertificate(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("the private key", key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The server speaks HTTP/1.1 only (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection's byte stream, plain or TLS.
#[derive(Debug)]
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub(super) fn pinned(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Send)> {
        match self {
            Stream::Plain(s) => Pin::new(s),
            Stream::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

pub(super) trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

/// Serves a connection over TLS when it opens with a handshake, else as plain HTTP.
pub(super) async fn classify(stream: TcpStream, acceptor: TlsAcceptor) -> std::io::Result<Stream> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 1 && first[0] == TLS_HANDSHAKE {
        Ok(Stream::Tls(Box::new(acceptor.accept(stream).await?)))
    } else {
        Ok(Stream::Plain(stream))
    }
}
