//! The `/git` routes: Daytona's git API on top of the `git` CLI, run as the sandbox user.
//!
//! Credentials given with a request (clone, push, pull) reach git only through the
//! environment of that one git process, read by an inline credential helper; they are never
//! written to disk nor logged, and git's messages are redacted before they are returned.
//! Credentials given to `POST /git/credentials` are kept in the agent's memory (not in a
//! `~/.git-credentials` file as Daytona does) and used for later API git calls to that host.

mod run;
mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::json::JsonBody;
use super::{ApiError, AppState};
use crate::params;
use run::{Auth, args, git, git_raw};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/git/clone", post(clone))
        .route("/git/status", get(status))
        .route(
            "/git/branches",
            get(list_branches).post(create_branch).delete(delete_branch),
        )
        .route("/git/add", post(add))
        .route("/git/commit", post(commit))
        .route("/git/push", post(push))
        .route("/git/pull", post(pull))
        .route("/git/checkout", post(checkout))
        .route("/git/init", post(init))
        .route("/git/reset", post(reset))
        .route("/git/restore", post(restore))
        .route("/git/remotes", get(list_remotes).post(add_remote))
        .route("/git/config", get(get_config).post(set_config))
        .route("/git/config/user", post(configure_user))
        .route("/git/credentials", post(authenticate))
        .route("/git/history", get(history))
}

/// Credentials given to `POST /git/credentials`, by `(protocol, host)`; memory only, one set
/// per agent (in [`AppState::git_credentials`]). Debug output shows no password.
#[derive(Debug, Default)]
pub struct StoredCredentials(Mutex<BTreeMap<(String, String), Auth>>);

impl StoredCredentials {
    fn map(&self) -> MutexGuard<'_, BTreeMap<(String, String), Auth>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `auth` for git calls to `host` over `protocol` (both lowercase).
    fn store(&self, protocol: String, host: String, auth: Auth) {
        self.map().insert((protocol, host), auth);
    }

    /// The credentials kept for the host of `url`, if any.
    fn for_url(&self, url: &str) -> Option<Auth> {
        let key = url_host(url)?;
        self.map().get(&key).cloned()
    }
}

/// Resolves a request path like a working directory (relative to the work dir, `~` to home).
fn resolve(state: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    if path.trim().is_empty() {
        return Err(ApiError::bad_request("path is required"));
    }
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    Ok(params::resolve_cwd(
        &state.config.work_dir,
        &state.config.home,
        Some(path),
    ))
}

/// An existing directory to run git in, else a 404.
fn repo(state: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    let dir = resolve(state, path)?;
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "FILE_NOT_FOUND".to_owned(),
            message: format!("repository path {} does not exist", dir.display()),
        })
    }
}

/// A directory that surely exists to start git in when no repository is involved.
fn neutral_dir(state: &AppState) -> PathBuf {
    [&state.config.work_dir, &state.config.home]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Rejects values git would read as options.
fn operand<'a>(what: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.is_empty() {
        Err(ApiError::bad_request(format!("{what} is required")))
    } else if value.starts_with('-') {
        Err(ApiError::bad_request(format!(
            "{what} must not start with '-'"
        )))
    } else {
        Ok(value)
    }
}

/// `(protocol, host)` of a URL such as `https://user@host:443/x`.
fn url_host(url: &str) -> Option<(String, String)> {
    static URL: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r"^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/@]*@)?([^/]+)").ok());
    let caps = URL.as_ref()?.captures(url)?;
    Some((caps[1].to_ascii_lowercase(), caps[2].to_ascii_lowercase()))
}

/// Explicit credentials, else stored ones for the URL's host.
fn auth_for(state: &AppState, explicit: Option<Auth>, url: Option<&str>) -> Option<Auth> {
    explicit.or_else(|| state.git_credentials.for_url(url?))
}

/// The URL of `remote` in `dir`, if any.
async fn remote_url(state: &AppState, dir: &Path, remote: &str) -> Option<String> {
    let out = git_raw(state, dir, &args(["remote", "get-url", "--", remote]), None)
        .await
        .ok()?;
    (out.code == 0).then(|| out.stdout.trim().to_owned())
}

/// `?path=`.
#[derive(Debug, Deserialize)]
pub struct PathQuery {
    pub path: Option<String>,
}

impl PathQuery {
    fn get(&self) -> &str {
        self.path.as_deref().unwrap_or_default()
    }
}

/// `GitCloneRequest`.
#[derive(Debug, Deserialize)]
pub struct CloneRequest {
    pub url: String,
    pub path: String,
    pub branch: Option<String>,
    pub commit_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub insecure_skip_tls: Option<bool>,
    pub depth: Option<i64>,
}

async fn clone(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CloneRequest>,
) -> Result<(), ApiError> {
    let url = operand("url", &req.url)?;
    let target = resolve(&state, &req.path)?;
    let mut argv = Vec::new();
    if req.insecure_skip_tls == Some(true) {
        argv.extend(args(["-c", "http.sslVerify=false"]));
    }
    argv.push("clone".to_owned());
    if let Some(branch) = req.branch.as_deref().filter(|b| !b.is_empty()) {
        argv.extend(args(["--branch", operand("branch", branch)?]));
    }
    match req.depth {
        Some(depth) if depth > 0 => argv.push(format!("--depth={depth}")),
        Some(depth) if depth < 0 => {
            return Err(ApiError::bad_request("depth must not be negative"));
        }
        _ => {}
    }
    argv.extend(args(["--", url]));
    argv.push(target.display().to_string());
    let auth = auth_for(
        &state,
        Auth::from_fields(req.username.as_deref(), req.password.as_deref()),
        Some(url),
    );
    git(&state, &neutral_dir(&state), &argv, auth.as_ref()).await?;
    if let Some(commit) = req.commit_id.as_deref().filter(|c| !c.is_empty()) {
        let commit = operand("commit_id", commit)?;
        git(
            &state,
            &target,
            &args(["checkout", "--detach", commit]),
            None,
        )
        .await?;
    }
    Ok(())
}

async fn status(
    State(state): State<AppState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<status::GitStatus>, ApiError> {
    let dir = repo(&state, q.get())?;
    let out = git(
        &state,
        &dir,
        &args(["status", "--porcelain=v2", "--branch", "-z"]),
        None,
    )
    .await?;
    Ok(Json(status::parse(&out)))
}

/// `ListBranchResponse`.
#[derive(Debug, Serialize)]
pub struct BranchList {
    pub branches: Vec<String>,
    pub current: String,
}

async fn list_branches(
    State(state): State<AppState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<BranchList>, ApiError> {
    let dir = repo(&state, q.get())?;
    let out = git(
        &state,
        &dir,
        &args(["for-each-ref", "--format=%(refname:short)", "refs/heads"]),
        None,
    )
    .await?;
    let branches = out.lines().map(str::to_owned).collect();
    let head = git_raw(
        &state,
        &dir,
        &args(["symbolic-ref", "--short", "-q", "HEAD"]),
        None,
    )
    .await?;
    let current = if head.code == 0 {
        head.stdout.trim().to_owned()
    } else {
        String::new()
    };
    Ok(Json(BranchList { branches, current }))
}

/// `GitBranchRequest` / `GitDeleteBranchRequest`.
#[derive(Debug, Deserialize)]
pub struct BranchRequest {
    pub path: String,
    pub name: String,
}

async fn create_branch(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<BranchRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo(&state, &req.path)?;
    let name = operand("name", &req.name)?;
    git(&state, &dir, &args(["branch", name]), None).await?;
    Ok(StatusCode::CREATED)
}

async fn delete_branch(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<BranchRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo(&state, &req.path)?;
    let name = operand("name", &req.name)?;
    git(&state, &dir, &args(["branch", "-D", name]), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GitAddRequest`.
#[derive(Debug, Deserialize)]
pub struct AddRequest {
    pub path: String,
    pub files: Vec<String>,
}

async fn add(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<AddRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    if req.files.is_empty() {
        return Err(ApiError::bad_request("files must not be empty"));
    }
    let mut argv = args(["add", "--"]);
    argv.extend(req.files);
    git(&state, &dir, &argv, None).await?;
    Ok(())
}

/// `GitCommitRequest`.
#[derive(Debug, Deserialize)]
pub struct CommitRequest {
    pub path: String,
    pub message: String,
    pub author: String,
    pub email: String,
    pub allow_empty: Option<bool>,
}

/// `GitCommitResponse`.
#[derive(Debug, Serialize)]
pub struct CommitResponse {
    pub hash: String,
}

async fn commit(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    let dir = repo(&state, &req.path)?;
    let mut argv = vec![
        "-c".to_owned(),
        format!("user.name={}", req.author),
        "-c".to_owned(),
        format!("user.email={}", req.email),
        "commit".to_owned(),
        "-m".to_owned(),
        req.message,
    ];
    if req.allow_empty == Some(true) {
        argv.push("--allow-empty".to_owned());
    }
    git(&state, &dir, &argv, None).await?;
    let hash = git(&state, &dir, &args(["rev-parse", "HEAD"]), None).await?;
    Ok(Json(CommitResponse {
        hash: hash.trim().to_owned(),
    }))
}

/// `GitPushRequest` / `GitPullRequest`.
#[derive(Debug, Deserialize)]
pub struct SyncRequest {
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub branch: Option<String>,
    pub remote: Option<String>,
    pub set_upstream: Option<bool>,
}

impl SyncRequest {
    fn remote(&self) -> Result<&str, ApiError> {
        match self.remote.as_deref().filter(|r| !r.is_empty()) {
            Some(remote) => operand("remote", remote),
            None => Ok("origin"),
        }
    }

    fn branch(&self) -> Result<Option<&str>, ApiError> {
        self.branch
            .as_deref()
            .filter(|b| !b.is_empty())
            .map(|b| operand("branch", b))
            .transpose()
    }

    async fn auth(&self, state: &AppState, dir: &Path) -> Result<Option<Auth>, ApiError> {
        let explicit = Auth::from_fields(self.username.as_deref(), self.password.as_deref());
        if explicit.is_some() {
            return Ok(explicit);
        }
        let url = remote_url(state, dir, self.remote()?).await;
        Ok(auth_for(state, None, url.as_deref()))
    }
}

async fn push(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    let mut argv = args(["push"]);
    if req.set_upstream == Some(true) {
        argv.push("--set-upstream".to_owned());
    }
    argv.push(req.remote()?.to_owned());
    argv.push(req.branch()?.unwrap_or("HEAD").to_owned());
    let auth = req.auth(&state, &dir).await?;
    git(&state, &dir, &argv, auth.as_ref()).await?;
    Ok(())
}

async fn pull(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    let mut argv = args(["pull", "--no-rebase", "--no-edit"]);
    let branch = req.branch()?;
    if req.remote.is_some() || branch.is_some() {
        argv.push(req.remote()?.to_owned());
    }
    if let Some(branch) = branch {
        argv.push(branch.to_owned());
    }
    let auth = req.auth(&state, &dir).await?;
    git(&state, &dir, &argv, auth.as_ref()).await?;
    Ok(())
}

/// `GitCheckoutRequest`.
#[derive(Debug, Deserialize)]
pub struct CheckoutRequest {
    pub path: String,
    pub branch: String,
}

async fn checkout(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CheckoutRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    let branch = operand("branch", &req.branch)?;
    git(&state, &dir, &args(["checkout", branch]), None).await?;
    Ok(())
}

/// `GitInitRequest`.
#[derive(Debug, Deserialize)]
pub struct InitRequest {
    pub path: String,
    pub bare: Option<bool>,
    pub initial_branch: Option<String>,
}

async fn init(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<InitRequest>,
) -> Result<StatusCode, ApiError> {
    let target = resolve(&state, &req.path)?;
    let mut argv = args(["init", "--quiet"]);
    if req.bare == Some(true) {
        argv.push("--bare".to_owned());
    }
    if let Some(branch) = req.initial_branch.as_deref().filter(|b| !b.is_empty()) {
        argv.push(format!(
            "--initial-branch={}",
            operand("initial_branch", branch)?
        ));
    }
    argv.push("--".to_owned());
    argv.push(target.display().to_string());
    git(&state, &neutral_dir(&state), &argv, None).await?;
    Ok(StatusCode::CREATED)
}

/// `GitResetRequest`.
#[derive(Debug, Deserialize)]
pub struct ResetRequest {
    pub path: String,
    pub mode: Option<String>,
    pub target: Option<String>,
    pub files: Option<Vec<String>>,
}

async fn reset(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ResetRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    let mut argv = args(["reset", "--quiet"]);
    match req.mode.as_deref().filter(|m| !m.is_empty()) {
        None => {}
        Some(mode @ ("soft" | "mixed" | "hard" | "merge" | "keep")) => {
            argv.push(format!("--{mode}"));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid reset mode {other:?}: expected soft, mixed, hard, merge or keep"
            )));
        }
    }
    if let Some(target) = req.target.as_deref().filter(|t| !t.is_empty()) {
        argv.push(operand("target", target)?.to_owned());
    }
    if let Some(files) = req.files.filter(|f| !f.is_empty()) {
        argv.push("--".to_owned());
        argv.extend(files);
    }
    git(&state, &dir, &argv, None).await?;
    Ok(())
}

/// `GitRestoreRequest`.
#[derive(Debug, Deserialize)]
pub struct RestoreRequest {
    pub path: String,
    pub files: Vec<String>,
    pub staged: Option<bool>,
    pub worktree: Option<bool>,
    pub source: Option<String>,
}

async fn restore(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> Result<(), ApiError> {
    let dir = repo(&state, &req.path)?;
    if req.files.is_empty() {
        return Err(ApiError::bad_request("files must not be empty"));
    }
    let mut argv = args(["restore"]);
    if req.staged == Some(true) {
        argv.push("--staged".to_owned());
    }
    if req.worktree == Some(true) {
        argv.push("--worktree".to_owned());
    }
    if let Some(source) = req.source.as_deref().filter(|s| !s.is_empty()) {
        argv.push(format!("--source={}", operand("source", source)?));
    }
    argv.push("--".to_owned());
    argv.extend(req.files);
    git(&state, &dir, &argv, None).await?;
    Ok(())
}

/// `GitRemote`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    pub url: String,
}

/// `ListRemotesResponse`.
#[derive(Debug, Serialize)]
pub struct RemoteList {
    pub remotes: Vec<Remote>,
}

/// Parses `git remote -v`, keeping the fetch URLs.
fn parse_remotes(out: &str) -> Vec<Remote> {
    out.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once('\t')?;
            let url = rest.strip_suffix(" (fetch)")?;
            Some(Remote {
                name: name.to_owned(),
                url: run::redact(url, None),
            })
        })
        .collect()
}

async fn list_remotes(
    State(state): State<AppState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<RemoteList>, ApiError> {
    let dir = repo(&state, q.get())?;
    let out = git(&state, &dir, &args(["remote", "-v"]), None).await?;
    Ok(Json(RemoteList {
        remotes: parse_remotes(&out),
    }))
}

/// `GitAddRemoteRequest`.
#[derive(Debug, Deserialize)]
pub struct AddRemoteRequest {
    pub path: String,
    pub name: String,
    pub url: String,
    pub fetch: Option<bool>,
    pub overwrite: Option<bool>,
}

async fn add_remote(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<AddRemoteRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo(&state, &req.path)?;
    let name = operand("name", &req.name)?;
    let url = operand("url", &req.url)?;
    let exists = remote_url(&state, &dir, name).await.is_some();
    let verb = if exists && req.overwrite == Some(true) {
        "set-url"
    } else {
        "add"
    };
    git(&state, &dir, &args(["remote", verb, name, url]), None).await?;
    if req.fetch == Some(true) {
        let auth = auth_for(&state, None, Some(url));
        git(&state, &dir, &args(["fetch", "--", name]), auth.as_ref()).await?;
    }
    Ok(StatusCode::CREATED)
}

/// The `--global`/`--local`/`--system` flag and directory for a config scope.
fn scope(
    state: &AppState,
    scope: Option<&str>,
    path: Option<&str>,
) -> Result<(&'static str, PathBuf), ApiError> {
    let path = path.filter(|p| !p.is_empty());
    let dir = match path {
        Some(path) => repo(state, path)?,
        None => neutral_dir(state),
    };
    match scope.filter(|s| !s.is_empty()).unwrap_or("global") {
        "global" => Ok(("--global", dir)),
        "system" => Ok(("--system", dir)),
        "local" if path.is_some() => Ok(("--local", dir)),
        "local" => Err(ApiError::bad_request(
            "path is required for the local scope",
        )),
        other => Err(ApiError::bad_request(format!(
            "invalid scope {other:?}: expected global, local or system"
        ))),
    }
}

/// `?key&scope&path`.
#[derive(Debug, Deserialize)]
pub struct ConfigQuery {
    pub key: Option<String>,
    pub scope: Option<String>,
    pub path: Option<String>,
}

/// `GitConfigResponse`.
#[derive(Debug, Serialize)]
pub struct ConfigResponse {
    pub value: Option<String>,
}

async fn get_config(
    State(state): State<AppState>,
    Query(q): Query<ConfigQuery>,
) -> Result<Json<ConfigResponse>, ApiError> {
    let key = operand("key", q.key.as_deref().unwrap_or_default())?;
    let (flag, dir) = scope(&state, q.scope.as_deref(), q.path.as_deref())?;
    let out = git_raw(&state, &dir, &args(["config", flag, "--get", key]), None).await?;
    match out.code {
        0 => Ok(Json(ConfigResponse {
            value: Some(out.stdout.trim_end_matches('\n').to_owned()),
        })),
        // Exit 1: the key is not set.
        1 => Ok(Json(ConfigResponse { value: None })),
        _ => Err(run::failure(&out)),
    }
}

/// `GitSetConfigRequest`.
#[derive(Debug, Deserialize)]
pub struct SetConfigRequest {
    pub key: String,
    pub value: String,
    pub scope: Option<String>,
    pub path: Option<String>,
}

async fn set_config(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SetConfigRequest>,
) -> Result<(), ApiError> {
    let key = operand("key", &req.key)?;
    let (flag, dir) = scope(&state, req.scope.as_deref(), req.path.as_deref())?;
    git(
        &state,
        &dir,
        &args(["config", flag, "--replace-all", key, &req.value]),
        None,
    )
    .await?;
    Ok(())
}

/// `GitConfigureUserRequest`.
#[derive(Debug, Deserialize)]
pub struct ConfigureUserRequest {
    pub name: String,
    pub email: String,
    pub scope: Option<String>,
    pub path: Option<String>,
}

async fn configure_user(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ConfigureUserRequest>,
) -> Result<(), ApiError> {
    let (flag, dir) = scope(&state, req.scope.as_deref(), req.path.as_deref())?;
    git(
        &state,
        &dir,
        &args(["config", flag, "user.name", &req.name]),
        None,
    )
    .await?;
    git(
        &state,
        &dir,
        &args(["config", flag, "user.email", &req.email]),
        None,
    )
    .await?;
    Ok(())
}

/// `GitAuthenticateRequest`.
#[derive(Debug, Deserialize)]
pub struct AuthenticateRequest {
    pub username: String,
    pub password: String,
    pub host: Option<String>,
    pub protocol: Option<String>,
}

async fn authenticate(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<AuthenticateRequest>,
) -> Result<(), ApiError> {
    let host = req
        .host
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "github.com".to_owned())
        .to_ascii_lowercase();
    let protocol = req
        .protocol
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "https".to_owned())
        .to_ascii_lowercase();
    let auth = Auth::from_fields(Some(&req.username), Some(&req.password))
        .ok_or_else(|| ApiError::bad_request("username or password is required"))?;
    state.git_credentials.store(protocol, host, auth);
    Ok(())
}

/// `GitCommitInfo`.
#[derive(Debug, Serialize)]
pub struct CommitInfo {
    pub hash: String,
    pub author: String,
    pub email: String,
    pub message: String,
    pub timestamp: String,
}

async fn history(
    State(state): State<AppState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<Vec<CommitInfo>>, ApiError> {
    let dir = repo(&state, q.get())?;
    let out = git(
        &state,
        &dir,
        &args(["log", "-z", "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B"]),
        None,
    )
    .await?;
    let commits = out
        .split('\0')
        .filter(|e| !e.is_empty())
        .filter_map(|entry| {
            let mut f = entry.splitn(5, '\x1f');
            Some(CommitInfo {
                hash: f.next()?.trim().to_owned(),
                author: f.next()?.to_owned(),
                email: f.next()?.to_owned(),
                timestamp: f.next()?.to_owned(),
                message: f.next()?.trim_end().to_owned(),
            })
        })
        .collect();
    Ok(Json(commits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://u:p@GitHub.com/x/y.git"),
            Some(("https".to_owned(), "github.com".to_owned()))
        );
        assert_eq!(url_host("/srv/repo"), None);
    }

    fn auth(user: &str) -> Auth {
        Auth::from_fields(Some(user), Some("secret")).expect("auth")
    }

    #[test]
    fn stored_credentials_are_found_by_host() {
        let stored = StoredCredentials::default();
        stored.store("https".into(), "github.com".into(), auth("alice"));
        let found = stored
            .for_url("https://GitHub.com/o/r.git")
            .expect("stored");
        assert_eq!(found.username, "alice");
        assert!(stored.for_url("https://gitlab.com/o/r.git").is_none());
        assert!(stored.for_url("http://github.com/o/r.git").is_none());
        assert!(!format!("{stored:?}").contains("secret"));
    }

    #[test]
    fn two_agents_keep_their_own_credentials() {
        let (a, b) = (StoredCredentials::default(), StoredCredentials::default());
        a.store("https".into(), "github.com".into(), auth("alice"));
        // Positive control: the agent that was given them uses them...
        assert!(a.for_url("https://github.com/o/r.git").is_some());
        // ...and another agent state (say, a second one in the same process) knows nothing.
        assert!(b.for_url("https://github.com/o/r.git").is_none());
        b.store("https".into(), "github.com".into(), auth("bob"));
        assert_eq!(
            a.for_url("https://github.com/o/r.git").expect("a").username,
            "alice"
        );
    }

    #[test]
    fn remotes_keep_fetch_urls() {
        let r = parse_remotes("origin\tfile:///r (fetch)\norigin\tfile:///r (push)\n");
        assert_eq!(
            r,
            [Remote {
                name: "origin".to_owned(),
                url: "file:///r".to_owned()
            }]
        );
    }
}
