//! Terminals over WebSocket: `/process/pty`.
//!
//! A terminal is a login shell on its own pty, started by `GET /process/pty/create-connect`
//! (a WebSocket upgrade). One task per terminal pumps the pty's output into a broadcast channel;
//! every attached WebSocket (the creating one and any number added by `GET
//! /process/pty/{id}/connect`) gets the output produced from its attach on, and input from any
//! of them goes to the terminal. Detaching leaves the shell running. When the shell exits,
//! every client gets the exit status (the `exited` control message if it offered
//! `X-Daytona-Pty-Exit-Control`, then a close frame 1000/1011 with `{"exitCode":N}`), and the
//! terminal is forgotten: it no longer appears in the list and its id is free again.
//!
//! Older SDKs (0.143 TypeScript, 0.194 Python) create a terminal with `POST /process/pty`
//! (`PtyCreateRequest` → `{"sessionId"}`) and then connect with `GET /process/pty/{id}/connect`.
//! With `lazyStart` (what they send), the first client to connect gets the output from the
//! shell's start (held in a receiver taken at creation, up to the per-client buffer), as
//! Daytona's daemon starts the shell only then.

pub(super) mod term;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use super::json::JsonBody;
use super::{ApiError, AppState};
use crate::params;
use crate::reaper::ExitCode;

/// The subprotocol with which a client asks for the `exited` control message.
const EXIT_CONTROL: &str = "X-Daytona-Pty-Exit-Control";
/// The subprotocol prefix carrying the extra environment: base64url(json) without padding.
const ENVS_PREFIX: &str = "X-Daytona-Pty-Envs~";
/// The largest terminal side accepted (the SDK documents 1000x1000).
const MAX_SIDE: u16 = 1000;
/// Output chunks buffered per client before a slow client starts losing output.
const OUTPUT_BUFFER: usize = 1024;
/// After the shell exited, output is still forwarded until this long passes without any...
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or at most this long (a background job may keep the pty open and busy).
const DRAIN_MAX: Duration = Duration::from_secs(1);

/// The live terminals by id.
#[derive(Debug, Default)]
pub struct Ptys {
    map: Mutex<HashMap<String, Arc<Pty>>>,
}

impl Ptys {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Pty>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Pty>, ApiError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("PTY session {id} not found")))
    }

    /// Forgets `pty` if `id` still names it (not a newer terminal that reused the id).
    fn remove(&self, pty: &Arc<Pty>) {
        let mut map = self.lock();
        if map.get(&pty.id).is_some_and(|p| Arc::ptr_eq(p, pty)) {
            map.remove(&pty.id);
        }
    }
}

/// How a terminal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: ExitCode,
    /// Killed through `DELETE /process/pty/{id}`.
    killed: bool,
}

/// One terminal.
#[derive(Debug)]
struct Pty {
    id: String,
    cwd: String,
    /// The environment given at creation (on top of the sandbox's).
    envs: BTreeMap<String, String>,
    /// `(cols, rows)`.
    size: Mutex<(u16, u16)>,
    created_at: String,
    master: AsyncFd<OwnedFd>,
    /// The shell's pid = its session id.
    pid: i32,
    output: broadcast::Sender<Bytes>,
    /// Set once the shell exited and all its output was broadcast.
    exit: watch::Sender<Option<Exit>>,
    killed: AtomicBool,
    /// With `lazyStart`: the output from the start, for the first client to connect.
    first_output: Mutex<Option<broadcast::Receiver<Bytes>>>,
}

impl Pty {
    fn info(&self) -> PtySessionInfo {
        let (cols, rows) = *self.size.lock().unwrap_or_else(PoisonError::into_inner);
        PtySessionInfo {
            id: self.id.clone(),
            cwd: self.cwd.clone(),
            envs: self.envs.clone(),
            cols,
            rows,
            created_at: self.created_at.clone(),
            active: self.exit.borrow().is_none(),
            lazy_start: self
                .first_output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
        }
    }
}

/// Daytona's `PtySessionInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PtySessionInfo {
    id: String,
    cwd: String,
    envs: BTreeMap<String, String>,
    cols: u16,
    rows: u16,
    created_at: String,
    active: bool,
    lazy_start: bool,
}

/// Daytona's `PtyListResponse`.
#[derive(Debug, Serialize)]
struct PtyListResponse {
    sessions: Vec<PtySessionInfo>,
}

/// Daytona's `PtyCreateRequest` (older SDKs' `POST /process/pty`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PtyCreateRequest {
    id: Option<String>,
    cwd: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    cols: Option<i64>,
    rows: Option<i64>,
    lazy_start: Option<bool>,
}

/// Daytona's `PtyCreateResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PtyCreateResponse {
    session_id: String,
}

/// Daytona's `PtyResizeRequest`.
#[derive(Debug, Deserialize)]
struct PtyResizeRequest {
    cols: i64,
    rows: i64,
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/pty", get(list).post(create))
        .route("/process/pty/create-connect", get(create_connect))
        .route("/process/pty/{id}", get(info).delete(delete))
        .route("/process/pty/{id}/connect", get(connect))
        .route("/process/pty/{id}/resize", post(resize))
}

async fn list(State(state): State<AppState>) -> Json<PtyListResponse> {
    let mut sessions: Vec<_> = state.ptys.lock().values().map(|p| p.info()).collect();
    sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Json(PtyListResponse { sessions })
}

async fn info(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PtySessionInfo>, ApiError> {
    Ok(Json(state.ptys.get(&id)?.info()))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pty = state.ptys.get(&id)?;
    state.ptys.remove(&pty);
    pty.killed.store(true, Ordering::SeqCst);
    term::kill_session(pty.pid);
    Ok(Json(
        serde_json::json!({ "message": format!("PTY session {id} killed") }),
    ))
}

async fn resize(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<PtyResizeRequest>,
) -> Result<Json<PtySessionInfo>, ApiError> {
    let cols = side("cols", request.cols)?;
    let rows = side("rows", request.rows)?;
    let pty = state.ptys.get(&id)?;
    if pty.exit.borrow().is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("PTY session {id} has exited"),
        ));
    }
    term::resize(&pty.master, cols, rows)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("resize: {e}")))?;
    *pty.size.lock().unwrap_or_else(PoisonError::into_inner) = (cols, rows);
    Ok(Json(pty.info()))
}

/// A terminal side in `1..=MAX_SIDE`.
fn side(name: &str, value: i64) -> Result<u16, ApiError> {
    u16::try_from(value)
        .ok()
        .filter(|v| (1..=MAX_SIDE).contains(v))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be between 1 and {MAX_SIDE}, got {value}"
            ))
        })
}

/// A query parameter that must be a terminal side; `default` when absent.
fn side_param(query: &HashMap<String, String>, name: &str, default: u16) -> Result<u16, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => {
            let value = raw.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be an integer, got {raw:?}"))
            })?;
            side(name, value)
        }
    }
}

/// The upgrade, or a 400 when the request is not a WebSocket handshake.
fn upgrade(
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    ws.map(|ws| ws.protocols([EXIT_CONTROL]))
        .map_err(|e| ApiError::bad_request(format!("a WebSocket upgrade is required: {e}")))
}

/// The extra environment from an `X-Daytona-Pty-Envs~...` subprotocol token, if any.
fn envs_from_protocols(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let tokens = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut envs = BTreeMap::new();
    for token in tokens {
        let Some(encoded) = token.strip_prefix(ENVS_PREFIX) else {
            continue;
        };
        let json = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|e| ApiError::bad_request(format!("invalid PTY envs encoding: {e}")))?;
        let decoded: BTreeMap<String, String> = serde_json::from_slice(&json).map_err(|e| {
            ApiError::bad_request(format!("PTY envs must be a JSON object of strings: {e}"))
        })?;
        envs.extend(decoded);
    }
    Ok(envs)
}

async fn create_connect(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = query.get("id").map(String::as_str).unwrap_or_default();
    // The request is checked (id first) before the upgrade, so a bad one is a clear 400.
    check_id(id)?;
    let cols = side_param(&query, "cols", 80)?;
    let rows = side_param(&query, "rows", 24)?;
    let envs = envs_from_protocols(&headers)?;
    let ws = upgrade(ws)?;
    let (pty, output) = spawn_pty(
        &state,
        id,
        query.get("cwd").map(String::as_str),
        envs,
        (cols, rows),
    )?;
    Ok(ws.on_upgrade(move |socket| attach(socket, pty, output)))
}

/// `POST /process/pty` (older SDKs): starts a terminal that clients then attach to with
/// `GET /process/pty/{id}/connect`.
async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<PtyCreateRequest>,
) -> Result<(StatusCode, Json<PtyCreateResponse>), ApiError> {
    let id = request.id.unwrap_or_default();
    let cols = request
        .cols
        .map(|c| side("cols", c))
        .transpose()?
        .unwrap_or(80);
    let rows = request
        .rows
        .map(|r| side("rows", r))
        .transpose()?
        .unwrap_or(24);
    let (pty, output) = spawn_pty(
        &state,
        &id,
        request.cwd.as_deref(),
        request.envs.unwrap_or_default(),
        (cols, rows),
    )?;
    if request.lazy_start == Some(true) {
        *pty.first_output
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(output);
    }
    // 201, as Daytona's daemon (the generated clients only parse the body of a 201).
    Ok((
        StatusCode::CREATED,
        Json(PtyCreateResponse { session_id: id }),
    ))
}

/// Starts terminal `id` (a login shell in `cwd` with `envs` on top of the sandbox's) and
/// registers it; returns it with a receiver of its output from the start.
/// A terminal id must be given, short, and fit in a path segment.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request("the PTY session id is required"));
    }
    if id.len() > 256 || id.contains(['/', '\0']) {
        return Err(ApiError::bad_request(format!(
            "invalid PTY session id {id:?}"
        )));
    }
    Ok(())
}

fn spawn_pty(
    state: &AppState,
    id: &str,
    cwd: Option<&str>,
    envs: BTreeMap<String, String>,
    (cols, rows): (u16, u16),
) -> Result<(Arc<Pty>, broadcast::Receiver<Bytes>), ApiError> {
    check_id(id)?;
    let config = &state.config;
    let cwd = params::resolve_cwd(&config.work_dir, &config.home, cwd);
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let mut base = state.base_env();
    base.insert("TERM".into(), "xterm-256color".into());
    let env = params::merge_env(&base, Some(&envs)).map_err(ApiError::bad_request)?;

    // Check for a duplicate and register under one lock, so two creates cannot both win.
    let (pty, output, exit) = {
        let mut map = state.ptys.lock();
        if map.contains_key(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("PTY session {id} already exists"),
            ));
        }
        let terminal = term::start(&state.reaper, state.credentials(), &cwd, &env, cols, rows)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to start the PTY: {e}"),
                )
            })?;
        let (output, first_client) = broadcast::channel(OUTPUT_BUFFER);
        let pty = Arc::new(Pty {
            id: id.to_owned(),
            cwd: cwd.display().to_string(),
            envs,
            size: Mutex::new((cols, rows)),
            created_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            master: terminal.master,
            pid: terminal.pid,
            output,
            exit: watch::Sender::new(None),
            killed: AtomicBool::new(false),
            first_output: Mutex::new(None),
        });
        map.insert(id.to_owned(), pty.clone());
        (pty, first_client, terminal.exit)
    };
    tokio::spawn(pump(state.ptys.clone(), pty.clone(), exit));
    Ok((pty, output))
}

async fn connect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pty = state.ptys.get(&id)?;
    let ws = upgrade(ws)?;
    Ok(ws.on_upgrade(move |socket| async move {
        // The first client of a lazily started terminal gets its output from the start.
        let first = pty
            .first_output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let output = first.unwrap_or_else(|| pty.output.subscribe());
        attach(socket, pty, output).await;
    }))
}

/// Moves the terminal's output into the broadcast channel until the shell exited and its last
/// output was read, then publishes the exit and forgets the terminal.
async fn pump(ptys: Arc<Ptys>, pty: Arc<Pty>, mut exit: oneshot::Receiver<ExitCode>) {
    let mut eof = false;
    let mut code: Option<ExitCode> = None;
    let mut drain_until = Instant::now();
    loop {
        if eof && code.is_some() {
            break;
        }
        let idle = if code.is_some() {
            (Instant::now() + DRAIN_IDLE).min(drain_until)
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            chunk = term::read_chunk(&pty.master), if !eof => match chunk {
                Ok(Some(bytes)) => {
                    // No receivers (nobody attached) is fine: the output is just not seen.
                    let _ = pty.output.send(Bytes::from(bytes));
                }
                Ok(None) => eof = true,
                Err(err) => {
                    tracing::warn!("pty {}: read: {err}", pty.id);
                    eof = true;
                }
            },
            status = &mut exit, if code.is_none() => {
                // The sender only goes away if the reaper lost the child; report -1 then.
                code = Some(status.unwrap_or(-1));
                drain_until = Instant::now() + DRAIN_MAX;
            }
            () = sleep_until(idle), if code.is_some() => break,
        }
    }
    let exit = Exit {
        code: code.unwrap_or(-1),
        killed: pty.killed.load(Ordering::SeqCst),
    };
    ptys.remove(&pty);
    pty.exit.send_replace(Some(exit));
    tracing::debug!("pty {} exited with {}", pty.id, exit.code);
}

/// Serves one WebSocket client of `pty` until the shell exits or the client leaves.
async fn attach(mut socket: WebSocket, pty: Arc<Pty>, mut output: broadcast::Receiver<Bytes>) {
    let mut exit = pty.exit.subscribe();
    let connected = r#"{"type":"control","status":"connected"}"#;
    if socket.send(Message::Text(connected.into())).await.is_err() {
        return;
    }
    let mut ended = *exit.borrow_and_update();
    while ended.is_none() {
        tokio::select! {
            biased;
            chunk = output.recv() => match chunk {
                Ok(bytes) => {
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("pty {}: a slow client missed {n} output chunks", pty.id);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // Cannot happen while `pty` holds the sender; wait for the exit then.
                    ended = wait_exit(&mut exit).await;
                }
            },
            changed = exit.changed() => {
                if changed.is_err() {
                    break;
                }
                ended = *exit.borrow_and_update();
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(data))) => input(&pty, &data).await,
                Some(Ok(Message::Text(text))) => input(&pty, text.as_bytes()).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
    // The pump broadcast everything before publishing the exit: forward what is still queued.
    while let Ok(bytes) = output.try_recv() {
        if socket.send(Message::Binary(bytes)).await.is_err() {
            return;
        }
    }
    let exit = ended.unwrap_or(Exit {
        code: -1,
        killed: false,
    });
    let reason = exit.killed.then_some("SIGKILL");
    if socket.protocol().is_some() {
        let mut message = serde_json::json!({
            "type": "control",
            "status": "exited",
            "exitCode": exit.code,
        });
        if let Some(reason) = reason {
            message["exitReason"] = reason.into();
        }
        let _ = socket.send(Message::Text(message.to_string().into())).await;
    }
    let mut close = serde_json::json!({ "exitCode": exit.code });
    if let Some(reason) = reason {
        close["exitReason"] = reason.into();
    }
    let frame = CloseFrame {
        code: if exit.code == 0 { 1000 } else { 1011 },
        reason: close.to_string().into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn wait_exit(exit: &mut watch::Receiver<Option<Exit>>) -> Option<Exit> {
    exit.wait_for(Option::is_some).await.ok().and_then(|e| *e)
}

async fn input(pty: &Pty, data: &[u8]) {
    if let Err(err) = term::write_all(&pty.master, data).await {
        tracing::debug!("pty {}: write: {err}", pty.id);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn protocols(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn envs_come_from_the_subprotocol_token() {
        let token = URL_SAFE_NO_PAD.encode(r#"{"A":"1","B":"x y"}"#);
        let headers = protocols(&format!("{EXIT_CONTROL}, {ENVS_PREFIX}{token}"));
        let envs = envs_from_protocols(&headers).expect("valid");
        assert_eq!(envs.get("A").map(String::as_str), Some("1"));
        assert_eq!(envs.get("B").map(String::as_str), Some("x y"));
        assert!(
            envs_from_protocols(&protocols(EXIT_CONTROL))
                .expect("valid")
                .is_empty()
        );
        assert!(
            envs_from_protocols(&HeaderMap::new())
                .expect("valid")
                .is_empty()
        );
    }

    #[test]
    fn bad_envs_tokens_are_400s() {
        for bad in [
            "%%%",
            "WzFd",       /* [1] */
            "eyJBIjoxfQ", /* {"A":1} */
        ] {
            let err =
                envs_from_protocols(&protocols(&format!("{ENVS_PREFIX}{bad}"))).expect_err(bad);
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn sides_are_checked() {
        assert_eq!(side("cols", 1).ok(), Some(1));
        assert_eq!(side("cols", 1000).ok(), Some(1000));
        for bad in [0, -1, 1001, i64::MAX] {
            assert_eq!(
                side("cols", bad).map_err(|e| e.status),
                Err(StatusCode::BAD_REQUEST)
            );
        }
        let query: HashMap<String, String> = [("rows".to_owned(), "x".to_owned())].into();
        assert_eq!(side_param(&query, "cols", 80).ok(), Some(80));
        assert!(side_param(&query, "rows", 24).is_err());
    }
}
