//! `/api/snapshots` routes: named OCI images sandboxes are created from, pulled in the
//! background, plus the built-in `host` snapshot. Also the image side of sandbox create:
//! a snapshot name or a bare `FROM <image>` build resolves to a pulled image.

use axum::Json;
use axum::extract::{Path, State};
use corral_core::{DesiredState, ImageInfo, ListQuery, Snapshot, SnapshotState, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::sandboxes::DEFAULT_SNAPSHOT;
use crate::state::AppState;

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 200;

/// `CreateSnapshot` as the SDK sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSnapshot {
    name: String,
    image_name: Option<String>,
    entrypoint: Option<Vec<String>>,
    cpu: Option<i64>,
    gpu: Option<i64>,
    memory: Option<i64>,
    disk: Option<i64>,
    build_info: Option<BuildInfo>,
}

/// `CreateBuildInfo`: a Dockerfile and uploaded context.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    dockerfile_content: String,
    #[serde(default)]
    context_hashes: Option<Vec<String>>,
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn rfc3339(ms: i64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// The built-in snapshot of the `host` image.
pub fn host_snapshot() -> Snapshot {
    let d = corral_core::Resources::default();
    Snapshot {
        id: DEFAULT_SNAPSHOT.into(),
        name: DEFAULT_SNAPSHOT.into(),
        image_name: None,
        state: SnapshotState::Active,
        size: None,
        entrypoint: Vec::new(),
        cpu: d.cpu,
        memory_gib: d.memory_gib,
        disk_gib: d.disk_gib,
        error_reason: None,
        general: true,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_used_at_ms: None,
    }
}

/// The wire form (`SnapshotDto`); `size` in GiB, as Daytona reports it.
pub fn dto(state: &AppState, s: &Snapshot) -> Value {
    json!({
        "id": s.id,
        "organizationId": state.config.organization_id,
        "general": s.general,
        "name": s.name,
        "imageName": s.image_name.clone().unwrap_or_else(|| s.name.clone()),
        "state": s.state.as_str(),
        "size": s.size.map(|b| b as f64 / f64::from(1u32 << 30)),
        "entrypoint": if s.entrypoint.is_empty() { Value::Null } else { json!(s.entrypoint) },
        "cpu": s.cpu,
        "gpu": 0,
        "mem": s.memory_gib,
        "disk": s.disk_gib,
        "errorReason": s.error_reason,
        "createdAt": rfc3339(s.created_at_ms),
        "updatedAt": rfc3339(s.updated_at_ms),
        "lastUsedAt": s.last_used_at_ms.map_or(Value::Null, rfc3339),
        "buildInfo": Value::Null,
        "regionIds": [],
        "ref": Value::Null,
        "sourceSandboxId": Value::Null,
    })
}

fn not_found(id_or_name: &str) -> ApiError {
    ApiError::not_found(format!("Snapshot {id_or_name} not found")).with_code("SNAPSHOT_NOT_FOUND")
}

/// Finds a snapshot (the built-in `host` one included) by id or name.
pub async fn find(state: &AppState, id_or_name: &str) -> Result<Option<Snapshot>, ApiError> {
    if id_or_name == DEFAULT_SNAPSHOT {
        return Ok(Some(host_snapshot()));
    }
    Ok(state.snapshots.get_snapshot(id_or_name).await?)
}

pub(crate) fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "snapshot name must be 1-255 characters without spaces or control characters",
        ))
    }
}

/// The image of a Dockerfile that only names a base (`FROM <image>`, optionally with
/// `ENTRYPOINT`/`CMD` in JSON form), and its entrypoint. Anything else is refused.
pub fn image_of_dockerfile(content: &str) -> Result<(String, Vec<String>), ApiError> {
    let mut image = None;
    let mut entrypoint: Vec<String> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    for line in content.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            "FROM" if image.is_none() => {
                let mut parts = rest.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(img), None) if !img.starts_with("--") => image = Some(img.to_owned()),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "unsupported FROM line {line:?}: only `FROM <image>` is supported"
                        )));
                    }
                }
            }
            "ENTRYPOINT" | "CMD" => {
                let args: Vec<String> = serde_json::from_str(rest).map_err(|_| {
                    ApiError::bad_request(format!(
                        "{word} must be in JSON form, e.g. {word} [\"sleep\", \"infinity\"]"
                    ))
                })?;
                if word.eq_ignore_ascii_case("ENTRYPOINT") {
                    entrypoint = args;
                } else {
                    cmd = args;
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Dockerfile builds with {other} are not supported yet: only `FROM <image>` \
                     (plus ENTRYPOINT/CMD) is; build the image elsewhere and use it by name"
                ))
                .with_code("BUILD_NOT_SUPPORTED"));
            }
        }
    }
    let image = image.ok_or_else(|| ApiError::bad_request("the Dockerfile has no FROM line"))?;
    entrypoint.extend(cmd);
    Ok((image, entrypoint))
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

pub(crate) async fn insert(state: &AppState, s: &Snapshot) -> Result<(), ApiError> {
    match state.snapshots.insert_snapshot(s).await {
        Err(StoreError::NameTaken(n)) => Err(ApiError::conflict(format!(
            "a snapshot named {n:?} already exists"
        ))
        .with_code("NAME_TAKEN")),
        other => Ok(other?),
    }
}

/// Image `image` for a snapshot or build: the stored one when the image store has it (by
/// tag or digest; no registry is contacted at all, so images imported on a host without
/// registry access work, and a tag is not checked for a newer image), else pulled, with
/// its progress in `log`. The error of a failed pull says the image is not stored.
pub(crate) async fn fetch(
    state: &AppState,
    image: &str,
    log: &crate::builds::Log,
) -> Result<ImageInfo, ApiError> {
    if let Some(info) = state.images.resolve(image).await? {
        log.line(&format!("Image {image} is in the image store: not pulled"));
        tracing::info!(image = %image, "image already stored: no pull");
        return Ok(info);
    }
    log.line(&format!("Pulling image {image}"));
    let sink = log.clone();
    let info = state
        .images
        .pull(image, &move |l: &str| sink.line(l))
        .await
        .map_err(|e| {
            let mut err = ApiError::from(e);
            if err.status.is_client_error()
                && !image.starts_with(corral_core::SANDBOX_SNAPSHOT_PREFIX)
            {
                err.message = format!(
                    "{} ({image} is not in the image store; on a host without registry \
                     access, add it with `corral image import`)",
                    err.message
                );
            }
            err
        })?;
    log.line(&format!(
        "Pulled {image} ({:.1} MiB)",
        info.size as f64 / f64::from(1u32 << 20)
    ));
    Ok(info)
}

/// Makes a snapshot's image ready (from the store, else pulled: see [`fetch`]), moving the
/// snapshot `pulling` → `active` (with its size) or `error`.
pub async fn pull(state: &AppState, s: &mut Snapshot) -> Result<ImageInfo, ApiError> {
    let image = s.image_name.clone().unwrap_or_default();
    s.state = SnapshotState::Pulling;
    s.updated_at_ms = now_ms();
    state.snapshots.update_snapshot(s).await?;
    // Progress goes to the snapshot's log (what the SDK streams while a sandbox waits).
    let log = crate::builds::Log::create(state, &s.id);
    match fetch(state, &image, &log).await {
        Ok(info) => {
            s.state = SnapshotState::Active;
            s.size = Some(info.size);
            s.error_reason = None;
            s.updated_at_ms = now_ms();
            state.snapshots.update_snapshot(s).await?;
            tracing::info!(snapshot = %s.name, image = %image, size = info.size, "snapshot active");
            Ok(info)
        }
        Err(err) => {
            s.state = SnapshotState::Error;
            s.error_reason = Some(format!("pulling {image} failed: {}", err.message));
            log.line(&format!("ERROR: {}", err.message));
            s.updated_at_ms = now_ms();
            state.snapshots.update_snapshot(s).await?;
            tracing::warn!(snapshot = %s.name, image = %image, error = %err.message, "snapshot pull failed");
            Err(ApiError::bad_request(
                s.error_reason.clone().unwrap_or_default(),
            ))
        }
    }
}

/// `POST /api/snapshots`: records the snapshot (`pending`) and pulls it in the background.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> Result<Json<Value>, ApiError> {
    validate_name(&req.name)?;
    if req.name == DEFAULT_SNAPSHOT {
        return Err(
            ApiError::conflict("the snapshot name \"host\" is built in").with_code("NAME_TAKEN")
        );
    }
    if req.gpu.is_some_and(|g| g > 0) {
        return Err(ApiError::bad_request(
            "GPUs are not available on this server",
        ));
    }
    let (image, mut entrypoint) = match (&req.image_name, &req.build_info) {
        (Some(i), None) => (i.trim().to_owned(), Vec::new()),
        (None, Some(b)) => match image_of_dockerfile(&b.dockerfile_content) {
            Ok(found) if b.context_hashes.as_ref().is_none_or(Vec::is_empty) => found,
            // Anything beyond FROM is built (in the background, with build logs).
            _ => {
                crate::builds::check(&state, &b.dockerfile_content, b.context_hashes.as_deref())?;
                let d = corral_core::Resources::default();
                let resources = corral_core::Resources {
                    cpu: resource(req.cpu, d.cpu, 64, "cpu")?,
                    gpu: 0,
                    memory_gib: resource(req.memory, d.memory_gib, 1024, "memory")?,
                    disk_gib: resource(req.disk, d.disk_gib, 10240, "disk")?,
                };
                let snap = crate::builds::record(
                    &state,
                    req.name,
                    &b.dockerfile_content,
                    b.context_hashes.as_deref().unwrap_or_default(),
                    resources,
                )
                .await?;
                let reply = dto(&state, &snap);
                let bg = state.clone();
                tokio::spawn(async move {
                    // Failures are recorded on the snapshot (`build_failed`, errorReason).
                    let _ = crate::builds::ensure_ready(&bg, &snap.id).await;
                });
                return Ok(Json(reply));
            }
        },
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give imageName or buildInfo, not both",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("imageName is required")),
    };
    if let Some(e) = req.entrypoint.filter(|e| !e.is_empty()) {
        entrypoint = e;
    }
    if image.starts_with(corral_core::SANDBOX_SNAPSHOT_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "imageName {image:?} names a sandbox snapshot; create sandboxes from the snapshot \
             by its name instead"
        )));
    }
    // Checks the reference's syntax (and finds it when already stored).
    state.images.resolve(&image).await?;
    let d = corral_core::Resources::default();
    let now = now_ms();
    let snap = Snapshot {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        image_name: Some(image),
        state: SnapshotState::Pending,
        size: None,
        entrypoint,
        cpu: resource(req.cpu, d.cpu, 64, "cpu")?,
        memory_gib: resource(req.memory, d.memory_gib, 1024, "memory")?,
        disk_gib: resource(req.disk, d.disk_gib, 10240, "disk")?,
        error_reason: None,
        general: false,
        created_at_ms: now,
        updated_at_ms: now,
        last_used_at_ms: None,
    };
    insert(&state, &snap).await?;
    let reply = dto(&state, &snap);
    let bg = state.clone();
    tokio::spawn(async move {
        // Failures are recorded on the snapshot (state `error`, errorReason).
        let _ = crate::builds::ensure_ready(&bg, &snap.id).await;
    });
    Ok(Json(reply))
}

/// `GET /api/snapshots/{idOrName}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = find(&state, &id_or_name)
        .await?
        .ok_or_else(|| not_found(&id_or_name))?;
    Ok(Json(dto(&state, &s)))
}

fn page_arg(query: &QueryPairs, key: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{key} must be an integer between 1 and {max}"
            ))),
        },
    }
}

/// `GET /api/snapshots?page&limit&name&sort&order` → `{items, total, page, totalPages}`.
pub async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let page = page_arg(&query, "page", 1, u64::from(u32::MAX))?;
    let limit = page_arg(&query, "limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let mut all = vec![host_snapshot()];
    all.extend(state.snapshots.list_snapshots().await?);
    if let Some(name) = query.get("name").filter(|n| !n.is_empty()) {
        let name = name.to_ascii_lowercase();
        all.retain(|s| s.name.to_ascii_lowercase().contains(&name));
    }
    match query.get("sort").unwrap_or("createdAt") {
        "name" => all.sort_by(|a, b| a.name.cmp(&b.name)),
        "state" => all.sort_by(|a, b| a.state.as_str().cmp(b.state.as_str())),
        "lastUsedAt" => all.sort_by_key(|s| s.last_used_at_ms),
        "createdAt" | "" => all.sort_by_key(|s| s.created_at_ms),
        other => {
            return Err(ApiError::bad_request(format!(
                "sort must be name, state, lastUsedAt or createdAt, got {other:?}"
            )));
        }
    }
    match query.get("order").unwrap_or("desc") {
        "desc" | "DESC" => all.reverse(),
        "asc" | "ASC" | "" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "order must be asc or desc, got {other:?}"
            )));
        }
    }
    let total = all.len() as u64;
    let items: Vec<Value> = all
        .iter()
        .skip(usize::try_from((page - 1).saturating_mul(limit)).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|s| dto(&state, s))
        .collect();
    Ok(Json(json!({
        "items": items,
        "total": total,
        "page": page,
        "totalPages": total.div_ceil(limit),
    })))
}

/// Names of sandboxes created from `snapshot`, except those being deleted: their teardown
/// keeps the layers they mount and collects them when it is done.
async fn users_of(state: &AppState, snapshot: &str) -> Result<Vec<String>, ApiError> {
    let mut found = Vec::new();
    let mut cursor = None;
    loop {
        let page = state
            .store
            .list(&ListQuery {
                limit: 200,
                cursor,
                ..Default::default()
            })
            .await?;
        found.extend(
            page.items
                .into_iter()
                .filter(|s| s.snapshot == snapshot && s.desired_state != DesiredState::Destroyed)
                .map(|s| s.name),
        );
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(found),
        }
    }
}

/// `DELETE /api/snapshots/{id}`: refused while a sandbox uses the snapshot; then the record
/// goes and image layers no remaining snapshot or sandbox needs are removed.
pub async fn delete(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = find(&state, &id_or_name)
        .await?
        .ok_or_else(|| not_found(&id_or_name))?;
    if s.general {
        return Err(ApiError::bad_request(format!(
            "snapshot {} is built in and cannot be deleted",
            s.name
        )));
    }
    let users = users_of(&state, &s.name).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "snapshot {} is in use by sandbox(es) {}; delete them first",
            s.name,
            users.join(", ")
        ))
        .with_code("SNAPSHOT_IN_USE"));
    }
    if matches!(
        s.state,
        SnapshotState::Pending | SnapshotState::Pulling | SnapshotState::Building
    ) {
        return Err(ApiError::conflict(format!(
            "snapshot {} is being {}; delete it once it is active or failed",
            s.name,
            match s.state {
                SnapshotState::Pulling => "pulled",
                SnapshotState::Building => "built",
                _ => "prepared",
            }
        )));
    }
    state.snapshots.remove_snapshot(&s.id).await?;
    crate::builds::forget(&state, &s.id).await;
    tracing::info!(snapshot = %s.name, "snapshot deleted");
    if let Some(image) = &s.image_name {
        let keep: Vec<String> = state
            .snapshots
            .list_snapshots()
            .await?
            .into_iter()
            .filter_map(|o| o.image_name)
            .collect();
        if let Err(e) = state
            .images
            .remove_unused(std::slice::from_ref(image), &keep)
            .await
        {
            tracing::warn!(snapshot = %s.name, error = %e, "image garbage collection failed");
        }
    }
    Ok(Json(json!({})))
}

/// `POST /api/snapshots/{id}/activate`: snapshots here never go inactive; answers the
/// snapshot (an errored one is pulled again).
pub async fn activate(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut s = find(&state, &id_or_name)
        .await?
        .ok_or_else(|| not_found(&id_or_name))?;
    let build = s.state == SnapshotState::BuildFailed && crate::builds::is_build(&state, &s.id);
    if build || (s.state == SnapshotState::Error && !s.general) {
        s.state = SnapshotState::Pending;
        s.updated_at_ms = now_ms();
        state.snapshots.update_snapshot(&s).await?;
        let reply = dto(&state, &s);
        let bg = state.clone();
        tokio::spawn(async move {
            // The outcome is recorded on the snapshot.
            let _ = crate::builds::ensure_ready(&bg, &s.id).await;
        });
        return Ok(Json(reply));
    }
    Ok(Json(dto(&state, &s)))
}

/// The snapshot of a bare `FROM <image>` (with its entrypoint, if any): one per image,
/// named after it and shared by every create from it; recorded `pending` when new.
pub(crate) async fn image_snapshot(
    state: &AppState,
    image: &str,
    entrypoint: Vec<String>,
) -> Result<Snapshot, ApiError> {
    // Checks the reference's syntax.
    state.images.resolve(image).await?;
    let name = if entrypoint.is_empty() {
        image.to_owned()
    } else {
        format!("{image}+{}", short_hash(&entrypoint.join("\0")))
    };
    if let Some(s) = state.snapshots.get_snapshot(&name).await? {
        return Ok(s);
    }
    let d = corral_core::Resources::default();
    let now = now_ms();
    let s = Snapshot {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        image_name: Some(image.to_owned()),
        state: SnapshotState::Pending,
        size: None,
        entrypoint,
        cpu: d.cpu,
        memory_gib: d.memory_gib,
        disk_gib: d.disk_gib,
        error_reason: None,
        general: false,
        created_at_ms: now,
        updated_at_ms: now,
        last_used_at_ms: None,
    };
    match insert(state, &s).await {
        Ok(()) => Ok(s),
        // Created by a concurrent request meanwhile.
        Err(_) => state
            .snapshots
            .get_snapshot(&s.name)
            .await?
            .ok_or_else(|| not_found(&s.name)),
    }
}

/// What a sandbox create resolves its snapshot to.
#[derive(Debug)]
pub enum Source {
    /// The built-in `host` image.
    Host,
    /// An OCI image, pulled and stored.
    Image {
        /// The snapshot's name (recorded on the sandbox).
        snapshot: String,
        /// The image reference the runtime builds the root from.
        image: String,
        /// The image's config user.
        user: Option<String>,
        /// The snapshot's own entrypoint (replaces the image's), when it has one.
        entrypoint: Option<Vec<String>>,
    },
}

/// Resolves a create's `snapshot` / `buildInfo` to an image (`builds::snapshot_to_prepare`
/// has sent snapshots still to pull or build to the background path already; what reaches
/// here is ready, or is made ready while the request waits).
pub async fn source_for(
    state: &AppState,
    snapshot: Option<&str>,
    build_info: Option<&Value>,
) -> Result<Source, ApiError> {
    let mut snap = if let Some(b) = build_info {
        // Builds (uploaded context included) were sent to the background path by
        // `builds::snapshot_to_prepare`: what reaches here is a bare `FROM <image>`.
        let b: BuildInfo = serde_json::from_value(b.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid buildInfo: {e}")))?;
        let (image, entrypoint) = image_of_dockerfile(&b.dockerfile_content)?;
        image_snapshot(state, &image, entrypoint).await?
    } else {
        match snapshot {
            None => return Ok(Source::Host),
            Some(n) if n == DEFAULT_SNAPSHOT => return Ok(Source::Host),
            Some(n) => state.snapshots.get_snapshot(n).await?.ok_or_else(|| {
                ApiError::bad_request(format!("Snapshot {n} not found"))
                    .with_code("SNAPSHOT_NOT_FOUND")
            })?,
        }
    };
    let image = snap.image_name.clone().unwrap_or_default();
    let info = match state.images.resolve(&image).await? {
        // Stored: no registry contact at all.
        Some(info) if snap.state == SnapshotState::Active => info,
        _ => {
            if matches!(
                snap.state,
                SnapshotState::Error | SnapshotState::BuildFailed
            ) && build_info.is_none()
            {
                return Err(ApiError::bad_request(format!(
                    "snapshot {} failed: {}; activate it to try again",
                    snap.name,
                    snap.error_reason.clone().unwrap_or_default()
                )));
            }
            crate::builds::ensure_ready(state, &snap.id).await?;
            // As made ready (`active`, its size): the record below is written back.
            snap = state
                .snapshots
                .get_snapshot(&snap.id)
                .await?
                .ok_or_else(|| not_found(&snap.name))?;
            state.images.resolve(&image).await?.ok_or_else(|| {
                ApiError::bad_request(format!("image {image} of snapshot {} is gone", snap.name))
            })?
        }
    };
    snap.last_used_at_ms = Some(now_ms());
    state.snapshots.update_snapshot(&snap).await?;
    Ok(Source::Image {
        snapshot: snap.name.clone(),
        image: info.reference,
        user: info.user,
        entrypoint: (!snap.entrypoint.is_empty()).then(|| snap.entrypoint.clone()),
    })
}

fn short_hash(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_from_dockerfiles_are_accepted_and_builds_refused() {
        assert_eq!(
            image_of_dockerfile("FROM reg:5000/a/b:1\n").ok(),
            Some(("reg:5000/a/b:1".to_owned(), vec![]))
        );
        assert_eq!(
            image_of_dockerfile("# c\nFROM x\nENTRYPOINT [\"sh\",\"-c\"]\nCMD [\"echo hi\"]\n")
                .ok(),
            Some((
                "x".to_owned(),
                vec!["sh".into(), "-c".into(), "echo hi".into()]
            ))
        );
        let e = image_of_dockerfile("FROM x\nRUN apt-get update\n").err();
        assert!(e.is_some_and(|e| e.message.contains("RUN")));
        assert!(image_of_dockerfile("FROM x\nCOPY a b\n").is_err());
        assert!(image_of_dockerfile("").is_err());
    }
}
