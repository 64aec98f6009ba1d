//! The stateful code interpreter: `/process/interpreter`.
//!
//! A context is one long-lived `python3` process (as the sandbox user, in the context's cwd,
//! with the sandbox's base environment) running `interpreter/repl.py`, which executes each
//! run's code in one persistent globals dict. The default context (id `default`, in the work
//! dir) starts on first use and is not listed; created contexts start at once.
//!
//! `GET /process/interpreter/execute` is a WebSocket: the client sends one JSON text frame
//! `{code, contextId?, envs?, timeout?}`, then receives `{type:"stdout"|"stderr", text}` frames
//! as the code writes, `{type:"error", name, value, traceback}` for an uncaught exception, and
//! a close: 1000 when the run ended, 4008 on timeout. Bad requests get an error frame and a
//! close with 1008, an unknown context 4004 (the SDK raises on any close other than 1000).
//!
//! Behaviour:
//! - Plain `exec`: a final expression's value is not displayed (as Daytona's daemon).
//! - One run at a time per context: concurrent runs queue; the timeout counts from the start
//!   of the run itself.
//! - `timeout` is in seconds: absent means 600, 0 means none, negative is a bad request.
//! - On timeout (or when the client goes away) the process group gets SIGINT; a run that ends
//!   within [`GRACE`] leaves the context and its variables intact, otherwise the process is
//!   killed and the context starts afresh (empty namespace) on its next run.
//! - `envs` are set in `os.environ` for the run and restored afterwards.
//! - A process that dies (e.g. `os._exit`) ends the run with an `InterpreterExited` error
//!   frame; the context restarts on its next run.
//! - `DELETE /process/interpreter/context/{id}` kills the process (and any run in it).

mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use self::process::{Event, Process};
use super::json::JsonBody;
use super::{ApiError, AppState};
use crate::params;

/// The id of the context runs use when they name none.
const DEFAULT_ID: &str = "default";
/// The timeout when a run gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an interrupted run may take to end before its process is killed.
const GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the request frame after the upgrade.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// Close codes.
const CLOSE_OK: u16 = 1000;
const CLOSE_BAD_REQUEST: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_NOT_FOUND: u16 = 4004;
const CLOSE_TIMEOUT: u16 = 4008;

/// The live state of this module: every context, the default one included once started.
#[derive(Debug, Default)]
pub struct Interpreters {
    contexts: Mutex<HashMap<String, Arc<Context>>>,
}

impl Interpreters {
    fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One context.
#[derive(Debug)]
struct Context {
    id: String,
    cwd: PathBuf,
    created_at: String,
    /// Held for the length of a run; `None` until started or after the process died.
    process: tokio::sync::Mutex<Option<Process>>,
    /// The running process's pid (0: none), for DELETE to kill it without waiting for a run.
    pid: AtomicI32,
}

impl Context {
    fn new(id: String, cwd: PathBuf) -> Self {
        Self {
            id,
            cwd,
            created_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            process: tokio::sync::Mutex::new(None),
            pid: AtomicI32::new(0),
        }
    }

    fn describe(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            cwd: self.cwd.display().to_string(),
            language: "python".to_owned(),
            active: self.pid.load(Ordering::SeqCst) != 0,
            created_at: self.created_at.clone(),
        }
    }

    /// Makes sure `slot` holds a live process.
    async fn ensure(&self, state: &AppState, slot: &mut Option<Process>) -> std::io::Result<()> {
        if slot.as_ref().is_some_and(|p| !p.gone) {
            return Ok(());
        }
        *slot = None;
        self.pid.store(0, Ordering::SeqCst);
        let process = Process::start(state, &self.cwd).await?;
        self.pid.store(process.pid, Ordering::SeqCst);
        *slot = Some(process);
        Ok(())
    }

    fn kill(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid > 0
            && let Err(err) = killpg(Pid::from_raw(pid), Signal::SIGKILL)
        {
            tracing::debug!("interpreter: killpg {pid}: {err}");
        }
    }
}

/// Daytona's `InterpreterContext`.
#[derive(Debug, Serialize)]
struct ContextInfo {
    id: String,
    cwd: String,
    language: String,
    active: bool,
    #[serde(rename = "createdAt")]
    created_at: String,
}

/// Daytona's `CreateContextRequest`.
#[derive(Debug, Deserialize)]
struct CreateContextRequest {
    cwd: Option<String>,
    language: Option<String>,
}

/// The first WebSocket frame of a run.
#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    code: String,
    #[serde(rename = "contextId")]
    context_id: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<i64>,
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/process/interpreter/context",
            get(list_contexts).post(create_context),
        )
        .route("/process/interpreter/context/{id}", delete(delete_context))
        .route("/process/interpreter/execute", get(execute))
}

async fn create_context(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateContextRequest>,
) -> Result<Json<ContextInfo>, ApiError> {
    match request.language.as_deref() {
        None | Some("") | Some("python") | Some("python3") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported language {other:?}: only python is supported"
            )));
        }
    }
    let config = &state.config;
    let cwd = params::resolve_cwd(&config.work_dir, &config.home, request.cwd.as_deref());
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let context = Arc::new(Context::new(uuid::Uuid::new_v4().to_string(), cwd));
    {
        let mut slot = context.process.lock().await;
        context.ensure(&state, &mut slot).await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                // The sandbox's image has no python3: the caller's problem, not ours.
                ApiError::bad_request("python3 is not installed in this sandbox")
            } else {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to start the interpreter: {err}"),
                )
            }
        })?;
    }
    state
        .interpreters
        .lock()
        .insert(context.id.clone(), Arc::clone(&context));
    Ok(Json(context.describe()))
}

async fn list_contexts(State(state): State<AppState>) -> Json<Value> {
    let mut contexts: Vec<Arc<Context>> = state
        .interpreters
        .lock()
        .values()
        .filter(|c| c.id != DEFAULT_ID)
        .cloned()
        .collect();
    contexts.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    let contexts: Vec<ContextInfo> = contexts.iter().map(|c| c.describe()).collect();
    Json(json!({ "contexts": contexts }))
}

async fn delete_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == DEFAULT_ID {
        return Err(ApiError::bad_request(
            "the default context cannot be deleted",
        ));
    }
    let context = state
        .interpreters
        .lock()
        .remove(&id)
        .ok_or_else(|| ApiError::not_found(format!("context {id} not found")))?;
    context.kill();
    // Drops the process (and its kill guard) unless a run holds it; that run then sees the
    // process gone and drops it itself.
    if let Ok(mut slot) = context.process.try_lock() {
        *slot = None;
    }
    Ok(Json(json!({ "message": format!("context {id} deleted") })))
}

async fn execute(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| run_socket(state, socket))
}

/// Why a run ended.
enum End {
    Done,
    Timeout,
    ClientGone,
}

async fn run_socket(state: AppState, mut ws: WebSocket) {
    let request = match tokio::time::timeout(REQUEST_LIMIT, ws.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ExecuteRequest>(&text),
        Ok(Some(Ok(Message::Binary(bytes)))) => serde_json::from_slice::<ExecuteRequest>(&bytes),
        Ok(Some(Ok(_))) => {
            return fail(&mut ws, CLOSE_BAD_REQUEST, "expected a JSON request frame").await;
        }
        Ok(_) => return,
        Err(_) => return fail(&mut ws, CLOSE_BAD_REQUEST, "no request received").await,
    };
    let request = match request {
        Ok(request) => request,
        Err(err) => {
            return fail(
                &mut ws,
                CLOSE_BAD_REQUEST,
                &format!("invalid request: {err}"),
            )
            .await;
        }
    };
    let timeout = match request.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(secs) if secs < 0 => {
            return fail(&mut ws, CLOSE_BAD_REQUEST, "timeout must not be negative").await;
        }
        secs => params::timeout(secs),
    };
    if let Err(err) = params::merge_env(&BTreeMap::new(), request.envs.as_ref()) {
        return fail(&mut ws, CLOSE_BAD_REQUEST, &err).await;
    }
    let context = match request.context_id.as_deref() {
        None | Some("") | Some(DEFAULT_ID) => {
            let mut contexts = state.interpreters.lock();
            let context = contexts.entry(DEFAULT_ID.to_owned()).or_insert_with(|| {
                Arc::new(Context::new(
                    DEFAULT_ID.to_owned(),
                    PathBuf::from(&state.config.work_dir),
                ))
            });
            Arc::clone(context)
        }
        Some(id) => match state.interpreters.get(id) {
            Some(context) => context,
            None => {
                return fail(&mut ws, CLOSE_NOT_FOUND, &format!("context {id} not found")).await;
            }
        },
    };

    // One run at a time per context: later runs wait here.
    let mut slot = context.process.lock().await;
    if let Err(err) = context.ensure(&state, &mut slot).await {
        let message = format!("failed to start the interpreter: {err}");
        return fail(&mut ws, CLOSE_INTERNAL, &message).await;
    }
    let Some(process) = slot.as_mut() else {
        return fail(&mut ws, CLOSE_INTERNAL, "interpreter not running").await;
    };
    // Output written between runs (background threads) belongs to no run.
    while let Ok(event) = process.events.try_recv() {
        if matches!(event, Event::Gone) {
            process.gone = true;
        }
    }
    let message = json!({ "code": request.code, "envs": request.envs.unwrap_or_default() });
    if process.gone || process.send(&message).await.is_err() {
        process.gone = true;
        let _ = send_frame(&mut ws, &exited_frame()).await;
        drop(slot);
        return close(&mut ws, CLOSE_INTERNAL, "interpreter process exited").await;
    }

    let deadline = timeout.map(|t| Instant::now() + t);
    // An event taken from the queue while merging output chunks, handled next.
    let mut held: Option<Event> = None;
    let end = loop {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = async {
            match held.take() {
                Some(event) => Some(event),
                None => process.events.recv().await,
            }
        };
        tokio::select! {
            event = next => match event {
                Some(Event::Frame(frame)) => {
                    if frame["type"] == "done" {
                        break End::Done;
                    }
                    let Some(mut out) = to_client(frame) else { continue };
                    if let Some(kind) = output_kind(&out) {
                        // Output that does not end a line: merge queued chunks of the same
                        // stream up to the end of the line into one frame.
                        let mut text = out["text"].as_str().unwrap_or_default().to_owned();
                        held = merge_queued(&mut process.events, kind, &mut text);
                        out["text"] = Value::String(text);
                    }
                    if send_frame(&mut ws, &out).await.is_err() {
                        break End::ClientGone;
                    }
                }
                Some(Event::Raw { stderr, text }) => {
                    let kind = if stderr { "stderr" } else { "stdout" };
                    if send_frame(&mut ws, &json!({ "type": kind, "text": text })).await.is_err() {
                        break End::ClientGone;
                    }
                }
                Some(Event::Gone) | None => {
                    process.gone = true;
                    context.pid.store(0, Ordering::SeqCst);
                    let _ = send_frame(&mut ws, &exited_frame()).await;
                    break End::Done;
                }
            },
            () = sleep => break End::Timeout,
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientGone,
                Some(Ok(_)) => {}
            },
        }
    };

    match end {
        End::Done => {
            // Output the process wrote to fds 1/2 just before the end may still be in flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(event) = process.events.try_recv() {
                match event {
                    Event::Raw { stderr, text } => {
                        let kind = if stderr { "stderr" } else { "stdout" };
                        let _ = send_frame(&mut ws, &json!({ "type": kind, "text": text })).await;
                    }
                    Event::Gone => process.gone = true,
                    Event::Frame(_) => {}
                }
            }
            drop(slot);
            close(&mut ws, CLOSE_OK, "").await;
        }
        End::Timeout | End::ClientGone => {
            if !interrupt(process).await {
                tracing::info!(
                    "interpreter: context {} did not stop on SIGINT; restarting it",
                    context.id
                );
                process.kill();
                context.pid.store(0, Ordering::SeqCst);
                *slot = None;
            }
            drop(slot);
            if matches!(end, End::Timeout) {
                let reason = "execution timed out";
                close(&mut ws, CLOSE_TIMEOUT, reason).await;
            }
        }
    }
}

/// Sends SIGINT to the run's process group and waits up to [`GRACE`] for the run to end.
/// Returns whether the process is still usable.
async fn interrupt(process: &mut Process) -> bool {
    if process.gone {
        return false;
    }
    if let Err(err) = killpg(Pid::from_raw(process.pid), Signal::SIGINT) {
        tracing::debug!("interpreter: SIGINT {}: {err}", process.pid);
    }
    let wait = async {
        while let Some(event) = process.events.recv().await {
            match event {
                Event::Frame(frame) if frame["type"] == "done" => return true,
                Event::Gone => return false,
                _ => {}
            }
        }
        false
    };
    let usable = tokio::time::timeout(GRACE, wait).await.unwrap_or(false);
    if !usable {
        process.gone = true;
    }
    usable
}

/// `"stdout"` or `"stderr"` for an output frame.
fn output_kind(frame: &Value) -> Option<&'static str> {
    match frame["type"].as_str()? {
        "stdout" => Some("stdout"),
        "stderr" => Some("stderr"),
        _ => None,
    }
}

/// Appends to `text` the queued frames of stream `kind` until it ends a line (up to 64 KiB),
/// so each client message is one line as Daytona's (the REPL sends a frame per line), and
/// returns the first queued event it took but did not merge, if any.
fn merge_queued(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    kind: &str,
    text: &mut String,
) -> Option<Event> {
    while text.len() < 64 << 10 && !text.ends_with('\n') {
        let Ok(event) = events.try_recv() else {
            return None;
        };
        match &event {
            Event::Frame(frame) if frame["type"] == kind => {
                text.push_str(frame["text"].as_str().unwrap_or_default());
            }
            _ => return Some(event),
        }
    }
    None
}

/// The frame for the client, from a frame of the REPL server (`None`: not for the client).
fn to_client(frame: Value) -> Option<Value> {
    match frame["type"].as_str()? {
        "stdout" | "stderr" | "error" => Some(frame),
        _ => None,
    }
}

fn exited_frame() -> Value {
    json!({
        "type": "error",
        "name": "InterpreterExited",
        "value": "the interpreter process exited; the context's state is lost",
        "traceback": "",
    })
}

async fn send_frame(ws: &mut WebSocket, frame: &Value) -> Result<(), axum::Error> {
    ws.send(Message::Text(frame.to_string().into())).await
}

/// Sends an error frame for a request that cannot run, then closes with `code`.
async fn fail(ws: &mut WebSocket, code: u16, message: &str) {
    let frame =
        json!({ "type": "error", "name": "RequestError", "value": message, "traceback": "" });
    let _ = send_frame(ws, &frame).await;
    close(ws, code, message).await;
}

async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
    // Wait briefly for the client's close reply so the close handshake completes.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
