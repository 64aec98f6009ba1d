//! The reconciler: drives each sandbox's actual state toward its desired state and runs the
//! lifecycle timers (auto-stop and auto-pause after idle minutes, auto-archive and
//! auto-delete after stopped minutes, the time to live whatever the state). Also what the server does with recorded sandboxes when it starts.

use std::time::Duration;

use corral_core::transitions::{self, AfterCrash, Operation};
use corral_core::{ListQuery, Sandbox, SandboxState};
use time::OffsetDateTime;

use crate::Engine;
use crate::error::EngineError;
use crate::lifecycle;

/// Auto-archive interval 0 means "the maximum": 30 days.
pub const MAX_AUTO_ARCHIVE_MINUTES: i64 = 30 * 24 * 60;

/// The auto-archive interval stored for a requested one, as Daytona resolves it: 0 is
/// the maximum, and anything above the maximum is capped to it.
pub fn resolve_auto_archive(minutes: i64) -> i64 {
    if minutes == 0 {
        MAX_AUTO_ARCHIVE_MINUTES
    } else {
        minutes.min(MAX_AUTO_ARCHIVE_MINUTES)
    }
}

/// Every recorded sandbox (all pages).
pub(crate) async fn all(state: &Engine) -> Result<Vec<Sandbox>, EngineError> {
    let mut query = ListQuery {
        limit: 200,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = state.store.list(&query).await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

pub(crate) fn minutes(state: &Engine, n: i64) -> time::Duration {
    time::Duration::try_from(state.config.lifecycle_minute).unwrap_or(time::Duration::MINUTE)
        * (n as i32)
}

/// Brings recorded state in line with what is running, once, when the server starts:
/// running sandboxes are adopted (exec works at once), sandboxes whose init died are marked
/// `error` (start or recover runs them again), interrupted operations are finished, and
/// traces of sandboxes that no longer exist are removed.
pub async fn on_start(state: &Engine) -> Result<(), EngineError> {
    let recorded = all(state).await?;
    // Builds resume only once the leftovers below are gone: a build sandbox they start is
    // recorded nowhere, and would otherwise be taken for a leftover and destroyed mid-build.
    let mut builds_to_resume = Vec::new();
    for mut s in recorded.iter().cloned() {
        // Processes may be running only in these states: adopt them, so exec works at once.
        let may_run = matches!(
            s.state,
            SandboxState::Started
                | SandboxState::Creating
                | SandboxState::Starting
                | SandboxState::Restoring
                | SandboxState::Resizing
                | SandboxState::Snapshotting
                | SandboxState::Forking
                | SandboxState::Stopping
                | SandboxState::Pausing
                | SandboxState::Paused
                | SandboxState::Resuming
        );
        let running = may_run && state.runtime.adopt(&s.id).await?;
        match transitions::after_crash(s.state, running) {
            AfterCrash::Keep => {}
            AfterCrash::Set(next) if next == s.state => {}
            AfterCrash::Set(next) => {
                if next == SandboxState::Error {
                    s.error_reason =
                        Some("the sandbox was not running when the server started".into());
                }
                tracing::warn!(sandbox = %s.id, from = %s.state, to = %next, "reconciled on start");
                s.state = next;
                s.updated_at = OffsetDateTime::now_utc();
                state.store.update(&s).await?;
            }
            AfterCrash::Rerun {
                op: Operation::Delete,
                ..
            } => lifecycle::delete(state, &mut s).await?,
            AfterCrash::Rerun {
                op: Operation::Archive,
                from,
            } => {
                // Finish the interrupted archive (it is idempotent).
                s.state = from;
                lifecycle::archive(state, &mut s).await?;
            }
            AfterCrash::Rerun {
                op: Operation::Pause,
                from,
            } => {
                // Finish the interrupted freeze (it is idempotent).
                s.state = from;
                lifecycle::pause(state, &mut s).await?;
            }
            AfterCrash::Rerun {
                op: Operation::Start,
                from,
            } => {
                // Finish the interrupted thaw (it is idempotent).
                s.state = from;
                lifecycle::start(state, &mut s).await?;
            }
            AfterCrash::Rerun { op, .. } => {
                debug_assert_eq!(op, Operation::Stop);
                lifecycle::stop(state, &mut s).await?;
            }
            AfterCrash::ResumeBuild => {
                // The build resumes (or is reused when its snapshot got built meanwhile).
                tracing::warn!(sandbox = %s.id, "resuming a sandbox build cut off by a server stop");
                builds_to_resume.push(s.id.clone());
            }
            AfterCrash::Remove => {
                // Left by an earlier version, whose creates pulled inside the request: that
                // request died with the server before the sandbox ever ran, and its client
                // got no sandbox. (Creates now answer `pending_build` and pull in the
                // background.)
                tracing::warn!(sandbox = %s.id, "removing a sandbox whose create was cut off during its image pull");
                lifecycle::delete(state, &mut s).await?;
            }
        }
    }
    let known: std::collections::HashSet<&str> = recorded.iter().map(|s| s.id.as_str()).collect();
    for id in state.runtime.traces() {
        if !known.contains(id.as_str()) {
            tracing::warn!(sandbox = %id, "removing leftovers of a sandbox that no longer exists");
            state.runtime.destroy(&id).await?;
        }
    }
    crate::builds::resume(state).await?;
    for id in builds_to_resume {
        tokio::spawn(crate::builds::finish(state.clone(), id));
    }
    Ok(())
}

/// Runs the reconciler every `tick` until the process ends.
pub async fn run(state: Engine, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = reconcile_once(&state).await {
            tracing::error!(error = %e.message, "reconciler pass failed");
        }
    }
}

/// One pass: flush activity, then apply timers and reality to every sandbox.
pub async fn reconcile_once(state: &Engine) -> Result<(), EngineError> {
    let activity = state.activity.drain();
    let now = OffsetDateTime::now_utc();
    for id in all(state).await?.into_iter().map(|s| s.id) {
        let _guard = state.locks.lock(&id).await;
        let Some(mut s) = state.store.get(&id).await? else {
            continue;
        };
        if let Some(t) = activity.get(&id)
            && *t > s.last_activity_at
        {
            s.last_activity_at = *t;
            state.store.update(&s).await?;
        }
        let last = state.activity.last(&s);
        if s.auto_destroy_at.is_some_and(|t| now >= t)
            && !matches!(s.state, SandboxState::Destroying | SandboxState::Destroyed)
        {
            tracing::info!(sandbox = %s.id, "deleted: its time to live is over");
            lifecycle::delete(state, &mut s).await?;
            continue;
        }
        let idle = |interval: i64| interval > 0 && now - last >= minutes(state, interval);
        match s.state {
            // A background teardown that failed: try again.
            SandboxState::Destroying => lifecycle::delete(state, &mut s).await?,
            SandboxState::Started | SandboxState::Paused if !state.runtime.is_running(&s.id) => {
                s.state = SandboxState::Error;
                s.error_reason = Some("the sandbox's init process exited".into());
                s.updated_at = now;
                state.store.update(&s).await?;
                tracing::warn!(sandbox = %s.id, "sandbox init exited; marked error");
            }
            // Auto-stop applies to paused sandboxes too: one idle long enough is stopped,
            // which frees its memory.
            SandboxState::Started | SandboxState::Paused if idle(s.auto_stop_interval) => {
                tracing::info!(sandbox = %s.id, "auto-stop after inactivity");
                lifecycle::stop(state, &mut s).await?;
            }
            SandboxState::Started if idle(s.auto_pause_interval) => {
                tracing::info!(sandbox = %s.id, "auto-pause after inactivity");
                if let Err(e) = lifecycle::pause(state, &mut s).await {
                    tracing::warn!(sandbox = %s.id, error = %e.message, "auto-pause failed");
                } else if state.activity.is_busy(&s.id) {
                    // A request began while it froze (it checked before the freeze ended):
                    // thaw it, so that request is answered.
                    lifecycle::start(state, &mut s).await?;
                }
            }
            SandboxState::Stopped => {
                let since = s.stopped_at.unwrap_or(s.updated_at);
                // Records written before 0 was resolved on the way in still hold 0.
                let archive_after = resolve_auto_archive(s.auto_archive_interval);
                if s.auto_delete_interval >= 0
                    && now - since >= minutes(state, s.auto_delete_interval)
                {
                    tracing::info!(sandbox = %s.id, "auto-delete after being stopped");
                    lifecycle::delete(state, &mut s).await?;
                } else if archive_after > 0 && now - since >= minutes(state, archive_after) {
                    tracing::info!(sandbox = %s.id, "auto-archive after being stopped");
                    lifecycle::archive(state, &mut s).await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
