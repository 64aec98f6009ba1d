//! Sandboxes: finding them, creating them (from a warm pool, cold, from an image, or after
//! a build or pull) and starting a just-recorded one. Operations on an existing sandbox go
//! through [`crate::ops`].

use std::time::Instant;

use corral_core::{Sandbox, SandboxState};
use time::OffsetDateTime;

use crate::Engine;
use crate::error::EngineError;
use crate::lifecycle;
pub use crate::lifecycle::{find, locked, start_recorded, validate_name};
pub use crate::{DEFAULT_SNAPSHOT, DEFAULT_USER};

/// Gives the new sandbox a running sandbox of a warm pool that serves its snapshot and
/// shape (see `pool::PoolShape`), personalised: the request's record (name, labels, timers,
/// TTL, public flag) is stored under the pooled id and its network policy applied.
async fn claim_pooled(
    state: &Engine,
    sandbox: &mut Sandbox,
    user_requested: bool,
) -> Result<Option<(Sandbox, String)>, EngineError> {
    while let Some(claim) = state.pool.take_for(sandbox, user_requested) {
        let id = claim.sandbox_id;
        if !state.runtime.is_running(&id) {
            state.runtime.destroy(&id).await?;
            continue;
        }
        let fresh_name = sandbox.name == sandbox.id;
        sandbox.id = id;
        if fresh_name {
            sandbox.name = sandbox.id.clone();
        }
        sandbox.snapshot = claim.shape.snapshot;
        sandbox.user = claim.shape.user;
        sandbox.state = SandboxState::Started;
        let egress = sandbox.egress();
        if egress != corral_core::Egress::Open
            && let Err(e) = state.runtime.set_egress(&sandbox.id, &egress).await
        {
            state.runtime.destroy(&sandbox.id).await?;
            return Err(e.into());
        }
        if let Err(e) = state.store.insert(sandbox).await {
            // E.g. a taken name: the pooled sandbox has no owner now; remove it.
            state.runtime.destroy(&sandbox.id).await?;
            return Err(e.into());
        }
        tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, warm_pool = %claim.pool_id, "sandbox created from a warm pool");
        return Ok(Some((sandbox.clone(), claim.pool_id)));
    }
    Ok(None)
}

/// Creates `sandbox` (a new record, state `creating`, checked by the caller) and starts it:
/// from a warm pool that serves it, else cold, from an image, or (answered at once,
/// `pending_build`) after the build or pull its snapshot needs. `user_requested`: the request
/// named the user (else an image's own user is used).
pub async fn create(
    state: &Engine,
    mut sandbox: Sandbox,
    build_info: Option<serde_json::Value>,
    user_requested: bool,
) -> Result<Sandbox, EngineError> {
    let started = Instant::now();
    // Held until the record is stored: a volume cannot be deleted in between.
    let volumes_guard = crate::volumes::resolve_mounts(state, &mut sandbox.volumes).await?;
    if let Some(snap) =
        crate::builds::snapshot_to_prepare(state, &sandbox, build_info.as_ref()).await?
    {
        // Built or pulled first: answered now, started when the snapshot is ready.
        let r = crate::builds::create_sandbox(state, sandbox, snap, user_requested).await;
        drop(volumes_guard);
        return r;
    }
    let claim_started = Instant::now();
    if build_info.is_none()
        && let Some((claimed, pool_id)) = claim_pooled(state, &mut sandbox, user_requested).await?
    {
        metrics::histogram!("corral_create_phase_seconds", "phase" => "claim")
            .record(claim_started.elapsed().as_secs_f64());
        metrics::histogram!("corral_sandbox_create_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("corral_sandbox_create_total", "path" => "pool").increment(1);
        metrics::counter!("corral_warm_pool_claims_total", "pool" => pool_id).increment(1);
        return Ok(claimed);
    }
    if build_info.is_some() || sandbox.snapshot != DEFAULT_SNAPSHOT {
        return create_from_image(state, sandbox, build_info, user_requested, volumes_guard).await;
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
    start_recorded(state, &mut sandbox, &spec).await?;
    metrics::histogram!("corral_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, "sandbox created");
    Ok(sandbox)
}

/// Creates a sandbox from a ready OCI snapshot or stored image (see
/// `builds::snapshot_to_prepare` for the others) and starts it over the image's layers.
async fn create_from_image(
    state: &Engine,
    mut sandbox: Sandbox,
    build_info: Option<serde_json::Value>,
    user_requested: bool,
    volumes_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> Result<Sandbox, EngineError> {
    let started = Instant::now();
    let _guard = state.locks.lock(&sandbox.id).await;
    let requested = (sandbox.snapshot != DEFAULT_SNAPSHOT).then(|| sandbox.snapshot.clone());
    let source = crate::catalog::source_for(state, requested.as_deref(), build_info.as_ref()).await;
    let (snapshot, image, image_user, entrypoint) = match source? {
        crate::catalog::Source::Image {
            snapshot,
            image,
            user,
            entrypoint,
        } => (snapshot, image, user, entrypoint),
        crate::catalog::Source::Host => (
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
    start_recorded(state, &mut sandbox, &spec).await?;
    metrics::histogram!("corral_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("corral_sandbox_create_total", "path" => "image").increment(1);
    tracing::info!(sandbox = %sandbox.id, name = %sandbox.name, snapshot = %sandbox.snapshot, "sandbox created from an image");
    Ok(sandbox)
}
