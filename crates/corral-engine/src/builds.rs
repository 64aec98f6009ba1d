//! Declarative image builds, without Docker: the SDK's `Image` objects (and users' own
//! Dockerfiles) arrive as `buildInfo.dockerfileContent`. A build starts a build sandbox from
//! the `FROM` image (as root, no entrypoint, with the snapshot's resources and network),
//! runs the steps in it through its agent (`RUN` by the agent's streaming `/corral/run`, as
//! the current `USER` via its `run-as` mode, with the `ENV`s and `WORKDIR` so far; `COPY` of inline heredoc files
//! through the agent's file API; `COPY`/`ADD` from the uploaded build context (`context`) as
//! tar streams the agent unpacks), then commits its writable layer as the snapshot's image
//! (the runtime's copy-on-write snapshot) with the resulting config (env, workdir, user,
//! entrypoint, cmd), and removes the build sandbox.
//!
//! A build's uploaded context is named by `buildInfo.contextHashes` (archives in the object
//! store, see `object_storage`); the hashes are kept beside the build's Dockerfile and are
//! part of a sandbox build's identity.
//!
//! Progress goes to a build log, `<build log dir>/<snapshot id>.log`, served by
//! `GET /api/snapshots/{id}/build-logs` and `GET /api/sandbox/{id}/build-logs` (with
//! `?follow=true` the answer streams until the build ends).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_agent_proto::{
    AgentError, DeleteQuery, FolderQuery, PermissionsQuery, RunFrame, RunRequest, UntarQuery,
};
use corral_core::{
    CommitConfig, Egress, ImageInfo, Resources, SandboxSpec, Snapshot, SnapshotState,
};
use corral_dockerfile::{self as dockerfile, CopySource, Op};
use serde_json::Value;

mod context;

pub use crate::claims::{Building, Claim};

use crate::Engine;
use crate::build_log::Log;
pub use crate::build_log::log_path;
use crate::error::EngineError;
use corral_agent_proto::RequestBody;

/// The longest a single `RUN` step may take.
const STEP_TIMEOUT_SECS: i64 = 3600;
/// The largest step output kept in the log (the rest is cut, with a note).
const MAX_STEP_LOG: usize = 1 << 20;

/// Whether a Dockerfile is more than `FROM` (plus JSON `ENTRYPOINT`/`CMD`), which is used
/// as the image itself; anything else is built (or refused by [`check`]).
pub fn needs_build(dockerfile: &str) -> bool {
    crate::snapshots::image_of_dockerfile(dockerfile).is_err()
}

/// Builds snapshot `snap` (recorded `pending`) from `dockerfile`: `building`, then `active`
/// with its size, or `build_failed` with the reason (also the last line of the log).
pub async fn build(
    state: &Engine,
    snap: &mut Snapshot,
    dockerfile: &str,
    context: &[String],
) -> Result<ImageInfo, EngineError> {
    let log = Log::create(state, &snap.id);
    snap.state = SnapshotState::Building;
    snap.updated_at_ms = crate::snapshots::now_ms();
    state.snapshots.update_snapshot(snap).await?;
    tracing::info!(snapshot = %snap.name, "building snapshot");
    let started = std::time::Instant::now();
    match run_build(state, snap, dockerfile, context, &log).await {
        Ok(info) => {
            log.line(&format!(
                "Successfully built snapshot {} in {:.1}s",
                snap.name,
                started.elapsed().as_secs_f64()
            ));
            snap.state = SnapshotState::Active;
            snap.size = Some(info.size);
            snap.error_reason = None;
            snap.updated_at_ms = crate::snapshots::now_ms();
            state.snapshots.update_snapshot(snap).await?;
            tracing::info!(snapshot = %snap.name, size = info.size, "snapshot built");
            Ok(info)
        }
        Err(e) => {
            log.line(&format!("ERROR: {}", e.message));
            snap.state = SnapshotState::BuildFailed;
            snap.error_reason = Some(e.message.clone());
            snap.updated_at_ms = crate::snapshots::now_ms();
            state.snapshots.update_snapshot(snap).await?;
            tracing::warn!(snapshot = %snap.name, error = %e.message, "snapshot build failed");
            Err(EngineError::bad_request(e.message).with_code("BUILD_FAILED"))
        }
    }
}

fn invalid(e: dockerfile::DockerfileError) -> EngineError {
    EngineError::bad_request(e.to_string())
}

async fn run_build(
    state: &Engine,
    snap: &Snapshot,
    content: &str,
    context: &[String],
    log: &Log,
) -> Result<ImageInfo, EngineError> {
    let no_args = BTreeMap::new();
    let first = dockerfile::parse(content, &no_args).map_err(invalid)?;
    if first.base == "scratch" {
        return Err(EngineError::bad_request(
            "FROM scratch is not supported: a build needs a base image to run its steps in",
        ));
    }
    // A stored base image is used without any registry contact.
    let base = crate::snapshots::fetch(state, &first.base, log).await?;
    let env: Vec<(String, String)> = base
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let parsed = dockerfile::parse_with_base(
        content,
        &no_args,
        &dockerfile::BaseImage {
            env: env.clone(),
            working_dir: base.working_dir.clone(),
        },
    )
    .map_err(invalid)?;
    for w in &parsed.warnings {
        log.line(&format!("WARNING: {w}"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let spec = SandboxSpec {
        id: id.clone(),
        image: base.reference.clone(),
        user: "0".into(),
        env: BTreeMap::new(),
        resources: Resources {
            cpu: snap.cpu,
            gpu: 0,
            memory_gib: snap.memory_gib,
            disk_gib: snap.disk_gib,
        },
        egress: Egress::Open,
        volumes: Vec::new(),
        // The image's entrypoint does not run while building.
        entrypoint: Some(Vec::new()),
    };
    log.line(&format!("Starting build sandbox from {}", base.reference));
    // Not recorded in the store: if the server dies mid-build, start-up removes it as the
    // leftover of an unknown sandbox.
    state.runtime.start(&spec).await?;
    let outcome = match run_steps(state, &id, &parsed, &base, env, context, log).await {
        Ok(config) => {
            log.line("Committing the build's files");
            state
                .runtime
                .snapshot(&id, &snap.id, &config)
                .await
                .map_err(EngineError::from)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = state.runtime.destroy(&id).await {
        tracing::warn!(sandbox = %id, error = %e, "removing a build sandbox failed");
    }
    outcome
}

/// What the steps have set so far.
struct Context {
    env: Vec<(String, String)>,
    workdir: String,
    user: Option<String>,
}

impl Context {
    fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
    }
}

async fn run_steps(
    state: &Engine,
    id: &str,
    parsed: &dockerfile::Dockerfile,
    base: &ImageInfo,
    env: Vec<(String, String)>,
    hashes: &[String],
    log: &Log,
) -> Result<CommitConfig, EngineError> {
    // The uploaded context, read at its first use.
    let mut context: Option<std::sync::Arc<context::Index>> = None;
    let mut cx = Context {
        env,
        workdir: base.working_dir.clone().unwrap_or_else(|| "/".into()),
        user: base.user.clone(),
    };
    let mut entrypoint = base.entrypoint.clone();
    let mut cmd = base.cmd.clone();
    let mut cmd_set = false;
    let n = parsed.steps.len();
    for (i, step) in parsed.steps.iter().enumerate() {
        let label = format!("Step {}/{n} : {}", i + 1, step.text());
        log.line(&label);
        let failed = |what: String| {
            EngineError::bad_request(format!(
                "step {}/{n} (Dockerfile line {}) `{}` {what}",
                i + 1,
                step.line,
                step.text()
            ))
        };
        match &step.op {
            Op::Run { argv, build_args } => {
                run(state, id, &cx, argv, build_args, log)
                    .await
                    .map_err(failed)?;
            }
            Op::RunScript { script, build_args } => {
                let path = format!("/tmp/.corral-build-step-{}", i + 1);
                upload(state, id, &path, script.as_bytes())
                    .await
                    .map_err(failed)?;
                permissions(state, id, &path, None, Some(0o755))
                    .await
                    .map_err(failed)?;
                let r = run(state, id, &cx, std::slice::from_ref(&path), build_args, log).await;
                let delete = DeleteQuery {
                    path: Some(path.clone()),
                    recursive: None,
                };
                let _ = state.agents.delete(id, &delete).await;
                r.map_err(failed)?;
            }
            Op::Env { vars } => {
                for (k, v) in vars {
                    cx.set_env(k, v);
                }
            }
            Op::Workdir { path } => {
                folder(state, id, path).await.map_err(failed)?;
                cx.workdir.clone_from(path);
            }
            Op::User { user } => cx.user = Some(user.clone()),
            Op::Copy {
                sources,
                dest,
                chown,
                chmod,
            } => {
                for src in sources {
                    let (name, content) = match src {
                        CopySource::Inline { name, content } => (name, content),
                        CopySource::Context(p) => {
                            let index = match &context {
                                Some(index) => index.clone(),
                                None => {
                                    let index =
                                        read_context(state, hashes, log).await.map_err(failed)?;
                                    context.insert(index).clone()
                                }
                            };
                            copy_context(state, id, index, p, dest, chown.as_deref(), *chmod)
                                .await
                                .map_err(failed)?;
                            continue;
                        }
                    };
                    let target = if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        dest.clone()
                    };
                    if let Some((parent, _)) = target.rsplit_once('/')
                        && !parent.is_empty()
                    {
                        folder(state, id, parent).await.map_err(failed)?;
                    }
                    upload(state, id, &target, content.as_bytes())
                        .await
                        .map_err(failed)?;
                    permissions(state, id, &target, chown.as_deref(), *chmod)
                        .await
                        .map_err(failed)?;
                }
            }
            Op::Entrypoint { argv } => {
                entrypoint.clone_from(argv);
                // As Docker: a new entrypoint drops the base image's command.
                if !cmd_set {
                    cmd.clear();
                }
            }
            Op::Cmd { argv } => {
                cmd.clone_from(argv);
                cmd_set = true;
            }
        }
    }
    Ok(CommitConfig {
        user: cx.user,
        env: Some(cx.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(cx.workdir),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
    })
}

/// Lists the entries of a build's uploaded context archives.
async fn read_context(
    state: &Engine,
    hashes: &[String],
    log: &Log,
) -> Result<std::sync::Arc<context::Index>, String> {
    let mut archives = Vec::with_capacity(hashes.len());
    for h in hashes {
        let path = state
            .context_archive(h)
            .filter(|p| p.is_file())
            .ok_or_else(|| format!("the build context {h} is missing from the object store"))?;
        archives.push(context::Archive {
            hash: h.clone(),
            path,
        });
    }
    let index = tokio::task::spawn_blocking(move || context::Index::read(archives))
        .await
        .map_err(|e| format!("reading the build context failed: {e}"))?
        .map_err(|e| e.to_string())?;
    log.line(&format!(
        "Build context: {} entries in {} upload(s)",
        index.len(),
        hashes.len()
    ));
    Ok(std::sync::Arc::new(index))
}

/// Whether `path` is a directory (or a link to one) in the build sandbox.
async fn is_dir(state: &Engine, id: &str, path: &str) -> Result<bool, String> {
    match state.agents.file_info(id, path).await {
        Ok(info) => Ok(info.is_dir),
        Err(AgentError::Status { .. } | AgentError::Decode(_)) => Ok(false),
        Err(e) => Err(unanswered(e)),
    }
}

/// `COPY` of `source` from the uploaded context to `dest`, with Docker's rules (see
/// `context`), through the agent's `POST /corral/untar`.
async fn copy_context(
    state: &Engine,
    id: &str,
    index: std::sync::Arc<context::Index>,
    source: &str,
    dest: &str,
    chown: Option<&str>,
    chmod: Option<u32>,
) -> Result<(), String> {
    let matches = index.find(source).map_err(|e| e.to_string())?;
    let dest_is_dir =
        !dest.ends_with('/') && matches.iter().any(|m| !m.dir) && is_dir(state, id, dest).await?;
    let batches = index
        .plan(source, &matches, dest, dest_is_dir)
        .map_err(|e| e.to_string())?;
    for batch in batches {
        untar(state, id, index.clone(), batch, chown, chmod).await?;
    }
    Ok(())
}

/// Streams one batch of context entries to the build sandbox's agent, which unpacks it.
async fn untar(
    state: &Engine,
    id: &str,
    index: std::sync::Arc<context::Index>,
    batch: context::Batch,
    chown: Option<&str>,
    chmod: Option<u32>,
) -> Result<(), String> {
    let dir = batch.dir.clone();
    let mut query = UntarQuery {
        dest: Some(dir.clone()),
        ..UntarQuery::default()
    };
    if let Some(c) = chown {
        let (u, g) = c.split_once(':').unwrap_or((c, ""));
        query.owner = Some(u.to_owned());
        query.group = Some(g.to_owned()).filter(|g| !g.is_empty());
    }
    query.mode = chmod.map(|m| format!("{m:o}"));
    // The tar is written as it is sent: a blocking task reads the archives into a channel
    // the request body streams from.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let r = index.write_batch(&batch, context::ChunkWriter::new(tx.clone()));
        if let Err(e) = &r {
            // Ends the body with an error, so the agent does not take a cut stream for whole.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        r
    });
    let body = RequestBody::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let sent = state.agents.untar(id, &query, body).await;
    let produced = producer
        .await
        .map_err(|e| format!("reading the build context failed: {e}"))?;
    match (sent, produced) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(AgentError::Status { body, .. }), _) => {
            let why = corral_agent_proto::client::error_message(&body)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(format!("could not copy into {dir}: {why}"))
        }
        (_, Err(e)) => Err(e.to_string()),
        (Err(e), Ok(())) => Err(unanswered(e)),
    }
}

/// Runs one `RUN` command in the build sandbox; its output goes to the log.
async fn run(
    state: &Engine,
    id: &str,
    cx: &Context,
    argv: &[String],
    build_args: &[(String, String)],
    log: &Log,
) -> Result<(), String> {
    let mut full: Vec<String> = Vec::new();
    if let Some(u) = cx
        .user
        .as_deref()
        .filter(|u| !matches!(*u, "root" | "0" | "0:0"))
    {
        full.extend([
            corral_core::agent::AGENT_PATH_IN_SANDBOX.to_owned(),
            "run-as".into(),
            u.to_owned(),
            "--".into(),
        ]);
    }
    full.extend(argv.iter().cloned());
    let mut envs: BTreeMap<String, String> = cx.env.iter().cloned().collect();
    for (k, v) in build_args {
        envs.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let request = RunRequest {
        argv: full,
        cwd: Some(cx.workdir.clone()),
        envs: Some(envs),
        timeout: Some(STEP_TIMEOUT_SECS),
    };
    // The agent streams the output as it comes (`{"output"}` lines, then `{"exitCode"}`),
    // so a long step shows its progress in the log.
    let mut frames = match state.agents.run(id, &request).await {
        Ok(frames) => frames,
        Err(AgentError::Status { status, body }) => {
            return Err(format!(
                "could not run ({status}): {}",
                corral_agent_proto::client::error_message(&body)
                    .as_deref()
                    .unwrap_or("agent error")
            ));
        }
        Err(e) => return Err(format!("the build sandbox did not answer: {e}")),
    };
    let mut logged = 0usize;
    let mut last_line = String::new();
    let mut end: Option<(i64, Option<String>)> = None;
    while let Some(frame) = frames.next().await {
        match frame.map_err(|e| format!("the build sandbox's output broke off: {e}"))? {
            RunFrame::Output { output: text } => {
                if let Some(l) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                    last_line = l.trim().chars().take(300).collect();
                }
                if logged < MAX_STEP_LOG {
                    log.write(&text);
                    logged += text.len();
                    if logged >= MAX_STEP_LOG {
                        log.line("\n[... output cut ...]");
                    }
                }
            }
            RunFrame::Exit { exit_code, error } => end = Some((exit_code, error)),
        }
    }
    log.end_line();
    let (code, error) = end.ok_or("the build sandbox stopped answering before the step ended")?;
    let why = match (error, last_line.is_empty()) {
        (Some(e), _) => format!(" ({e})"),
        (None, false) => format!(" ({last_line})"),
        (None, true) => String::new(),
    };
    match code {
        0 => Ok(()),
        code => Err(format!("returned a non-zero code: {code}{why}")),
    }
}

/// Creates a directory (and its parents) in the build sandbox, as root.
async fn folder(state: &Engine, id: &str, path: &str) -> Result<(), String> {
    let mut so_far = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        so_far.push('/');
        so_far.push_str(part);
        let query = FolderQuery {
            path: Some(so_far.clone()),
            mode: Some("755".into()),
        };
        match state.agents.mkdir(id, &query).await {
            Ok(()) => {}
            // An existing directory answers an error; a file in the way shows at the next step.
            Err(AgentError::Status { status, body }) if status.is_server_error() => {
                return Err(format!(
                    "could not create {so_far}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(AgentError::Status { .. }) => {}
            Err(e) => return Err(unanswered(e)),
        }
    }
    Ok(())
}

/// Writes a file in the build sandbox.
async fn upload(state: &Engine, id: &str, path: &str, content: &[u8]) -> Result<(), String> {
    match state.agents.upload(id, path, content).await {
        Ok(()) => Ok(()),
        Err(AgentError::Status { body, .. }) => Err(format!(
            "could not write {path}: {}",
            String::from_utf8_lossy(&body)
        )),
        Err(e) => Err(unanswered(e)),
    }
}

/// Sets a file's owner (`user[:group]`) and mode in the build sandbox.
async fn permissions(
    state: &Engine,
    id: &str,
    path: &str,
    chown: Option<&str>,
    mode: Option<u32>,
) -> Result<(), String> {
    if chown.is_none() && mode.is_none() {
        return Ok(());
    }
    let mut query = PermissionsQuery {
        path: Some(path.to_owned()),
        ..PermissionsQuery::default()
    };
    if let Some(c) = chown {
        let (u, g) = c.split_once(':').unwrap_or((c, ""));
        query.owner = Some(u.to_owned());
        query.group = Some(g.to_owned());
    }
    query.mode = mode.map(|m| format!("{m:o}"));
    match state.agents.permissions(id, &query).await {
        Ok(()) => Ok(()),
        Err(AgentError::Status { body, .. }) => Err(format!(
            "could not set the owner or mode of {path}: {}",
            String::from_utf8_lossy(&body)
        )),
        Err(e) => Err(unanswered(e)),
    }
}

/// A build step's message for an agent call that got no (whole) answer.
fn unanswered(e: AgentError) -> String {
    match e {
        AgentError::Body(e) => format!("the build sandbox's answer broke off: {e}"),
        AgentError::Status { .. } | AgentError::Decode(_) | AgentError::Invalid(_) => e.to_string(),
        e => format!("the build sandbox did not answer: {e}"),
    }
}

/// Whether a snapshot's build has ended (or it never builds).
pub async fn build_over(state: &Engine, id: &str) -> bool {
    match state.snapshots.get_snapshot(id).await {
        Ok(Some(s)) => !matches!(s.state, SnapshotState::Pending | SnapshotState::Building),
        _ => true,
    }
}

// ---- build snapshots and sandboxes built from Dockerfiles ------------------------------------

/// Where a build snapshot's Dockerfile is kept (so an interrupted build can run again).
fn dockerfile_path(state: &Engine, snapshot_id: &str) -> PathBuf {
    state
        .config
        .build_log_dir
        .join(format!("{snapshot_id}.Dockerfile"))
}

/// Where a build snapshot's uploaded context hashes are kept (a JSON list; absent: none).
fn context_path(state: &Engine, snapshot_id: &str) -> PathBuf {
    state
        .config
        .build_log_dir
        .join(format!("{snapshot_id}.context.json"))
}

/// The uploaded context hashes a build snapshot was recorded with.
async fn context_of(state: &Engine, snapshot_id: &str) -> Result<Vec<String>, EngineError> {
    match tokio::fs::read(context_path(state, snapshot_id)).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::bad_request(format!(
                "the build context list of snapshot {snapshot_id} is unreadable: {e}"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(EngineError::internal("reading a build's context list", &e)),
    }
}

/// Whether snapshot `id` is built from a Dockerfile (rather than pulled or committed).
pub fn is_build(state: &Engine, snapshot_id: &str) -> bool {
    dockerfile_path(state, snapshot_id).is_file()
}

/// Refuses what a build cannot do before anything is recorded: Dockerfiles that do not
/// parse, and uploaded context that is not there (a malformed hash, or no archive under it:
/// `BUILD_CONTEXT_MISSING`).
pub fn check(
    state: &Engine,
    dockerfile: &str,
    context_hashes: Option<&[String]>,
) -> Result<(), EngineError> {
    dockerfile::parse(dockerfile, &BTreeMap::new()).map_err(invalid)?;
    for hash in context_hashes.unwrap_or_default() {
        let why = match state.context_archive(hash) {
            None => "is not a build context hash (32 hex digits, as the SDK computes them)",
            Some(p) if !p.is_file() => "was not uploaded",
            Some(p) => {
                corral_s3::mark_used(&p);
                continue;
            }
        };
        return Err(EngineError::bad_request(format!(
            "build context {hash:?} {why}: upload it first (the SDK does this through \
             /api/object-storage/push-access)"
        ))
        .with_code("BUILD_CONTEXT_MISSING"));
    }
    Ok(())
}

/// Records snapshot `name`, to be built from `dockerfile` (`pending`) with the uploaded
/// context `context` (hashes), with the resources its build sandbox gets.
pub async fn record(
    state: &Engine,
    name: String,
    dockerfile: &str,
    context: &[String],
    resources: Resources,
) -> Result<Snapshot, EngineError> {
    let id = uuid::Uuid::new_v4().to_string();
    let now = crate::snapshots::now_ms();
    let snap = Snapshot {
        image_name: Some(corral_core::sandbox_snapshot_reference(&id)),
        id,
        name,
        state: SnapshotState::Pending,
        size: None,
        entrypoint: Vec::new(),
        cpu: resources.cpu,
        memory_gib: resources.memory_gib,
        disk_gib: resources.disk_gib,
        error_reason: None,
        general: false,
        created_at_ms: now,
        updated_at_ms: now,
        last_used_at_ms: None,
    };
    let path = dockerfile_path(state, &snap.id);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| EngineError::internal("creating the build dir", &e))?;
    }
    let hashes_path = context_path(state, &snap.id);
    if !context.is_empty() {
        let list = serde_json::to_vec(context)
            .map_err(|e| EngineError::internal("keeping the build context list", &e))?;
        tokio::fs::write(&hashes_path, list)
            .await
            .map_err(|e| EngineError::internal("keeping the build context list", &e))?;
    }
    tokio::fs::write(&path, dockerfile)
        .await
        .map_err(|e| EngineError::internal("keeping the Dockerfile", &e))?;
    if let Err(e) = crate::snapshots::insert(state, &snap).await {
        let _ = tokio::fs::remove_file(&path).await;
        let _ = tokio::fs::remove_file(&hashes_path).await;
        return Err(e);
    }
    Ok(snap)
}

/// Makes snapshot `id` active: builds it from its Dockerfile or pulls its image, unless it
/// is active already. When this process is doing that already, waits for it instead (and
/// fails with its reason when it failed).
pub async fn ensure_ready(state: &Engine, id: &str) -> Result<(), EngineError> {
    let mut waited = false;
    loop {
        let mut snap = state
            .snapshots
            .get_snapshot(id)
            .await?
            .ok_or_else(|| EngineError::bad_request(format!("snapshot {id} was deleted")))?;
        if snap.state == SnapshotState::Active {
            return Ok(());
        }
        if state.building.is_claimed(id) {
            waited = true;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        if waited
            && matches!(
                snap.state,
                SnapshotState::BuildFailed | SnapshotState::Error
            )
        {
            return Err(EngineError::bad_request(format!(
                "snapshot {} failed: {}",
                snap.name,
                snap.error_reason.unwrap_or_default()
            ))
            .with_code("BUILD_FAILED"));
        }
        let Some(_claim) = Claim::take(&state.building, id) else {
            continue;
        };
        return if is_build(state, id) {
            match tokio::fs::read_to_string(dockerfile_path(state, id)).await {
                Ok(c) => {
                    let hashes = context_of(state, id).await?;
                    build(state, &mut snap, &c, &hashes).await.map(|_| ())
                }
                Err(e) => Err(EngineError::bad_request(format!(
                    "the Dockerfile of snapshot {} is gone: {e}",
                    snap.name
                ))),
            }
        } else {
            crate::snapshots::pull(state, &mut snap).await.map(|_| ())
        };
    }
}

/// Removes a deleted snapshot's build files.
pub async fn forget(state: &Engine, snapshot_id: &str) {
    for p in [
        dockerfile_path(state, snapshot_id),
        context_path(state, snapshot_id),
        log_path(state, snapshot_id),
    ] {
        let _ = tokio::fs::remove_file(p).await;
    }
}

/// Restarts, in the background, the builds and pulls a previous server process left
/// unfinished.
pub async fn resume(state: &Engine) -> Result<(), EngineError> {
    for s in state.snapshots.list_snapshots().await? {
        if matches!(
            s.state,
            SnapshotState::Pending | SnapshotState::Pulling | SnapshotState::Building
        ) {
            tracing::warn!(snapshot = %s.name, "resuming a build or pull cut off by a server stop");
            let bg = state.clone();
            tokio::spawn(async move {
                let _ = ensure_ready(&bg, &s.id).await;
            });
        }
    }
    Ok(())
}

/// The name of the snapshot a sandbox build is built as: a digest of the Dockerfile, the
/// uploaded context (the set of hashes) and the build resources.
fn build_name(dockerfile: &str, context: &[String], resources: Resources) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(dockerfile.as_bytes());
    h.update(
        format!(
            "\0{}/{}/{}",
            resources.cpu, resources.memory_gib, resources.disk_gib
        )
        .as_bytes(),
    );
    let hashes: std::collections::BTreeSet<&str> = context.iter().map(String::as_str).collect();
    // Nothing added without context: names of earlier builds stay valid.
    for hash in hashes {
        h.update(b"\0context:");
        h.update(hash.as_bytes());
    }
    format!("build-{}", &hex::encode(h.finalize())[..16])
}

/// The snapshot a Dockerfile that needs a build is built as: one per Dockerfile, uploaded
/// context and build resources, so the same image is built once; recorded `pending` when new.
pub async fn build_snapshot(
    state: &Engine,
    dockerfile: &str,
    context: &[String],
    resources: Resources,
) -> Result<Snapshot, EngineError> {
    let name = build_name(dockerfile, context, resources);
    if let Some(s) = state.snapshots.get_snapshot(&name).await? {
        return Ok(s);
    }
    match record(state, name.clone(), dockerfile, context, resources).await {
        Ok(s) => Ok(s),
        // Recorded by a concurrent request meanwhile.
        Err(e) => state.snapshots.get_snapshot(&name).await?.ok_or(e),
    }
}

/// The snapshot a new sandbox must wait for, when it must: the build of a Dockerfile that is
/// more than `FROM` (or has uploaded context), the image of a bare `FROM <image>` not stored
/// yet, or a snapshot named in the request that is still pending, pulling or building.
/// `None`: the sandbox can start at once (a stored image, an active snapshot, `host`).
pub async fn snapshot_to_prepare(
    state: &Engine,
    sandbox: &corral_core::Sandbox,
    build_info: Option<&Value>,
) -> Result<Option<Snapshot>, EngineError> {
    let dockerfile = build_info.and_then(|b| b.get("dockerfileContent")?.as_str());
    let Some(dockerfile) = dockerfile else {
        if build_info.is_some() || sandbox.snapshot == crate::DEFAULT_SNAPSHOT {
            return Ok(None);
        }
        let snap = state.snapshots.get_snapshot(&sandbox.snapshot).await?;
        return Ok(snap.filter(|s| {
            matches!(
                s.state,
                SnapshotState::Pending | SnapshotState::Pulling | SnapshotState::Building
            )
        }));
    };
    let context: Option<Vec<String>> = match build_info.and_then(|b| b.get("contextHashes")) {
        None | Some(Value::Null) => None,
        Some(c) => Some(serde_json::from_value(c.clone()).map_err(|_| {
            EngineError::bad_request("buildInfo.contextHashes must be a list of strings")
        })?),
    };
    let context = context.filter(|c| !c.is_empty());
    if context.is_some() || needs_build(dockerfile) {
        check(state, dockerfile, context.as_deref())?;
        return build_snapshot(
            state,
            dockerfile,
            context.as_deref().unwrap_or_default(),
            sandbox.resources,
        )
        .await
        .map(Some);
    }
    // A bare `FROM <image>`: a stored image starts at once (a new snapshot of it is made
    // active on the way, from the store, without any registry contact); one to pull is
    // pulled in the background, its progress in the snapshot's log, as is one whose
    // snapshot a pull or build is at work on.
    let (image, entrypoint) = crate::snapshots::image_of_dockerfile(dockerfile)?;
    let snap = crate::snapshots::image_snapshot(state, &image, entrypoint).await?;
    let stored = !matches!(snap.state, SnapshotState::Pulling | SnapshotState::Building)
        && state.images.resolve(&image).await?.is_some();
    Ok((!stored).then_some(snap))
}

/// `POST /api/sandbox` whose snapshot must be built or pulled first: the sandbox is recorded
/// `pending_build` and the answer goes at once (the SDK then streams the snapshot's log);
/// in the background the snapshot is made ready, then the sandbox starts from it
/// (`building_snapshot` → `creating` → `started`, or `build_failed` with the reason).
pub async fn create_sandbox(
    state: &Engine,
    mut sandbox: corral_core::Sandbox,
    snapshot: Snapshot,
    user_requested: bool,
) -> Result<corral_core::Sandbox, EngineError> {
    sandbox.snapshot = snapshot.name;
    if !user_requested {
        // The image's user, known once it is ready.
        sandbox.user = String::new();
    }
    sandbox.state = corral_core::SandboxState::PendingBuild;
    state.store.insert(&sandbox).await?;
    let bg = state.clone();
    let id = sandbox.id.clone();
    tokio::spawn(async move { finish(bg, id).await });
    Ok(sandbox)
}

/// Builds (or waits for) the snapshot of a `pending_build` sandbox, then starts it.
pub async fn finish(state: Engine, id: String) {
    if let Err(e) = try_finish(&state, &id).await {
        tracing::warn!(sandbox = %id, error = %e.message, "building a sandbox's image failed");
    }
}

async fn try_finish(state: &Engine, id: &str) -> Result<(), EngineError> {
    use crate::lifecycle::save;
    use corral_core::SandboxState as S;
    // The sandbox's lock is not held during the build, so a delete meanwhile is not kept
    // waiting; the record is read again afterwards.
    let snapshot = {
        let _guard = state.locks.lock(id).await;
        let Some(mut s) = state.store.get(id).await? else {
            return Ok(());
        };
        if !matches!(s.state, S::PendingBuild | S::BuildingSnapshot) {
            return Ok(());
        }
        save(state, &mut s, S::BuildingSnapshot).await?;
        s.snapshot
    };
    let snap = state.snapshots.get_snapshot(&snapshot).await?;
    let built = match &snap {
        Some(snap) => ensure_ready(state, &snap.id).await,
        None => Err(EngineError::bad_request(format!(
            "snapshot {snapshot} was deleted"
        ))),
    };
    let entrypoint = snap
        .as_ref()
        .map(|s| s.entrypoint.clone())
        .filter(|e| !e.is_empty());
    let image = snap.and_then(|s| s.image_name).unwrap_or_default();
    let _guard = state.locks.lock(id).await;
    let Some(mut s) = state.store.get(id).await? else {
        return Ok(());
    };
    if s.state != S::BuildingSnapshot {
        // Deleted (or being deleted) while it was building.
        return Ok(());
    }
    let info = match built {
        Ok(()) => state.images.resolve(&image).await?,
        Err(e) => {
            s.error_reason = Some(e.message.clone());
            save(state, &mut s, S::BuildFailed).await?;
            return Err(e);
        }
    };
    let Some(info) = info else {
        s.error_reason = Some(format!("the image of snapshot {} is gone", s.snapshot));
        save(state, &mut s, S::BuildFailed).await?;
        return Ok(());
    };
    if s.user.is_empty() {
        s.user = info.user.clone().unwrap_or_else(|| "root".into());
    }
    save(state, &mut s, S::Creating).await?;
    let mut spec = crate::lifecycle::spec_of(&s);
    spec.image = info.reference;
    spec.entrypoint = entrypoint;
    crate::lifecycle::start_recorded(state, &mut s, &spec).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uploaded_context_is_part_of_a_build_s_identity() {
        let r = Resources::default();
        let df = "FROM x\nCOPY a /a\n";
        let (h1, h2) = ("0".repeat(32), "f".repeat(32));
        let plain = build_name(df, &[], r);
        // Without context, the name is what it always was (earlier builds are reused).
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(df.as_bytes());
        h.update(format!("\0{}/{}/{}", r.cpu, r.memory_gib, r.disk_gib).as_bytes());
        assert_eq!(plain, format!("build-{}", &hex::encode(h.finalize())[..16]));
        let one = build_name(df, std::slice::from_ref(&h1), r);
        let both = build_name(df, &[h1.clone(), h2.clone()], r);
        assert_ne!(plain, one);
        assert_ne!(one, both);
        assert_ne!(one, build_name(df, std::slice::from_ref(&h2), r));
        // The same set in any order (or repeated) is the same build.
        assert_eq!(both, build_name(df, &[h2.clone(), h1.clone(), h2], r));
    }
}
