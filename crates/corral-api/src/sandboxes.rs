//! `/api/sandbox` routes: create, get, list, delete, toolbox-proxy-url.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_core::{
    CODE_LANGUAGE_LABEL, CodeLanguage, DesiredState, ListQuery, Resources, Sandbox, SandboxSpec,
    SandboxState,
};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::state::AppState;
use crate::wire::{CreateSandbox, ListResponse, SandboxDto, UrlResponse};

/// The image sandboxes get when the request names none.
pub const DEFAULT_SNAPSHOT: &str = "host";
const DEFAULT_USER: &str = "daytona";
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

fn validate_name(name: &str) -> Result<(), ApiError> {
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
    if req.build_info.is_some() {
        return Err(ApiError::bad_request(
            "creating sandboxes from images is not supported yet; omit the image to use the default 'host' snapshot",
        ));
    }
    if req.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("volumes are not supported yet"));
    }
    if req.gpu.is_some_and(|g| g > 0) {
        return Err(ApiError::bad_request(
            "GPUs are not available on this server",
        ));
    }
    if req.kvm == Some(true) {
        return Err(ApiError::bad_request("KVM is not available on this server"));
    }
    let snapshot = req.snapshot.unwrap_or_else(|| DEFAULT_SNAPSHOT.into());
    if snapshot != DEFAULT_SNAPSHOT {
        return Err(ApiError::bad_request(format!(
            "snapshot {snapshot:?} not found; available: {DEFAULT_SNAPSHOT:?}"
        ))
        .with_code("SNAPSHOT_NOT_FOUND"));
    }
    let labels = req.labels.unwrap_or_default();
    if let Some(lang) = labels.get(CODE_LANGUAGE_LABEL)
        && CodeLanguage::from_label(lang).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "label {CODE_LANGUAGE_LABEL} must be python, javascript or typescript, got {lang:?}"
        )));
    }
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
        network_block_all: req.network_block_all.unwrap_or(false),
        network_allow_list: req.network_allow_list,
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
    })
}

/// `POST /api/sandbox`: records the sandbox, starts it, answers `started`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<Json<SandboxDto>, ApiError> {
    let started = Instant::now();
    let mut sandbox = new_sandbox(&state, req)?;
    // Recorded first: the store is the source of truth, so a crash during start leaves a
    // record to reconcile rather than an orphan.
    state.store.insert(&sandbox).await?;
    let spec = SandboxSpec {
        id: sandbox.id.clone(),
        image: sandbox.snapshot.clone(),
        user: sandbox.user.clone(),
        env: sandbox.env.clone(),
        resources: sandbox.resources,
    };
    if let Err(e) = state.runtime.create(&spec).await {
        let err = ApiError::from(e);
        if err.status.is_client_error() {
            state.store.remove(&sandbox.id).await?;
        } else {
            sandbox.state = SandboxState::Error;
            sandbox.error_reason = Some("the sandbox failed to start; see the server log".into());
            sandbox.updated_at = OffsetDateTime::now_utc();
            state.store.update(&sandbox).await?;
        }
        return Err(err);
    }
    sandbox.state = SandboxState::Started;
    sandbox.updated_at = OffsetDateTime::now_utc();
    state.store.update(&sandbox).await?;
    metrics::histogram!("corral_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, "sandbox created");
    Ok(Json(SandboxDto::from_sandbox(
        &sandbox,
        &state.toolbox_url(&headers),
        true,
    )))
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

/// `DELETE /api/sandbox/{idOrName}`: kills everything in it and removes every trace.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    let started = Instant::now();
    let mut s = find(&state, &id_or_name).await?;
    s.state = SandboxState::Destroying;
    s.desired_state = DesiredState::Destroyed;
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(&s).await?;
    state.runtime.destroy(&s.id).await?;
    state.store.remove(&s.id).await?;
    s.state = SandboxState::Destroyed;
    metrics::histogram!("corral_sandbox_delete_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox deleted");
    Ok(Json(SandboxDto::from_sandbox(
        &s,
        &state.toolbox_url(&headers),
        true,
    )))
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
