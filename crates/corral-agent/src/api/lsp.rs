//! Language servers: `/lsp`.
//!
//! One server process per (languageId, pathToProject), started by `/lsp/start` and stopped by
//! `/lsp/stop`: `pylsp` for python, `typescript-language-server --stdio` for typescript and
//! javascript. The server runs as the sandbox user in the project directory and talks JSON-RPC
//! over its stdin/stdout ([`rpc`]); answers are reshaped into the SDK's models ([`convert`]).

mod convert;
mod rpc;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use self::rpc::{Connection, RpcError};
use super::json::JsonBody;
use super::{ApiError, AppState, files};
use crate::coderun::find_on_path;
use crate::spawn::{KillGuard, confine};

/// How long one request to a language server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a language server may take to initialise.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a server's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;

type Key = (String, PathBuf);

/// The live state of this module: the running servers.
#[derive(Debug, Default)]
pub struct LanguageServers {
    servers: tokio::sync::Mutex<HashMap<Key, Arc<Server>>>,
}

/// One running language server.
#[derive(Debug)]
struct Server {
    language: String,
    conn: Connection,
    /// Kills the server's process group when the server is dropped.
    guard: Mutex<KillGuard>,
    /// Open documents: uri → version.
    documents: Mutex<HashMap<String, i64>>,
    /// Whether the server answers `workspace/symbol`.
    workspace_symbols: bool,
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/lsp/start", post(start))
        .route("/lsp/stop", post(stop))
        .route("/lsp/did-open", post(did_open))
        .route("/lsp/did-close", post(did_close))
        .route("/lsp/completions", post(completions))
        .route("/lsp/document-symbols", get(document_symbols))
        .route("/lsp/workspacesymbols", get(workspace_symbols))
}

/// `LspServerRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerRequest {
    language_id: String,
    path_to_project: String,
}

/// `LspDocumentRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentRequest {
    language_id: String,
    path_to_project: String,
    uri: String,
}

/// `LspPosition`.
#[derive(Debug, Deserialize)]
struct Position {
    line: u32,
    character: u32,
}

/// `CompletionContext`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionContext {
    trigger_kind: u32,
    trigger_character: Option<String>,
}

/// `LspCompletionParams`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionRequest {
    language_id: String,
    path_to_project: String,
    uri: String,
    position: Position,
    context: Option<CompletionContext>,
}

/// The query of `GET /lsp/document-symbols` and `GET /lsp/workspacesymbols`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SymbolsQuery {
    language_id: Option<String>,
    path_to_project: Option<String>,
    uri: Option<String>,
    query: Option<String>,
}

/// The command serving `language`.
fn server_command(language: &str) -> Result<(&'static str, &'static [&'static str]), ApiError> {
    match language {
        "python" => Ok(("pylsp", &[])),
        "typescript" | "javascript" => Ok(("typescript-language-server", &["--stdio"])),
        other => Err(ApiError::bad_request(format!(
            "unsupported language id {other:?} (supported: python, typescript, javascript)"
        ))),
    }
}

fn project_dir(state: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    if path.is_empty() {
        return Err(ApiError::bad_request("pathToProject is required"));
    }
    files::resolve(&state.config.work_dir, path)
}

/// The project directory and the server running for it in `language` (404 when not started).
async fn running(
    state: &AppState,
    language: &str,
    project: &str,
) -> Result<(PathBuf, Arc<Server>), ApiError> {
    let project = project_dir(state, project)?;
    let server = state.lsp.get(language, &project).await?;
    Ok((project, server))
}

/// `file://<path>` → an absolute path. A relative path (the SDKs send `file://` + the path
/// they were given, e.g. `file://proj/a.py`) is looked up as Daytona's daemon does: under the
/// sandbox's work dir first, then under the project; when it exists in neither, the project's.
fn document_path(work_dir: &Path, project: &Path, uri: &str) -> Result<PathBuf, ApiError> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() {
        return Err(ApiError::bad_request("uri is required"));
    }
    // The SDK sends paths unescaped; a client that escaped them gets them decoded.
    let decoded = path.contains('%').then(|| percent_decode(path));
    let mut fallback = None;
    for text in std::iter::once(path).chain(decoded.as_deref()) {
        for base in [work_dir, project] {
            let candidate = files::resolve(&base.to_string_lossy(), text)?;
            if candidate.exists() {
                return Ok(candidate);
            }
        }
        // Neither exists: the project's, decoded when it was escaped.
        fallback = Some(files::resolve(&project.to_string_lossy(), text)?);
    }
    Ok(fallback.unwrap_or_else(|| project.to_path_buf()))
}

/// The `file://` uri of an absolute path, escaping what a uri cannot hold.
fn file_uri(path: &Path) -> String {
    let mut out = String::from("file://");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(*byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rpc_error(err: RpcError) -> ApiError {
    match err {
        RpcError::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, err.to_string()),
        RpcError::Server { .. } | RpcError::Closed(_) => {
            ApiError::new(StatusCode::BAD_GATEWAY, err.to_string())
        }
    }
}

impl LanguageServers {
    /// The running server for (language, project), or a 404 that says to start it.
    async fn get(&self, language: &str, project: &Path) -> Result<Arc<Server>, ApiError> {
        server_command(language)?;
        let key = (language.to_owned(), project.to_path_buf());
        let mut servers = self.servers.lock().await;
        match servers.get(&key) {
            Some(server) if server.conn.is_closed() => {
                let message = server.conn.closed_error().to_string();
                servers.remove(&key);
                Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("{message}; start it again"),
                ))
            }
            Some(server) => Ok(server.clone()),
            None => Err(ApiError::not_found(format!(
                "no {language} language server is running for {}; call start first",
                project.display()
            ))),
        }
    }
}

async fn start(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ServerRequest>,
) -> Result<(), ApiError> {
    let (program, args) = server_command(&request.language_id)?;
    let project = project_dir(&state, &request.path_to_project)?;
    if !project.is_dir() {
        return Err(ApiError::bad_request(format!(
            "project directory {} does not exist or is not a directory",
            project.display()
        )));
    }
    let key = (request.language_id.clone(), project.clone());
    let mut servers = state.lsp.servers.lock().await;
    if let Some(server) = servers.get(&key) {
        if !server.conn.is_closed() {
            return Ok(());
        }
        servers.remove(&key);
    }
    let env = state.base_env();
    let Some(binary) = find_on_path(program, env.get("PATH").map(String::as_str)) else {
        return Err(ApiError::bad_request(format!(
            "no language server for {}: {program} is not installed in this sandbox",
            request.language_id
        )));
    };
    // Other servers stay usable while this one initialises.
    drop(servers);
    let server = launch(&state, &request.language_id, &binary, args, &project, &env).await?;
    let mut servers = state.lsp.servers.lock().await;
    match servers.get(&key) {
        // A concurrent start won: keep that one; dropping ours kills it.
        Some(existing) if !existing.conn.is_closed() => {}
        _ => {
            servers.insert(key, Arc::new(server));
        }
    }
    Ok(())
}

/// Spawns the server as the sandbox user and runs the `initialize` handshake.
async fn launch(
    state: &AppState,
    language: &str,
    binary: &Path,
    args: &[&str],
    project: &Path,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<Server, ApiError> {
    let spawn_error = |e: io::Error| {
        ApiError::bad_request(format!(
            "cannot start the {language} language server {}: {e}",
            binary.display()
        ))
    };
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .current_dir(project)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    confine(&mut cmd, state.credentials());
    let (mut child, exit) = state.reaper.spawn(&mut cmd).map_err(spawn_error)?;
    drop(cmd);
    let mut guard =
        KillGuard::new(i32::try_from(child.id()).map_err(|e| spawn_error(io::Error::other(e)))?);
    let pipes = (|| -> io::Result<_> {
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        Ok((
            pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?,
            pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
            pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
        ))
    })();
    drop(child);
    let (stdin, stdout, stderr) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => {
            guard.kill();
            return Err(spawn_error(e));
        }
    };
    let tail: Arc<Mutex<String>> = Arc::default();
    tokio::spawn(keep_tail(stderr, tail.clone()));
    let conn = Connection::new(stdin, stdout, tail);
    // The exit code itself is not needed; the reader notices the closed pipe.
    tokio::spawn(async move {
        let _ = exit.await;
    });

    let root = file_uri(project);
    let name = project
        .file_name()
        .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned());
    let params = json!({
        // Not our pid: servers poll it with kill(pid, 0), which a user process gets EPERM for
        // on the root agent, and typescript-language-server then takes the client for dead.
        "processId": Value::Null,
        "clientInfo": {"name": "corral-agent"},
        "rootPath": project.to_string_lossy(),
        "rootUri": root,
        "workspaceFolders": [{"uri": root, "name": name}],
        "capabilities": {
            "workspace": {
                "configuration": true,
                "workspaceFolders": true,
                "symbol": {"dynamicRegistration": false},
            },
            "textDocument": {
                "synchronization": {"dynamicRegistration": false, "didSave": false},
                "completion": {
                    "contextSupport": true,
                    "completionItem": {
                        "snippetSupport": false,
                        "documentationFormat": ["markdown", "plaintext"],
                    },
                },
                "documentSymbol": {"hierarchicalDocumentSymbolSupport": true},
            },
        },
    });
    let result = match conn.request("initialize", params, INIT_TIMEOUT).await {
        Ok(result) => result,
        Err(err) => {
            guard.kill();
            conn.close();
            return Err(rpc_error(err));
        }
    };
    let provider = &result["capabilities"]["workspaceSymbolProvider"];
    let workspace_symbols = !(provider.is_null() || provider == &Value::Bool(false));
    if let Err(err) = conn.notify("initialized", json!({})) {
        guard.kill();
        return Err(rpc_error(err));
    }
    tracing::info!(
        "started the {language} language server for {}",
        project.display()
    );
    Ok(Server {
        language: language.to_owned(),
        conn,
        guard: Mutex::new(guard),
        documents: Mutex::default(),
        workspace_symbols,
    })
}

/// Keeps the last [`STDERR_TAIL`] bytes of the server's stderr.
async fn keep_tail(mut stderr: pipe::Receiver, tail: Arc<Mutex<String>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
        if tail.len() > STDERR_TAIL {
            let mut cut = tail.len() - STDERR_TAIL;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

async fn stop(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ServerRequest>,
) -> Result<(), ApiError> {
    server_command(&request.language_id)?;
    let project = project_dir(&state, &request.path_to_project)?;
    let key = (request.language_id.clone(), project.clone());
    let Some(server) = state.lsp.servers.lock().await.remove(&key) else {
        return Err(ApiError::not_found(format!(
            "no {} language server is running for {}",
            request.language_id,
            project.display()
        )));
    };
    // Ask politely, briefly; then the process group is killed either way.
    if !server.conn.is_closed()
        && server
            .conn
            .request("shutdown", Value::Null, Duration::from_secs(2))
            .await
            .is_ok()
    {
        let _ = server.conn.notify("exit", Value::Null);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
        .guard
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .kill();
    server.conn.close();
    tracing::info!(
        "stopped the {} language server for {}",
        request.language_id,
        project.display()
    );
    Ok(())
}

impl Server {
    /// Opens `path` in the server (or re-syncs it from disk when already open); returns its uri.
    async fn open(&self, path: &Path) -> Result<String, ApiError> {
        // As every file route reads: a regular file, no magic link followed.
        let owned = path.to_path_buf();
        let text = files::blocking(move || {
            let (mut file, _) = files::safe::open_regular(&owned, "cannot read")?;
            let mut text = String::new();
            io::Read::read_to_string(&mut file, &mut text)
                .map_err(|e| files::io_error("cannot read", &owned, &e))?;
            Ok(text)
        })
        .await?;
        let uri = file_uri(path);
        let version = {
            let mut documents = self
                .documents
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let version = documents.entry(uri.clone()).or_insert(0);
            *version += 1;
            *version
        };
        let outcome = if version == 1 {
            self.conn.notify(
                "textDocument/didOpen",
                json!({"textDocument": {"uri": uri, "languageId": self.language, "version": 1, "text": text}}),
            )
        } else {
            self.conn.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": version},
                       "contentChanges": [{"text": text}]}),
            )
        };
        outcome.map_err(rpc_error)?;
        Ok(uri)
    }

    /// The uri of `path`, opening it first if the client did not.
    async fn ensure_open(&self, path: &Path) -> Result<String, ApiError> {
        let uri = file_uri(path);
        let open = self
            .documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&uri);
        if open { Ok(uri) } else { self.open(path).await }
    }

    async fn request(&self, method: &str, params: Value) -> Result<Value, ApiError> {
        self.conn
            .request(method, params, REQUEST_TIMEOUT)
            .await
            .map_err(rpc_error)
    }

    async fn document_symbols(&self, uri: &str) -> Result<Vec<Value>, ApiError> {
        let result = self
            .request(
                "textDocument/documentSymbol",
                json!({"textDocument": {"uri": uri}}),
            )
            .await?;
        Ok(convert::document_symbols(&result, uri))
    }
}

async fn did_open(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DocumentRequest>,
) -> Result<(), ApiError> {
    let (project, server) = running(&state, &request.language_id, &request.path_to_project).await?;
    let path = document_path(Path::new(&state.config.work_dir), &project, &request.uri)?;
    server.open(&path).await?;
    Ok(())
}

async fn did_close(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DocumentRequest>,
) -> Result<(), ApiError> {
    let (project, server) = running(&state, &request.language_id, &request.path_to_project).await?;
    let uri = file_uri(&document_path(
        Path::new(&state.config.work_dir),
        &project,
        &request.uri,
    )?);
    let was_open = server
        .documents
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&uri)
        .is_some();
    if was_open {
        server
            .conn
            .notify(
                "textDocument/didClose",
                json!({"textDocument": {"uri": uri}}),
            )
            .map_err(rpc_error)?;
    }
    Ok(())
}

async fn completions(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Json<Value>, ApiError> {
    let (project, server) = running(&state, &request.language_id, &request.path_to_project).await?;
    let uri = server
        .ensure_open(&document_path(
            Path::new(&state.config.work_dir),
            &project,
            &request.uri,
        )?)
        .await?;
    let mut params = json!({
        "textDocument": {"uri": uri},
        "position": {"line": request.position.line, "character": request.position.character},
    });
    if let Some(context) = request.context {
        params["context"] = json!({"triggerKind": context.trigger_kind});
        if let Some(c) = context.trigger_character {
            params["context"]["triggerCharacter"] = c.into();
        }
    }
    let result = server.request("textDocument/completion", params).await?;
    Ok(Json(convert::completion_list(&result)))
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::bad_request(format!("{name} is required"))),
    }
}

async fn document_symbols(
    State(state): State<AppState>,
    Query(query): Query<SymbolsQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let language = required(&query.language_id, "languageId")?;
    let project = required(&query.path_to_project, "pathToProject")?;
    let (project, server) = running(&state, language, project).await?;
    let path = document_path(
        Path::new(&state.config.work_dir),
        &project,
        required(&query.uri, "uri")?,
    )?;
    let uri = server.ensure_open(&path).await?;
    Ok(Json(server.document_symbols(&uri).await?))
}

/// `workspace/symbol`; for a server that does not offer it (pylsp), the symbols of the documents
/// open in it that match the query.
async fn workspace_symbols(
    State(state): State<AppState>,
    Query(query): Query<SymbolsQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let language = required(&query.language_id, "languageId")?;
    let project = required(&query.path_to_project, "pathToProject")?;
    let (_, server) = running(&state, language, project).await?;
    let text = query.query.unwrap_or_default();
    if server.workspace_symbols {
        let result = server
            .request("workspace/symbol", json!({"query": text}))
            .await?;
        return Ok(Json(convert::workspace_symbols(&result)));
    }
    let uris: Vec<String> = server
        .documents
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    let mut out = Vec::new();
    for uri in uris {
        for symbol in server.document_symbols(&uri).await? {
            if symbol["name"]
                .as_str()
                .is_some_and(|name| convert::matches_query(name, &text))
            {
                out.push(symbol);
            }
        }
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_map_to_paths_and_back() {
        let work = Path::new("/nonexistent-work");
        let project = Path::new("/home/u/proj");
        assert_eq!(
            document_path(work, project, "file:///a/b c.py").expect("ok"),
            PathBuf::from("/a/b c.py")
        );
        assert_eq!(
            document_path(work, project, "file://src/x.py").expect("ok"),
            PathBuf::from("/home/u/proj/src/x.py")
        );
        assert_eq!(
            document_path(work, project, "file:///a/b%20c.py").expect("ok"),
            PathBuf::from("/a/b c.py")
        );
        assert!(document_path(work, project, "file://").is_err());
        assert_eq!(file_uri(Path::new("/a/b c#.py")), "file:///a/b%20c%23.py");
    }

    #[test]
    fn relative_uris_look_in_the_work_dir_first_then_the_project() {
        let work = tempfile::tempdir().expect("tempdir");
        let project = work.path().join("proj");
        std::fs::create_dir_all(project.join("src")).expect("mkdir");
        std::fs::write(project.join("a.py"), b"").expect("write");
        std::fs::write(project.join("src/b.py"), b"").expect("write");
        // As Daytona's tests send it: the project's name, then the file.
        assert_eq!(
            document_path(work.path(), &project, "file://proj/a.py").expect("ok"),
            project.join("a.py")
        );
        // Relative to the project.
        assert_eq!(
            document_path(work.path(), &project, "file://src/b.py").expect("ok"),
            project.join("src/b.py")
        );
        // The work dir wins when both exist.
        std::fs::create_dir_all(work.path().join("src")).expect("mkdir");
        std::fs::write(work.path().join("src/b.py"), b"").expect("write");
        assert_eq!(
            document_path(work.path(), &project, "file://src/b.py").expect("ok"),
            work.path().join("src/b.py")
        );
        // Nowhere: the project's (the server then reports it missing).
        assert_eq!(
            document_path(work.path(), &project, "file://new.py").expect("ok"),
            project.join("new.py")
        );
    }

    #[test]
    fn only_known_languages_have_servers() {
        assert_eq!(server_command("python").expect("known").0, "pylsp");
        assert_eq!(
            server_command("javascript").expect("known").0,
            "typescript-language-server"
        );
        let err = server_command("cobol").expect_err("unknown");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
