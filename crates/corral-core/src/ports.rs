//! The port traits: what the control plane needs from storage and from a sandbox runtime.
//!
//! Adapters live in other crates (`corral-store` for SQLite, `corral-runtime` for Linux
//! namespaces); the API talks to these traits only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::sandbox::{Egress, Resources, Sandbox, SandboxState, VolumeMount};

/// Errors of a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a sandbox named {0:?} already exists")]
    NameTaken(String),
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A filter and page request for listing sandboxes.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Every pair must match.
    pub labels: BTreeMap<String, String>,
    /// Empty = any state except `destroyed`.
    pub states: Vec<SandboxState>,
    /// Page size.
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Only sandboxes whose id starts with this, ignoring ASCII case.
    pub id_prefix: Option<String>,
    /// Only sandboxes whose name starts with this, ignoring ASCII case.
    pub name_prefix: Option<String>,
    /// The SDK's other filters.
    pub filters: ListFilters,
    /// The order of the pages; `None`: creation order, oldest first.
    pub sort: Option<ListSort>,
}

/// What a list can be sorted by (the SDKs' `SandboxListSortField`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Name,
    Cpu,
    MemoryGib,
    DiskGib,
    LastActivityAt,
    CreatedAt,
}

impl SortField {
    /// The SDK's name of the field.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => Self::Name,
            "cpu" => Self::Cpu,
            "memoryGib" => Self::MemoryGib,
            "diskGib" => Self::DiskGib,
            "lastActivityAt" => Self::LastActivityAt,
            "createdAt" => Self::CreatedAt,
            _ => return None,
        })
    }
}

/// A sort of a list: by `field` (ties in creation order), ascending or descending. Pages of a
/// sorted list carry a cursor `<seq>:<JSON sort key>`; of an unsorted one, `<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListSort {
    pub field: SortField,
    pub descending: bool,
}

/// A list cursor split into its sequence number and, for sorted lists, its sort key; `None`
/// when it is not one a store made.
pub fn split_cursor(cursor: &str) -> Option<(i64, Option<serde_json::Value>)> {
    let (seq, key) = match cursor.split_once(':') {
        Some((seq, key)) => (seq, Some(key)),
        None => (cursor, None),
    };
    let seq = seq.parse::<i64>().ok().filter(|s| *s >= 0)?;
    match key {
        None => Some((seq, None)),
        Some(k) => match serde_json::from_str::<serde_json::Value>(k).ok()? {
            v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => {
                Some((seq, Some(v)))
            }
            _ => None,
        },
    }
}

/// An inclusive range; `None` leaves that end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: PartialOrd> Bounds<T> {
    /// Whether `v` is within the bounds.
    pub fn contains(&self, v: &T) -> bool {
        self.min.as_ref().is_none_or(|m| v >= m) && self.max.as_ref().is_none_or(|m| v <= m)
    }
}

/// A time window, both ends exclusive ("after", "before"); `None` leaves that end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub after: Option<time::OffsetDateTime>,
    pub before: Option<time::OffsetDateTime>,
}

impl Window {
    /// Whether `t` is inside the window.
    pub fn contains(&self, t: time::OffsetDateTime) -> bool {
        self.after.is_none_or(|a| t > a) && self.before.is_none_or(|b| t < b)
    }

    /// Whether the window has no bound.
    pub fn is_open(&self) -> bool {
        self.after.is_none() && self.before.is_none()
    }

    /// For a time that may be absent: an open window takes anything, a bounded one only a
    /// time inside it.
    pub fn contains_opt(&self, t: Option<time::OffsetDateTime>) -> bool {
        self.is_open() || t.is_some_and(|t| self.contains(t))
    }
}

/// Filters of the SDKs' `ListSandboxesQuery` beyond labels, states, id and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilters {
    /// Made from one of these snapshots (empty: any).
    pub snapshots: Vec<String>,
    pub cpu: Bounds<u32>,
    pub memory_gib: Bounds<u32>,
    pub disk_gib: Bounds<u32>,
    pub public: Option<bool>,
    pub created: Window,
    /// On the recorded last activity (flushed by the reconciler every tick).
    pub last_activity: Window,
    /// On the TTL's deadline (sandboxes without a TTL match only an open window).
    pub auto_destroy: Window,
}

impl ListFilters {
    /// Whether `s` passes every filter.
    pub fn matches(&self, s: &crate::Sandbox) -> bool {
        (self.snapshots.is_empty() || self.snapshots.contains(&s.snapshot))
            && self.cpu.contains(&s.resources.cpu)
            && self.memory_gib.contains(&s.resources.memory_gib)
            && self.disk_gib.contains(&s.resources.disk_gib)
            && self.public.is_none_or(|p| p == s.public)
            && self.created.contains(s.created_at)
            && self.last_activity.contains(s.last_activity_at)
            && self.auto_destroy.contains_opt(s.auto_destroy_at)
    }
}

impl ListQuery {
    /// Whether `s` passes the id and name prefixes and the other filters (not labels or
    /// states).
    pub fn prefixes_match(&self, s: &crate::Sandbox) -> bool {
        fn starts(value: &str, prefix: Option<&String>) -> bool {
            prefix.is_none_or(|p| {
                value.len() >= p.len()
                    && value.is_char_boundary(p.len())
                    && value[..p.len()].eq_ignore_ascii_case(p)
            })
        }
        starts(&s.id, self.id_prefix.as_ref())
            && starts(&s.name, self.name_prefix.as_ref())
            && self.filters.matches(s)
    }
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Durable storage of sandboxes. The store is the source of truth.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Inserts a new sandbox; names are unique.
    async fn insert(&self, sandbox: &Sandbox) -> Result<(), StoreError>;
    /// Replaces a stored sandbox (matched by id).
    async fn update(&self, sandbox: &Sandbox) -> Result<(), StoreError>;
    /// Finds a sandbox by id, else by name.
    async fn get(&self, id_or_name: &str) -> Result<Option<Sandbox>, StoreError>;
    /// Lists sandboxes, oldest first.
    async fn list(&self, query: &ListQuery) -> Result<Page<Sandbox>, StoreError>;
    /// Removes a sandbox record for good.
    async fn remove(&self, id: &str) -> Result<(), StoreError>;
}

/// Durable storage of API keys; only hashes are kept.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Records a key hash under a display name.
    async fn add_key(&self, name: &str, hash: &str) -> Result<(), StoreError>;
    /// Whether a key hash is valid.
    async fn has_key(&self, hash: &str) -> Result<bool, StoreError>;
    /// How many keys exist.
    async fn count_keys(&self) -> Result<u64, StoreError>;
}

/// Errors of a runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request cannot be satisfied as given (a client error).
    #[error("{0}")]
    Invalid(String),
    /// No such sandbox is running.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// Something failed on the host; the message is for logs, not for clients.
    #[error("{context}: {source}")]
    Host {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RuntimeError {
    /// Wraps a host failure with what was being done.
    pub fn host(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Host {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// What the runtime needs to start a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    /// The image (`host` for now).
    pub image: String,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// Where the sandbox may send traffic.
    pub egress: Egress,
    /// Volumes to mount, validated by the caller (absolute mount paths, relative subpaths
    /// without `..`); the runtime still resolves subpaths without following symlinks.
    pub volumes: Vec<VolumeMount>,
    /// Replaces the image's entrypoint and command (a snapshot's own entrypoint); used when
    /// the sandbox is first bound to its image.
    pub entrypoint: Option<Vec<String>>,
}

/// A running sandbox's resource figures, read from its cgroups on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU cores the sandbox may use (its quota; the host's CPU count when unlimited).
    pub cpu_limit_cores: f64,
    /// CPU time used by the sandbox's processes since it started, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory the sandbox may use, in bytes (at most the host's memory).
    pub memory_limit_bytes: u64,
    /// Memory in use, in bytes: usage minus inactive file cache (as `docker stats` counts).
    pub memory_used_bytes: u64,
    /// File cache charged to the sandbox, in bytes.
    pub memory_cache_bytes: u64,
    /// Bytes the sandbox's writable layer takes on the host; `None` when the runtime cannot
    /// tell cheaply.
    pub disk_used_bytes: Option<u64>,
    /// Traffic of the sandbox's network interface since it started; `None` without one.
    pub network: Option<NetCounters>,
}

/// Bytes a sandbox received and sent over its network interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A sandbox runtime: runs isolated sandboxes whose PID 1 is the agent.
///
/// A sandbox's filesystem outlives its processes: `stop` ends the processes and keeps the
/// files, `start` runs fresh namespaces over the same files, `archive` packs a stopped
/// sandbox's files away and `start` brings them back, `destroy` removes everything.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Starts a sandbox over its filesystem (created empty the first time); returns once its
    /// agent accepts connections. On failure nothing of the attempt stays running.
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;
    /// Ends every process of the sandbox and removes its cgroups; keeps its files. Idempotent.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops the sandbox and removes every trace of it, archive included. Idempotent.
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;
    /// Packs a stopped sandbox's files into a compressed archive and frees the live copy.
    async fn archive(&self, id: &str) -> Result<(), RuntimeError>;
    /// Changes the resource limits of a sandbox (running or not).
    async fn resize(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError>;
    /// Changes where a sandbox may send traffic; takes effect at once when it runs, else at
    /// its next start (the spec passed to `start` carries the policy too).
    async fn set_egress(&self, id: &str, egress: &Egress) -> Result<(), RuntimeError>;
    /// Whether the sandbox's processes are running (frozen ones too).
    fn is_running(&self, id: &str) -> bool;
    /// Freezes every process of a running sandbox (the cgroup freezer): no CPU, memory kept.
    /// Returns once they are all frozen; on failure they are thawed again. Idempotent.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Invalid(
            "pausing sandboxes is not supported by this runtime".into(),
        ))
    }
    /// Thaws a paused sandbox's processes. Idempotent.
    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Invalid(
            "resuming sandboxes is not supported by this runtime".into(),
        ))
    }
    /// Whether the sandbox's processes are frozen (cheap: no I/O on the toolbox path).
    fn is_paused(&self, id: &str) -> bool {
        let _ = id;
        false
    }
    /// Takes charge of a sandbox still running from an earlier server process. Returns
    /// whether it was found running.
    async fn adopt(&self, id: &str) -> Result<bool, RuntimeError>;
    /// Ids of sandboxes that have traces on the host (files, cgroups, archives).
    fn traces(&self) -> Vec<String>;
    /// The unix socket the sandbox's agent serves the toolbox API on.
    fn agent_socket(&self, id: &str) -> PathBuf;
    /// Whether the runtime can create sandboxes.
    fn is_ready(&self) -> bool;
    /// Stops background work at server shutdown; running sandboxes keep running.
    fn shutdown(&self) {}
    /// The resource figures of a running sandbox, when the runtime can tell.
    async fn usage(&self, id: &str) -> Option<Usage> {
        let _ = id;
        None
    }
    /// Commits a sandbox's files (running or stopped: a point-in-time copy, the processes
    /// keep running) as a new image, `snapshot_id`, with `config` over its image's config; a
    /// sandbox started with the returned reference as its image starts from those files.
    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        config: &CommitConfig,
    ) -> Result<ImageInfo, RuntimeError> {
        let _ = (id, snapshot_id, config);
        Err(RuntimeError::Invalid(
            "snapshots of sandboxes are not supported by this runtime".into(),
        ))
    }
    /// Copies a sandbox's files (running or stopped) and image to new sandbox `new_id`, which
    /// `start` then runs; neither sees the other's later writes.
    async fn fork(
        &self,
        id: &str,
        new_id: &str,
        resources: &Resources,
    ) -> Result<(), RuntimeError> {
        let _ = (id, new_id, resources);
        Err(RuntimeError::Invalid(
            "forks are not supported by this runtime".into(),
        ))
    }
    /// Creates the host storage of volume `id` (idempotent).
    async fn create_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Invalid(
            "volumes are not supported by this runtime".into(),
        ))
    }
    /// Removes the host storage of volume `id` and everything in it (idempotent).
    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Ok(())
    }
}

/// A signed preview URL: its token (the host label after `{port}-`) grants access to one
/// port of one sandbox until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPreviewToken {
    /// Lowercase alphanumeric, unguessable.
    pub token: String,
    pub sandbox_id: String,
    pub port: u16,
    /// When the token stops working, in Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Durable storage of preview tokens. A sandbox's tokens go when its record is removed.
#[async_trait]
pub trait PreviewTokenStore: Send + Sync {
    /// The sandbox's preview token: the stored one, else `candidate`, stored now. `None` when
    /// the sandbox has no record (e.g. it was just deleted).
    async fn preview_token(
        &self,
        sandbox_id: &str,
        candidate: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Records a signed preview token.
    async fn add_signed_token(&self, token: &SignedPreviewToken) -> Result<(), StoreError>;
    /// Finds a signed preview token, expired or not.
    async fn signed_token(&self, token: &str) -> Result<Option<SignedPreviewToken>, StoreError>;
    /// Makes a signed token of `sandbox_id`'s `port` expire at `at_ms` at the latest.
    /// Returns whether such a token exists.
    async fn expire_signed_token(
        &self,
        sandbox_id: &str,
        port: u16,
        token: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Forgets signed tokens that expired before `before_ms`; returns how many.
    async fn purge_signed_tokens(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// An SSH access grant: whoever presents the token (as the SSH user name) gets a shell in
/// one sandbox until it expires or is revoked. Only the token's hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAccess {
    /// The grant's id (a UUID), shown as `SshAccessDto.id`.
    pub id: String,
    pub sandbox_id: String,
    /// Lowercase hex SHA-256 of the token.
    pub token_hash: String,
    /// When it was granted, in Unix milliseconds.
    pub created_at_ms: i64,
    /// When it stops working, in Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Durable storage of SSH access grants. A sandbox's grants go when its record is removed.
#[async_trait]
pub trait SshAccessStore: Send + Sync {
    /// Records a grant; `false` (and nothing stored) when the sandbox has no record.
    async fn add_ssh_access(&self, access: &SshAccess) -> Result<bool, StoreError>;
    /// The grant whose token has this hash, expired or not.
    async fn ssh_access(&self, token_hash: &str) -> Result<Option<SshAccess>, StoreError>;
    /// Revokes the sandbox's grant with this token hash, or all of its grants when `None`;
    /// returns how many went.
    async fn revoke_ssh_access(
        &self,
        sandbox_id: &str,
        token_hash: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// Forgets grants that expired before `before_ms`; returns how many.
    async fn purge_ssh_access(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// A warm pool: sandboxes of one snapshot and resource shape started ahead of demand, which
/// a matching create claims (Daytona's `WarmPool`). The pool's running sandboxes are kept in
/// memory by the engine; only the pool itself is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolRecord {
    /// A UUID.
    pub id: String,
    /// The snapshot's name as sandboxes record it (`host` for the default one).
    pub snapshot: String,
    /// The region (`us`: corral has one).
    pub target: String,
    /// How many sandboxes to keep ready.
    pub size: u32,
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    /// The user pooled sandboxes run as.
    pub os_user: String,
    /// Why the pool cannot fill, if it cannot.
    pub error_reason: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Durable storage of warm pools. A pool is unique per (snapshot, target, cpu, memory, disk).
#[async_trait]
pub trait WarmPoolStore: Send + Sync {
    /// Records a new pool; `false` (nothing stored) when a pool with the same key exists.
    async fn add_warm_pool(&self, pool: &WarmPoolRecord) -> Result<bool, StoreError>;
    /// Every pool, oldest first.
    async fn warm_pools(&self) -> Result<Vec<WarmPoolRecord>, StoreError>;
    /// Replaces the stored pool with this id (size, error, updated time); `false` when none.
    async fn update_warm_pool(&self, pool: &WarmPoolRecord) -> Result<bool, StoreError>;
    /// Forgets the pool; `false` when there was none.
    async fn delete_warm_pool(&self, id: &str) -> Result<bool, StoreError>;
}

/// A volume's lifecycle state, with Daytona's wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeState {
    Creating,
    Ready,
    PendingCreate,
    PendingDelete,
    Deleting,
    Deleted,
    Error,
}

impl VolumeState {
    /// The wire name, e.g. `ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::PendingCreate => "pending_create",
            Self::PendingDelete => "pending_delete",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Error => "error",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Creating,
            Self::Ready,
            Self::PendingCreate,
            Self::PendingDelete,
            Self::Deleting,
            Self::Deleted,
            Self::Error,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A volume: persistent storage that sandboxes mount and that outlives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub state: VolumeState,
    pub error_reason: Option<String>,
    pub created_at: time::OffsetDateTime,
    pub updated_at: time::OffsetDateTime,
    pub last_used_at: Option<time::OffsetDateTime>,
}

/// Durable storage of volumes. Names are unique per organization among volumes not deleted.
#[async_trait]
pub trait VolumeStore: Send + Sync {
    /// Inserts a new volume; `StoreError::NameTaken` when a live volume has its name.
    async fn insert_volume(&self, volume: &Volume) -> Result<(), StoreError>;
    /// Replaces a stored volume (matched by id).
    async fn update_volume(&self, volume: &Volume) -> Result<(), StoreError>;
    /// Finds a volume by id.
    async fn volume(&self, id: &str) -> Result<Option<Volume>, StoreError>;
    /// Finds the live (not deleted) volume of an organization by name.
    async fn volume_by_name(&self, org: &str, name: &str) -> Result<Option<Volume>, StoreError>;
    /// Lists an organization's volumes, oldest first; deleted ones only when asked.
    async fn list_volumes(
        &self,
        org: &str,
        include_deleted: bool,
    ) -> Result<Vec<Volume>, StoreError>;
    /// Records that the volume was mounted now.
    async fn touch_volume(&self, id: &str, at: time::OffsetDateTime) -> Result<(), StoreError>;
    /// Ids and names of the sandboxes not destroyed that mount volume `id`.
    async fn sandboxes_using_volume(&self, id: &str) -> Result<Vec<(String, String)>, StoreError>;
}

/// A snapshot's state, with Daytona's wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotState {
    /// Recorded; its image is not being fetched yet.
    Pending,
    /// Its image is being pulled.
    Pulling,
    /// Ready: sandboxes can be created from it.
    Active,
    /// Pulling failed (see the error reason).
    Error,
    /// Being deleted.
    Removing,
    /// Its image is being built from a Dockerfile.
    Building,
    /// Building failed (see the error reason and the build logs).
    BuildFailed,
}

impl SnapshotState {
    /// The wire name, e.g. `active`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Pulling => "pulling",
            Self::Active => "active",
            Self::Error => "error",
            Self::Removing => "removing",
            Self::Building => "building",
            Self::BuildFailed => "build_failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "pulling" => Self::Pulling,
            "active" => Self::Active,
            "error" => Self::Error,
            "removing" => Self::Removing,
            "building" => Self::Building,
            "build_failed" => Self::BuildFailed,
            _ => return None,
        })
    }
}

/// A snapshot: a named image sandboxes are created from.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: String,
    /// Unique.
    pub name: String,
    /// The image reference (`registry/name:tag`); `None` for the built-in `host` snapshot.
    pub image_name: Option<String>,
    pub state: SnapshotState,
    /// Bytes of the unpacked image, once pulled.
    pub size: Option<u64>,
    /// An entrypoint that replaces the image's own (empty: the image's).
    pub entrypoint: Vec<String>,
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    pub error_reason: Option<String>,
    /// Built in (listed for everyone, never deleted).
    pub general: bool,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

/// Durable storage of snapshots.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Inserts a snapshot; names are unique (`StoreError::NameTaken`).
    async fn insert_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Replaces a stored snapshot (matched by id).
    async fn update_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Finds a snapshot by id, else by name.
    async fn get_snapshot(&self, id_or_name: &str) -> Result<Option<Snapshot>, StoreError>;
    /// Every snapshot, oldest first.
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>, StoreError>;
    /// Removes a snapshot record.
    async fn remove_snapshot(&self, id: &str) -> Result<(), StoreError>;
}

/// What the control plane learns of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalised reference it is stored under.
    pub reference: String,
    /// Bytes of file content over all layers.
    pub size: u64,
    /// The image config's user (`name`, `uid`, `uid:gid`), if any.
    pub user: Option<String>,
    /// Layer diff ids, bottom first.
    pub layers: Vec<String>,
    /// The image config's `KEY=value` environment.
    pub env: Vec<String>,
    /// The image config's working directory.
    pub working_dir: Option<String>,
    /// The image config's entrypoint.
    pub entrypoint: Vec<String>,
    /// The image config's default command.
    pub cmd: Vec<String>,
}

/// The image config of a committed snapshot: what a sandbox started from it runs with.
/// `None` keeps what the sandbox's own image had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitConfig {
    pub user: Option<String>,
    /// `KEY=value` entries (the whole environment).
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

/// Image references of snapshots committed from sandboxes start with this (followed by the
/// snapshot's id); such images live only on this server.
pub const SANDBOX_SNAPSHOT_PREFIX: &str = "corral-snapshot:";

/// The image reference of the snapshot with id `id` committed from a sandbox.
pub fn sandbox_snapshot_reference(id: &str) -> String {
    format!("{SANDBOX_SNAPSHOT_PREFIX}{id}")
}

/// The images sandboxes run: pulled once, shared read-only by every sandbox.
#[async_trait]
pub trait Images: Send + Sync {
    /// The stored image for a reference, without pulling.
    async fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError>;
    /// Pulls an image (layers already stored are not fetched again). Errors whose cause is
    /// the request (bad reference, unknown image, registry refusal) are `Invalid`.
    /// `progress` gets a line per step (a layer's bytes so far, a layer already stored).
    async fn pull(
        &self,
        reference: &str,
        progress: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<ImageInfo, RuntimeError>;
    /// Forgets `references` and removes every layer no remaining image, and none of
    /// `keep` (references still in use), needs.
    async fn remove_unused(
        &self,
        references: &[String],
        keep: &[String],
    ) -> Result<(), RuntimeError>;
}
