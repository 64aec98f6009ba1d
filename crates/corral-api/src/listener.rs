//! The server's listener: plain HTTP, and with a certificate also TLS on the same port.
//!
//! A TLS client's first byte is a handshake record (`0x16`); an HTTP request starts with a
//! method name. So one port serves both: SDKs keep talking plain HTTP to
//! `http://host:port/api`, while clients that insist on HTTPS (the SDK's S3 client for
//! uploaded build context refuses plain HTTP) reach the same routes at `https://host:port`.
//! Handshakes run in their own tasks, so a slow or silent client never holds up others.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted and ready to serve, not yet taken by the server.
const BACKLOG: usize = 1024;

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("reading {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("the TLS certificate and key do not fit together: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

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

/// A connection, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Who is on the other end of a request: handlers read it as `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            tls: matches!(stream.io(), Conn::Tls(_)),
        }
    }
}

/// The listener `axum::serve` takes connections from.
#[derive(Debug)]
pub struct Listener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
}

impl Listener {
    /// Listens on `addr`; with `tls`, connections opening with a TLS handshake are served
    /// over TLS and the rest as plain HTTP.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, ListenerError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenerError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| ListenerError::Bind { addr, source })?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(tcp, tls.map(TlsAcceptor::from), tx));
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when the server drops this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    ready: mpsc::Sender<(Conn, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            if ready.send((Conn::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(stream, acceptor)).await;
            match conn {
                Ok(Ok(conn)) => {
                    let _ = ready.send((conn, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "connection sent nothing in time"),
            }
        });
    }
}

/// Serves a connection over TLS when it opens with a handshake, else as plain HTTP.
async fn classify(stream: TcpStream, acceptor: TlsAcceptor) -> std::io::Result<Conn> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 1 && first[0] == TLS_HANDSHAKE {
        Ok(Conn::Tls(Box::new(acceptor.accept(stream).await?)))
    } else {
        Ok(Conn::Plain(stream))
    }
}
