//! `/api/snapshots` routes: named OCI images sandboxes are created from (the engine's
//! `snapshots` module records, pulls and builds them), plus the built-in `host` snapshot.

use axum::Json;
use axum::extract::{Path, State};
use corral_core::Snapshot;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::state::AppState;
use corral_engine::snapshots::NewSnapshot;
pub use corral_engine::snapshots::{BuildInfo, find, host_snapshot, not_found};

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

fn rfc3339(ms: i64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
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

/// `POST /api/snapshots`: records the snapshot (`pending`) and pulls it in the background.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> Result<Json<Value>, ApiError> {
    let snap = corral_engine::catalog::create(
        &state,
        NewSnapshot {
            name: req.name,
            image_name: req.image_name,
            entrypoint: req.entrypoint,
            cpu: req.cpu,
            gpu: req.gpu,
            memory: req.memory,
            disk: req.disk,
            build_info: req.build_info,
        },
    )
    .await?;
    Ok(Json(dto(&state, &snap)))
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

/// `DELETE /api/snapshots/{id}`: refused while a sandbox uses the snapshot; then the record
/// goes and image layers no remaining snapshot or sandbox needs are removed.
pub async fn delete(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    corral_engine::catalog::delete(&state, &id_or_name).await?;
    Ok(Json(json!({})))
}

/// `POST /api/snapshots/{id}/activate`: snapshots here never go inactive; answers the
/// snapshot (an errored one is pulled again).
pub async fn activate(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = corral_engine::catalog::activate(&state, &id_or_name).await?;
    Ok(Json(dto(&state, &s)))
}
