//! The warm pool: sandboxes started ahead of demand with the default shape (the `host`
//! image, the default user, default resources, no environment), which a create claims
//! instead of starting one. The claimed sandbox is recorded under the pooled id; it is never
//! returned to the pool, so nothing of one user's sandbox reaches another. A background task
//! refills the pool. Pooled sandboxes have no record: after a crash, start-up
//! reconciliation removes them as leftovers; a graceful stop destroys them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use corral_core::{Resources, SandboxSpec};
use tokio::sync::Notify;

use crate::Engine;

/// Ids of started, unclaimed sandboxes.
#[derive(Debug, Default)]
pub struct WarmPool {
    size: usize,
    ready: Mutex<VecDeque<String>>,
    wake: Notify,
    /// Set on shutdown: the filler stops and starts nothing more.
    closed: std::sync::atomic::AtomicBool,
}

/// The shape pooled sandboxes have.
pub fn pooled_spec(id: String) -> SandboxSpec {
    SandboxSpec {
        id,
        image: crate::DEFAULT_SNAPSHOT.into(),
        user: crate::DEFAULT_USER.into(),
        env: BTreeMap::new(),
        resources: Resources::default(),
        egress: corral_core::Egress::Open,
        volumes: Vec::new(),
        entrypoint: None,
    }
}

impl WarmPool {
    /// A pool that keeps `size` sandboxes ready (0 disables it).
    pub fn new(size: usize) -> Self {
        Self {
            size,
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a ready sandbox's id, if any, and asks for a refill.
    pub fn take(&self) -> Option<String> {
        let id = self.ready().pop_front();
        self.wake.notify_one();
        id
    }

    /// How many sandboxes are ready.
    pub fn len(&self) -> usize {
        self.ready().len()
    }

    /// Whether no sandbox is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps the pool full until [`WarmPool::drain`] closes it.
    pub async fn fill_forever(state: Engine) {
        let pool = state.pool.clone();
        while !pool.is_closed() {
            while pool.len() < pool.size && !pool.is_closed() {
                let id = uuid::Uuid::new_v4().to_string();
                match state.runtime.start(&pooled_spec(id.clone())).await {
                    Ok(()) if pool.is_closed() => {
                        // Closed while it started: nobody will claim it.
                        let _ = state.runtime.destroy(&id).await;
                    }
                    Ok(()) => pool.ready().push_back(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a pooled sandbox; retrying in 1 s");
                        let _ = state.runtime.destroy(&id).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                metrics::gauge!("corral_pool_ready").set(pool.len() as f64);
            }
            pool.wake.notified().await;
        }
    }

    /// Closes the pool: waits for the filler (`filler`, the task running
    /// [`WarmPool::fill_forever`]) to stop, then destroys every unclaimed sandbox.
    pub async fn drain(state: &Engine, filler: tokio::task::JoinHandle<()>) {
        state
            .pool
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        state.pool.wake.notify_one();
        let _ = filler.await;
        let ids: Vec<String> = state.pool.ready().drain(..).collect();
        for id in ids {
            if let Err(e) = state.runtime.destroy(&id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not destroy a pooled sandbox");
            }
        }
    }
}
