//! `/api/sandbox` routes: parse the request, make one engine call, answer the DTO.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_core::{
    CODE_LANGUAGE_LABEL, CodeLanguage, DesiredState, ListQuery, Resources, Sandbox, SandboxState,
};
use corral_engine::ops::resource;
use corral_engine::{Op, Resize, Timer};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::state::AppState;
use crate::wire::{CreateSandbox, ListResponse, SandboxDto, UrlResponse};

pub use corral_engine::sandboxes::{DEFAULT_SNAPSHOT, DEFAULT_USER, find, validate_name};
const DEFAULT_AUTO_STOP: i64 = 15;
const DEFAULT_AUTO_ARCHIVE: i64 = 10080;
const DEFAULT_AUTO_DELETE: i64 = -1;
pub(crate) const DEFAULT_PAGE: u32 = 100;
pub(crate) const MAX_PAGE: u32 = 200;

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

/// Whether a JSON value asks for something: not null, an empty string, list or object.
fn is_set(v: Option<&serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !s.trim().is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn nonempty(s: Option<&str>) -> bool {
    s.is_some_and(|s| !s.trim().is_empty())
}

/// Refuses, with a 400 naming the field, what the SDK may ask for on create and this server
/// does not do, rather than create a sandbox without it.
fn refuse_unsupported(req: &CreateSandbox) -> Result<(), ApiError> {
    let refuse = |field: &str, why: &str| {
        Err(ApiError::bad_request(format!("{field}: {why}")).with_code("UNSUPPORTED_FIELD"))
    };
    if req.gpu.is_some_and(|g| g > 0) {
        return Err(ApiError::bad_request(
            "GPUs are not available on this server",
        ));
    }
    if is_set(req.gpu_type.as_ref()) {
        return refuse("gpuType", "GPUs are not available on this server");
    }
    if req.kvm == Some(true) {
        return Err(ApiError::bad_request("KVM is not available on this server"));
    }
    if req.spot == Some(true) {
        return refuse(
            "spot",
            "spot sandboxes are not offered: every sandbox here is regular",
        );
    }
    if let Some(t) = req.target.as_deref().filter(|t| !t.is_empty())
        && t != crate::wire::TARGET
    {
        return refuse(
            "target",
            &format!(
                "this server has one target, {:?}, not {t:?} (unset the SDK's target or use {:?})",
                crate::wire::TARGET,
                crate::wire::TARGET
            ),
        );
    }
    if nonempty(req.outbound_proxy_url.as_deref()) {
        return refuse(
            "outboundProxyUrl",
            "routing a sandbox's traffic through a proxy is not supported yet; use \
             networkAllowList to limit egress",
        );
    }
    if nonempty(req.otel_endpoint_override.as_deref()) {
        return refuse(
            "otelEndpointOverride",
            "this server does not export sandbox telemetry to OpenTelemetry",
        );
    }
    if req.auto_archive_interval.is_some_and(|m| m < 0) {
        return refuse(
            "autoArchiveInterval",
            "must be 0 (the maximum) or more minutes",
        );
    }
    if req.auto_pause_interval.is_some_and(|m| m < 0) {
        return refuse("autoPauseInterval", "must be 0 (never) or more minutes");
    }
    if req.queue_timeout.is_some_and(|m| m < 1) {
        return refuse("queueTimeout", "must be a positive number of minutes");
    }
    if nonempty(req.linked_sandbox.as_deref()) {
        return refuse(
            "linkedSandbox",
            "linked sandboxes (a local network between sandboxes) are not supported",
        );
    }
    if is_set(req.secrets.as_ref()) {
        return refuse(
            "secrets",
            "secrets are not supported yet; pass values in env (they are then visible \
             inside the sandbox)",
        );
    }
    Ok(())
}

/// The `order` query parameter (`asc` or `desc`, any case) as "descending"; `default` when it
/// is absent or empty.
pub(crate) fn descending(query: &QueryPairs, default: bool) -> Result<bool, ApiError> {
    match query.get("order").filter(|o| !o.is_empty()) {
        None => Ok(default),
        Some(o) if o.eq_ignore_ascii_case("asc") => Ok(false),
        Some(o) if o.eq_ignore_ascii_case("desc") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "order must be asc or desc, got {other:?}"
        ))),
    }
}

/// Checks a create request and turns it into a new sandbox record (state `creating`).
fn new_sandbox(state: &AppState, req: CreateSandbox) -> Result<Sandbox, ApiError> {
    refuse_unsupported(&req)?;
    let volumes = crate::volumes::parse_mounts(req.volumes.as_deref().unwrap_or_default())?;
    // Images and other snapshots are resolved by `create` (see `snapshots::source_for`).
    let snapshot = req.snapshot.unwrap_or_else(|| DEFAULT_SNAPSHOT.into());
    let network_block_all = req.network_block_all.unwrap_or(false);
    let network_allow_list = corral_engine::ops::checked_allow_list(
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
        auto_archive_interval: corral_engine::reconciler::resolve_auto_archive(
            req.auto_archive_interval.unwrap_or(DEFAULT_AUTO_ARCHIVE),
        ),
        auto_delete_interval: req.auto_delete_interval.unwrap_or(DEFAULT_AUTO_DELETE),
        auto_pause_interval: req.auto_pause_interval.unwrap_or(0),
        auto_destroy_at: corral_engine::ops::ttl_deadline(
            &state.engine,
            now,
            req.ttl_minutes.unwrap_or(0),
        )?,
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

/// `POST /api/sandbox`: records the sandbox, starts it, answers `started` (or
/// `pending_build` when its image must be built or pulled first).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<Json<SandboxDto>, ApiError> {
    let user_requested = req.user.as_ref().is_some_and(|u| !u.is_empty());
    let build_info = req.build_info.clone();
    let sandbox = new_sandbox(&state, req)?;
    let created =
        corral_engine::sandboxes::create(&state, sandbox, build_info, user_requested).await?;
    Ok(Json(dto(&state, &headers, &created, true)))
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

/// Parameters of `GET /api/sandbox` (the SDKs' `ListSandboxesQuery`); a list may also come
/// as `key[]=a&key[]=b`.
const LIST_PARAMS: &[&str] = &[
    "labels",
    "states",
    "limit",
    "cursor",
    "id",
    "name",
    "snapshots",
    "regionIds",
    "minCpu",
    "maxCpu",
    "minMemoryGiB",
    "maxMemoryGiB",
    "minDiskGiB",
    "maxDiskGiB",
    "isPublic",
    "isRecoverable",
    "createdAtAfter",
    "createdAtBefore",
    "lastEventAfter",
    "lastEventBefore",
    "autoDestroyAtAfter",
    "autoDestroyAtBefore",
    "includeErroredDeleted",
    "includeWarm",
    "sort",
    "order",
];

/// A timestamp of a list filter: RFC 3339, or the SDK's `%Y-%m-%dT%H:%M:%S.%f%z` (`+0000`
/// without a colon; no offset at all from a naive datetime, read as UTC).
pub(crate) fn parse_instant(key: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        ApiError::bad_request(format!(
            "{key} must be a timestamp such as 2026-01-31T12:00:00Z, got {raw:?}"
        ))
    };
    let (_, clock) = raw.split_once('T').ok_or_else(bad)?;
    let mut text = raw.trim().to_owned();
    let zone = clock.rfind(['+', '-']).map(|i| &clock[i..]);
    match zone {
        // `+0000` → `+00:00`.
        Some(z) if z.len() == 5 && z[1..].bytes().all(|b| b.is_ascii_digit()) => {
            text.insert(text.len() - 2, ':');
        }
        Some(_) => {}
        None if !clock.ends_with(['Z', 'z']) => text.push('Z'),
        None => {}
    }
    OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| bad())
}

/// What a list selects, parsed from the query: the filters of the SDKs' list queries,
/// shared by `GET /api/sandbox` (cursor pages) and the old SDKs' `GET /api/sandbox/paginated`
/// (offset pages, [`crate::compat`]), which names the region filter `regions_key`.
pub(crate) struct Selection {
    pub labels: BTreeMap<String, String>,
    pub states: Vec<SandboxState>,
    pub id_prefix: Option<String>,
    pub name_prefix: Option<String>,
    pub filters: corral_core::ListFilters,
    /// Nothing here can match (another region, recoverable, an auto-destroy window).
    pub none_match: bool,
}

/// Parses the filters of a list query (not its paging or sort) into a [`Selection`].
pub(crate) fn selection(query: &QueryPairs, regions_key: &str) -> Result<Selection, ApiError> {
    let unsupported = |key: &str, why: &str| {
        Err(ApiError::bad_request(format!("{key}: {why}")).with_code("UNSUPPORTED_FILTER"))
    };
    for flag in ["includeErroredDeleted", "includeWarm"] {
        match query.get(flag) {
            None | Some("" | "false") => {}
            Some("true") => {
                return unsupported(
                    flag,
                    "deleted sandboxes are not kept and warm-pool sandboxes are not listed",
                );
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{flag} must be true or false, got {other:?}"
                )));
            }
        }
    }
    let flag = |key: &str| -> Result<Option<bool>, ApiError> {
        match query.get(key) {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key} must be true or false, got {other:?}"
            ))),
        }
    };
    let number = |key: &str| -> Result<Option<u32>, ApiError> {
        match query.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<u32>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{key} must be a whole number, got {v:?}"))
            }),
        }
    };
    let instant = |key: &str| -> Result<Option<OffsetDateTime>, ApiError> {
        match query.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => parse_instant(key, v).map(Some),
        }
    };
    let bounds = |min: &str, max: &str| -> Result<corral_core::Bounds<u32>, ApiError> {
        Ok(corral_core::Bounds {
            min: number(min)?,
            max: number(max)?,
        })
    };
    let filters = corral_core::ListFilters {
        snapshots: query
            .all("snapshots")
            .into_iter()
            .map(str::to_owned)
            .collect(),
        cpu: bounds("minCpu", "maxCpu")?,
        memory_gib: bounds("minMemoryGiB", "maxMemoryGiB")?,
        disk_gib: bounds("minDiskGiB", "maxDiskGiB")?,
        public: flag("isPublic")?,
        created: corral_core::Window {
            after: instant("createdAtAfter")?,
            before: instant("createdAtBefore")?,
        },
        last_activity: corral_core::Window {
            after: instant("lastEventAfter")?,
            before: instant("lastEventBefore")?,
        },
        auto_destroy: corral_core::Window {
            after: instant("autoDestroyAtAfter")?,
            before: instant("autoDestroyAtBefore")?,
        },
    };
    // What no sandbox here can match: another region, or recoverable (none is).
    let regions = query.all(regions_key);
    let none_match = (!regions.is_empty() && !regions.contains(&crate::wire::TARGET))
        || flag("isRecoverable")? == Some(true);
    let prefix = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(str::to_owned);
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
    Ok(Selection {
        labels,
        states,
        id_prefix: prefix("id"),
        name_prefix: prefix("name"),
        filters,
        none_match,
    })
}

/// `GET /api/sandbox?labels=<json>&states=..&id=..&name=..&limit=..&cursor=..` and the other
/// filters of the SDKs' `ListSandboxesQuery`, and `sort`/`order` (keyset pages: a cursor
/// carries its sort key, so pages stay right while sandboxes come and go). `id` and `name`
/// are prefixes, ignoring case, as Daytona's are. What cannot be applied (sandbox classes,
/// deleted or warm-pool sandboxes) and any unknown parameter are refused by name.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Json<ListResponse>, ApiError> {
    for (raw, _) in &query.0 {
        let key = raw.strip_suffix("[]").unwrap_or(raw);
        if !LIST_PARAMS.contains(&key) {
            return Err(ApiError::bad_request(format!(
                "unknown list parameter {key:?}; the parameters are {}",
                LIST_PARAMS.join(", ")
            )));
        }
    }
    let descending = descending(&query, false)?;
    let sort = match query.get("sort").filter(|s| !s.is_empty()) {
        None if !descending => None,
        None => Some(corral_core::ListSort {
            field: corral_core::SortField::CreatedAt,
            descending,
        }),
        Some(raw) => match corral_core::SortField::parse(raw) {
            Some(field) => Some(corral_core::ListSort { field, descending }),
            None => {
                return Err(ApiError::bad_request(format!(
                    "sort must be one of name, cpu, memoryGib, diskGib, lastActivityAt, \
                     createdAt, got {raw:?}"
                )));
            }
        },
    };
    let Selection {
        labels,
        states,
        id_prefix,
        name_prefix,
        filters,
        none_match,
    } = selection(&query, "regionIds")?;
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
    // A cursor from a page of the same sort (a sorted list's carries its sort key).
    if let Some(c) = &cursor
        && corral_core::split_cursor(c).is_none_or(|(_, key)| key.is_some() != sort.is_some())
    {
        return Err(ApiError::bad_request(
            "invalid cursor (use the nextCursor of a page with the same sort)",
        ));
    }
    if none_match {
        return Ok(Json(ListResponse {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let page = state
        .store
        .list(&ListQuery {
            labels,
            states,
            limit,
            cursor,
            id_prefix,
            name_prefix,
            filters,
            sort,
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

/// `DELETE /api/sandbox/{idOrName}`: answers `destroying` once that is recorded; the
/// teardown (kill everything, remove every trace and the record) finishes in the background,
/// after which the sandbox is gone (404), as the SDK's `delete(wait=True)` expects.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Delete).await
}

/// Applies one operation and answers the sandbox afterwards.
pub(crate) async fn apply(
    state: &AppState,
    headers: &HeaderMap,
    id_or_name: &str,
    op: Op,
) -> Result<Json<SandboxDto>, ApiError> {
    let s = state.engine.apply(id_or_name, op).await?;
    Ok(Json(dto(state, headers, &s, true)))
}

/// `POST /api/sandbox/{idOrName}/start`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Start).await
}

/// `POST /api/sandbox/{idOrName}/stop`.
pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Stop).await
}

/// `POST /api/sandbox/{idOrName}/archive`.
pub async fn archive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Archive).await
}

/// `POST /api/sandbox/{idOrName}/recover?skipStart=`: brings an errored sandbox back.
pub async fn recover(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Json<SandboxDto>, ApiError> {
    let skip_start = query.get("skipStart") == Some("true");
    apply(&state, &headers, &id_or_name, Op::Recover { skip_start }).await
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
    let s = state
        .engine
        .apply(&id_or_name, Op::SetLabels(body.labels))
        .await?;
    Ok(Json(LabelsBody { labels: s.labels }))
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

/// `POST /api/sandbox/{idOrName}/autopause/{minutes}` (0 = never).
pub async fn autopause(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((id, m)): TimerPath,
) -> Result<Json<SandboxDto>, ApiError> {
    set_timer(s, h, id, m, Timer::Pause).await
}

/// `POST /api/sandbox/{idOrName}/ttl/{minutes}`: deleted that many minutes from now
/// whatever its state (0 = no TTL).
pub async fn ttl(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id_or_name, raw)): TimerPath,
) -> Result<Json<SandboxDto>, ApiError> {
    let minutes = parse_minutes(&raw)?;
    apply(&state, &headers, &id_or_name, Op::SetTtl(minutes)).await
}

/// `POST /api/sandbox/{idOrName}/pause`: freezes its processes, keeping their memory
/// (`start` resumes them).
pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Pause).await
}

/// `POST /api/sandbox/{idOrName}/autoarchive/{minutes}` (0 = the maximum, 30 days; more is
/// capped to it, as Daytona does).
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
        Timer::Stop | Timer::Archive | Timer::Pause if minutes < 0 => {
            return Err(ApiError::bad_request("interval must be 0 or more minutes"));
        }
        _ => {}
    }
    apply(&state, &headers, &id_or_name, Op::SetTimer(timer, minutes)).await
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
    let r = Resize {
        cpu: body.cpu,
        memory: body.memory,
        disk: body.disk,
    };
    if r == Resize::default() {
        return Err(ApiError::bad_request(
            "give at least one of cpu, memory, disk",
        ));
    }
    apply(&state, &headers, &id_or_name, Op::Resize(r)).await
}

/// `POST /api/sandbox/{id}/last-activity`: counts as activity for auto-stop.
pub async fn last_activity(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    state.engine.touch(&id_or_name).await?;
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
