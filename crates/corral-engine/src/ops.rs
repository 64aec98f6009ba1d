//! The one operation surface: every change to an existing sandbox is an [`Op`] applied by
//! [`Engine::apply`], which takes the sandbox's lock, reads it again under the lock, checks
//! the operation against the transition table (`corral_core::transitions`, through
//! [`crate::lifecycle::plan`]), records the transitional state, acts, and records the outcome.

use std::collections::BTreeMap;

use corral_core::transitions::Operation;
use corral_core::{Egress, Resources, Sandbox};
use time::OffsetDateTime;

use crate::Engine;
use crate::error::EngineError;
use crate::lifecycle;

/// Which lifecycle timer [`Op::SetTimer`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Minutes of inactivity before a stop (0 = never).
    Stop,
    /// Minutes stopped before an archive (0 = the maximum, 30 days).
    Archive,
    /// Minutes stopped before a delete (negative = never, 0 = on stop).
    Delete,
    /// Minutes of inactivity before a pause (0 = never).
    Pause,
}

/// The longest time to live: ten years.
pub const MAX_TTL_MINUTES: i64 = 10 * 366 * 24 * 60;

/// New resources; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resize {
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

/// A change of egress policy. `allow_list: Some(list)` means an allow list was given
/// (already checked: CIDRs joined with `,`; `None` inside when it was empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkChange {
    pub block_all: Option<bool>,
    pub allow_list: Option<Option<String>>,
}

/// An operation on an existing sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Start a stopped, archived or errored sandbox (a no-op when it runs).
    Start,
    /// Stop it, keeping its files (deletes it when its auto-delete interval is 0).
    Stop,
    /// Pack a stopped sandbox's files into an archive.
    Archive,
    /// Freeze its processes, keeping their memory (`Start` resumes them).
    Pause,
    /// Delete it this many minutes from now whatever its state (0 = no TTL).
    SetTtl(i64),
    /// Bring an errored sandbox back: started, or stopped with `skip_start`.
    Recover { skip_start: bool },
    /// Mark it `destroying` and tear it down in the background.
    Delete,
    /// Replace every label.
    SetLabels(BTreeMap<String, String>),
    /// Set a lifecycle timer, in minutes.
    SetTimer(Timer, i64),
    /// New CPU and memory at once; disk may only grow, and only while stopped.
    Resize(Resize),
    /// Change the egress policy, enforced at once.
    SetNetwork(NetworkChange),
    /// Make previews public or private.
    SetPublic(bool),
    /// Give it a signing key for preview URLs: `key` when it has none, or always when
    /// `rotate`.
    SigningKey { key: String, rotate: bool },
    /// Commit its files as a new snapshot named `name`.
    Snapshot { name: String },
    /// A new, started sandbox with a copy-on-write copy of its files; the answer is the
    /// fork.
    Fork { name: Option<String> },
}

/// Checks a resource value: `default` when absent, else within `1..=max`.
pub fn resource(
    value: Option<i64>,
    default: u32,
    max: u32,
    what: &str,
) -> Result<u32, EngineError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v <= i64::from(max) => Ok(v as u32),
        Some(v) => Err(EngineError::bad_request(format!(
            "{what} must be between 1 and {max}, got {v}"
        ))),
    }
}

impl Engine {
    /// Applies `op` to the sandbox `id_or_name` and answers its record afterwards (for
    /// [`Op::Fork`], the fork's).
    pub async fn apply(&self, id_or_name: &str, op: Op) -> Result<Sandbox, EngineError> {
        let state = self;
        if let Op::Fork { name } = op {
            return crate::forks::fork(state, id_or_name, name).await;
        }
        let (mut s, guard) = crate::lifecycle::locked(state, id_or_name).await?;
        match op {
            Op::Start => lifecycle::start(state, &mut s).await?,
            Op::Stop => {
                // From `error` too: stop ends whatever is left and leaves a clean stopped
                // sandbox.
                lifecycle::stop(state, &mut s).await?;
            }
            Op::Archive => lifecycle::archive(state, &mut s).await?,
            Op::Pause => lifecycle::pause(state, &mut s).await?,
            Op::SetTtl(minutes) => {
                s.auto_destroy_at = ttl_deadline(state, OffsetDateTime::now_utc(), minutes)?;
                touch_record(state, &mut s).await?;
            }
            Op::Recover { skip_start } => recover(state, &mut s, skip_start).await?,
            Op::Delete => return lifecycle::delete_in_background(state, s, guard).await,
            Op::SetLabels(labels) => {
                s.labels = labels;
                touch_record(state, &mut s).await?;
            }
            Op::SetTimer(timer, minutes) => {
                match timer {
                    Timer::Stop => s.auto_stop_interval = minutes,
                    Timer::Archive => {
                        s.auto_archive_interval = crate::reconciler::resolve_auto_archive(minutes)
                    }
                    Timer::Delete => s.auto_delete_interval = minutes.max(-1),
                    Timer::Pause => s.auto_pause_interval = minutes,
                }
                touch_record(state, &mut s).await?;
            }
            Op::Resize(r) => resize(state, &mut s, r).await?,
            Op::SetNetwork(change) => set_network(state, &mut s, change).await?,
            Op::SetPublic(public) => {
                if s.public != public {
                    s.public = public;
                    touch_record(state, &mut s).await?;
                }
            }
            Op::SigningKey { key, rotate } => {
                if rotate || s.signing_key.is_none() {
                    s.signing_key = Some(key);
                    touch_record(state, &mut s).await?;
                    if rotate {
                        tracing::info!(sandbox = %s.id, "signing key rotated");
                    }
                }
            }
            Op::Snapshot { name } => crate::forks::snapshot(state, &mut s, name).await?,
            Op::Fork { .. } => unreachable!("handled above"),
        }
        Ok(s)
    }
}

/// When a sandbox with a TTL of `minutes` from `from` is deleted (`None`: no TTL).
pub fn ttl_deadline(
    state: &Engine,
    from: OffsetDateTime,
    minutes: i64,
) -> Result<Option<OffsetDateTime>, EngineError> {
    match minutes {
        0 => Ok(None),
        m if (1..=MAX_TTL_MINUTES).contains(&m) => {
            Ok(Some(from + crate::reconciler::minutes(state, m)))
        }
        m => Err(EngineError::bad_request(format!(
            "ttlMinutes must be 0 (no TTL) or between 1 and {MAX_TTL_MINUTES}, got {m}"
        ))),
    }
}

impl Engine {
    /// Makes sandbox `id_or_name` ready for a request (a toolbox call, a preview): a paused
    /// sandbox is resumed; a stopped or archived one is started when `wake_stopped`.
    /// Answers the sandbox afterwards; the caller reports any state it cannot serve.
    pub async fn wake(&self, id_or_name: &str, wake_stopped: bool) -> Result<Sandbox, EngineError> {
        let (mut s, _guard) = lifecycle::locked(self, id_or_name).await?;
        let running = self.runtime.is_running(&s.id);
        let from = corral_core::transitions::effective(s.state, running);
        let wake = match from {
            corral_core::SandboxState::Paused => true,
            corral_core::SandboxState::Stopped | corral_core::SandboxState::Archived => {
                wake_stopped
            }
            _ => false,
        };
        if wake {
            let began = std::time::Instant::now();
            lifecycle::start(self, &mut s).await?;
            metrics::histogram!("corral_sandbox_wake_seconds", "from" => from.as_str())
                .record(began.elapsed().as_secs_f64());
            tracing::info!(sandbox = %s.id, from = %from, "woken by a request");
        }
        Ok(s)
    }
}

/// Records a change of settings (no state change).
async fn touch_record(state: &Engine, s: &mut Sandbox) -> Result<(), EngineError> {
    s.updated_at = OffsetDateTime::now_utc();
    state.store.update(s).await?;
    Ok(())
}

async fn recover(state: &Engine, s: &mut Sandbox, skip_start: bool) -> Result<(), EngineError> {
    let op = if skip_start {
        Operation::RecoverStopped
    } else {
        Operation::Recover
    };
    let Some(run) = lifecycle::plan(s, s.state, op)? else {
        return Ok(());
    };
    if skip_start {
        lifecycle::begin(state, s, &run).await?;
        state.runtime.stop(&s.id).await?;
        s.error_reason = None;
        s.stopped_at = Some(OffsetDateTime::now_utc());
        lifecycle::save(state, s, run.success).await?;
    } else {
        // Ends whatever is left, then starts it as `start` does from `error`.
        state.runtime.stop(&s.id).await?;
        lifecycle::start(state, s).await?;
    }
    Ok(())
}

async fn resize(state: &Engine, s: &mut Sandbox, body: Resize) -> Result<(), EngineError> {
    if body == Resize::default() {
        return Err(EngineError::bad_request(
            "give at least one of cpu, memory, disk",
        ));
    }
    let mut r: Resources = s.resources;
    r.cpu = resource(body.cpu, r.cpu, 64, "cpu")?;
    r.memory_gib = resource(body.memory, r.memory_gib, 1024, "memory")?;
    let disk = resource(body.disk, r.disk_gib, 10240, "disk")?;
    if disk != r.disk_gib {
        if disk < r.disk_gib {
            return Err(EngineError::bad_request("disk can only grow"));
        }
        if state.runtime.is_running(&s.id) {
            return Err(
                EngineError::bad_request("stop the sandbox to resize its disk")
                    .with_code("SANDBOX_NOT_STOPPED"),
            );
        }
        r.disk_gib = disk;
    }
    state.runtime.resize(&s.id, &r).await?;
    s.resources = r;
    touch_record(state, s).await
}

async fn set_network(
    state: &Engine,
    s: &mut Sandbox,
    change: NetworkChange,
) -> Result<(), EngineError> {
    match (change.block_all, change.allow_list) {
        (Some(true), list) => {
            s.network_block_all = true;
            if let Some(list) = list {
                s.network_allow_list = list;
            }
        }
        (Some(false), None) => {
            s.network_block_all = false;
            s.network_allow_list = None;
        }
        (_, Some(list)) => {
            s.network_block_all = false;
            s.network_allow_list = list;
        }
        (None, None) => {}
    }
    // Enforce first, then record: a failure leaves the old policy both applied and stored.
    state.runtime.set_egress(&s.id, &s.egress()).await?;
    touch_record(state, s).await?;
    tracing::info!(sandbox = %s.id, block_all = s.network_block_all, allow_list = ?s.network_allow_list, "network settings changed");
    Ok(())
}

/// Validates Daytona's network fields and returns the allow list to store (normalised:
/// sorted, deduplicated CIDRs; `None` when empty). Domain allow lists are refused: corral
/// filters by address, and a silently ignored domain list would leave egress open.
pub fn checked_allow_list(
    allow_list: Option<String>,
    domain_allow_list: Option<&str>,
) -> Result<Option<String>, EngineError> {
    if domain_allow_list.is_some_and(|d| !d.trim().is_empty()) {
        return Err(EngineError::bad_request(
            "domainAllowList is not supported by this server; use networkAllowList with IPv4 CIDRs",
        ));
    }
    let Some(list) = allow_list.filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let nets =
        Egress::parse_allow_list(&list).map_err(|e| EngineError::bad_request(e.to_string()))?;
    Ok(Some(
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ))
}
