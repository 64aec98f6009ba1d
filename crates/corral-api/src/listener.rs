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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// Default time from accept (or from a later request's first byte) to a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time a connection may sit idle between a response and the next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How often, at most, refused connections are logged (they are counted in a metric).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the listener looks for a burst of closed connections.
const BURST_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Connections closed within one check that make a burst (worth giving memory back after).
const BURST: u64 = 256;

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
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn pinned(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Send)> {
        match self {
            Stream::Plain(s) => Pin::new(s),
            Stream::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

/// Where a connection is in its life, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head (the rest of it) since this instant.
    Head(Instant),
    /// A response has ended at this instant; waiting for the next request's first byte.
    Idle(Instant),
    /// A request is being served: its body read, its response streamed. No timeout.
    Busy,
    /// The connection switched protocols (a WebSocket). No timeout.
    Upgraded,
}

/// A connection's phase, shared by its reads (which enforce the deadline) and the service
/// (which sees requests begin and responses end).
#[derive(Debug)]
struct Watch(Mutex<WatchState>);

#[derive(Debug)]
struct WatchState {
    phase: Phase,
    /// The task of a read left pending with no deadline: woken when a deadline starts, so
    /// that its next read arms the timer (hyper may not read again by itself when a
    /// response ends, its read interest being registered already).
    parked: Option<Waker>,
}

impl Watch {
    fn new(accepted: Instant) -> Self {
        Self(Mutex::new(WatchState {
            phase: Phase::Head(accepted),
            parked: None,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        self.state().phase
    }

    /// A request head is complete.
    fn request_began(&self) {
        self.state().phase = Phase::Busy;
    }

    /// The response switches protocols: the connection is no longer HTTP's.
    fn upgraded(&self) {
        self.state().phase = Phase::Upgraded;
    }

    /// The response body ended (or was dropped): the idle timeout starts.
    fn response_ended(&self) {
        let mut state = self.state();
        if state.phase == Phase::Busy {
            state.phase = Phase::Idle(Instant::now());
            if let Some(waker) = state.parked.take() {
                waker.wake();
            }
        }
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn bytes_read(&self) {
        let mut state = self.state();
        if matches!(state.phase, Phase::Idle(_)) {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// The deadline of the current phase and what it waits for; with none, `cx`'s task is
    /// parked until one starts.
    fn deadline(&self, limits: &Limits, cx: &Context<'_>) -> Option<(Instant, &'static str)> {
        let mut state = self.state();
        match state.phase {
            Phase::Head(since) => Some((since + limits.header_timeout, "header")),
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle")),
            Phase::Busy => {
                match &mut state.parked {
                    Some(w) => w.clone_from(cx.waker()),
                    None => state.parked = Some(cx.waker().clone()),
                }
                None
            }
            Phase::Upgraded => None,
        }
    }
}

/// A served connection: its stream, its phase and the slot it holds until it is dropped
/// (an upgraded connection's stream moves into the WebSocket, and its slot with it).
pub struct Conn {
    stream: Stream,
    watch: Arc<Watch>,
    limits: Limits,
    timer: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("phase", &self.watch.phase())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.stream.pinned().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.watch.bytes_read();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Nothing to read: the phase's deadline (if any) wakes this task when it passes.
        let Some((deadline, waiting_for)) = this.watch.deadline(&this.limits, cx) else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        metrics::counter!("corral_connections_timed_out_total", "waiting_for" => waiting_for)
            .increment(1);
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no request {waiting_for} in time"),
        )))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().stream.pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().stream.pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().stream.pinned().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().stream.pinned().poll_shutdown(cx)
    }
}

/// Who is on the other end of a request: handlers read it as `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerAddress,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// The address a per-address cap counts against: IPv4 (mapped ones included) as is, IPv6
/// by its /64 (one host usually holds a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections, overall and per source address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Admits connections within the caps.
#[derive(Debug)]
struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    /// Connections closed since the last burst check.
    closed: AtomicU64,
}

impl Admission {
    fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_address,
            counts: Mutex::new(Counts::default()),
            closed: AtomicU64::new(0),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let source = source_of(ip);
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let of_source = counts.per_source.entry(source).or_insert(0);
        if *of_source >= self.max_per_source {
            return Err(Refusal::PerAddress);
        }
        *of_source += 1;
        counts.total += 1;
        metrics::gauge!("corral_connections_open").set(counts.total as f64);
        Ok(Slot {
            admission: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts().total
    }
}

/// A connection's place in the counts, given back when dropped.
#[derive(Debug)]
struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.closed.fetch_add(1, Ordering::Relaxed);
        let mut counts = self.admission.counts();
        counts.total -= 1;
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
        metrics::gauge!("corral_connections_open").set(counts.total as f64);
    }
}

/// Logs refusals at most every [`REFUSAL_LOG_EVERY`]; the metric counts each one.
#[derive(Debug, Default)]
struct RefusalLog {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, why: Refusal, peer: SocketAddr, limits: &Limits) {
        metrics::counter!("corral_connections_refused_total", "reason" => why.label()).increment(1);
        self.since_logged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            %peer,
            reason = why.label(),
            refused = self.since_logged,
            max_connections = limits.max_connections,
            max_connections_per_address = limits.max_connections_per_address,
            "refusing connections over the cap (--max-connections, \
             --max-connections-per-address)"
        );
        self.since_logged = 0;
        self.logged_at = Some(now);
    }
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

/// Every [`BURST_CHECK_EVERY`], calls `release` if at least [`BURST`] connections closed
/// since the last check.
async fn release_after_bursts(
    admission: Arc<Admission>,
    release: fn() -> bool,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(BURST_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let closed = admission.closed.swap(0, Ordering::Relaxed);
        if closed < BURST {
            continue;
        }
        match tokio::task::spawn_blocking(release).await {
            Ok(released) => {
                metrics::counter!("corral_memory_releases_total").increment(1);
                tracing::debug!(
                    closed,
                    released,
                    "gave memory back after a burst of closed connections"
                );
            }
            Err(e) => tracing::warn!(error = %e, "giving memory back failed"),
        }
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

/// A response body that tells the connection's [`Watch`] when it ends (or is dropped).
struct Tracked {
    body: Body,
    watch: Arc<Watch>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.watch.response_ended();
    }
}

/// Serves a connection over TLS when it opens with a handshake, else as plain HTTP.
async fn classify(stream: TcpStream, acceptor: TlsAcceptor) -> std::io::Result<Stream> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 1 && first[0] == TLS_HANDSHAKE {
        Ok(Stream::Tls(Box::new(acceptor.accept(stream).await?)))
    } else {
        Ok(Stream::Plain(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn per_address_caps_count_ipv6_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            source_of(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );

        let admission = Admission::new(&Limits {
            max_connections: 10,
            max_connections_per_address: 2,
            ..Limits::for_open_files(1024)
        });
        let s1 = admission.admit(a).expect("first");
        let _s2 = admission.admit(b).expect("second");
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerAddress));
        let _s3 = admission.admit(c).expect("another /64");
        drop(s1);
        assert_eq!(admission.open(), 2);
        let _s4 = admission.admit(a).expect("a place was given back");
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
