//! The server's listener: plain HTTP, and with a certificate also TLS on the same port; and
//! the limits that keep clients who never finish a request from holding the server.
//!
//! A TLS client's first byte is a handshake record (`0x16`); an HTTP request starts with a
//! method name. So one port serves both: SDKs keep talking plain HTTP to
//! `http://host:port/api`, while clients that insist on HTTPS (the SDK's S3 client for
//! uploaded build context refuses plain HTTP) reach the same routes at `https://host:port`.
//!
//! Limits ([`Limits`]), all enforced before any route or key check runs:
//! - a connection holds a slot from accept until its socket is closed (WebSockets included);
//!   over the cap overall or per source address (IPv6: per /64) the new connection is closed
//!   at once by the accept loop, without a task, and counted in
//!   `corral_connections_refused_total`: the newest are refused first;
//! - the header timeout runs from accept (TLS handshake included) until a request head is
//!   complete, and again from the first byte of each later request on the connection;
//! - the idle timeout runs from the end of a response until the next request's first byte.
//!
//! Neither timeout runs while a request is being served (its body read, its response
//! streamed, however long) nor after a protocol switch (WebSocket): they only bound the wait
//! for a request head. The accept loop never waits on anything but `accept` itself, so it
//! keeps taking (and refusing) connections however many are held open.
//!
//! Hyper's own `header_read_timeout` is not used: it starts when a response ends, so it
//! would also cut idle keep-alive connections after the (short) header timeout. The phases
//! are tracked here instead ([`Watch`]): the service marks a request as begun and its
//! response body as ended, and the connection's reads enforce the deadline of the phase.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod admission;
mod conn;
mod tls;

use admission::{Admission, RefusalLog, Slot, release_after_bursts};
pub use conn::Conn;
use conn::{Tracked, Watch};
pub use tls::tls_config;
use tls::{Stream, classify};

/// Default time from accept (or from a later request's first byte) to a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time a connection may sit idle between a response and the next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The listener's limits on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From accept (TLS handshake included), or from a later request's first byte, until the
    /// request head is complete.
    pub header_timeout: Duration,
    /// From the end of a response until the next request's first byte.
    pub idle_timeout: Duration,
    /// Open connections overall (WebSockets and TLS handshakes included).
    pub max_connections: usize,
    /// Open connections per source address (IPv6: per /64).
    pub max_connections_per_address: usize,
}

impl Limits {
    /// Defaults for a process allowed `open_files` descriptors: half of them for connections
    /// (sandboxes, the store and images need the rest), a quarter of those per address.
    pub fn for_open_files(open_files: u64) -> Self {
        let max_connections = usize::try_from(open_files / 2)
            .unwrap_or(usize::MAX)
            .clamp(32, 1 << 20);
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections,
            max_connections_per_address: (max_connections / 4).max(8),
        }
    }
}

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

/// Who is on the other end of a request: handlers read it as `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The server's listening socket and what it serves connections with.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
    limits: Limits,
    release_memory: Option<fn() -> bool>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Listener {
    /// Listens on `addr`; with `tls`, connections opening with a TLS handshake are served
    /// over TLS and the rest as plain HTTP.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: Limits,
    ) -> Result<Self, ListenerError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenerError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| ListenerError::Bind { addr, source })?;
        Ok(Self {
            tcp,
            tls: tls.map(TlsAcceptor::from),
            local,
            limits,
            release_memory: None,
        })
    }

    /// Calls `release` (off the async workers) after a burst of connections has closed, to
    /// give what they held back to the kernel (e.g. `malloc_trim`, which the allocator does
    /// not do by itself for memory freed between live blocks).
    pub fn release_memory_after_bursts(mut self, release: fn() -> bool) -> Self {
        self.release_memory = Some(release);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves `app` on every admitted connection (HTTP/1.1, WebSocket upgrades included)
    /// until `shutdown` completes; then stops accepting, lets requests in flight finish and
    /// closes idle connections, and returns once every connection task has ended.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()> + Send) {
        let Self {
            tcp,
            tls,
            limits,
            release_memory,
            ..
        } = self;
        let admission = Admission::new(&limits);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some(release) = release_memory {
            tasks.spawn(release_after_bursts(
                admission.clone(),
                release,
                stop.clone(),
            ));
        }
        let mut refusals = RefusalLog::default();
        let mut shutdown = pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
                        if !matches!(e.kind(), ConnectionAborted | ConnectionReset) {
                            // Out of file descriptors and the like: back off rather than spin.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Over a cap the socket is closed right here: a refusal costs no task.
            let slot = match admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    refusals.note(why, peer, &limits);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tasks.spawn(serve_connection(
                Accepted {
                    stream,
                    peer,
                    slot,
                    at: Instant::now(),
                },
                tls.clone(),
                app.clone(),
                limits,
                stop.clone(),
            ));
        }
        drop(tcp);
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }
}

/// A connection the accept loop admitted.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    at: Instant,
}

async fn serve_connection(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let Accepted {
        stream,
        peer,
        slot,
        at,
    } = accepted;
    let stream = match tls {
        None => Stream::Plain(stream),
        // The handshake counts against the header timeout, like the head it precedes.
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout_at(at + limits.header_timeout, classify(stream, acceptor));
            let result = tokio::select! {
                r = handshake => r,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("corral_connections_timed_out_total", "waiting_for" => "handshake")
                        .increment(1);
                    tracing::debug!(%peer, "no TLS handshake in time");
                    return;
                }
            }
        }
    };
    let peer = Peer {
        addr: peer,
        tls: matches!(stream, Stream::Tls(_)),
    };
    let watch = Arc::new(Watch::new(at));
    let conn = Conn {
        stream,
        watch: watch.clone(),
        limits,
        timer: None,
        _slot: slot,
    };
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        watch.request_began();
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        let watch = watch.clone();
        async move {
            let Ok(resp) = tower::ServiceExt::oneshot(app, req).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                watch.upgraded();
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, watch }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header and idle timeouts are the reads' (see `Conn`), not hyper's.
    builder.header_read_timeout(None);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(conn), service)
            .with_upgrades()
    );
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %peer.addr, error = %e, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::routing::get;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    /// Long enough to mean "never" in a test; short enough not to hang one.
    const HANG: Duration = Duration::from_secs(10);

    fn limits(header_ms: u64, idle_ms: u64) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: 1000,
            max_connections_per_address: 1000,
        }
    }

    fn app() -> Router {
        Router::new()
            .route("/health", get(|| async { "ok" }))
            // Five chunks 300 ms apart: longer than the tests' timeouts.
            .route(
                "/slow",
                get(|| async {
                    let chunks = futures_util::stream::unfold(0, |i| async move {
                        if i == 5 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Some((Ok::<_, Infallible>(format!("chunk{i};")), i + 1))
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route(
                "/ws",
                get(|up: axum::extract::ws::WebSocketUpgrade| async move {
                    up.on_upgrade(|mut ws| async move {
                        while let Some(Ok(msg)) = ws.recv().await {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    })
                }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<Peer>| async move {
                    format!("{} {}", peer.addr.ip(), peer.tls)
                }),
            )
    }

    struct TestServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<()>,
    }

    async fn serve(limits: Limits) -> TestServer {
        let listener = Listener::bind("127.0.0.1:0".parse().expect("addr"), None, limits)
            .await
            .expect("bind");
        let addr = listener.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(listener.serve(app(), async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            served,
        }
    }

    /// A connection from `from` (any 127/8 address is loopback).
    async fn connect(server: &TestServer, from: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("addr"))
            .expect("bind");
        socket.connect(server.addr).await.expect("connect")
    }

    /// Whether the server closed `conn` (EOF or reset) within `within`; data is skipped.
    async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Sends a GET on `conn` and reads the whole (Content-Length) response.
    async fn get_on(conn: &mut TcpStream, path: &str) -> String {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(HANG, conn.read(&mut buf))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(n > 0, "closed before the response ended: {got:?}");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return text;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_partial_or_missing_head_is_closed_after_the_header_timeout() {
        let server = serve(limits(300, 60_000)).await;
        let mut silent = connect(&server, "127.0.0.1").await;
        let mut partial = connect(&server, "127.0.0.1").await;
        partial
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .expect("write");
        let started = Instant::now();
        assert!(
            closed_within(&mut partial, HANG).await,
            "partial head kept open"
        );
        assert!(
            closed_within(&mut silent, HANG).await,
            "silent connection kept open"
        );
        assert!(started.elapsed() < HANG);
        // Positive control: a complete head in time is answered.
        let mut ok = connect(&server, "127.0.0.1").await;
        assert!(get_on(&mut ok, "/health").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn bytes_after_idle_restart_the_header_timeout() {
        // Idle is long: a partial second head must still be cut by the header timeout.
        let server = serve(limits(300, 60_000)).await;
        let mut conn = connect(&server, "127.0.0.1").await;
        assert!(
            get_on(&mut conn, "/health")
                .await
                .starts_with("HTTP/1.1 200")
        );
        conn.write_all(b"GET /health HT").await.expect("write");
        assert!(closed_within(&mut conn, HANG).await);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_outlives_the_header_timeout_then_closes() {
        let server = serve(limits(300, 1500)).await;
        let mut conn = connect(&server, "127.0.0.1").await;
        assert!(
            get_on(&mut conn, "/health")
                .await
                .starts_with("HTTP/1.1 200")
        );
        // Idle for longer than the header timeout: still served.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            get_on(&mut conn, "/health")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let idle_since = Instant::now();
        assert!(
            closed_within(&mut conn, HANG).await,
            "idle connection kept open"
        );
        // Not closed by the (shorter) header timeout.
        assert!(idle_since.elapsed() >= Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn long_responses_and_websockets_are_not_cut() {
        let server = serve(limits(200, 400)).await;
        // A response streamed over 1.5 s, longer than both timeouts.
        let mut conn = connect(&server, "127.0.0.1").await;
        conn.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut body = String::new();
        tokio::time::timeout(HANG, conn.read_to_string(&mut body))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            body.contains("chunk0;") && body.contains("chunk4;"),
            "{body}"
        );

        // A WebSocket silent for 1 s is still open and served.
        let url = format!("ws://{}/ws", server.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        ws.send(WsMessage::Text("hi".into())).await.expect("send");
        let echo = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("in time");
        assert!(
            matches!(&echo, Some(Ok(WsMessage::Text(t))) if t.as_str() == "hi"),
            "{echo:?}"
        );
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_refused_newest_first() {
        let server = serve(Limits {
            max_connections: 5,
            max_connections_per_address: 3,
            ..limits(30_000, 60_000)
        })
        .await;
        // Three held open from 127.0.0.1 (partial heads); the fourth is closed at once.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = connect(&server, "127.0.0.1").await;
            c.write_all(b"GET /health HTTP/1.1\r\n")
                .await
                .expect("write");
            held.push(c);
        }
        let mut fourth = connect(&server, "127.0.0.1").await;
        assert!(
            closed_within(&mut fourth, HANG).await,
            "over the per-address cap"
        );
        // Another address still gets in, up to the overall cap.
        let mut other = connect(&server, "127.0.0.2").await;
        assert_eq!(
            get_on(&mut other, "/peer").await.rsplit("\r\n").next(),
            Some("127.0.0.2 false")
        );
        let _other2 = connect(&server, "127.0.0.2").await;
        let mut sixth = connect(&server, "127.0.0.3").await;
        assert!(
            closed_within(&mut sixth, HANG).await,
            "over the overall cap"
        );
        // The held connections were not the ones given up.
        for c in &mut held {
            assert!(!closed_within(c, Duration::from_millis(100)).await);
        }
        // A closed connection gives its place back.
        drop(held.pop());
        let deadline = Instant::now() + HANG;
        loop {
            let mut again = connect(&server, "127.0.0.1").await;
            let mut buf = [0u8; 64];
            again
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("write");
            match tokio::time::timeout(HANG, again.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => break,
                _ => assert!(Instant::now() < deadline, "the place was never given back"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_returns() {
        let mut server = serve(limits(30_000, 60_000)).await;
        let mut idle = connect(&server, "127.0.0.1").await;
        assert!(
            get_on(&mut idle, "/health")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let _silent = connect(&server, "127.0.0.1").await;
        let _ = server.stop.take().expect("stop").send(());
        assert!(closed_within(&mut idle, HANG).await);
        tokio::time::timeout(HANG, &mut server.served)
            .await
            .expect("serve returned")
            .expect("no panic");
    }

    #[test]
    fn default_caps_follow_the_open_files_limit() {
        let l = Limits::for_open_files(20_000);
        assert_eq!(
            (l.max_connections, l.max_connections_per_address),
            (10_000, 2_500)
        );
        let small = Limits::for_open_files(16);
        assert_eq!(
            (small.max_connections, small.max_connections_per_address),
            (32, 8)
        );
    }
}
