//! The warm pools API's operations (Daytona's `/warm-pools`): create, list, resize and
//! delete pools of one snapshot and shape, stored so they come back after a restart. The
//! pools' sandboxes are [`crate::pool`]'s.
//!
//! A pool needs a ready (`active`) snapshot: one still pulling or building is refused (400)
//! rather than waited for, so a pool never silently holds nothing.

use corral_core::Resources;
use corral_core::ports::{SnapshotState, WarmPoolRecord};

use crate::Engine;
use crate::error::EngineError;
use crate::pool::{DEFAULT_POOL_ID, POOL_TARGET, PoolShape, PoolStatus};

/// The most sandboxes one pool keeps.
pub const MAX_POOL_SIZE: u32 = 100;
/// The most sandboxes all pools together keep (the `--pool-size` one included): pools hold
/// host memory and processes no user asked for.
pub const MAX_POOLED: u32 = 200;

/// A create request, as parsed by the edge.
#[derive(Debug, Clone)]
pub struct NewPool {
    /// The snapshot's id or name.
    pub snapshot: String,
    pub size: u32,
    pub target: Option<String>,
    /// The sandboxes' resources (the create defaults when `None`).
    pub cpu: Option<u32>,
    pub memory_gib: Option<u32>,
    pub disk_gib: Option<u32>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn check_size(size: u32, min: u32) -> Result<(), EngineError> {
    if size < min || size > MAX_POOL_SIZE {
        return Err(EngineError::bad_request(format!(
            "pool: must be between {min} and {MAX_POOL_SIZE}, got {size}"
        )));
    }
    Ok(())
}

/// Refuses a size that would take every pool past [`MAX_POOLED`] (`except`: the pool being
/// resized).
fn check_total(state: &Engine, size: u32, except: Option<&str>) -> Result<(), EngineError> {
    let others: u32 = state
        .pool
        .status()
        .iter()
        .filter(|p| Some(p.record.id.as_str()) != except)
        .map(|p| p.record.size)
        .sum();
    if others.saturating_add(size) > MAX_POOLED {
        return Err(EngineError::bad_request(format!(
            "pool: all warm pools together keep at most {MAX_POOLED} sandboxes; the others \
             keep {others}"
        )));
    }
    Ok(())
}

fn resource(v: Option<u32>, default: u32, max: u32, field: &str) -> Result<u32, EngineError> {
    match v.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(EngineError::bad_request(format!(
            "{field}: must be between 1 and {max}, got {n}"
        ))),
    }
}

/// The shape of pools of `snapshot`: refused unless the snapshot exists and is ready.
async fn shape_of(
    state: &Engine,
    snapshot: &str,
    resources: Resources,
) -> Result<PoolShape, EngineError> {
    if snapshot == crate::DEFAULT_SNAPSHOT {
        return Ok(PoolShape::host(resources));
    }
    let snap = state
        .snapshots
        .get_snapshot(snapshot)
        .await?
        .ok_or_else(|| {
            EngineError::bad_request(format!("snapshot: Snapshot {snapshot} not found"))
                .with_code("SNAPSHOT_NOT_FOUND")
        })?;
    if snap.state != SnapshotState::Active {
        return Err(EngineError::bad_request(format!(
            "snapshot: {} is {}; a warm pool needs an active snapshot (wait until it is)",
            snap.name,
            snap.state.as_str()
        )));
    }
    let id = snap.id.clone();
    match crate::catalog::source_for(state, Some(&snap.name), None).await? {
        crate::catalog::Source::Host => Ok(PoolShape::host(resources)),
        crate::catalog::Source::Image {
            snapshot,
            image,
            user,
            entrypoint,
        } => Ok(PoolShape {
            snapshot,
            snapshot_id: Some(id),
            image,
            entrypoint,
            // As a create of the snapshot without a user runs.
            user: user.unwrap_or_else(|| "root".into()),
            resources,
        }),
    }
}

/// Every pool, the `--pool-size` one first.
pub fn list(state: &Engine) -> Vec<PoolStatus> {
    state.pool.status()
}

/// Creates a pool and starts filling it in the background. 409 when one for the same
/// snapshot, target and resources exists.
pub async fn create(state: &Engine, req: NewPool) -> Result<PoolStatus, EngineError> {
    check_size(req.size, 1)?;
    let target = req.target.unwrap_or_else(|| POOL_TARGET.into());
    if target != POOL_TARGET {
        return Err(EngineError::bad_request(format!(
            "target: unknown region {target:?} (this server has {POOL_TARGET:?})"
        )));
    }
    let d = Resources::default();
    let resources = Resources {
        cpu: resource(req.cpu, d.cpu, 64, "cpu")?,
        gpu: 0,
        memory_gib: resource(req.memory_gib, d.memory_gib, 1024, "memory")?,
        disk_gib: resource(req.disk_gib, d.disk_gib, 10240, "disk")?,
    };
    check_total(state, req.size, None)?;
    let shape = shape_of(state, &req.snapshot, resources).await?;
    let conflict = || {
        EngineError::conflict(format!(
            "a warm pool for snapshot {} with this shape already exists in {target}",
            shape.snapshot
        ))
    };
    if state.pool.has_key(&shape.snapshot, &target, &resources) {
        return Err(conflict());
    }
    let now = now_ms();
    let record = WarmPoolRecord {
        id: uuid::Uuid::new_v4().to_string(),
        snapshot: shape.snapshot.clone(),
        target: target.clone(),
        size: req.size,
        cpu: resources.cpu,
        memory_gib: resources.memory_gib,
        disk_gib: resources.disk_gib,
        os_user: shape.user.clone(),
        error_reason: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    if !state.warm_pools.add_warm_pool(&record).await? {
        return Err(conflict());
    }
    state.pool.insert(record.clone(), shape);
    tracing::info!(pool = %record.id, snapshot = %record.snapshot, size = record.size, "warm pool created");
    Ok(PoolStatus {
        record,
        current_size: 0,
    })
}

fn not_found(id: &str) -> EngineError {
    EngineError::not_found(format!("Warm pool {id} not found"))
}

/// One pool (a read; 404 when there is none).
pub fn get(state: &Engine, id: &str) -> Result<PoolStatus, EngineError> {
    state.pool.get(id).ok_or_else(|| not_found(id))
}

fn default_is_fixed() -> EngineError {
    EngineError::bad_request(
        "the default warm pool is set by `corral serve --pool-size`; restart with another size",
    )
}

async fn destroy_all(state: &Engine, ids: Vec<String>) {
    for id in ids {
        if let Err(e) = state.runtime.destroy(&id).await {
            tracing::warn!(sandbox = %id, error = %e, "could not destroy a pooled sandbox");
        }
    }
}

/// Sets a pool's size (0 drains it); the sandboxes it no longer keeps are destroyed before
/// this returns.
pub async fn resize(state: &Engine, id: &str, size: u32) -> Result<PoolStatus, EngineError> {
    if id == DEFAULT_POOL_ID {
        return Err(default_is_fixed());
    }
    check_size(size, 0)?;
    check_total(state, size, Some(id))?;
    let mut record = state.pool.get(id).ok_or_else(|| not_found(id))?.record;
    record.size = size;
    record.updated_at_ms = now_ms();
    if !state.warm_pools.update_warm_pool(&record).await? {
        return Err(not_found(id));
    }
    let extra = state
        .pool
        .resize(id, size, record.updated_at_ms)
        .ok_or_else(|| not_found(id))?;
    destroy_all(state, extra).await;
    state.pool.get(id).ok_or_else(|| not_found(id))
}

/// Deletes a pool and destroys its ready sandboxes (claimed ones are users' and stay).
pub async fn delete(state: &Engine, id: &str) -> Result<(), EngineError> {
    if id == DEFAULT_POOL_ID {
        return Err(default_is_fixed());
    }
    if !state.warm_pools.delete_warm_pool(id).await? {
        return Err(not_found(id));
    }
    let ids = state.pool.remove(id).unwrap_or_default();
    destroy_all(state, ids).await;
    tracing::info!(pool = %id, "warm pool deleted");
    Ok(())
}

/// Brings the stored pools back (at start, before the filler runs). A pool whose snapshot
/// is gone or not ready stays listed, empty, with the reason in `errorReason`.
pub async fn load(state: &Engine) -> Result<(), EngineError> {
    for mut record in state.warm_pools.warm_pools().await? {
        let resources = Resources {
            cpu: record.cpu,
            gpu: 0,
            memory_gib: record.memory_gib,
            disk_gib: record.disk_gib,
        };
        let shape = match shape_of(state, &record.snapshot, resources).await {
            Ok(shape) => {
                record.error_reason = None;
                shape
            }
            Err(e) => {
                tracing::warn!(pool = %record.id, error = %e.message, "warm pool cannot fill");
                record.error_reason = Some(e.message);
                // Never filled (it has an error), so it serves nothing.
                PoolShape {
                    snapshot: record.snapshot.clone(),
                    ..PoolShape::host(resources)
                }
            }
        };
        state.pool.insert(record, shape);
    }
    Ok(())
}
