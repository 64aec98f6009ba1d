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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_core::{ListQuery, Page, Sandbox, SandboxState, SandboxStore, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::{Instant, sleep_until};

use crate::error::ApiError;
use crate::state::{AppState, Keys};
use crate::wire::SandboxDto;

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

/// A [`SandboxStore`] that publishes what changes: `insert` as created, `update` when the
/// state differs from the last one it saw for that id (the first sight counts as a change),
/// `remove` as a change to `destroyed`. Reads pass through; it never reads the store itself.
pub struct PublishingStore {
    inner: Arc<dyn SandboxStore>,
    events: Events,
    /// The last state written per sandbox id.
    states: Mutex<HashMap<String, SandboxState>>,
}

impl std::fmt::Debug for PublishingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishingStore").finish_non_exhaustive()
    }
}

impl PublishingStore {
    pub fn new(inner: Arc<dyn SandboxStore>, events: Events) -> Self {
        Self {
            inner,
            events,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Records `new_state` for `id`; returns the change, if it is one.
    fn record(
        &self,
        id: &str,
        new_state: Option<SandboxState>,
    ) -> Option<(Option<SandboxState>, SandboxState)> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match new_state {
            Some(new) => {
                let old = states.insert(id.to_owned(), new);
                (old != Some(new)).then_some((old, new))
            }
            None => {
                let old = states.remove(id);
                (old != Some(SandboxState::Destroyed)).then_some((old, SandboxState::Destroyed))
            }
        }
    }

    fn publish_change(&self, id: &str, new_state: Option<SandboxState>) {
        if let Some((old_state, new_state)) = self.record(id, new_state) {
            // Both SDKs take only the state from an event and raise on an error state with
            // the error reason they hold, which an event does not refresh ("error reason:
            // None"). Left unannounced, an error state reaches them by their next poll (at
            // most a second later), with the reason.
            if matches!(new_state, SandboxState::Error | SandboxState::BuildFailed) {
                return;
            }
            self.events.publish(SandboxEvent::StateUpdated {
                id: id.to_owned(),
                old_state,
                new_state,
            });
        }
    }
}

#[async_trait]
impl SandboxStore for PublishingStore {
    async fn insert(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.insert(sandbox).await?;
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sandbox.id.clone(), sandbox.state);
        if self.events.has_listeners() {
            self.events
                .publish(SandboxEvent::Created(Arc::new(sandbox.clone())));
        }
        Ok(())
    }

    async fn update(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.update(sandbox).await?;
        self.publish_change(&sandbox.id, Some(sandbox.state));
        Ok(())
    }

    async fn get(&self, id_or_name: &str) -> Result<Option<Sandbox>, StoreError> {
        self.inner.get(id_or_name).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
        self.inner.list(query).await
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.inner.remove(id).await?;
        self.publish_change(id, None);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Packets. Engine.IO v4: one packet per WebSocket text frame, a type digit then the data.
// Socket.IO v5 inside Engine.IO message packets (`4`):
// `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.

/// A packet that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("the namespace is not followed by a comma")]
    Namespace,
}

/// An Engine.IO packet from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Open,
    Close,
    /// A ping with its data (`probe` during upgrades).
    Ping(&'a str),
    Pong(&'a str),
    /// A Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

impl<'a> EnginePacket<'a> {
    pub fn parse(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(PacketError::Empty)?;
        let data = chars.as_str();
        Ok(match kind {
            '0' => Self::Open,
            '1' => Self::Close,
            '2' => Self::Ping(data),
            '3' => Self::Pong(data),
            '4' => Self::Message(data),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            other => return Err(PacketError::EngineType(other)),
        })
    }
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from a client; `data` is the JSON payload as sent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPacket<'a> {
    pub kind: SocketKind,
    pub namespace: &'a str,
    pub data: Option<&'a str>,
}

impl<'a> SocketPacket<'a> {
    pub fn parse(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = match chars.next().ok_or(PacketError::Empty)? {
            '0' => SocketKind::Connect,
            '1' => SocketKind::Disconnect,
            '2' => SocketKind::Event,
            '3' => SocketKind::Ack,
            '4' => SocketKind::ConnectError,
            '5' => SocketKind::BinaryEvent,
            '6' => SocketKind::BinaryAck,
            other => return Err(PacketError::SocketType(other)),
        };
        let mut rest = chars.as_str();
        if matches!(kind, SocketKind::BinaryEvent | SocketKind::BinaryAck)
            && let Some((count, after)) = rest.split_once('-')
            && !count.is_empty()
            && count.bytes().all(|b| b.is_ascii_digit())
        {
            rest = after;
        }
        let mut namespace = "/";
        if rest.starts_with('/') {
            match rest.split_once(',') {
                Some((ns, after)) => {
                    namespace = ns;
                    rest = after;
                }
                // `41/admin` has no payload, hence no comma.
                None if !rest.contains(['{', '[']) => {
                    namespace = rest;
                    rest = "";
                }
                None => return Err(PacketError::Namespace),
            }
        }
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        Ok(Self {
            kind,
            namespace,
            data: (!rest.is_empty()).then_some(rest),
        })
    }
}

/// The Engine.IO open packet.
pub fn open_packet(sid: &str, timing: &Timing) -> String {
    let body = serde_json::json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": timing.ping_interval.as_millis() as u64,
        "pingTimeout": timing.ping_timeout.as_millis() as u64,
        "maxPayload": MAX_PAYLOAD,
    });
    format!("0{body}")
}

/// The namespace prefix of a Socket.IO packet (`/` is implied).
fn namespace_prefix(namespace: &str) -> String {
    if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    }
}

/// The frame of a Socket.IO CONNECT (accepted): an Engine.IO message (`4`) holding it.
pub fn connect_packet(sid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid }))
}

/// The frame of a Socket.IO CONNECT_ERROR.
pub fn connect_error_packet(namespace: &str, message: &str) -> String {
    format!(
        "44{}{}",
        namespace_prefix(namespace),
        serde_json::json!({ "message": message })
    )
}

/// The frame of a Socket.IO EVENT on the default namespace.
pub fn event_packet(name: &str, data: &serde_json::Value) -> String {
    format!("42{}", serde_json::json!([name, data]))
}

/// The packet a sandbox event becomes; `toolbox_url` goes into the sandbox DTO as in
/// `GET /api/sandbox/{id}`.
pub fn sandbox_event_packet(event: &SandboxEvent, toolbox_url: &str) -> String {
    match event {
        SandboxEvent::Created(s) => event_packet(
            "sandbox.created",
            &serde_json::json!({ "sandbox": SandboxDto::from_sandbox(s, toolbox_url, true) }),
        ),
        SandboxEvent::StateUpdated {
            id,
            old_state,
            new_state,
        } => event_packet(
            "sandbox.state.updated",
            &serde_json::json!({
                "sandbox": { "id": id, "state": new_state.as_str() },
                "oldState": old_state.map(SandboxState::as_str),
                "newState": new_state.as_str(),
            }),
        ),
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

/// `GET /api/socket.io/?EIO=4&transport=websocket`: the event stream. Not behind the bearer
/// middleware: the client sends its API key in the Socket.IO CONNECT packet.
pub async fn socket(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
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
        keys: state.keys.clone(),
        events: state.events.clone(),
        toolbox_url: state.toolbox_url(&headers),
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

    use corral_core::sandbox::{DesiredState, Resources};
    use futures_util::{SinkExt, StreamExt};
    use time::OffsetDateTime;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    fn sandbox(id: &str, state: SandboxState) -> Sandbox {
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
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            stopped_at: None,
            volumes: Vec::new(),
            signing_key: None,
        }
    }

    /// An in-memory store that counts reads.
    #[derive(Default)]
    struct MemStore {
        rows: Mutex<HashMap<String, Sandbox>>,
        reads: std::sync::atomic::AtomicUsize,
        fail_writes: bool,
    }

    fn boom() -> StoreError {
        StoreError::Backend("disk on fire".into())
    }

    #[async_trait]
    impl SandboxStore for MemStore {
        async fn insert(&self, s: &Sandbox) -> Result<(), StoreError> {
            if self.fail_writes {
                return Err(boom());
            }
            self.rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s.id.clone(), s.clone());
            Ok(())
        }
        async fn update(&self, s: &Sandbox) -> Result<(), StoreError> {
            self.insert(s).await
        }
        async fn get(&self, id: &str) -> Result<Option<Sandbox>, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self
                .rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned())
        }
        async fn list(&self, _: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Page {
                items: self
                    .rows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect(),
                next_cursor: None,
            })
        }
        async fn remove(&self, id: &str) -> Result<(), StoreError> {
            if self.fail_writes {
                return Err(boom());
            }
            self.rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            Ok(())
        }
    }

    fn drain(rx: &mut broadcast::Receiver<SandboxEvent>) -> Vec<SandboxEvent> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    fn changed(id: &str, old: Option<SandboxState>, new: SandboxState) -> SandboxEvent {
        SandboxEvent::StateUpdated {
            id: id.into(),
            old_state: old,
            new_state: new,
        }
    }

    #[tokio::test]
    async fn insert_publishes_created_and_writes_through() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let s = sandbox("a", SandboxState::Creating);
        store.insert(&s).await.expect("insert");
        assert_eq!(drain(&mut rx), vec![SandboxEvent::Created(Arc::new(s))]);
        assert!(inner.rows.lock().expect("lock").contains_key("a"));
        assert_eq!(inner.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn update_publishes_only_state_changes() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let mut s = sandbox("a", SandboxState::Creating);
        store.insert(&s).await.expect("insert");
        drain(&mut rx);

        // Same state, other fields changed: nothing.
        s.labels.insert("k".into(), "v".into());
        s.auto_stop_interval = 5;
        store.update(&s).await.expect("update");
        assert_eq!(drain(&mut rx), vec![]);

        s.state = SandboxState::Started;
        store.update(&s).await.expect("update");
        s.state = SandboxState::Stopping;
        store.update(&s).await.expect("update");
        store.update(&s).await.expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![
                changed("a", Some(SandboxState::Creating), SandboxState::Started),
                changed("a", Some(SandboxState::Started), SandboxState::Stopping),
            ]
        );
        assert_eq!(inner.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        let stored = inner.rows.lock().expect("lock").get("a").cloned();
        assert_eq!(stored.map(|s| s.auto_stop_interval), Some(5));
    }

    #[tokio::test]
    async fn error_states_are_left_to_polling() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let mut s = sandbox("a", SandboxState::BuildingSnapshot);
        store.insert(&s).await.expect("insert");
        drain(&mut rx);
        s.state = SandboxState::BuildFailed;
        s.error_reason = Some("step 2 failed".into());
        store.update(&s).await.expect("update");
        assert_eq!(drain(&mut rx), vec![]);
        // What comes after is announced, from the error state.
        s.state = SandboxState::Destroying;
        store.update(&s).await.expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![SandboxEvent::StateUpdated {
                id: "a".into(),
                old_state: Some(SandboxState::BuildFailed),
                new_state: SandboxState::Destroying,
            }]
        );
    }

    #[tokio::test]
    async fn first_sight_counts_as_a_change() {
        // E.g. a sandbox created before the server restarted.
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(Arc::new(MemStore::default()), events);
        store
            .update(&sandbox("old", SandboxState::Stopped))
            .await
            .expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![changed("old", None, SandboxState::Stopped)]
        );
    }

    #[tokio::test]
    async fn remove_publishes_destroyed_once() {
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(Arc::new(MemStore::default()), events);
        let mut s = sandbox("a", SandboxState::Started);
        store.insert(&s).await.expect("insert");
        s.state = SandboxState::Destroying;
        store.update(&s).await.expect("update");
        drain(&mut rx);
        store.remove("a").await.expect("remove");
        assert_eq!(
            drain(&mut rx),
            vec![changed(
                "a",
                Some(SandboxState::Destroying),
                SandboxState::Destroyed
            )]
        );

        // Already reported destroyed: removing adds nothing.
        let mut b = sandbox("b", SandboxState::Started);
        store.insert(&b).await.expect("insert");
        b.state = SandboxState::Destroyed;
        store.update(&b).await.expect("update");
        drain(&mut rx);
        store.remove("b").await.expect("remove");
        assert_eq!(drain(&mut rx), vec![]);
        // Forgotten after removal.
        assert!(store.states.lock().expect("lock").get("a").is_none());
    }

    #[tokio::test]
    async fn failed_writes_publish_nothing() {
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let inner = Arc::new(MemStore {
            fail_writes: true,
            ..Default::default()
        });
        let store = PublishingStore::new(inner, events);
        assert!(
            store
                .insert(&sandbox("a", SandboxState::Creating))
                .await
                .is_err()
        );
        assert!(
            store
                .update(&sandbox("a", SandboxState::Started))
                .await
                .is_err()
        );
        assert!(store.remove("a").await.is_err());
        assert_eq!(drain(&mut rx), vec![]);
    }

    #[test]
    fn engine_packets_parse() {
        assert_eq!(
            EnginePacket::parse("2probe"),
            Ok(EnginePacket::Ping("probe"))
        );
        assert_eq!(EnginePacket::parse("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(EnginePacket::parse("1"), Ok(EnginePacket::Close));
        assert_eq!(
            EnginePacket::parse("40{\"token\":\"k\"}"),
            Ok(EnginePacket::Message("0{\"token\":\"k\"}"))
        );
        assert_eq!(EnginePacket::parse(""), Err(PacketError::Empty));
        assert_eq!(EnginePacket::parse("9x"), Err(PacketError::EngineType('9')));
        assert_eq!(EnginePacket::parse("é"), Err(PacketError::EngineType('é')));
    }

    #[test]
    fn socket_packets_parse() {
        assert_eq!(
            SocketPacket::parse("0{\"token\":\"k\"}"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/",
                data: Some("{\"token\":\"k\"}"),
            })
        );
        assert_eq!(
            SocketPacket::parse("0"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/",
                data: None,
            })
        );
        assert_eq!(
            SocketPacket::parse("0/admin,{\"token\":\"k\"}"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/admin",
                data: Some("{\"token\":\"k\"}"),
            })
        );
        assert_eq!(
            SocketPacket::parse("1/admin"),
            Ok(SocketPacket {
                kind: SocketKind::Disconnect,
                namespace: "/admin",
                data: None,
            })
        );
        assert_eq!(
            SocketPacket::parse("212[\"hello\",1]"),
            Ok(SocketPacket {
                kind: SocketKind::Event,
                namespace: "/",
                data: Some("[\"hello\",1]"),
            })
        );
        assert_eq!(
            SocketPacket::parse("51-/chat,7[\"up\",{\"_placeholder\":true,\"num\":0}]"),
            Ok(SocketPacket {
                kind: SocketKind::BinaryEvent,
                namespace: "/chat",
                data: Some("[\"up\",{\"_placeholder\":true,\"num\":0}]"),
            })
        );
        assert_eq!(SocketPacket::parse(""), Err(PacketError::Empty));
        assert_eq!(SocketPacket::parse("x"), Err(PacketError::SocketType('x')));
        assert_eq!(
            SocketPacket::parse("0/admin{\"token\":1}"),
            Err(PacketError::Namespace)
        );
    }

    fn json_of(packet: &str, prefix: &str) -> serde_json::Value {
        let body = packet
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{packet:?} does not start with {prefix:?}"));
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    }

    #[test]
    fn packets_encode() {
        let open = open_packet("abc", &Timing::default());
        assert_eq!(
            json_of(&open, "0"),
            serde_json::json!({"sid": "abc", "upgrades": [], "pingInterval": 25000,
                "pingTimeout": 20000, "maxPayload": 1000000})
        );
        assert_eq!(connect_packet("abc"), "40{\"sid\":\"abc\"}");
        assert_eq!(
            connect_error_packet("/", "no \"key\""),
            "44{\"message\":\"no \\\"key\\\"\"}"
        );
        assert_eq!(
            connect_error_packet("/admin", "Invalid namespace"),
            "44/admin,{\"message\":\"Invalid namespace\"}"
        );
    }

    #[test]
    fn sandbox_events_encode_as_the_sdk_reads_them() {
        let updated = sandbox_event_packet(
            &changed("a", Some(SandboxState::Started), SandboxState::Stopped),
            "http://h/toolbox",
        );
        assert_eq!(
            json_of(&updated, "42"),
            serde_json::json!(["sandbox.state.updated", {
                "sandbox": {"id": "a", "state": "stopped"},
                "oldState": "started", "newState": "stopped"}])
        );
        let first = sandbox_event_packet(&changed("a", None, SandboxState::Destroyed), "x");
        assert_eq!(
            json_of(&first, "42")[1]["oldState"],
            serde_json::Value::Null
        );

        let s = sandbox("a", SandboxState::Started);
        let created = sandbox_event_packet(
            &SandboxEvent::Created(Arc::new(s.clone())),
            "http://h/toolbox",
        );
        let expected = serde_json::to_value(SandboxDto::from_sandbox(&s, "http://h/toolbox", true))
            .expect("dto");
        let v = json_of(&created, "42");
        assert_eq!(v[0], "sandbox.created");
        assert_eq!(v[1]["sandbox"], expected);
        assert_eq!(v[1]["sandbox"]["env"]["A"], "b");
        assert_eq!(v[1]["sandbox"]["toolboxProxyUrl"], "http://h/toolbox");
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
