//! [`FakeRuntime`]: the `Runtime` port in memory. No processes, no mounts, no sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use corral_core::ports::{CommitConfig, ImageInfo, Usage};
use corral_core::{Egress, Resources, Runtime, RuntimeError, SandboxSpec};
use tokio::sync::watch;

/// A runtime operation, for scripting failures and hangs and for reading the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Start,
    Stop,
    Destroy,
    Archive,
    Resize,
    SetEgress,
    Adopt,
    Snapshot,
    Fork,
    CreateVolume,
    DeleteVolume,
    Pause,
    Resume,
}

/// One recorded call: the operation and the sandbox (or volume) id it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub id: String,
}

/// How a scripted failure fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `RuntimeError::Invalid` (the edge answers 400).
    Invalid(String),
    /// `RuntimeError::Host` (the edge answers 500).
    Host(String),
    /// `RuntimeError::NotRunning` (the edge answers 409).
    NotRunning,
}

impl Failure {
    fn error(&self, id: &str) -> RuntimeError {
        match self {
            Self::Invalid(m) => RuntimeError::Invalid(m.clone()),
            Self::Host(m) => RuntimeError::host(m.clone(), std::io::Error::other("injected")),
            Self::NotRunning => RuntimeError::NotRunning(id.to_owned()),
        }
    }
}

/// What the fake knows of one sandbox.
#[derive(Debug, Clone, Default)]
pub struct FakeSandbox {
    pub spec: Option<SandboxSpec>,
    pub running: bool,
    /// Frozen by `pause` (only while running).
    pub paused: bool,
    pub archived: bool,
    pub resources: Option<Resources>,
    pub egress: Option<Egress>,
    /// What `usage` answers while it runs (see [`FakeRuntime::set_usage`]).
    pub usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct Inner {
    sandboxes: BTreeMap<String, FakeSandbox>,
    volumes: BTreeSet<String>,
    calls: Vec<Call>,
    /// Failures per operation: `None` id = any sandbox; `once` ones are removed when used.
    failures: Vec<(Op, Option<String>, Failure, bool)>,
    hangs: HashMap<(Op, Option<String>), watch::Receiver<bool>>,
    ready: bool,
    /// Where committed snapshots are stored, as the real runtime stores them in its images.
    images: Option<crate::FakeImages>,
}

/// The `Runtime` port in memory: sandboxes are records, every call is logged, and any
/// operation can be told to fail or to hang until released.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    socket_dir: PathBuf,
}

/// Releases the calls of an operation hung by [`FakeRuntime::hang`]; dropping it releases
/// them too.
#[derive(Debug)]
pub struct Hang {
    release: watch::Sender<bool>,
    runtime: FakeRuntime,
    key: (Op, Option<String>),
}

impl Hang {
    /// Lets the hung calls (and later ones) complete.
    pub fn release(self) {}
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.runtime.lock().hangs.remove(&self.key);
        let _ = self.release.send(true);
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// A ready runtime with no sandboxes. `agent_socket` points into a directory nothing
    /// listens in.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                ready: true,
                ..Inner::default()
            })),
            socket_dir: std::env::temp_dir().join("corral-testing-no-agent"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the images of committed sandbox snapshots in `images` (as the Linux runtime
    /// does in its image store), so sandboxes can be created from them.
    pub fn attach_images(&self, images: crate::FakeImages) {
        self.lock().images = Some(images);
    }

    /// Makes `usage(id)` answer `usage` while the sandbox runs.
    pub fn set_usage(&self, id: &str, usage: Usage) {
        self.lock()
            .sandboxes
            .entry(id.to_owned())
            .or_default()
            .usage = Some(usage);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The ids `op` was called for, in order.
    pub fn calls_of(&self, op: Op) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Forgets the call log.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// What the fake holds of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        self.lock().sandboxes.get(id).cloned()
    }

    /// Whether sandbox `id` runs (the port's `is_running`, without importing the trait).
    pub fn running(&self, id: &str) -> bool {
        self.lock().sandboxes.get(id).is_some_and(|s| s.running)
    }

    /// Whether volume `id` has storage.
    pub fn has_volume(&self, id: &str) -> bool {
        self.lock().volumes.contains(id)
    }

    /// Makes every later `op` fail (for any sandbox) until [`FakeRuntime::clear_failures`].
    pub fn fail(&self, op: Op, failure: Failure) {
        self.lock().failures.push((op, None, failure, false));
    }

    /// Makes the next `op` for sandbox `id` fail, once.
    pub fn fail_once_for(&self, op: Op, id: &str, failure: Failure) {
        self.lock()
            .failures
            .push((op, Some(id.to_owned()), failure, true));
    }

    /// Removes every scripted failure.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Makes every later `op` hang (after it is logged, before it acts) until the returned
    /// guard is released or dropped.
    pub fn hang(&self, op: Op) -> Hang {
        self.hang_key((op, None))
    }

    /// Makes later `op` calls for sandbox `id` only hang until the guard is released.
    pub fn hang_for(&self, op: Op, id: &str) -> Hang {
        self.hang_key((op, Some(id.to_owned())))
    }

    fn hang_key(&self, key: (Op, Option<String>)) -> Hang {
        let (tx, rx) = watch::channel(false);
        self.lock().hangs.insert(key.clone(), rx);
        Hang {
            release: tx,
            runtime: self.clone(),
            key,
        }
    }

    /// How many calls of `op` have been made so far (e.g. to see a hung call arrive).
    pub fn count(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|c| c.op == op).count()
    }

    /// Sets what `is_ready` answers.
    pub fn set_ready(&self, ready: bool) {
        self.lock().ready = ready;
    }

    /// Simulates a sandbox whose init died (it is no longer running).
    pub fn kill(&self, id: &str) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.running = false;
        }
    }

    /// Simulates traces left on the host by a sandbox the store does not know.
    pub fn plant(&self, id: &str, running: bool) {
        self.lock().sandboxes.insert(
            id.to_owned(),
            FakeSandbox {
                running,
                ..FakeSandbox::default()
            },
        );
    }

    /// Logs the call, waits while the operation hangs, then answers the scripted failure.
    async fn enter(&self, op: Op, id: &str) -> Result<(), RuntimeError> {
        let hang = {
            let mut inner = self.lock();
            inner.calls.push(Call {
                op,
                id: id.to_owned(),
            });
            inner
                .hangs
                .get(&(op, Some(id.to_owned())))
                .or_else(|| inner.hangs.get(&(op, None)))
                .cloned()
        };
        if let Some(mut rx) = hang {
            // Released when the sender sends `true` or is dropped.
            let _ = rx.wait_for(|released| *released).await;
        }
        let mut inner = self.lock();
        let found = inner
            .failures
            .iter()
            .position(|(o, target, _, _)| *o == op && target.as_deref().is_none_or(|t| t == id));
        if let Some(i) = found {
            let failure = inner.failures[i].2.clone();
            if inner.failures[i].3 {
                inner.failures.remove(i);
            }
            return Err(failure.error(id));
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.enter(Op::Start, &spec.id).await?;
        let mut inner = self.lock();
        let s = inner.sandboxes.entry(spec.id.clone()).or_default();
        s.spec = Some(spec.clone());
        s.running = true;
        s.archived = false;
        s.resources = Some(spec.resources);
        s.egress = Some(spec.egress.clone());
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Stop, id).await?;
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.running = false;
            s.paused = false;
        }
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Pause, id).await?;
        match self.lock().sandboxes.get_mut(id) {
            Some(s) if s.running => {
                s.paused = true;
                Ok(())
            }
            _ => Err(RuntimeError::Invalid(format!(
                "sandbox {id} is not running"
            ))),
        }
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Resume, id).await?;
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.paused = false;
        }
        Ok(())
    }

    fn is_paused(&self, id: &str) -> bool {
        self.lock()
            .sandboxes
            .get(id)
            .is_some_and(|s| s.running && s.paused)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Destroy, id).await?;
        self.lock().sandboxes.remove(id);
        Ok(())
    }

    async fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Archive, id).await?;
        match self.lock().sandboxes.get_mut(id) {
            Some(s) if s.running => Err(RuntimeError::Invalid(format!(
                "sandbox {id} is running; stop it first"
            ))),
            Some(s) => {
                s.archived = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn resize(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        self.enter(Op::Resize, id).await?;
        self.lock()
            .sandboxes
            .entry(id.to_owned())
            .or_default()
            .resources = Some(*resources);
        Ok(())
    }

    async fn set_egress(&self, id: &str, egress: &Egress) -> Result<(), RuntimeError> {
        self.enter(Op::SetEgress, id).await?;
        self.lock()
            .sandboxes
            .entry(id.to_owned())
            .or_default()
            .egress = Some(egress.clone());
        Ok(())
    }

    async fn usage(&self, id: &str) -> Option<Usage> {
        let inner = self.lock();
        let s = inner.sandboxes.get(id)?;
        s.running.then_some(s.usage).flatten()
    }

    fn is_running(&self, id: &str) -> bool {
        self.lock().sandboxes.get(id).is_some_and(|s| s.running)
    }

    async fn adopt(&self, id: &str) -> Result<bool, RuntimeError> {
        self.enter(Op::Adopt, id).await?;
        Ok(self.is_running(id))
    }

    fn traces(&self) -> Vec<String> {
        self.lock().sandboxes.keys().cloned().collect()
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.socket_dir.join(format!("{id}.sock"))
    }

    fn is_ready(&self) -> bool {
        self.lock().ready
    }

    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        _config: &CommitConfig,
    ) -> Result<ImageInfo, RuntimeError> {
        self.enter(Op::Snapshot, id).await?;
        let reference = corral_core::sandbox_snapshot_reference(snapshot_id);
        if let Some(images) = self.lock().images.clone() {
            images.store(&reference);
        }
        Ok(crate::images::image_info(&reference))
    }

    async fn fork(
        &self,
        id: &str,
        new_id: &str,
        resources: &Resources,
    ) -> Result<(), RuntimeError> {
        self.enter(Op::Fork, id).await?;
        let mut inner = self.lock();
        let mut copy = inner.sandboxes.get(id).cloned().unwrap_or_default();
        copy.running = false;
        copy.resources = Some(*resources);
        inner.sandboxes.insert(new_id.to_owned(), copy);
        Ok(())
    }

    async fn create_volume(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::CreateVolume, id).await?;
        self.lock().volumes.insert(id.to_owned());
        Ok(())
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::DeleteVolume, id).await?;
        self.lock().volumes.remove(id);
        Ok(())
    }
}
