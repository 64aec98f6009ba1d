//! Volumes: created and deleted (deletes wait for sandboxes being torn down and refuse while
//! one mounts the volume), and the volumes a new sandbox mounts, resolved to ready volumes
//! and their use recorded, under the same lock.

use corral_core::VolumeMount;
use corral_core::ports::{Volume, VolumeState};
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

/// Creates a volume's storage and records it `ready` (or `error`, with the reason).
pub async fn create(state: &Engine, name: String) -> Result<Volume, EngineError> {
    let now = OffsetDateTime::now_utc();
    let mut v = Volume {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        organization_id: state.config.organization_id.clone(),
        state: VolumeState::Creating,
        error_reason: None,
        created_at: now,
        updated_at: now,
        last_used_at: None,
    };
    if let Err(e) = state.volumes.insert_volume(&v).await {
        return Err(match e {
            corral_core::StoreError::NameTaken(n) => {
                EngineError::conflict(format!("a volume named {n:?} already exists"))
                    .with_code("VOLUME_NAME_TAKEN")
            }
            other => other.into(),
        });
    }
    let done = state.runtime.create_volume(&v.id).await;
    record_outcome(state, &mut v, done, VolumeState::Ready, "creating").await?;
    tracing::info!(volume = %v.id, name = %v.name, "volume created");
    Ok(v)
}

/// A volume of this organization, by id.
pub async fn find(state: &Engine, id: &str) -> Result<Volume, EngineError> {
    match state.volumes.volume(id).await? {
        Some(v) if v.organization_id == state.config.organization_id => Ok(v),
        _ => Err(not_found(&format!("with ID {id}"))),
    }
}

/// How long a volume delete waits for sandboxes being deleted to finish their teardown.
const TEARDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The sandboxes (id, name, being deleted) whose records mount the volume.
async fn in_use_by(state: &Engine, v: &Volume) -> Result<Vec<(String, String, bool)>, EngineError> {
    let mut users = Vec::new();
    for (id, name) in state.volumes.sandboxes_using_volume(&v.id).await? {
        let going = state
            .store
            .get(&id)
            .await?
            .is_none_or(|s| s.state == corral_core::SandboxState::Destroying);
        users.push((id, name, going));
    }
    Ok(users)
}

/// The 409 for a volume still mounted by `users` (not empty).
fn in_use(v: &Volume, users: &[(String, String, bool)]) -> EngineError {
    let shown = users
        .first()
        .map(|(id, name, _)| {
            if id == name {
                id.clone()
            } else {
                format!("{name} ({id})")
            }
        })
        .unwrap_or_default();
    let more = match users.len() {
        0 | 1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    EngineError::conflict(format!(
        "volume {} is in use by sandbox {shown}{more}; delete the sandbox{} first",
        v.name,
        if users.len() > 1 { "es" } else { "" },
    ))
    .with_code("VOLUME_IN_USE")
}

/// Deletes a volume: refused (conflict) while a sandbox that is not destroyed mounts it;
/// otherwise removes its files and records it `deleted`. Idempotent.
pub async fn delete(state: &Engine, id: &str) -> Result<(), EngineError> {
    // Sandboxes being deleted release the volume when their teardown ends: wait a little.
    let deadline = tokio::time::Instant::now() + TEARDOWN_WAIT;
    let (mut v, _guard) = loop {
        let guard = state.locks.lock(LOCK_KEY).await;
        let v = find(state, id).await?;
        if v.state == VolumeState::Deleted {
            return Ok(());
        }
        let users = in_use_by(state, &v).await?;
        if users.is_empty() {
            break (v, guard);
        }
        if users.iter().any(|(_, _, going)| !going) || tokio::time::Instant::now() >= deadline {
            return Err(in_use(&v, &users));
        }
        drop(guard);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    v.state = VolumeState::Deleting;
    v.updated_at = OffsetDateTime::now_utc();
    state.volumes.update_volume(&v).await?;
    let done = state.runtime.delete_volume(&v.id).await;
    record_outcome(state, &mut v, done, VolumeState::Deleted, "deleting").await?;
    tracing::info!(volume = %v.id, name = %v.name, "volume deleted");
    Ok(())
}

/// Records what a runtime step on a volume did: `success` state, or `error` with the reason
/// (the error is returned too).
async fn record_outcome(
    state: &Engine,
    v: &mut Volume,
    done: Result<(), corral_core::RuntimeError>,
    success: VolumeState,
    doing: &str,
) -> Result<(), EngineError> {
    let failed = done.err().map(EngineError::from);
    match &failed {
        Some(err) => {
            v.state = VolumeState::Error;
            v.error_reason = Some(format!("{doing} the volume failed: {}", err.message));
        }
        None => v.state = success,
    }
    v.updated_at = OffsetDateTime::now_utc();
    state.volumes.update_volume(v).await?;
    failed.map_or(Ok(()), Err)
}
