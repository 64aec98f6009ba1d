//! Shell sessions: `/process/session`.
//!
//! Each session is one long-lived shell (see [`shell`]); commands run in it one after the
//! other, their stdout and stderr kept apart, their logs readable while they run and
//! streamed over a WebSocket with `?follow=true`.

mod shell;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use self::shell::{Command, Session, StartError, Stream};
use super::json::JsonBody;
use super::{ApiError, AppState};

/// The marker before stdout bytes in a followed log.
const STDOUT_PREFIX: &[u8] = b"\x01\x01\x01";
/// The marker before stderr bytes in a followed log.
const STDERR_PREFIX: &[u8] = b"\x02\x02\x02";
/// The id the entrypoint session answers with.
const ENTRYPOINT: &str = "entrypoint";

/// How a command's logs are answered, by the SDK version the client names in
/// `X-Daytona-SDK-Version`, as Daytona's daemon does: JSON `{output, stdout, stderr}` from
/// 0.167 on (and when no version is named: the current SDKs all name theirs), text with the
/// stream markers before (0.143 reads that and splits it itself), plain text before 0.27.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Json,
    Marked,
    Plain,
}

impl LogFormat {
    fn of(headers: &HeaderMap) -> Self {
        let Some(version) = headers
            .get("x-daytona-sdk-version")
            .and_then(|v| v.to_str().ok())
        else {
            return Self::Json;
        };
        let (core, pre) = version
            .trim()
            .trim_start_matches('v')
            .split_once('-')
            .unwrap_or((version.trim().trim_start_matches('v'), ""));
        let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
        let (Some(Some(major)), Some(Some(minor))) = (parts.first(), parts.get(1)) else {
            return Self::Json;
        };
        if pre.contains("dev") || (*major, *minor) >= (0, 167) {
            Self::Json
        } else if (*major, *minor) >= (0, 27) {
            Self::Marked
        } else {
            Self::Plain
        }
    }
}

/// Every session of the sandbox.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<BTreeMap<String, Arc<Session>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))
    }
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/session", get(list).post(create))
        .route("/process/session/entrypoint", get(entrypoint))
        .route("/process/session/entrypoint/logs", get(entrypoint_logs))
        .route("/process/session/{session_id}", get(get_one).delete(delete))
        .route("/process/session/{session_id}/exec", post(execute))
        .route(
            "/process/session/{session_id}/command/{command_id}",
            get(get_command),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/logs",
            get(logs),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/input",
            post(input),
        )
}

/// Daytona's `CreateSessionRequest`.
#[derive(Debug, Deserialize)]
struct CreateRequest {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// Daytona's `Session`.
#[derive(Debug, Serialize)]
struct SessionDto {
    #[serde(rename = "sessionId")]
    session_id: String,
    commands: Vec<CommandDto>,
}

/// Daytona's `Command`; `exitCode` is absent while the command runs.
#[derive(Debug, Serialize)]
struct CommandDto {
    id: String,
    command: String,
    #[serde(rename = "exitCode", skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

impl CommandDto {
    fn of(cmd: &Command) -> Self {
        Self {
            id: cmd.id.clone(),
            command: cmd.command.clone(),
            exit_code: cmd.exit_code(),
        }
    }
}

impl SessionDto {
    fn of(session: &Session) -> Self {
        let commands = session
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| CommandDto::of(c))
            .collect();
        Self {
            session_id: session.id.clone(),
            commands,
        }
    }
}

/// Daytona's `SessionExecuteRequest`.
#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    command: String,
    #[serde(rename = "runAsync")]
    run_async: Option<bool>,
    /// Deprecated spelling of `runAsync`.
    #[serde(rename = "async")]
    var_async: Option<bool>,
    /// When true, input sent to the command is not copied into its stdout log.
    #[serde(rename = "suppressInputEcho")]
    suppress_input_echo: Option<bool>,
}

/// Daytona's `SessionExecuteResponse`.
#[derive(Debug, Serialize)]
struct ExecuteResponse {
    #[serde(rename = "cmdId")]
    cmd_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(rename = "exitCode", skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

/// Daytona's `SessionCommandLogsResponse`.
#[derive(Debug, Serialize)]
struct LogsResponse {
    output: String,
    stdout: String,
    stderr: String,
}

/// Daytona's `SessionSendInputRequest`.
#[derive(Debug, Deserialize)]
struct InputRequest {
    data: String,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    follow: Option<String>,
}

impl LogsQuery {
    fn follow(&self) -> bool {
        matches!(self.follow.as_deref(), Some("true" | "1" | "True"))
    }
}

async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<StatusCode, ApiError> {
    let id = request.session_id;
    if id.is_empty() || id.contains('/') || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "sessionId must be non-empty, without '/' or control characters",
        ));
    }
    if id == ENTRYPOINT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the session id 'entrypoint' is reserved",
        ));
    }
    if state.sessions.lock().contains_key(&id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("session {id} already exists"),
        ));
    }
    let cwd = std::path::PathBuf::from(&state.config.work_dir);
    let session = Session::start(
        &state.reaper,
        state.credentials(),
        id.clone(),
        cwd,
        state.base_env(),
    )
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to start the session's shell: {e}"),
        )
    })?;
    let mut sessions = state.sessions.lock();
    if sessions.contains_key(&id) {
        session.kill();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("session {id} already exists"),
        ));
    }
    sessions.insert(id, session);
    Ok(StatusCode::CREATED)
}

async fn list(State(state): State<AppState>) -> Json<Vec<SessionDto>> {
    let sessions: Vec<_> = state.sessions.lock().values().cloned().collect();
    Json(sessions.iter().map(|s| SessionDto::of(s)).collect())
}

async fn get_one(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionDto>, ApiError> {
    let session = state.sessions.get(&session_id)?;
    Ok(Json(SessionDto::of(&session)))
}

async fn delete(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = state
        .sessions
        .lock()
        .remove(&session_id)
        .ok_or_else(|| ApiError::not_found(format!("session {session_id} not found")))?;
    session.kill();
    Ok(StatusCode::NO_CONTENT)
}

async fn execute(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    JsonBody(request): JsonBody<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let session = state.sessions.get(&session_id)?;
    if request.command.contains('\0') {
        return Err(ApiError::bad_request("command must not contain NUL bytes"));
    }
    if request.command.trim().is_empty() {
        return Err(ApiError::bad_request("command must not be empty"));
    }
    let run_async = request.run_async.or(request.var_async).unwrap_or(false);
    let (cmd, mut changed) = session
        .execute(
            request.command,
            !request.suppress_input_echo.unwrap_or(false),
        )
        .await
        .map_err(|e| match e {
            StartError::ShellGone => ApiError::bad_request(e.to_string()),
            StartError::Io(err) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to start the command: {err}"),
            ),
        })?;
    if run_async {
        let body = ExecuteResponse {
            cmd_id: cmd.id.clone(),
            output: None,
            stdout: None,
            stderr: None,
            exit_code: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    while cmd.exit_code().is_none() {
        if changed.changed().await.is_err() {
            break;
        }
    }
    let (exit_code, (output, stdout, stderr)) = {
        let state = cmd.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.exit_code, state.logs())
    };
    let body = ExecuteResponse {
        cmd_id: cmd.id.clone(),
        output: Some(output),
        stdout: Some(stdout),
        stderr: Some(stderr),
        exit_code: Some(exit_code.unwrap_or(-1)),
    };
    Ok(Json(body).into_response())
}

fn find_command(
    state: &AppState,
    session_id: &str,
    command_id: &str,
) -> Result<Arc<Command>, ApiError> {
    state
        .sessions
        .get(session_id)?
        .command(command_id)
        .ok_or_else(|| ApiError::not_found(format!("command {command_id} not found")))
}

async fn get_command(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
) -> Result<Json<CommandDto>, ApiError> {
    let cmd = find_command(&state, &session_id, &command_id)?;
    Ok(Json(CommandDto::of(&cmd)))
}

async fn logs(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let cmd = find_command(&state, &session_id, &command_id)?;
    let format = LogFormat::of(request.headers());
    if query.follow()
        && let Some(upgrade) = upgrade_of(request).await
    {
        return Ok(upgrade.on_upgrade(move |socket| follow(socket, Some(cmd))));
    }
    let state = cmd.state.lock().unwrap_or_else(PoisonError::into_inner);
    if format != LogFormat::Json {
        let text = state.text_log(STDOUT_PREFIX, STDERR_PREFIX, format == LogFormat::Marked);
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let (output, stdout, stderr) = state.logs();
    Ok(Json(LogsResponse {
        output,
        stdout,
        stderr,
    })
    .into_response())
}

async fn input(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
    JsonBody(request): JsonBody<InputRequest>,
) -> Result<StatusCode, ApiError> {
    let cmd = find_command(&state, &session_id, &command_id)?;
    match cmd.send_input(request.data.as_bytes()).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::bad_request(format!(
            "command {command_id} is no longer running"
        ))),
        Err(err) => Err(ApiError::bad_request(format!(
            "could not write to the command's input: {err}"
        ))),
    }
}

/// Starts the image's entrypoint (from the agent config) as the one command of the
/// `entrypoint` session; nothing when the image has none.
pub async fn start_entrypoint(state: &AppState) {
    let argv = &state.config.entrypoint;
    if argv.is_empty() {
        return;
    }
    let line = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let cwd = std::path::PathBuf::from(&state.config.work_dir);
    let session = match Session::start(
        &state.reaper,
        state.credentials(),
        ENTRYPOINT.to_owned(),
        cwd,
        state.base_env(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the entrypoint session");
            return;
        }
    };
    state
        .sessions
        .lock()
        .insert(ENTRYPOINT.to_owned(), session.clone());
    match session.execute(line, false).await {
        Ok(_) => tracing::info!(entrypoint = ?argv, "entrypoint started"),
        Err(e) => tracing::warn!(error = %e, "could not start the entrypoint"),
    }
}

/// The entrypoint session: the image's entrypoint as its one command, or (the host image
/// has none) a session that never ran a command.
async fn entrypoint(State(state): State<AppState>) -> Json<SessionDto> {
    if let Ok(session) = state.sessions.get(ENTRYPOINT) {
        return Json(SessionDto::of(&session));
    }
    Json(SessionDto {
        session_id: ENTRYPOINT.to_owned(),
        commands: Vec::new(),
    })
}

/// The entrypoint's logs (empty without an entrypoint; following them then closes at once).
async fn entrypoint_logs(
    State(state): State<AppState>,
    Query(query): Query<LogsQuery>,
    request: Request,
) -> Response {
    let cmd = state.sessions.get(ENTRYPOINT).ok().and_then(|s| {
        s.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    });
    if query.follow()
        && let Some(upgrade) = upgrade_of(request).await
    {
        return upgrade.on_upgrade(|socket| follow(socket, cmd));
    }
    let (output, stdout, stderr) = cmd
        .map(|c| {
            c.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .logs()
        })
        .unwrap_or_default();
    Json(LogsResponse {
        output,
        stdout,
        stderr,
    })
    .into_response()
}

/// The WebSocket upgrade a request asks for, if it asks for one.
async fn upgrade_of(request: Request) -> Option<WebSocketUpgrade> {
    let (mut parts, _) = request.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .ok()
}

/// Streams the command's log as it grows: each chunk one binary frame, prefixed with the
/// SDK's stream marker; a normal close (1000) once the command ended.
async fn follow(mut socket: WebSocket, cmd: Option<Arc<Command>>) {
    if let Some(cmd) = cmd {
        let mut changed = cmd.changed.subscribe();
        // (chunk index, bytes of that chunk already sent): the last chunk may still grow.
        let mut sent = (0usize, 0usize);
        loop {
            changed.borrow_and_update();
            let (frames, done) = {
                let state = cmd.state.lock().unwrap_or_else(PoisonError::into_inner);
                let mut frames = Vec::new();
                for (i, (stream, bytes)) in state.chunks.iter().enumerate().skip(sent.0) {
                    let start = if i == sent.0 { sent.1 } else { 0 };
                    if let Some(new) = bytes.get(start..).filter(|b| !b.is_empty()) {
                        let mut frame = match stream {
                            Stream::Stdout => STDOUT_PREFIX.to_vec(),
                            Stream::Stderr => STDERR_PREFIX.to_vec(),
                        };
                        frame.extend_from_slice(new);
                        frames.push(frame);
                    }
                    sent = (i, bytes.len());
                }
                (frames, state.exit_code.is_some())
            };
            for frame in frames {
                if socket.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
            if done {
                break;
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { break },
                message = socket.recv() => match message {
                    None | Some(Err(_) | Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(version: Option<&str>) -> LogFormat {
        let mut headers = HeaderMap::new();
        if let Some(v) = version {
            headers.insert("x-daytona-sdk-version", v.parse().expect("header"));
        }
        LogFormat::of(&headers)
    }

    #[test]
    fn log_format_follows_the_sdk_version_as_daytona() {
        assert_eq!(format(None), LogFormat::Json);
        assert_eq!(format(Some("0.226.1")), LogFormat::Json);
        assert_eq!(format(Some("0.167.0")), LogFormat::Json);
        assert_eq!(format(Some("0.194.0")), LogFormat::Json);
        assert_eq!(format(Some("0.143.0")), LogFormat::Marked);
        assert_eq!(format(Some("0.166.9")), LogFormat::Marked);
        assert_eq!(format(Some("0.26.0")), LogFormat::Plain);
        assert_eq!(format(Some("0.143.0-dev.1")), LogFormat::Json);
        assert_eq!(format(Some("garbage")), LogFormat::Json);
    }
}
