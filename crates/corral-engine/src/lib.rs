//! corral's control plane: everything that decides and records what happens to sandboxes and
//! snapshots, behind one operation surface ([`Engine::apply`] with an [`Op`], plus create),
//! over the core's ports (store, runtime, images). The HTTP edge (`corral-api`) parses a
//! request, makes one engine call and shapes the answer; it writes no sandbox state itself.
//!
//! - [`lifecycle`]: the per-sandbox lock, start/stop/archive/delete by the transition table;
//! - [`ops`]: the operation enum and its entry point;
//! - [`sandboxes`]: find and create (warm pool, cold, from an image, after a build);
//! - [`forks`]: snapshot and fork of a sandbox;
//! - [`snapshots`], [`builds`]: named images, pulls and Dockerfile builds;
//! - [`reconciler`]: timers and recovery at start; [`pool`]: the warm pools' sandboxes;
//! - [`warm_pools`]: the warm pools API (create, list, resize, delete; stored);
//! - [`volumes`]: the volumes a create mounts;
//! - [`ssh_access`]: SSH access grants (issue, validate, revoke) and the gateway's check.
//! - [`telemetry`]: the metrics history (sampler, per-sandbox rings, queries).

#![forbid(unsafe_code)]

pub mod build_log;
pub mod builds;
pub mod catalog;
pub mod claims;
pub mod error;
pub mod forks;
pub mod lifecycle;
pub mod ops;
pub mod pool;
pub mod reconciler;
pub mod sandboxes;
pub mod snapshots;
pub mod ssh_access;
pub mod telemetry;
pub mod volumes;
pub mod warm_pools;

use std::path::PathBuf;
use std::sync::Arc;

use corral_core::ports::{SshAccessStore, VolumeStore, WarmPoolStore};
use corral_core::{Images, Runtime, SandboxStore, SnapshotStore};

pub use error::{EngineError, ErrorKind};

/// The image sandboxes get when the request names none.
pub const DEFAULT_SNAPSHOT: &str = "host";
/// The user sandboxes run as when the request names none.
pub const DEFAULT_USER: &str = "daytona";
pub use ops::{NetworkChange, Op, Resize, Timer};

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The organization every sandbox belongs to (one tenant per server for now).
    pub organization_id: String,
    /// How long a "minute" of the lifecycle intervals lasts (60 s; shorter only in tests).
    pub lifecycle_minute: std::time::Duration,
    /// Where image build logs are written (`<dir>/<snapshot id>.log`).
    pub build_log_dir: PathBuf,
}

/// The control plane: its ports and the state it keeps in memory. Cheap to clone (every
/// field is shared).
#[derive(Clone)]
pub struct Engine {
    pub config: Arc<EngineConfig>,
    pub store: Arc<dyn SandboxStore>,
    pub runtime: Arc<dyn Runtime>,
    /// Snapshots (named images).
    pub snapshots: Arc<dyn SnapshotStore>,
    /// Volumes sandboxes mount.
    pub volumes: Arc<dyn VolumeStore>,
    /// The images sandboxes run.
    pub images: Arc<dyn Images>,
    /// SSH access grants.
    pub ssh_access: Arc<dyn SshAccessStore>,
    /// Warm pools (their records; the sandboxes are `pool`'s).
    pub warm_pools: Arc<dyn WarmPoolStore>,
    /// One lock per sandbox: operations on a sandbox never interleave.
    pub locks: Arc<lifecycle::Locks>,
    /// Warm pools' sandboxes, started ahead of demand.
    pub pool: Arc<pool::WarmPool>,
    /// Last activity per sandbox, flushed to the store by the reconciler.
    pub activity: Arc<lifecycle::Activity>,
    /// Deletes finishing in the background.
    pub teardowns: Arc<lifecycle::Teardowns>,
    /// Snapshots this server is building, pulling or committing.
    pub building: Arc<builds::Building>,
    /// The engine's client to sandbox agents (build steps), over the typed contract.
    pub agents: corral_agent_proto::AgentClient<corral_agent_proto::RequestBody>,
    /// Uploaded build context (this server's own).
    pub object_storage: Arc<corral_s3::ObjectStorage>,
    /// Metrics history of sandboxes (in memory unless [`Engine::with_telemetry`] says).
    pub telemetry: Arc<telemetry::Telemetry>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What an [`Engine`] is built from.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn SandboxStore>,
    pub runtime: Arc<dyn Runtime>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub volumes: Arc<dyn VolumeStore>,
    pub images: Arc<dyn Images>,
    pub ssh_access: Arc<dyn SshAccessStore>,
    pub warm_pools: Arc<dyn WarmPoolStore>,
    pub object_storage: Arc<corral_s3::ObjectStorage>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `ports`, with a default warm pool of `pool_size` sandboxes (stored
    /// pools come back with [`warm_pools::load`]).
    pub fn new(config: EngineConfig, ports: Ports, pool_size: usize) -> Self {
        Self {
            config: Arc::new(config),
            agents: corral_agent_proto::AgentClient::new(ports.runtime.clone()),
            store: ports.store,
            runtime: ports.runtime,
            snapshots: ports.snapshots,
            volumes: ports.volumes,
            images: ports.images,
            ssh_access: ports.ssh_access,
            warm_pools: ports.warm_pools,
            locks: Arc::default(),
            pool: Arc::new(pool::WarmPool::new(pool_size)),
            activity: Arc::default(),
            teardowns: Arc::default(),
            building: Arc::default(),
            object_storage: ports.object_storage,
            telemetry: Arc::new(telemetry::Telemetry::in_memory(telemetry::DEFAULT_INTERVAL)),
        }
    }

    /// This engine keeping its metrics history in `telemetry` (before it is cloned).
    pub fn with_telemetry(mut self, telemetry: telemetry::Telemetry) -> Self {
        self.telemetry = Arc::new(telemetry);
        self
    }

    /// Where the context archive with this hash (as the SDK computes it: 32 hex digits) is
    /// kept, or `None` for a malformed hash. The file may not exist.
    pub fn context_archive(&self, hash: &str) -> Option<PathBuf> {
        self.object_storage
            .context_archive(&self.config.organization_id, hash)
    }

    /// Records activity on sandbox `id` now (counts for auto-stop).
    pub async fn touch(&self, id_or_name: &str) -> Result<(), EngineError> {
        let s = sandboxes::find(self, id_or_name).await?;
        self.activity.touch(&s.id);
        Ok(())
    }
}
