//! The volumes a new sandbox mounts: resolved to ready volumes and their use recorded, under
//! the lock that volume deletes take too.

use corral_core::VolumeMount;
use corral_core::ports::VolumeState;
use time::OffsetDateTime;

use crate::Engine;
use crate::error::EngineError;

/// The lock key serialising volume deletes with sandbox creates that mount volumes (sandbox
/// lock keys are uuids, so this cannot collide).
pub const LOCK_KEY: &str = "\0volumes";

/// A volume that does not exist (`what`: e.g. `with ID or name x`).
pub fn not_found(what: &str) -> EngineError {
    EngineError::not_found(format!("Volume {what} not found")).with_code("VOLUME_NOT_FOUND")
}

/// Resolves each mount's volume (by id, else by name) to a ready volume's id, and records
/// the use. Callers hold the guard this returns until the sandbox record is stored, so a
/// volume cannot be deleted in between.
pub async fn resolve_mounts(
    state: &Engine,
    mounts: &mut [VolumeMount],
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, EngineError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let guard = state.locks.lock(LOCK_KEY).await;
    let org = &state.config.organization_id;
    let now = OffsetDateTime::now_utc();
    for m in mounts.iter_mut() {
        let by_id = state
            .volumes
            .volume(&m.volume_id)
            .await?
            .filter(|v| &v.organization_id == org && v.state != VolumeState::Deleted);
        let v = match by_id {
            Some(v) => v,
            None => state
                .volumes
                .volume_by_name(org, &m.volume_id)
                .await?
                .ok_or_else(|| not_found(&format!("with ID or name {}", m.volume_id)))?,
        };
        if v.state != VolumeState::Ready {
            return Err(EngineError::bad_request(format!(
                "volume {} is {}, not ready",
                v.name,
                v.state.as_str()
            ))
            .with_code("VOLUME_NOT_READY"));
        }
        m.volume_id = v.id;
    }
    for m in mounts.iter() {
        state.volumes.touch_volume(&m.volume_id, now).await?;
    }
    Ok(Some(guard))
}
