//! Warm pools: sandboxes of one snapshot and resource shape started ahead of demand, which a
//! matching create claims instead of starting one. The `--pool-size` pool (id `default`, the
//! `host` image, the default user and resources, not stored) and the pools made through
//! `/warm-pools` ([`crate::warm_pools`], stored) are kept here alike.
//!
//! A claimed sandbox is recorded under the pooled id and never returns to a pool, so nothing
//! of one user's sandbox reaches another. One background task fills the pools, one sandbox
//! at a time and round-robin across pools, so filling takes at most one start's worth of the
//! host at once and never queues user creates. Pooled sandboxes have no record: after a
//! crash, start-up reconciliation removes them as leftovers; a graceful stop destroys them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_core::ports::WarmPoolRecord;
use corral_core::{Egress, Resources, Sandbox, SandboxSpec};
use tokio::sync::Notify;

use crate::Engine;

/// The id of the `--pool-size` pool.
pub const DEFAULT_POOL_ID: &str = "default";
/// The region every pool is in (corral has one).
pub const POOL_TARGET: &str = "us";

/// What a pool's sandboxes are started as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolShape {
    /// The snapshot's name, recorded on claimed sandboxes.
    pub snapshot: String,
    /// The snapshot's id, which a create may name instead.
    pub snapshot_id: Option<String>,
    /// The image the runtime starts (`host` for the built-in one).
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub user: String,
    pub resources: Resources,
}

impl PoolShape {
    /// The shape of the `host` snapshot with these resources.
    pub fn host(resources: Resources) -> Self {
        Self {
            snapshot: crate::DEFAULT_SNAPSHOT.into(),
            snapshot_id: None,
            image: crate::DEFAULT_SNAPSHOT.into(),
            entrypoint: None,
            user: crate::DEFAULT_USER.into(),
            resources,
        }
    }

    fn spec(&self, id: String) -> SandboxSpec {
        SandboxSpec {
            id,
            image: self.image.clone(),
            user: self.user.clone(),
            env: BTreeMap::new(),
            resources: self.resources,
            egress: Egress::Open,
            volumes: Vec::new(),
            entrypoint: self.entrypoint.clone(),
        }
    }

    /// Whether a create of `sandbox` can be served by this shape: the same snapshot and
    /// resources, the pool's user (named, or the default a create of that snapshot gets), no
    /// environment (the agent takes its environment at start only) and no volumes.
    fn serves(&self, sandbox: &Sandbox, user_requested: bool) -> bool {
        let snapshot = sandbox.snapshot == self.snapshot
            || self.snapshot_id.as_deref() == Some(sandbox.snapshot.as_str());
        let user = if user_requested || self.image == crate::DEFAULT_SNAPSHOT {
            sandbox.user == self.user
        } else {
            // A create of an image without a user runs as the image's user, as the pool does.
            true
        };
        snapshot
            && user
            && sandbox.resources == self.resources
            && sandbox.env.is_empty()
            && sandbox.volumes.is_empty()
    }
}

/// The shape `--pool-size` sandboxes have.
pub fn pooled_spec(id: String) -> SandboxSpec {
    PoolShape::host(Resources::default()).spec(id)
}

/// One pool: its record, shape and started, unclaimed sandboxes.
#[derive(Debug)]
struct Member {
    record: WarmPoolRecord,
    shape: PoolShape,
    ready: VecDeque<String>,
    /// Sandboxes the filler is starting for it.
    starting: usize,
}

impl Member {
    fn wants_more(&self) -> bool {
        self.record.error_reason.is_none()
            && self.ready.len() + self.starting < self.record.size as usize
    }
}

/// A pool as listed: its record and how many sandboxes are ready.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub record: WarmPoolRecord,
    pub current_size: usize,
}

/// A claimed pooled sandbox.
#[derive(Debug, Clone)]
pub struct Claim {
    pub pool_id: String,
    pub sandbox_id: String,
    pub shape: PoolShape,
}

/// Every pool of this server.
#[derive(Debug, Default)]
pub struct WarmPool {
    pools: Mutex<Vec<Member>>,
    wake: Notify,
    /// Set on shutdown: the filler stops and starts nothing more.
    closed: AtomicBool,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl WarmPool {
    /// The pools, with the `--pool-size` pool of `size` sandboxes (none when 0).
    pub fn new(size: usize) -> Self {
        let pool = Self::default();
        if size > 0 {
            let now = now_ms();
            let resources = Resources::default();
            pool.insert(
                WarmPoolRecord {
                    id: DEFAULT_POOL_ID.into(),
                    snapshot: crate::DEFAULT_SNAPSHOT.into(),
                    target: POOL_TARGET.into(),
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                    cpu: resources.cpu,
                    memory_gib: resources.memory_gib,
                    disk_gib: resources.disk_gib,
                    os_user: crate::DEFAULT_USER.into(),
                    error_reason: None,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
                PoolShape::host(resources),
            );
        }
        pool
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a pool (the caller checked its key is free) and asks the filler to fill it.
    pub fn insert(&self, record: WarmPoolRecord, shape: PoolShape) {
        self.pools().push(Member {
            record,
            shape,
            ready: VecDeque::new(),
            starting: 0,
        });
        self.wake.notify_one();
    }

    /// Every pool with its number of ready sandboxes, in creation order.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.pools()
            .iter()
            .map(|m| PoolStatus {
                record: m.record.clone(),
                current_size: m.ready.len(),
            })
            .collect()
    }

    /// One pool's status.
    pub fn get(&self, id: &str) -> Option<PoolStatus> {
        self.status().into_iter().find(|p| p.record.id == id)
    }

    /// Whether a pool with this snapshot and shape exists (any id).
    pub fn has_key(&self, snapshot: &str, target: &str, resources: &Resources) -> bool {
        self.pools().iter().any(|m| {
            m.record.snapshot == snapshot
                && m.record.target == target
                && m.shape.resources == *resources
        })
    }

    /// Sets a pool's size; returns the ready sandboxes it no longer keeps (for the caller to
    /// destroy), or `None` when there is no such pool.
    pub fn resize(&self, id: &str, size: u32, at_ms: i64) -> Option<Vec<String>> {
        let mut pools = self.pools();
        let m = pools.iter_mut().find(|m| m.record.id == id)?;
        m.record.size = size;
        m.record.updated_at_ms = at_ms;
        let keep = (size as usize).min(m.ready.len());
        let extra = m.ready.split_off(keep).into_iter().collect();
        self.wake.notify_one();
        Some(extra)
    }

    /// Removes a pool; returns its ready sandboxes (for the caller to destroy).
    pub fn remove(&self, id: &str) -> Option<Vec<String>> {
        let mut pools = self.pools();
        let i = pools.iter().position(|m| m.record.id == id)?;
        Some(pools.remove(i).ready.into_iter().collect())
    }

    /// Takes a ready sandbox of the first pool that serves a create of `sandbox`, if any,
    /// and asks for a refill.
    pub fn take_for(&self, sandbox: &Sandbox, user_requested: bool) -> Option<Claim> {
        let mut pools = self.pools();
        let m = pools
            .iter_mut()
            .find(|m| !m.ready.is_empty() && m.shape.serves(sandbox, user_requested))?;
        let id = m.ready.pop_front()?;
        self.wake.notify_one();
        Some(Claim {
            pool_id: m.record.id.clone(),
            sandbox_id: id,
            shape: m.shape.clone(),
        })
    }

    /// How many sandboxes are ready, over every pool.
    pub fn len(&self) -> usize {
        self.pools().iter().map(|m| m.ready.len()).sum()
    }

    /// Whether no sandbox is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The next pool to start a sandbox for, round-robin after `cursor`; marks it starting.
    fn next_start(&self, cursor: &mut usize) -> Option<(String, SandboxSpec)> {
        let mut pools = self.pools();
        let n = pools.len();
        for k in 0..n {
            let i = (*cursor + k) % n;
            if pools[i].wants_more() {
                *cursor = i + 1;
                let m = &mut pools[i];
                m.starting += 1;
                let spec = m.shape.spec(uuid::Uuid::new_v4().to_string());
                return Some((m.record.id.clone(), spec));
            }
        }
        None
    }

    /// Files a started sandbox with its pool; `false` when the pool no longer wants it
    /// (deleted, shrunk, or closed), and the caller destroys it.
    fn finish_start(&self, pool_id: &str, sandbox: Option<&str>) -> bool {
        let closed = self.is_closed();
        let mut pools = self.pools();
        let Some(m) = pools.iter_mut().find(|m| m.record.id == pool_id) else {
            return false;
        };
        m.starting = m.starting.saturating_sub(1);
        match sandbox {
            Some(id) if !closed && m.ready.len() < m.record.size as usize => {
                m.ready.push_back(id.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Keeps every pool full until [`WarmPool::drain`] closes them.
    pub async fn fill_forever(state: Engine) {
        let pool = state.pool.clone();
        let mut cursor = 0;
        while !pool.is_closed() {
            while let Some((pool_id, spec)) = pool.next_start(&mut cursor) {
                if pool.is_closed() {
                    pool.finish_start(&pool_id, None);
                    break;
                }
                let id = spec.id.clone();
                match state.runtime.start(&spec).await {
                    Ok(()) => {
                        if !pool.finish_start(&pool_id, Some(&id)) {
                            // Closed, deleted or shrunk while it started: nobody will claim it.
                            let _ = state.runtime.destroy(&id).await;
                        }
                    }
                    Err(e) => {
                        pool.finish_start(&pool_id, None);
                        tracing::warn!(pool = %pool_id, error = %e, "could not start a pooled sandbox; retrying in 1 s");
                        let _ = state.runtime.destroy(&id).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                metrics::gauge!("corral_pool_ready").set(pool.len() as f64);
            }
            pool.wake.notified().await;
        }
    }

    /// Closes the pools: waits for the filler (`filler`, the task running
    /// [`WarmPool::fill_forever`]) to stop, then destroys every unclaimed sandbox.
    pub async fn drain(state: &Engine, filler: tokio::task::JoinHandle<()>) {
        state.pool.closed.store(true, Ordering::SeqCst);
        state.pool.wake.notify_one();
        let _ = filler.await;
        let ids: Vec<String> = state
            .pool
            .pools()
            .iter_mut()
            .flat_map(|m| m.ready.drain(..).collect::<Vec<_>>())
            .collect();
        for id in ids {
            if let Err(e) = state.runtime.destroy(&id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not destroy a pooled sandbox");
            }
        }
    }
}
