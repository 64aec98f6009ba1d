//! `/api/sandbox` routes: create, get, list, delete, toolbox-proxy-url.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_core::transitions::Operation;
use corral_core::{
    CODE_LANGUAGE_LABEL, CodeLanguage, DesiredState, ListQuery, Resources, Sandbox, SandboxState,
};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::lifecycle;
use crate::state::AppState;
use crate::wire::{CreateSandbox, ListResponse, SandboxDto, UrlResponse};

/// The image sandboxes get when the request names none.
pub const DEFAULT_SNAPSHOT: &str = "host";
pub(crate) const DEFAULT_USER: &str = "daytona";
const DEFAULT_AUTO_STOP: i64 = 15;
const DEFAULT_AUTO_ARCHIVE: i64 = 10080;
const DEFAULT_AUTO_DELETE: i64 = -1;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 200;

fn not_found(id_or_name: &str) -> ApiError {
    ApiError::not_found(format!("Sandbox with ID or name {id_or_name} not found"))
        .with_code("SANDBOX_NOT_FOUND")
}

/// Finds a sandbox by id or name, or answers 404.
pub async fn find(state: &AppState, id_or_name: &str) -> Result<Sandbox, ApiError> {
    state
        .store
        .get(id_or_name)
        .await?
        .ok_or_else(|| not_found(id_or_name))
}

pub(crate) fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name must be 1-255 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// The `code-toolbox-language` label, when present, must name a language the SDK accepts.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    match labels.get(CODE_LANGUAGE_LABEL) {
        Some(lang) if CodeLanguage::from_label(lang).is_none() => {
            Err(ApiError::bad_request(format!(
                "label {CODE_LANGUAGE_LABEL} must be python, javascript or typescript, got {lang:?}"
            )))
        }
        _ => Ok(()),
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid environment variable {k:?}: names must be non-empty without '=' and nothing may contain NUL"
            )));
        }
    }
    Ok(())
}

fn resource(value: Option<i64>, default: u32, max: u32, what: &str) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v <= i64::from(max) => Ok(v as u32),
        Some(v) => Err(ApiError::bad_request(format!(
            "{what} must be between 1 and {max}, got {v}"
        ))),
    }
}

/// Checks a create request and turns it into a new sandbox record (state `creating`).
fn new_sandbox(state: &AppState, req: CreateSandbox) -> Result<Sandbox, ApiError> {
    let volumes = crate::volumes::parse_mounts(req.volumes.as_deref().unwrap_or_default())?;
    if req.gpu.is_some_and(|g| g > 0) {
        return Err(ApiError::bad_request(
            "GPUs are not available on this server",
        ));
    }
    if req.kvm == Some(true) {
        return Err(ApiError::bad_request("KVM is not available on this server"));
    }
    // Images and other snapshots are resolved by `create` (see `snapshots::source_for`).
    let snapshot = req.snapshot.unwrap_or_else(|| DEFAULT_SNAPSHOT.into());
    let network_block_all = req.network_block_all.unwrap_or(false);
    let network_allow_list = crate::network::checked_allow_list(
        req.network_allow_list,
        req.domain_allow_list.as_deref(),
    )?;
    let labels = req.labels.unwrap_or_default();
    validate_labels(&labels)?;
    let env = req.env.unwrap_or_default();
    validate_env(&env)?;
    let defaults = Resources::default();
    let resources = Resources {
        cpu: resource(req.cpu, defaults.cpu, 64, "cpu")?,
        gpu: 0,
        memory_gib: resource(req.memory, defaults.memory_gib, 1024, "memory")?,
        disk_gib: resource(req.disk, defaults.disk_gib, 10240, "disk")?,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let name = match req.name {
        Some(n) => {
            validate_name(&n)?;
            n
        }
        None => id.clone(),
    };
    let user = req
        .user
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_USER.into());
    let now = OffsetDateTime::now_utc();
    Ok(Sandbox {
        id,
        name,
        organization_id: state.config.organization_id.clone(),
        snapshot,
        user,
        env,
        labels,
        public: req.public.unwrap_or(false),
        network_block_all,
        network_allow_list,
        resources,
        state: SandboxState::Creating,
        desired_state: DesiredState::Started,
        error_reason: None,
        auto_stop_interval: req.auto_stop_interval.unwrap_or(DEFAULT_AUTO_STOP),
        auto_archive_interval: req.auto_archive_interval.unwrap_or(DEFAULT_AUTO_ARCHIVE),
        auto_delete_interval: req.auto_delete_interval.unwrap_or(DEFAULT_AUTO_DELETE),
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        stopped_at: None,
        volumes,
        signing_key: None,
    })
}

/// The wire form of a sandbox, with activity not yet flushed to the store.
pub(crate) fn dto(
    state: &AppState,
    headers: &HeaderMap,
    s: &Sandbox,
    with_env: bool,
) -> SandboxDto {
    let mut d = SandboxDto::from_sandbox(s, &state.toolbox_url(headers), with_env);
    d.last_activity_at = crate::wire::timestamp(state.activity.last(s));
    d
}

/// Gives the new sandbox a running pooled sandbox when its shape matches the pool's.
async fn claim_pooled(
    state: &AppState,
    sandbox: &mut Sandbox,
) -> Result<Option<Sandbox>, ApiError> {
    let shape = crate::pool::pooled_spec(String::new());
    let matches = sandbox.snapshot == shape.image
        && sandbox.user == shape.user
        && sandbox.env.is_empty()
        && sandbox.resources == shape.resources
        && sandbox.egress() == shape.egress
        && sandbox.volumes.is_empty();
    if !matches {
        return Ok(None);
    }
    while let Some(id) = state.pool.take() {
        if !state.runtime.is_running(&id) {
            state.runtime.destroy(&id).await?;
            continue;
        }
        let fresh_name = sandbox.name == sandbox.id;
        sandbox.id = id;
        if fresh_name {
            sandbox.name = sandbox.id.clone();
        }
        sandbox.state = SandboxState::Started;
        if let Err(e) = state.store.insert(sandbox).await {
            // E.g. a taken name: the pooled sandbox has no owner now; remove it.
            state.runtime.destroy(&sandbox.id).await?;
            return Err(e.into());
        }
        tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, "sandbox created from the warm pool");
        return Ok(Some(sandbox.clone()));
    }
    Ok(None)
}

/// `POST /api/sandbox`: records the sandbox, starts it, answers `started`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<Json<SandboxDto>, ApiError> {
    let started = Instant::now();
    let user_requested = req.user.as_ref().is_some_and(|u| !u.is_empty());
    let build_info = req.build_info.clone();
    let mut sandbox = new_sandbox(&state, req)?;
    // Held until the record is stored: a volume cannot be deleted in between.
    let volumes_guard = crate::volumes::resolve_mounts(&state, &mut sandbox.volumes).await?;
    if let Some(snap) =
        crate::builds::snapshot_to_prepare(&state, &sandbox, build_info.as_ref()).await?
    {
        // Built or pulled first: answered now, started when the snapshot is ready.
        let r =
            crate::builds::create_sandbox(state.clone(), headers, sandbox, snap, user_requested)
                .await;
        drop(volumes_guard);
        return r;
    }
    if build_info.is_some() || sandbox.snapshot != DEFAULT_SNAPSHOT {
        return create_from_image(
            state,
            headers,
            sandbox,
            build_info,
            user_requested,
            volumes_guard,
        )
        .await;
    }
    let claim_started = Instant::now();
    if let Some(claimed) = claim_pooled(&state, &mut sandbox).await? {
        metrics::histogram!("corral_create_phase_seconds", "phase" => "claim")
            .record(claim_started.elapsed().as_secs_f64());
        metrics::histogram!("corral_sandbox_create_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("corral_sandbox_create_total", "path" => "pool").increment(1);
        return Ok(Json(dto(&state, &headers, &claimed, true)));
    }
    metrics::counter!("corral_sandbox_create_total", "path" => "cold").increment(1);
    let _guard = state.locks.lock(&sandbox.id).await;
    // Recorded first: the store is the source of truth, so a crash during start leaves a
    // record to reconcile rather than an orphan.
    let t = Instant::now();
    state.store.insert(&sandbox).await?;
    drop(volumes_guard);
    metrics::histogram!("corral_create_phase_seconds", "phase" => "record")
        .record(t.elapsed().as_secs_f64());
    let spec = lifecycle::spec_of(&sandbox);
    start_recorded(&state, &mut sandbox, &spec).await?;
    metrics::histogram!("corral_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, "sandbox created");
    Ok(Json(dto(&state, &headers, &sandbox, true)))
}

/// Starts a sandbox just recorded and records the outcome: `started`; or, when the start
/// failed, the record removed with every trace (a client error: nothing of it stays) or
/// `error`, recoverable, with its files kept (a host failure; see the server log).
pub(crate) async fn start_recorded(
    state: &AppState,
    sandbox: &mut Sandbox,
    spec: &corral_core::SandboxSpec,
) -> Result<(), ApiError> {
    if let Err(e) = state.runtime.start(spec).await {
        let err = ApiError::from(e);
        if err.status.is_client_error() {
            state.runtime.destroy(&sandbox.id).await?;
            state.store.remove(&sandbox.id).await?;
        } else {
            sandbox.state = SandboxState::Error;
            sandbox.error_reason = Some("the sandbox failed to start; see the server log".into());
            sandbox.updated_at = OffsetDateTime::now_utc();
            state.store.update(sandbox).await?;
        }
        return Err(err);
    }
    sandbox.state = SandboxState::Started;
    sandbox.updated_at = OffsetDateTime::now_utc();
    state.store.update(sandbox).await?;
    Ok(())
}

/// Creates a sandbox from a ready OCI snapshot or stored image (see
/// `builds::snapshot_to_prepare` for the others) and starts it over the image's layers.
async fn create_from_image(
    state: AppState,
    headers: HeaderMap,
    mut sandbox: Sandbox,
    build_info: Option<serde_json::Value>,
    user_requested: bool,
    volumes_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> Result<Json<SandboxDto>, ApiError> {
    let started = Instant::now();
    let _guard = state.locks.lock(&sandbox.id).await;
    let requested = (sandbox.snapshot != DEFAULT_SNAPSHOT).then(|| sandbox.snapshot.clone());
    let source =
        crate::snapshots::source_for(&state, requested.as_deref(), build_info.as_ref()).await;
    let (snapshot, image, image_user, entrypoint) = match source? {
        crate::snapshots::Source::Image {
            snapshot,
            image,
            user,
            entrypoint,
        } => (snapshot, image, user, entrypoint),
        crate::snapshots::Source::Host => (
            DEFAULT_SNAPSHOT.to_owned(),
            DEFAULT_SNAPSHOT.to_owned(),
            None,
            None,
        ),
    };
    sandbox.snapshot = snapshot;
    if !user_requested && image != DEFAULT_SNAPSHOT {
        // Daytona's default user rarely exists in an image: run as the image's user.
        sandbox.user = image_user.unwrap_or_else(|| "root".into());
    }
    sandbox.state = SandboxState::Creating;
    sandbox.updated_at = OffsetDateTime::now_utc();
    state.store.insert(&sandbox).await?;
    drop(volumes_guard);
    let mut spec = lifecycle::spec_of(&sandbox);
    spec.image = image;
    spec.entrypoint = entrypoint;
    start_recorded(&state, &mut sandbox, &spec).await?;
    metrics::histogram!("corral_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("corral_sandbox_create_total", "path" => "image").increment(1);
    tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, snapshot = %sandbox.snapshot, "sandbox created from an image");
    Ok(Json(dto(&state, &headers, &sandbox, true)))
}

/// `GET /api/sandbox/{idOrName}`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let s = find(&state, &id_or_name).await?;
    Ok(Json(SandboxDto::from_sandbox(
        &s,
        &state.toolbox_url(&headers),
        true,
    )))
}

/// `GET /api/sandbox?labels=<json>&states=..&limit=..&cursor=..`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Json<ListResponse>, ApiError> {
    let labels: BTreeMap<String, String> = match query.get("labels") {
        None | Some("") => BTreeMap::new(),
        Some(json) => serde_json::from_str(json).map_err(|_| {
            ApiError::bad_request(
                "labels must be a JSON object of string values, e.g. {\"team\":\"a\"}",
            )
        })?,
    };
    let mut states = Vec::new();
    for s in query.all("states") {
        states.push(
            s.parse::<SandboxState>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be between 1 and {MAX_PAGE}"
                )));
            }
        },
    };
    let cursor = query
        .get("cursor")
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    if let Some(c) = &cursor
        && c.parse::<u64>().is_err()
    {
        return Err(ApiError::bad_request("invalid cursor"));
    }
    let page = state
        .store
        .list(&ListQuery {
            labels,
            states,
            limit,
            cursor,
        })
        .await?;
    let url = state.toolbox_url(&headers);
    Ok(Json(ListResponse {
        items: page
            .items
            .iter()
            .map(|s| SandboxDto::from_sandbox(s, &url, false))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Finds a sandbox and takes its lock, re-reading it under the lock.
pub(crate) async fn locked(
    state: &AppState,
    id_or_name: &str,
) -> Result<(Sandbox, tokio::sync::OwnedMutexGuard<()>), ApiError> {
    let s = find(state, id_or_name).await?;
    let guard = state.locks.lock(&s.id).await;
    let s = state
        .store
        .get(&s.id)
        .await?
        .ok_or_else(|| not_found(id_or_name))?;
    Ok((s, guard))
}

/// `DELETE /api/sandbox/{idOrName}`: answers `destroying` once that is recorded; the
/// teardown (kill everything, remove every trace and the record) finishes in the background,
/// after which the sandbox is gone (404), as the SDK's `delete(wait=True)` expects.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let (s, guard) = locked(&state, &id_or_name).await?;
    let s = lifecycle::delete_in_background(&state, s, guard).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/start`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    lifecycle::start(&state, &mut s).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/stop`.
pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    // From `error` too: stop ends whatever is left and leaves a clean stopped sandbox.
    lifecycle::stop(&state, &mut s).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/archive`.
pub async fn archive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    lifecycle::archive(&state, &mut s).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/recover?skipStart=`: brings an errored sandbox back.
pub async fn recover(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Json<SandboxDto>, ApiError> {
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    let skip_start = query.get("skipStart") == Some("true");
    let op = if skip_start {
        Operation::RecoverStopped
    } else {
        Operation::Recover
    };
    let Some(run) = lifecycle::plan(&s, s.state, op)? else {
        return Ok(Json(dto(&state, &headers, &s, true)));
    };
    if skip_start {
        lifecycle::begin(&state, &mut s, &run).await?;
        state.runtime.stop(&s.id).await?;
        s.error_reason = None;
        s.stopped_at = Some(OffsetDateTime::now_utc());
        lifecycle::save(&state, &mut s, run.success).await?;
    } else {
        // Ends whatever is left, then starts it as `start` does from `error`.
        state.runtime.stop(&s.id).await?;
        lifecycle::start(&state, &mut s).await?;
    }
    Ok(Json(dto(&state, &headers, &s, true)))
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct LabelsBody {
    labels: BTreeMap<String, String>,
}

/// `PUT /api/sandbox/{idOrName}/labels`: replaces every label.
pub async fn replace_labels(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
    JsonBody(body): JsonBody<LabelsBody>,
) -> Result<Json<LabelsBody>, ApiError> {
    validate_labels(&body.labels)?;
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    s.labels = body.labels;
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(&s).await?;
    Ok(Json(LabelsBody { labels: s.labels }))
}

/// Which lifecycle timer a `POST /sandbox/{id}/auto*/{minutes}` sets.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    Stop,
    Archive,
    Delete,
}

fn parse_minutes(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<f64>()
        .ok()
        .filter(|m| m.is_finite() && m.fract() == 0.0 && m.abs() < 1e9)
        .map(|m| m as i64)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "interval must be a whole number of minutes, got {raw:?}"
            ))
        })
}

type TimerPath = Path<(String, String)>;

/// `POST /api/sandbox/{idOrName}/autostop/{minutes}` (0 = never).
pub async fn autostop(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((id, m)): TimerPath,
) -> Result<Json<SandboxDto>, ApiError> {
    set_timer(s, h, id, m, Timer::Stop).await
}

/// `POST /api/sandbox/{idOrName}/autoarchive/{minutes}` (0 = the maximum, 30 days).
pub async fn autoarchive(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((id, m)): TimerPath,
) -> Result<Json<SandboxDto>, ApiError> {
    set_timer(s, h, id, m, Timer::Archive).await
}

/// `POST /api/sandbox/{idOrName}/autodelete/{minutes}` (negative = never, 0 = on stop).
pub async fn autodelete(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((id, m)): TimerPath,
) -> Result<Json<SandboxDto>, ApiError> {
    set_timer(s, h, id, m, Timer::Delete).await
}

async fn set_timer(
    state: AppState,
    headers: HeaderMap,
    id_or_name: String,
    raw: String,
    timer: Timer,
) -> Result<Json<SandboxDto>, ApiError> {
    let minutes = parse_minutes(&raw)?;
    match timer {
        Timer::Stop | Timer::Archive if minutes < 0 => {
            return Err(ApiError::bad_request("interval must be 0 or more minutes"));
        }
        _ => {}
    }
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    match timer {
        Timer::Stop => s.auto_stop_interval = minutes,
        Timer::Archive => s.auto_archive_interval = minutes,
        Timer::Delete => s.auto_delete_interval = minutes.max(-1),
    }
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(&s).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/resize` body.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ResizeBody {
    cpu: Option<i64>,
    memory: Option<i64>,
    disk: Option<i64>,
}

/// `POST /api/sandbox/{idOrName}/resize`: new CPU and memory apply at once (also to a
/// running sandbox); disk may only grow, and only while the sandbox is stopped.
pub async fn resize(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    JsonBody(body): JsonBody<ResizeBody>,
) -> Result<Json<SandboxDto>, ApiError> {
    if body.cpu.is_none() && body.memory.is_none() && body.disk.is_none() {
        return Err(ApiError::bad_request(
            "give at least one of cpu, memory, disk",
        ));
    }
    let (mut s, _guard) = locked(&state, &id_or_name).await?;
    let mut r = s.resources;
    r.cpu = resource(body.cpu, r.cpu, 64, "cpu")?;
    r.memory_gib = resource(body.memory, r.memory_gib, 1024, "memory")?;
    let disk = resource(body.disk, r.disk_gib, 10240, "disk")?;
    if disk != r.disk_gib {
        if disk < r.disk_gib {
            return Err(ApiError::bad_request("disk can only grow"));
        }
        if state.runtime.is_running(&s.id) {
            return Err(ApiError::bad_request("stop the sandbox to resize its disk")
                .with_code("SANDBOX_NOT_STOPPED"));
        }
        r.disk_gib = disk;
    }
    state.runtime.resize(&s.id, &r).await?;
    s.resources = r;
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(&s).await?;
    Ok(Json(dto(&state, &headers, &s, true)))
}

/// `POST /api/sandbox/{id}/last-activity`: counts as activity for auto-stop.
pub async fn last_activity(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let s = find(&state, &id_or_name).await?;
    state.activity.touch(&s.id);
    Ok(axum::http::StatusCode::CREATED)
}

/// `GET /api/sandbox/{id}/toolbox-proxy-url`.
pub async fn toolbox_proxy_url(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<UrlResponse>, ApiError> {
    find(&state, &id_or_name).await?;
    Ok(Json(UrlResponse {
        url: state.toolbox_url(&headers),
    }))
}
