//! Sandbox events and the Socket.IO gateway that streams them to SDKs.
//!
//! The TypeScript SDK keeps a Socket.IO connection to `<apiUrl>/socket.io/` and listens for
//! `sandbox.created` and `sandbox.state.updated` to learn state changes without polling.
//! [`PublishingStore`] wraps the sandbox store and turns its writes into [`SandboxEvent`]s on
//! a broadcast channel ([`Events`]); [`socket`] serves each SDK connection from that channel.
//!
//! The gateway speaks Engine.IO v4 over WebSocket only (no long-polling, no upgrades) and the
//! Socket.IO v5 packets the SDK uses, written by hand: the stream is one-way notifications on
//! the default namespace, a few hundred lines, while the Rust Socket.IO server crates bring
//! their own polling transport, session store and tower stack for features corral never uses.
//!
//! The route needs no key to open (the key comes in the CONNECT packet), so what an
//! unauthenticated socket may hold is bounded: it must authenticate within
//! [`Timing::connect_timeout`] (10 s) or is closed, at most [`Events::with_max_unauthenticated`]
//! of them wait at once (more are refused with 503 before the upgrade), and each keeps small
//! WebSocket buffers ([`READ_BUFFER_SIZE`]; tungstenite's default zero-fills 128 KiB per socket
//! on its first read, which was nearly all of the ≈135 KiB an idle socket held; now ≈11 KiB).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_core::{Sandbox, SandboxState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::{Instant, sleep_until};

use crate::error::ApiError;
use crate::keys::Keys;

mod packet;
mod publishing;

pub use packet::{
    EnginePacket, PacketError, SocketKind, SocketPacket, connect_error_packet, connect_packet,
    event_packet, open_packet, sandbox_event_packet,
};
pub use publishing::PublishingStore;

/// How many events a slow connection may fall behind before it skips some.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The largest packet a client may send (what the open packet announces).
const MAX_PAYLOAD: usize = 1_000_000;

/// A socket's WebSocket read buffer. Clients send only tiny packets (CONNECT, pongs); larger
/// frames still arrive, read in chunks of this size.
pub const READ_BUFFER_SIZE: usize = 4096;

/// Default for [`Events::with_max_unauthenticated`].
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 256;

/// Something that happened to a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxEvent {
    /// A sandbox record was created.
    Created(Arc<Sandbox>),
    /// A sandbox's state changed; `old_state` is `None` when this process had not seen the
    /// sandbox before (e.g. after a restart). Removal reports `Destroyed`.
    StateUpdated {
        id: String,
        old_state: Option<SandboxState>,
        new_state: SandboxState,
    },
}

/// The gateway's timers: Engine.IO's heartbeat and Socket.IO's connect timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long after a pong (or the open) the server sends the next ping.
    pub ping_interval: Duration,
    /// How long the server waits for the pong before closing the connection.
    pub ping_timeout: Duration,
    /// How long a client may take to send its CONNECT packet (with the API key): until then
    /// the socket is unauthenticated.
    pub connect_timeout: Duration,
}

impl Default for Timing {
    /// Socket.IO's heartbeat (ping every 25 s, 20 s to answer) and 10 s to authenticate
    /// (Socket.IO's own connect timeout is 45 s; the SDKs send CONNECT right after the open).
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The broadcast of sandbox events, and the gateway's settings.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<SandboxEvent>,
    timing: Timing,
    /// One permit per socket not yet authenticated.
    unauthenticated: Arc<Semaphore>,
    max_unauthenticated: usize,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Events {
    /// A broadcast keeping up to `capacity` events for slow receivers (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            timing: Timing::default(),
            unauthenticated: Arc::new(Semaphore::new(DEFAULT_MAX_UNAUTHENTICATED)),
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
        }
    }

    /// The same broadcast with other gateway timers.
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The same broadcast with at most `max` sockets waiting to authenticate at once.
    pub fn with_max_unauthenticated(mut self, max: usize) -> Self {
        self.unauthenticated = Arc::new(Semaphore::new(max));
        self.max_unauthenticated = max;
        self
    }

    /// A place for one more unauthenticated socket, if under the cap.
    fn admit_unauthenticated(&self) -> Option<Unauthenticated> {
        let permit = self.unauthenticated.clone().try_acquire_owned().ok()?;
        self.report_unauthenticated(0);
        Some(Unauthenticated {
            events: self.clone(),
            _permit: permit,
        })
    }

    /// Sets the gauge of unauthenticated sockets; `leaving` of the held permits are about to
    /// be given back.
    fn report_unauthenticated(&self, leaving: usize) {
        let held = self
            .max_unauthenticated
            .saturating_sub(self.unauthenticated.available_permits());
        metrics::gauge!("corral_event_streams_unauthenticated")
            .set(held.saturating_sub(leaving) as f64);
    }

    /// A receiver of the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SandboxEvent> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (events nobody receives need not be built).
    pub fn has_listeners(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends an event to every current receiver; without receivers it is dropped.
    pub fn publish(&self, event: SandboxEvent) {
        let _ = self.tx.send(event);
    }
}

// ---------------------------------------------------------------------------------------
// The gateway.

/// An Engine.IO handshake error: HTTP 400 with Engine.IO's JSON error body.
fn engine_error(code: u8, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "code": code, "message": message }).to_string(),
    )
        .into_response()
}

/// `GET /api/socket.io/?EIO=4&transport=websocket`: the event stream (routed by
/// `crate::router` with the server's keys and events). Not behind the bearer middleware: the
/// client sends its API key in the Socket.IO CONNECT packet.
pub fn socket(
    keys: Arc<Keys>,
    events: Events,
    toolbox_url: String,
    query: Option<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("EIO") != Some("4") {
        return engine_error(5, "Unsupported protocol version");
    }
    if param("sid").is_some() {
        return engine_error(1, "Session ID unknown");
    }
    let upgrade = match upgrade {
        Ok(u) if param("transport") == Some("websocket") => u,
        _ => return engine_error(3, "Bad request"),
    };
    let session = Session {
        sid: uuid::Uuid::new_v4().simple().to_string(),
        keys,
        events,
        toolbox_url,
    };
    session.accept(upgrade)
}

/// A socket not yet authenticated: holds one of [`Events::with_max_unauthenticated`]'s places
/// until it authenticates or closes.
#[derive(Debug)]
struct Unauthenticated {
    events: Events,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.events.report_unauthenticated(1);
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Session {
    /// The Engine.IO session id (also used as the Socket.IO socket id).
    pub sid: String,
    pub keys: Arc<Keys>,
    pub events: Events,
    /// The `toolboxProxyUrl` of sandbox DTOs sent on this connection.
    pub toolbox_url: String,
}

/// What the heartbeat waits for.
#[derive(Debug, Clone, Copy)]
enum Beat {
    /// Send a ping at this instant.
    Ping(Instant),
    /// Close unless a pong arrives before this instant.
    Pong(Instant),
}

/// Why a connection ends (for logs).
#[derive(Debug)]
enum End {
    ClientClosed,
    Refused,
    PingTimeout,
    ConnectTimeout,
    ServerClosing,
    Transport(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("the client closed it"),
            Self::Refused => f.write_str("the client was refused"),
            Self::PingTimeout => f.write_str("no pong in time"),
            Self::ConnectTimeout => f.write_str("no CONNECT in time"),
            Self::ServerClosing => f.write_str("the server is closing"),
            Self::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

/// Waits for the next event, forever when not subscribed.
async fn next_event(
    rx: &mut Option<broadcast::Receiver<SandboxEvent>>,
) -> Result<SandboxEvent, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn send(ws: &mut WebSocket, text: String) -> Result<(), End> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| End::Transport(e.to_string()))
}

impl Session {
    /// Upgrades to a WebSocket served by this session, or refuses with 503 when too many
    /// sockets already wait to authenticate.
    pub fn accept(self, upgrade: WebSocketUpgrade) -> Response {
        let Some(pending) = self.events.admit_unauthenticated() else {
            metrics::counter!("corral_event_streams_refused_total").increment(1);
            tracing::debug!(
                max = self.events.max_unauthenticated,
                "refused an event stream: too many wait to authenticate"
            );
            let refusal = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams are waiting to authenticate; retry shortly",
            )
            .with_code("TOO_MANY_UNAUTHENTICATED_STREAMS");
            return ([(header::RETRY_AFTER, "5")], refusal).into_response();
        };
        // Small buffers: an idle socket holds little (see the module doc).
        upgrade
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(0)
            .max_message_size(MAX_PAYLOAD)
            .max_frame_size(MAX_PAYLOAD)
            .on_upgrade(move |ws| self.run(ws, pending))
    }

    /// Serves the connection until either side ends it.
    async fn run(self, mut ws: WebSocket, pending: Unauthenticated) {
        let end = self.serve(&mut ws, pending).await;
        tracing::debug!(sid = %self.sid, reason = %end, "event stream closed");
        if !matches!(end, End::ClientClosed | End::Transport(_)) {
            let _ = ws.send(Message::Close(None)).await;
        }
    }

    async fn serve(&self, ws: &mut WebSocket, pending: Unauthenticated) -> End {
        let mut pending = Some(pending);
        let timing = self.events.timing;
        if let Err(end) = send(ws, open_packet(&self.sid, &timing)).await {
            return end;
        }
        let connect_deadline = Instant::now() + timing.connect_timeout;
        let mut beat = Beat::Ping(Instant::now() + timing.ping_interval);
        let mut rx: Option<broadcast::Receiver<SandboxEvent>> = None;
        loop {
            if rx.is_some() {
                // Authenticated: its place goes to the next socket.
                pending = None;
            }
            let beat_at = match beat {
                Beat::Ping(at) | Beat::Pong(at) => at,
            };
            let step = tokio::select! {
                msg = ws.recv() => match msg {
                    None => Err(End::ClientClosed),
                    Some(Err(e)) => Err(End::Transport(e.to_string())),
                    Some(Ok(Message::Text(text))) => {
                        self.on_packet(ws, text.as_str(), &mut rx, &mut beat).await
                    }
                    Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                    // WebSocket pings are answered by the transport; binary is unused here.
                    Some(Ok(_)) => Ok(()),
                },
                event = next_event(&mut rx) => match event {
                    Ok(event) => send(ws, sandbox_event_packet(&event, &self.toolbox_url)).await,
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(sid = %self.sid, skipped, "event stream fell behind; skipped events");
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(End::ServerClosing),
                },
                () = sleep_until(beat_at) => match beat {
                    Beat::Ping(_) => {
                        beat = Beat::Pong(Instant::now() + timing.ping_timeout);
                        send(ws, "2".into()).await
                    }
                    Beat::Pong(_) => Err(End::PingTimeout),
                },
                () = sleep_until(connect_deadline), if rx.is_none() => Err(End::ConnectTimeout),
            };
            if let Err(end) = step {
                drop(pending);
                return end;
            }
        }
    }

    async fn on_packet(
        &self,
        ws: &mut WebSocket,
        text: &str,
        rx: &mut Option<broadcast::Receiver<SandboxEvent>>,
        beat: &mut Beat,
    ) -> Result<(), End> {
        let packet = match EnginePacket::parse(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(sid = %self.sid, error = %e, "ignored a packet");
                return Ok(());
            }
        };
        match packet {
            EnginePacket::Close => Err(End::ClientClosed),
            EnginePacket::Ping(data) => send(ws, format!("3{data}")).await,
            EnginePacket::Pong(_) => {
                if matches!(beat, Beat::Pong(_)) {
                    *beat = Beat::Ping(Instant::now() + self.events.timing.ping_interval);
                }
                Ok(())
            }
            EnginePacket::Message(data) => self.on_socket_packet(ws, data, rx).await,
            EnginePacket::Open | EnginePacket::Upgrade | EnginePacket::Noop => Ok(()),
        }
    }

    async fn on_socket_packet(
        &self,
        ws: &mut WebSocket,
        text: &str,
        rx: &mut Option<broadcast::Receiver<SandboxEvent>>,
    ) -> Result<(), End> {
        let packet = match SocketPacket::parse(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(sid = %self.sid, error = %e, "ignored a Socket.IO packet");
                return Ok(());
            }
        };
        match packet.kind {
            SocketKind::Connect if packet.namespace != "/" => {
                send(
                    ws,
                    connect_error_packet(packet.namespace, "Invalid namespace"),
                )
                .await
            }
            SocketKind::Connect if rx.is_some() => Ok(()),
            SocketKind::Connect => match self.authenticate(packet.data).await {
                Ok(()) => {
                    *rx = Some(self.events.subscribe());
                    send(ws, connect_packet(&self.sid)).await
                }
                Err(message) => {
                    tracing::debug!(sid = %self.sid, %message, "refused an event stream");
                    send(ws, connect_error_packet("/", &message)).await?;
                    Err(End::Refused)
                }
            },
            SocketKind::Disconnect if packet.namespace == "/" => Err(End::ClientClosed),
            _ => Ok(()),
        }
    }

    /// Checks the API key of a CONNECT payload (`{"token": "<key>"}`).
    async fn authenticate(&self, data: Option<&str>) -> Result<(), String> {
        let payload: Option<serde_json::Value> = data.and_then(|d| serde_json::from_str(d).ok());
        let token = payload
            .as_ref()
            .and_then(|p| p.get("token"))
            .and_then(|t| t.as_str())
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(
                "Unauthorized: send the API key as the token of the connection's auth payload"
                    .into(),
            );
        };
        match self.keys.check(token).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("Unauthorized: invalid API key".into()),
            Err(e) => {
                tracing::error!(sid = %self.sid, error = %e, "checking an API key failed");
                Err("Internal error: the API key could not be checked".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use corral_core::StoreError;

    use corral_core::sandbox::{DesiredState, Resources};
    use futures_util::{SinkExt, StreamExt};
    use time::OffsetDateTime;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    pub(super) fn sandbox(id: &str, state: SandboxState) -> Sandbox {
        let now = OffsetDateTime::UNIX_EPOCH;
        Sandbox {
            id: id.into(),
            name: format!("name-{id}"),
            organization_id: "corral".into(),
            snapshot: "host".into(),
            user: "root".into(),
            env: BTreeMap::from([("A".into(), "b".into())]),
            labels: BTreeMap::new(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            resources: Resources::default(),
            state,
            desired_state: DesiredState::Started,
            error_reason: None,
            auto_stop_interval: 15,
            auto_archive_interval: 0,
            auto_delete_interval: -1,
            auto_pause_interval: 0,
            auto_destroy_at: None,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            stopped_at: None,
            volumes: Vec::new(),
            signing_key: None,
        }
    }

    pub(super) fn changed(id: &str, old: Option<SandboxState>, new: SandboxState) -> SandboxEvent {
        SandboxEvent::StateUpdated {
            id: id.into(),
            old_state: old,
            new_state: new,
        }
    }

    /// The JSON after `prefix` in `packet`.
    pub(super) fn json_of(packet: &str, prefix: &str) -> serde_json::Value {
        let body = packet
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{packet:?} does not start with {prefix:?}"));
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    }

    // ---- The gateway over a real WebSocket ----

    struct NoKeys;

    #[async_trait]
    impl corral_core::ApiKeyStore for NoKeys {
        async fn add_key(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn has_key(&self, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn count_keys(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Serves sessions with key `good` on a loopback port; returns its ws URL.
    async fn gateway(events: Events) -> String {
        let keys = Keys::new(Arc::new(NoKeys));
        keys.allow(&crate::state::hash_key("good"));
        let keys = Arc::new(keys);
        let app = axum::Router::new().route(
            "/socket.io/",
            axum::routing::get(move |up: WebSocketUpgrade| {
                let session = Session {
                    sid: "sid1".into(),
                    keys: keys.clone(),
                    events: events.clone(),
                    toolbox_url: "http://t/toolbox".into(),
                };
                async move { session.accept(up) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
    }

    async fn recv_text(c: &mut Client) -> Option<String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .expect("no frame within 5 s");
            match msg {
                Some(Ok(WsMessage::Text(t))) => return Some(t.to_string()),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn send_text(c: &mut Client, text: &str) {
        c.send(WsMessage::Text(text.into())).await.expect("send");
    }

    async fn connect(url: &str) -> Client {
        let (mut c, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let open = recv_text(&mut c).await.expect("open packet");
        assert_eq!(json_of(&open, "0")["sid"], "sid1");
        c
    }

    fn slow_timing() -> Timing {
        Timing {
            ping_interval: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn gateway_forwards_events_to_authenticated_clients() {
        let events = Events::new(16).with_timing(slow_timing());
        let url = gateway(events.clone()).await;
        let mut c = connect(&url).await;
        // Unknown packets are ignored; events before CONNECT are not sent.
        send_text(&mut c, "9nonsense").await;
        send_text(&mut c, "42[\"hello\"]").await;
        events.publish(changed("early", None, SandboxState::Started));
        send_text(&mut c, "40{\"token\":\"good\"}").await;
        assert_eq!(
            recv_text(&mut c).await.as_deref(),
            Some("40{\"sid\":\"sid1\"}")
        );

        events.publish(changed(
            "a",
            Some(SandboxState::Started),
            SandboxState::Stopped,
        ));
        let got = recv_text(&mut c).await.expect("event");
        assert_eq!(json_of(&got, "42")[1]["sandbox"]["id"], "a");
        assert_eq!(json_of(&got, "42")[1]["newState"], "stopped");

        events.publish(SandboxEvent::Created(Arc::new(sandbox(
            "b",
            SandboxState::Started,
        ))));
        let got = json_of(&recv_text(&mut c).await.expect("event"), "42");
        assert_eq!(got[0], "sandbox.created");
        assert_eq!(got[1]["sandbox"]["toolboxProxyUrl"], "http://t/toolbox");

        // A probe ping is answered; a DISCONNECT ends the connection.
        send_text(&mut c, "2probe").await;
        assert_eq!(recv_text(&mut c).await.as_deref(), Some("3probe"));
        send_text(&mut c, "41").await;
        assert_eq!(recv_text(&mut c).await, None);
    }

    #[tokio::test]
    async fn gateway_refuses_bad_or_missing_keys() {
        let events = Events::new(16).with_timing(slow_timing());
        let url = gateway(events.clone()).await;
        for connect_packet in ["40{\"token\":\"bad\"}", "40", "40{\"token\":7}", "40{oops"] {
            let mut c = connect(&url).await;
            send_text(&mut c, connect_packet).await;
            let refusal = recv_text(&mut c).await.expect("refusal");
            let body = json_of(&refusal, "44");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Unauthorized")),
                "{refusal}"
            );
            events.publish(changed("a", None, SandboxState::Started));
            assert_eq!(
                recv_text(&mut c).await,
                None,
                "closed after {connect_packet}"
            );
        }
        // Another namespace is refused without closing the connection.
        let mut c = connect(&url).await;
        send_text(&mut c, "40/admin,{\"token\":\"good\"}").await;
        assert_eq!(
            recv_text(&mut c).await.as_deref(),
            Some("44/admin,{\"message\":\"Invalid namespace\"}")
        );
        send_text(&mut c, "40{\"token\":\"good\"}").await;
        assert_eq!(
            recv_text(&mut c).await.as_deref(),
            Some("40{\"sid\":\"sid1\"}")
        );
    }

    #[tokio::test]
    async fn gateway_pings_and_closes_without_pong() {
        let events = Events::new(16).with_timing(Timing {
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(60),
        });
        let url = gateway(events).await;
        let mut c = connect(&url).await;
        // Answered pings keep it open.
        for _ in 0..3 {
            assert_eq!(recv_text(&mut c).await.as_deref(), Some("2"));
            send_text(&mut c, "3").await;
        }
        assert_eq!(recv_text(&mut c).await.as_deref(), Some("2"));
        let started = std::time::Instant::now();
        assert_eq!(recv_text(&mut c).await, None);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn gateway_closes_when_no_connect_arrives() {
        let events = Events::new(16).with_timing(Timing {
            connect_timeout: Duration::from_millis(200),
            ..slow_timing()
        });
        let url = gateway(events).await;
        let mut c = connect(&url).await;
        assert_eq!(recv_text(&mut c).await, None);
    }

    #[tokio::test]
    async fn gateway_refuses_unauthenticated_sockets_over_the_cap() {
        let events = Events::new(16)
            .with_timing(slow_timing())
            .with_max_unauthenticated(2);
        let url = gateway(events.clone()).await;
        let mut first = connect(&url).await;
        let second = connect(&url).await;
        // A third waiting socket is refused before the upgrade, in Daytona's error shape.
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(resp.headers()["retry-after"], "5");
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .expect("json body");
                assert_eq!(body["code"], "TOO_MANY_UNAUTHENTICATED_STREAMS");
                assert_eq!(body["statusCode"], 503);
            }
            other => panic!("expected a 503 refusal, got {other:?}"),
        }
        // Authenticating gives the place back: the next socket gets in.
        send_text(&mut first, "40{\"token\":\"good\"}").await;
        assert_eq!(
            recv_text(&mut first).await.as_deref(),
            Some("40{\"sid\":\"sid1\"}")
        );
        let _third = connect(&url).await;
        // So does closing: once the server has seen it, another gets in.
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if tokio_tungstenite::connect_async(&url).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "a closed socket kept its place");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The authenticated socket still gets events.
        events.publish(changed("a", None, SandboxState::Started));
        let got = json_of(&recv_text(&mut first).await.expect("event"), "42");
        assert_eq!(got[1]["sandbox"]["id"], "a");
    }

    #[tokio::test]
    async fn gateway_skips_what_a_slow_client_missed() {
        let events = Events::new(2).with_timing(slow_timing());
        let url = gateway(events.clone()).await;
        let mut c = connect(&url).await;
        send_text(&mut c, "40{\"token\":\"good\"}").await;
        assert_eq!(
            recv_text(&mut c).await.as_deref(),
            Some("40{\"sid\":\"sid1\"}")
        );
        // Published faster than the session can forward: its receiver lags, skips and goes on.
        for i in 0..50 {
            events.publish(changed(&format!("s{i}"), None, SandboxState::Started));
        }
        let mut last = String::new();
        while last != "s49" {
            let got = json_of(&recv_text(&mut c).await.expect("event"), "42");
            last = got[1]["sandbox"]["id"].as_str().expect("id").to_owned();
        }
        events.publish(changed("after", None, SandboxState::Stopped));
        let got = json_of(&recv_text(&mut c).await.expect("event"), "42");
        assert_eq!(got[1]["sandbox"]["id"], "after");
    }
}
