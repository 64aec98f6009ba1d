//! Snapshots and forks of sandboxes ([`crate::Op::Snapshot`], [`crate::Op::Fork`]): a snapshot
//! commits a sandbox's files as a new snapshot (it keeps running), a fork copies them to a
//! new sandbox. Both are copy-on-write in the runtime, so they take milliseconds whatever the
//! sandbox holds; the sandbox is `snapshotting` / `forking` meanwhile.

use std::time::Instant;

use corral_core::transitions::Operation;
use corral_core::{
    CommitConfig, DesiredState, Sandbox, SandboxState, Snapshot, SnapshotState,
    sandbox_snapshot_reference,
};
use time::OffsetDateTime;

use crate::DEFAULT_SNAPSHOT;
use crate::Engine;
use crate::error::EngineError;
use crate::lifecycle::locked;
use crate::lifecycle::save;

/// Commits the sandbox's files as snapshot
/// `name` (an `active` snapshot when this answers) and answers the sandbox, back in the
/// state it was in.
pub(crate) async fn snapshot(
    state: &Engine,
    s: &mut Sandbox,
    name: String,
) -> Result<(), EngineError> {
    crate::snapshots::validate_name(&name)?;
    if name == DEFAULT_SNAPSHOT {
        return Err(
            EngineError::conflict("the snapshot name \"host\" is built in").with_code("NAME_TAKEN"),
        );
    }
    let run = crate::lifecycle::plan(s, s.state, Operation::Snapshot)?
        .ok_or_else(|| EngineError::conflict("nothing to snapshot"))?;
    let began = Instant::now();
    let now = crate::snapshots::now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let mut snap = Snapshot {
        image_name: Some(sandbox_snapshot_reference(&id)),
        id,
        name,
        state: SnapshotState::Pending,
        size: None,
        entrypoint: Vec::new(),
        cpu: s.resources.cpu,
        memory_gib: s.resources.memory_gib,
        disk_gib: s.resources.disk_gib,
        error_reason: None,
        general: false,
        created_at_ms: now,
        updated_at_ms: now,
        last_used_at_ms: None,
    };
    // Recorded first: a server stopped midway finds it `pending` and finishes or fails it.
    // Claimed first: a create from it meanwhile waits for the commit.
    let _claim = crate::builds::Claim::take(&state.building, &snap.id);
    crate::snapshots::insert(state, &snap).await?;
    save(state, s, run.during).await?;
    let committed = state
        .runtime
        .snapshot(
            &s.id,
            &snap.id,
            &CommitConfig {
                user: Some(s.user.clone()),
                ..CommitConfig::default()
            },
        )
        .await;
    save(
        state,
        s,
        if committed.is_ok() {
            run.success
        } else {
            run.failure
        },
    )
    .await?;
    match committed {
        Ok(info) => {
            snap.state = SnapshotState::Active;
            snap.size = Some(info.size);
            snap.updated_at_ms = crate::snapshots::now_ms();
            state.snapshots.update_snapshot(&snap).await?;
            tracing::info!(
                sandbox = %s.id,
                snapshot = %snap.name,
                size = info.size,
                ms = began.elapsed().as_millis() as u64,
                "sandbox snapshotted"
            );
            Ok(())
        }
        Err(e) => {
            state.snapshots.remove_snapshot(&snap.id).await?;
            Err(e.into())
        }
    }
}

/// A new sandbox with a copy-on-write copy of
/// this one's files (same image, resources, user, env, labels, network and volumes), started.
pub(crate) async fn fork(
    state: &Engine,
    id_or_name: &str,
    name: Option<String>,
) -> Result<Sandbox, EngineError> {
    let began = Instant::now();
    let (mut src, src_guard) = locked(state, id_or_name).await?;
    let run = crate::lifecycle::plan(&src, src.state, Operation::Fork)?
        .ok_or_else(|| EngineError::conflict("nothing to fork"))?;
    let id = uuid::Uuid::new_v4().to_string();
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => {
            crate::lifecycle::validate_name(&n)?;
            n
        }
        None => id.clone(),
    };
    let now = OffsetDateTime::now_utc();
    let mut fork = Sandbox {
        id,
        name,
        state: SandboxState::Creating,
        desired_state: DesiredState::Started,
        error_reason: None,
        public: false,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        stopped_at: None,
        // Its own key: URLs signed for the source do not open the fork.
        signing_key: None,
        ..src.clone()
    };
    let _fork_guard = state.locks.lock(&fork.id).await;
    state.store.insert(&fork).await?;
    save(state, &mut src, run.during).await?;
    let copied = state.runtime.fork(&src.id, &fork.id, &fork.resources).await;
    let after = if copied.is_ok() {
        run.success
    } else {
        run.failure
    };
    save(state, &mut src, after).await?;
    drop(src_guard);
    if let Err(e) = copied {
        state.runtime.destroy(&fork.id).await?;
        state.store.remove(&fork.id).await?;
        return Err(e.into());
    }
    let copy_ms = began.elapsed().as_millis() as u64;
    let spec = crate::lifecycle::spec_of(&fork);
    crate::lifecycle::start_recorded(state, &mut fork, &spec).await?;
    tracing::info!(
        sandbox = %fork.id,
        source = %src.id,
        copy_ms,
        ms = began.elapsed().as_millis() as u64,
        "sandbox forked"
    );
    Ok(fork)
}
