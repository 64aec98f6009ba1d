//! The snapshot catalog's operations: create (pulled or built in the background), delete,
//! activate, and what a sandbox create resolves its snapshot to. Over [`crate::snapshots`]
//! (records and pulls) and [`crate::builds`] (Dockerfile builds).

use corral_core::{DesiredState, ListQuery, Snapshot, SnapshotState};
use serde_json::Value;

use crate::DEFAULT_SNAPSHOT;
use crate::Engine;
use crate::error::EngineError;
use crate::ops::resource;
use crate::snapshots::{
    BuildInfo, NewSnapshot, find, image_of_dockerfile, image_snapshot, insert, not_found, now_ms,
    validate_name,
};

/// Records a new snapshot (`pending`) and pulls or builds it in the background.
pub async fn create(state: &Engine, req: NewSnapshot) -> Result<Snapshot, EngineError> {
    validate_name(&req.name)?;
    if req.name == DEFAULT_SNAPSHOT {
        return Err(
            EngineError::conflict("the snapshot name \"host\" is built in").with_code("NAME_TAKEN"),
        );
    }
    if req.gpu.is_some_and(|g| g > 0) {
        return Err(EngineError::bad_request(
            "GPUs are not available on this server",
        ));
    }
    let (image, mut entrypoint) = match (&req.image_name, &req.build_info) {
        (Some(i), None) => (i.trim().to_owned(), Vec::new()),
        (None, Some(b)) => match image_of_dockerfile(&b.dockerfile_content) {
            Ok(found) if b.context_hashes.as_ref().is_none_or(Vec::is_empty) => found,
            // Anything beyond FROM is built (in the background, with build logs).
            _ => {
                crate::builds::check(state, &b.dockerfile_content, b.context_hashes.as_deref())?;
                let d = corral_core::Resources::default();
                let resources = corral_core::Resources {
                    cpu: resource(req.cpu, d.cpu, 64, "cpu")?,
                    gpu: 0,
                    memory_gib: resource(req.memory, d.memory_gib, 1024, "memory")?,
                    disk_gib: resource(req.disk, d.disk_gib, 10240, "disk")?,
                };
                let snap = crate::builds::record(
                    state,
                    req.name,
                    &b.dockerfile_content,
                    b.context_hashes.as_deref().unwrap_or_default(),
                    resources,
                )
                .await?;
                let bg = state.clone();
                let id = snap.id.clone();
                tokio::spawn(async move {
                    // Failures are recorded on the snapshot (`build_failed`, errorReason).
                    let _ = crate::builds::ensure_ready(&bg, &id).await;
                });
                return Ok(snap);
            }
        },
        (Some(_), Some(_)) => {
            return Err(EngineError::bad_request(
                "give imageName or buildInfo, not both",
            ));
        }
        (None, None) => return Err(EngineError::bad_request("imageName is required")),
    };
    if let Some(e) = req.entrypoint.filter(|e| !e.is_empty()) {
        entrypoint = e;
    }
    if image.starts_with(corral_core::SANDBOX_SNAPSHOT_PREFIX) {
        return Err(EngineError::bad_request(format!(
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
    insert(state, &snap).await?;
    let bg = state.clone();
    let id = snap.id.clone();
    tokio::spawn(async move {
        // Failures are recorded on the snapshot (state `error`, errorReason).
        let _ = crate::builds::ensure_ready(&bg, &id).await;
    });
    Ok(snap)
}

/// Names of sandboxes created from `snapshot`, except those being deleted: their teardown
/// keeps the layers they mount and collects them when it is done.
async fn users_of(state: &Engine, snapshot: &str) -> Result<Vec<String>, EngineError> {
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

/// Deletes a snapshot: refused while a sandbox uses it; then the record goes and image
/// layers no remaining snapshot or sandbox needs are removed.
pub async fn delete(state: &Engine, id_or_name: &str) -> Result<(), EngineError> {
    let s = find(state, id_or_name)
        .await?
        .ok_or_else(|| not_found(id_or_name))?;
    if s.general {
        return Err(EngineError::bad_request(format!(
            "snapshot {} is built in and cannot be deleted",
            s.name
        )));
    }
    let users = users_of(state, &s.name).await?;
    if !users.is_empty() {
        return Err(EngineError::conflict(format!(
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
        return Err(EngineError::conflict(format!(
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
    crate::builds::forget(state, &s.id).await;
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
    Ok(())
}

/// Activates a snapshot: snapshots here never go inactive; answers the snapshot (an errored
/// one is pulled or built again, in the background).
pub async fn activate(state: &Engine, id_or_name: &str) -> Result<Snapshot, EngineError> {
    let mut s = find(state, id_or_name)
        .await?
        .ok_or_else(|| not_found(id_or_name))?;
    let build = s.state == SnapshotState::BuildFailed && crate::builds::is_build(state, &s.id);
    if build || (s.state == SnapshotState::Error && !s.general) {
        s.state = SnapshotState::Pending;
        s.updated_at_ms = now_ms();
        state.snapshots.update_snapshot(&s).await?;
        let bg = state.clone();
        let id = s.id.clone();
        tokio::spawn(async move {
            // The outcome is recorded on the snapshot.
            let _ = crate::builds::ensure_ready(&bg, &id).await;
        });
    }
    Ok(s)
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
    state: &Engine,
    snapshot: Option<&str>,
    build_info: Option<&Value>,
) -> Result<Source, EngineError> {
    let mut snap = if let Some(b) = build_info {
        // Builds (uploaded context included) were sent to the background path by
        // `builds::snapshot_to_prepare`: what reaches here is a bare `FROM <image>`.
        let b: BuildInfo = serde_json::from_value(b.clone())
            .map_err(|e| EngineError::bad_request(format!("invalid buildInfo: {e}")))?;
        let (image, entrypoint) = image_of_dockerfile(&b.dockerfile_content)?;
        image_snapshot(state, &image, entrypoint).await?
    } else {
        match snapshot {
            None => return Ok(Source::Host),
            Some(n) if n == DEFAULT_SNAPSHOT => return Ok(Source::Host),
            Some(n) => state.snapshots.get_snapshot(n).await?.ok_or_else(|| {
                EngineError::bad_request(format!("Snapshot {n} not found"))
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
                return Err(EngineError::bad_request(format!(
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
                EngineError::bad_request(format!("image {image} of snapshot {} is gone", snap.name))
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
