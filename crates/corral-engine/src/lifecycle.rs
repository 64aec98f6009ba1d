//! Lifecycle operations shared by the HTTP handlers and the reconciler: start, stop,
//! archive, delete, with per-sandbox serialisation and activity tracking.
//!
//! Every operation records a transitional state before it acts on the runtime and the final
//! state after, so a server that dies midway finds the sandbox in a state the start-up
//! reconciliation knows how to finish (see `reconciler::on_start`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corral_core::transitions::{self, Operation, Refusal, Transition};
use corral_core::{DesiredState, Sandbox, SandboxSpec, SandboxState};
use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;

use crate::Engine;
use crate::error::EngineError;

/// One async lock per sandbox, so lifecycle operations on a sandbox never interleave.
#[derive(Debug, Default)]
pub struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    /// Waits for and takes the lock of sandbox `id`.
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Forgets a deleted sandbox's lock.
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Deletes running in the background (Daytona's delete answers `destroying` at once; the
/// sandbox disappears when its teardown is done).
#[derive(Debug)]
pub struct Teardowns {
    tasks: tokio_util::task::TaskTracker,
    /// At most this many teardowns run at once; the rest wait, still `destroying`.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Teardowns {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            tasks: tokio_util::task::TaskTracker::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(cpus * 4)),
        }
    }
}

impl Teardowns {
    /// Waits for every teardown started so far (at shutdown).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Marks the sandbox `destroying` (durably: after a crash the server finishes the job) and
/// tears it down in the background, holding its lock until done. A teardown that fails
/// leaves the sandbox `destroying`; the reconciler tries again.
pub async fn delete_in_background(
    state: &Engine,
    mut s: Sandbox,
    guard: OwnedMutexGuard<()>,
) -> Result<Sandbox, EngineError> {
    if let Some(run) = plan(&s, s.state, Operation::Delete)? {
        s.desired_state = DesiredState::Destroyed;
        begin(state, &mut s, &run).await?;
    }
    let answer = s.clone();
    let bg = state.clone();
    let slots = Arc::clone(&state.teardowns.slots);
    state.teardowns.tasks.spawn(async move {
        let _guard = guard;
        let _slot = slots.acquire_owned().await;
        if let Err(e) = delete(&bg, &mut s).await {
            tracing::error!(sandbox = %s.id, error = %e.message, "delete failed; will retry");
        }
    });
    Ok(answer)
}

/// Last toolbox/preview activity per sandbox, kept in memory and flushed to the store by
/// the reconciler, so a busy sandbox costs no database write per request; and the requests
/// in flight per sandbox (a sandbox answering one is active however long it runs, so
/// auto-stop and auto-pause never cut a long command off).
#[derive(Debug, Default)]
pub struct Activity {
    last: Mutex<HashMap<String, OffsetDateTime>>,
    in_flight: Mutex<HashMap<String, u32>>,
}

/// A request in flight on a sandbox ([`Activity::begin`]); its end counts as activity.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut map = self
                .activity
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.id);
                }
            }
        }
        self.activity.touch(&self.id);
    }
}

impl Activity {
    /// Records activity on sandbox `id` now.
    pub fn touch(&self, id: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), OffsetDateTime::now_utc());
    }

    /// Records activity now and counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>, id: &str) -> InFlight {
        self.touch(id);
        *self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        InFlight {
            activity: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// Whether a request on sandbox `id` is in flight.
    pub fn is_busy(&self, id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// The latest known activity of a sandbox (memory or record; now while a request on it
    /// is in flight).
    pub fn last(&self, s: &Sandbox) -> OffsetDateTime {
        if self.is_busy(&s.id) {
            return OffsetDateTime::now_utc();
        }
        let map = self.last.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&s.id)
            .copied()
            .map_or(s.last_activity_at, |t| t.max(s.last_activity_at))
    }

    /// Takes every recorded activity (for flushing).
    pub fn drain(&self) -> HashMap<String, OffsetDateTime> {
        std::mem::take(&mut *self.last.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the runtime needs to (re)start a sandbox.
pub fn spec_of(s: &Sandbox) -> SandboxSpec {
    SandboxSpec {
        id: s.id.clone(),
        image: s.snapshot.clone(),
        user: s.user.clone(),
        env: s.env.clone(),
        resources: s.resources,
        egress: s.egress(),
        volumes: s.volumes.clone(),
        entrypoint: None,
    }
}

/// Records `st` as the sandbox's state.
pub(crate) async fn save(
    state: &Engine,
    s: &mut Sandbox,
    st: SandboxState,
) -> Result<(), EngineError> {
    s.state = st;
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(s).await?;
    Ok(())
}

/// The API error for an operation the state table refuses.
pub(crate) fn refusal(r: Refusal, s: &Sandbox, op: Operation) -> EngineError {
    let message = r.message(&s.id, s.state, op);
    let e = if r.is_conflict() {
        EngineError::conflict(message)
    } else {
        EngineError::bad_request(message)
    };
    match r.code() {
        Some(code) => e.with_code(code),
        None => e,
    }
}

/// The states an operation passes through, from the table ([`transitions::plan`]) for
/// `from`: `None` when there is nothing to do; the API error when it is refused.
pub(crate) fn plan(
    s: &Sandbox,
    from: SandboxState,
    op: Operation,
) -> Result<Option<Run>, EngineError> {
    match transitions::plan(from, op) {
        Transition::Done => Ok(None),
        Transition::Run {
            during,
            success,
            failure,
        } => Ok(Some(Run {
            during,
            success,
            failure,
        })),
        Transition::Refused(r) => Err(refusal(r, s, op)),
    }
}

/// A planned run of an operation: the states to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub during: SandboxState,
    pub success: SandboxState,
    pub failure: SandboxState,
}

/// Records `run.during` unless the sandbox is in it already.
pub(crate) async fn begin(state: &Engine, s: &mut Sandbox, run: &Run) -> Result<(), EngineError> {
    if s.state != run.during {
        save(state, s, run.during).await?;
    }
    Ok(())
}

/// Records `run.failure` unless the sandbox is in it already.
async fn fail(state: &Engine, s: &mut Sandbox, run: &Run) -> Result<(), EngineError> {
    if s.state != run.failure {
        save(state, s, run.failure).await?;
    }
    Ok(())
}

/// Starts a stopped, archived or errored sandbox (a no-op when it is started and running).
pub async fn start(state: &Engine, s: &mut Sandbox) -> Result<(), EngineError> {
    let from = transitions::effective(s.state, state.runtime.is_running(&s.id));
    let Some(run) = plan(s, from, Operation::Start)? else {
        return Ok(());
    };
    let began = Instant::now();
    s.desired_state = DesiredState::Started;
    save(state, s, run.during).await?;
    if from == SandboxState::Paused {
        // Its processes are still there, frozen: thaw them.
        if let Err(e) = state.runtime.resume(&s.id).await {
            let err = EngineError::from(e);
            s.error_reason = Some(format!("the sandbox failed to resume: {}", err.message));
            save(state, s, run.failure).await?;
            return Err(err);
        }
        s.last_activity_at = OffsetDateTime::now_utc();
        save(state, s, run.success).await?;
        metrics::histogram!("corral_sandbox_resume_total_seconds")
            .record(began.elapsed().as_secs_f64());
        tracing::info!(sandbox = %s.id, "sandbox resumed");
        return Ok(());
    }
    if let Err(e) = state.runtime.start(&spec_of(s)).await {
        let err = EngineError::from(e);
        s.error_reason = Some(format!("the sandbox failed to start: {}", err.message));
        save(state, s, run.failure).await?;
        return Err(err);
    }
    s.error_reason = None;
    s.stopped_at = None;
    s.last_activity_at = OffsetDateTime::now_utc();
    save(state, s, run.success).await?;
    metrics::histogram!("corral_sandbox_start_seconds").record(began.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox started");
    Ok(())
}

/// Freezes a started sandbox's processes, keeping their memory (`start` resumes them).
pub async fn pause(state: &Engine, s: &mut Sandbox) -> Result<(), EngineError> {
    let from = transitions::effective(s.state, state.runtime.is_running(&s.id));
    let Some(run) = plan(s, from, Operation::Pause)? else {
        return Ok(());
    };
    let began = Instant::now();
    s.desired_state = DesiredState::Paused;
    save(state, s, run.during).await?;
    if let Err(e) = state.runtime.pause(&s.id).await {
        // The runtime thawed whatever froze: it runs as before.
        s.desired_state = DesiredState::Started;
        fail(state, s, &run).await?;
        return Err(e.into());
    }
    save(state, s, run.success).await?;
    metrics::histogram!("corral_sandbox_pause_total_seconds").record(began.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox paused");
    Ok(())
}

/// Stops a sandbox, keeping its files; deletes it instead when its auto-delete interval is 0.
/// Returns whether the sandbox still exists.
pub async fn stop(state: &Engine, s: &mut Sandbox) -> Result<bool, EngineError> {
    let Some(run) = plan(s, s.state, Operation::Stop)? else {
        return Ok(true);
    };
    let began = Instant::now();
    s.desired_state = DesiredState::Stopped;
    save(state, s, run.during).await?;
    if let Err(e) = state.runtime.stop(&s.id).await {
        fail(state, s, &run).await?;
        return Err(e.into());
    }
    s.stopped_at = Some(OffsetDateTime::now_utc());
    save(state, s, run.success).await?;
    metrics::histogram!("corral_sandbox_stop_seconds").record(began.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox stopped");
    if s.auto_delete_interval == 0 {
        delete(state, s).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Packs a stopped sandbox's files into an archive.
pub async fn archive(state: &Engine, s: &mut Sandbox) -> Result<(), EngineError> {
    let Some(run) = plan(s, s.state, Operation::Archive)? else {
        return Ok(());
    };
    let began = Instant::now();
    s.desired_state = DesiredState::Archived;
    save(state, s, run.during).await?;
    if let Err(e) = state.runtime.archive(&s.id).await {
        fail(state, s, &run).await?;
        return Err(e.into());
    }
    save(state, s, run.success).await?;
    metrics::histogram!("corral_sandbox_archive_seconds").record(began.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox archived");
    Ok(())
}

/// Kills everything in the sandbox, removes every trace of it and its record.
pub async fn delete(state: &Engine, s: &mut Sandbox) -> Result<(), EngineError> {
    let Some(run) = plan(s, s.state, Operation::Delete)? else {
        return Ok(());
    };
    let began = Instant::now();
    s.desired_state = DesiredState::Destroyed;
    begin(state, s, &run).await?;
    // A failure leaves it `destroying` (`run.failure`): the reconciler tries again.
    state.runtime.destroy(&s.id).await?;
    state.store.remove(&s.id).await?;
    state.telemetry.forget(&s.id);
    s.state = run.success;
    state.locks.forget(&s.id);
    metrics::histogram!("corral_sandbox_delete_seconds").record(began.elapsed().as_secs_f64());
    tracing::info!(sandbox = %s.id, "sandbox deleted");
    Ok(())
}

pub fn not_found(id_or_name: &str) -> EngineError {
    EngineError::not_found(format!("Sandbox with ID or name {id_or_name} not found"))
        .with_code("SANDBOX_NOT_FOUND")
}

/// Finds a sandbox by id or name.
pub async fn find(state: &Engine, id_or_name: &str) -> Result<Sandbox, EngineError> {
    state
        .store
        .get(id_or_name)
        .await?
        .ok_or_else(|| not_found(id_or_name))
}

/// Finds a sandbox and takes its lock, re-reading it under the lock.
pub async fn locked(
    state: &Engine,
    id_or_name: &str,
) -> Result<(Sandbox, tokio::sync::OwnedMutexGuard<()>), EngineError> {
    let s = find(state, id_or_name).await?;
    let guard = state.locks.lock(&s.id).await;
    let s = state
        .store
        .get(&s.id)
        .await?
        .ok_or_else(|| not_found(id_or_name))?;
    Ok((s, guard))
}

/// Starts a sandbox just recorded and records the outcome: `started`; or, when the start
/// failed, the record removed with every trace (a client error: nothing of it stays) or
/// `error`, recoverable, with its files kept (a host failure; see the server log).
pub async fn start_recorded(
    state: &Engine,
    sandbox: &mut Sandbox,
    spec: &corral_core::SandboxSpec,
) -> Result<(), EngineError> {
    if let Err(e) = state.runtime.start(spec).await {
        let err = EngineError::from(e);
        if err.is_client_error() {
            state.runtime.destroy(&sandbox.id).await?;
            state.store.remove(&sandbox.id).await?;
        } else {
            sandbox.state = SandboxState::Error;
            sandbox.error_reason = Some("the sandbox failed to start; see the server log".into());
            sandbox.updated_at = OffsetDateTime::now_utc();
            state.store.update(sandbox).await?;
        }
        return Err(err);
    }
    sandbox.state = SandboxState::Started;
    sandbox.updated_at = OffsetDateTime::now_utc();
    state.store.update(sandbox).await?;
    Ok(())
}

/// Checks a sandbox name.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::bad_request(
            "name must be 1-255 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}
