//! Warm pool routes (Daytona's `/warm-pools`): `GET` lists the pools, `POST` creates one
//! (`{snapshot, pool, target?}`, plus corral's optional `cpu`/`memory`/`disk` shape; 201),
//! `PATCH /warm-pools/{id}` sets its size (`{pool}`, 0 drains it) and `DELETE` removes it and
//! its unclaimed sandboxes (204). The pools are `corral_engine::warm_pools`'.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use corral_engine::pool::PoolStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::wire::timestamp;

/// `POST /warm-pools` body (Daytona's `CreateWarmPool`, plus the shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWarmPool {
    pub snapshot: String,
    pub pool: Value,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub cpu: Option<Value>,
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default)]
    pub disk: Option<Value>,
}

/// `PATCH /warm-pools/{id}` body (Daytona's `UpdateWarmPool`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWarmPool {
    pub pool: Value,
}

/// Daytona's `WarmPool`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmPoolDto {
    pub id: String,
    pub organization_id: String,
    pub snapshot: String,
    pub target: String,
    pub pool: u32,
    pub current_size: usize,
    pub cpu: u32,
    pub mem: u32,
    pub disk: u32,
    pub os_user: String,
    /// Always empty: a pool serves only creates without env (the agent takes its
    /// environment when it starts).
    pub env: serde_json::Map<String, Value>,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn time_of(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    timestamp(t)
}

fn dto(state: &AppState, p: PoolStatus) -> WarmPoolDto {
    let r = p.record;
    WarmPoolDto {
        id: r.id,
        organization_id: state.config.organization_id.clone(),
        snapshot: r.snapshot,
        target: r.target,
        pool: r.size,
        current_size: p.current_size,
        cpu: r.cpu,
        mem: r.memory_gib,
        disk: r.disk_gib,
        os_user: r.os_user,
        env: serde_json::Map::new(),
        error_reason: r.error_reason,
        created_at: time_of(r.created_at_ms),
        updated_at: time_of(r.updated_at_ms),
    }
}

/// A whole, non-negative number (the SDK may send `5.0`), else a 400 naming `field`.
fn count(v: &Value, field: &str) -> Result<u32, ApiError> {
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
        ApiError::bad_request(format!("{field}: must be a whole number >= 0, got {v}"))
    })
}

fn optional(v: Option<&Value>, field: &str) -> Result<Option<u32>, ApiError> {
    v.filter(|v| !v.is_null())
        .map(|v| count(v, field))
        .transpose()
}

/// `GET /warm-pools`.
pub async fn list(State(state): State<AppState>) -> Json<Vec<WarmPoolDto>> {
    let pools = corral_engine::warm_pools::list(&state.engine);
    Json(pools.into_iter().map(|p| dto(&state, p)).collect())
}

/// `POST /warm-pools`: 201 with the pool, which fills in the background.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateWarmPool>,
) -> Result<(StatusCode, Json<WarmPoolDto>), ApiError> {
    if req.snapshot.is_empty() {
        return Err(ApiError::bad_request("snapshot: must not be empty"));
    }
    let new = corral_engine::warm_pools::NewPool {
        snapshot: req.snapshot,
        size: count(&req.pool, "pool")?,
        target: req.target,
        cpu: optional(req.cpu.as_ref(), "cpu")?,
        memory_gib: optional(req.memory.as_ref(), "memory")?,
        disk_gib: optional(req.disk.as_ref(), "disk")?,
    };
    let p = corral_engine::warm_pools::create(&state.engine, new).await?;
    Ok((StatusCode::CREATED, Json(dto(&state, p))))
}

/// `PATCH /warm-pools/{id}`: sets the size; surplus ready sandboxes are destroyed.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<WarmPoolDto>, ApiError> {
    // An unknown pool is a 404 whatever the body says.
    corral_engine::warm_pools::get(&state.engine, &id)?;
    let req: UpdateWarmPool = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let size = count(&req.pool, "pool")?;
    let p = corral_engine::warm_pools::resize(&state.engine, &id, size).await?;
    Ok(Json(dto(&state, p)))
}

/// `DELETE /warm-pools/{id}`: 204; the pool's unclaimed sandboxes are destroyed.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    corral_engine::warm_pools::delete(&state.engine, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
