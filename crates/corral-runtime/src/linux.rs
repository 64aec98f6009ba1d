//! [`LinuxRuntime`]: the `Runtime` port on Linux namespaces, overlayfs and cgroups.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_core::{CommitConfig, ImageInfo, Resources, Runtime, RuntimeError, SandboxSpec};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::cgroup::{Cgroups, Limits};
use crate::disk::Disk;
use crate::fsutil::{mkdirs, remove_dir_if_exists, remove_file_if_exists};
use crate::host_image::{self, HostImage};
use crate::oci::images::{self as bound, BoundImage};
use crate::spawn::{Spawner, pidfd_kill};

mod binding;
mod prepare;

/// The longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from sandboxes, as Docker does: files get `/dev/null` bound over them,
/// directories an empty read-only tmpfs. They leak host details or offer kernel attack surface.
const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Paths sandboxes may read but never write (host-wide kernel knobs).
const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Where sandboxes' writable layers live and how their size is limited.
#[derive(Debug, Clone)]
pub enum DiskConfig {
    /// Plain directories under the data dir: no disk limit.
    Plain,
    /// One btrfs subvolume per sandbox with a quota-group limit, in a btrfs filesystem at
    /// `<data>/disk` (a loop-mounted image `<data>/disk.img` of `pool_bytes` when the data
    /// dir is not on btrfs).
    Btrfs { pool_bytes: u64 },
}

/// A default size for the btrfs pool image: 90% of the space free on the data dir's
/// filesystem now (the image is sparse; it only takes what sandboxes write), at least 1 GiB.
pub fn default_pool_bytes(data_dir: &Path) -> u64 {
    let free = nix::sys::statvfs::statvfs(data_dir)
        .map(|v| v.blocks_available() * v.fragment_size())
        .unwrap_or(0);
    (free / 10 * 9).max(1 << 30)
}

/// Settings of the Linux runtime.
#[derive(Debug, Clone)]
pub struct LinuxRuntimeConfig {
    /// Holds `images/`, `sandboxes/` and `run/` (agent sockets).
    pub data_dir: PathBuf,
    /// The static agent binary to mount into sandboxes.
    pub agent_binary: PathBuf,
    /// The host tree the `host` image exposes (`/`).
    pub host_root: PathBuf,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The name of corral's parent cgroup.
    pub cgroup_parent: String,
    /// Maximum number of processes per sandbox.
    pub pids_limit: u64,
    /// Where writable layers live.
    pub disk: DiskConfig,
    /// Sandbox networking (NAT and egress policies); `None`: loopback only.
    pub network: Option<crate::net::NetConfig>,
    /// How images are pulled (plain-HTTP registries, credentials).
    pub registry: crate::oci::RegistryOptions,
    /// The size limit of each volume (with the btrfs disk pool); `None`: unlimited.
    pub volume_size_bytes: Option<u64>,
}

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    HostImage(#[from] host_image::HostImageError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("setting up sandbox networking: {0}")]
    Network(#[from] crate::net::NetError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

struct Running {
    /// For signalling; the exit watcher owns a duplicate.
    pidfd: OwnedFd,
    exited: watch::Receiver<bool>,
    /// Its processes are frozen (`pause`), so toolbox calls must resume it first.
    paused: bool,
}

/// How long a freeze may take before `pause` gives up and thaws the sandbox again.
const FREEZE_WAIT: Duration = Duration::from_secs(5);

/// Sandboxes as Linux processes: pid/mount/uts/ipc/net/cgroup namespaces, an overlay root
/// over the `host` image, per-sandbox cgroups, and the agent as PID 1.
pub struct LinuxRuntime {
    cfg: LinuxRuntimeConfig,
    image: HostImage,
    cgroups: Cgroups,
    spawner: Spawner,
    running: Mutex<HashMap<String, Running>>,
    /// Compiled once; loaded by every sandbox init before it execs the agent.
    seccomp: Vec<seccompiler::BpfProgram>,
    /// Capabilities dropped from every sandbox's bounding set.
    dropped_caps: Vec<u32>,
    /// `MASKED` paths that exist on this kernel, and whether each is a directory.
    masked: Vec<(&'static str, bool)>,
    disk: Disk,
    /// The open-files limit the server was started with; sandboxes get it back (the server
    /// raises its own soft limit to hold fds for many sandboxes).
    nofile: (u64, u64),
    /// Pooled network slots and egress rules; `None` when sandboxes get loopback only.
    net: Option<std::sync::Arc<crate::net::Network>>,
    /// OCI images sandboxes may run (resolved here; pulled by the control plane).
    oci: std::sync::Arc<crate::oci::ImageStore>,
    /// Snapshots and their lock (shared with the `Images` port).
    commits: std::sync::Arc<crate::commit::Commits>,
}

impl std::fmt::Debug for LinuxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxRuntime")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, RuntimeError> {
    CString::new(s.as_ref())
        .map_err(|_| RuntimeError::Invalid("a value contains a NUL byte".into()))
}

impl LinuxRuntime {
    /// Prepares directories, the host image and cgroups, and starts the spawner thread.
    pub fn new(cfg: LinuxRuntimeConfig) -> Result<Self, InitError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| InitError::Io { op, path, source }
        };
        for p in [&cfg.data_dir, &cfg.host_root, &cfg.agent_binary] {
            let s = p.to_string_lossy();
            if s.contains(',') || s.contains(':') {
                return Err(InitError::Unsupported(format!(
                    "path {s:?} contains ',' or ':', which overlayfs options cannot express"
                )));
            }
        }
        for d in ["images", "sandboxes", "run", "archives", "mnt", "bound"] {
            let p = cfg.data_dir.join(d);
            mkdirs(&p, 0o700).map_err(io("mkdir", &p))?;
        }
        let probe = cfg
            .data_dir
            .join("run")
            .join(format!("{}.sock", uuid_like_max()));
        if probe.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(InitError::Unsupported(format!(
                "data dir {} is too long for agent socket paths (max {MAX_SOCKET_PATH} bytes); choose a shorter --data-dir",
                cfg.data_dir.display()
            )));
        }
        if !cfg.agent_binary.is_file() {
            return Err(InitError::Unsupported(format!(
                "agent binary {} is missing",
                cfg.agent_binary.display()
            )));
        }
        let image = host_image::build(&cfg.data_dir.join("images"), &cfg.host_root)?;
        let oci = crate::oci::ImageStore::open(&cfg.data_dir, &cfg.registry)
            .map(std::sync::Arc::new)
            .map_err(|e| InitError::Unsupported(format!("opening the image store: {e}")))?;
        let cgroups = Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent)?;
        cgroups.init()?;
        let disk = match cfg.disk {
            DiskConfig::Plain => Disk::Plain(cfg.data_dir.join("sandboxes")),
            DiskConfig::Btrfs { pool_bytes } => Disk::Pool(
                crate::btrfs::Pool::open(
                    &cfg.data_dir.join("disk"),
                    &cfg.data_dir.join("disk.img"),
                    pool_bytes,
                )
                .map_err(|e| {
                    InitError::Unsupported(format!("setting up the btrfs disk pool: {e}"))
                })?,
            ),
        };
        // Snapshot layers left by a crash during a commit, or by a removal cut short.
        let commits = std::sync::Arc::new(crate::commit::Commits::new(&cfg.data_dir));
        match commits.gc() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed unused snapshot layers"),
            Err(e) => tracing::warn!(error = %e, "cannot collect unused snapshot layers"),
        }
        let nofile = raise_nofile();
        let net = cfg
            .network
            .clone()
            .map(crate::net::Network::open)
            .transpose()?;
        let spawner = Spawner::start().map_err(io("starting spawner thread", Path::new("-")))?;
        let seccomp =
            crate::seccomp::compile().map_err(|e| InitError::Unsupported(e.to_string()))?;
        let masked = MASKED
            .iter()
            .filter_map(|p| {
                fs::metadata(Path::new("/").join(p))
                    .ok()
                    .map(|m| (*p, m.is_dir()))
            })
            .collect();
        Ok(Self {
            cfg,
            image,
            cgroups,
            spawner,
            running: Mutex::new(HashMap::new()),
            seccomp,
            dropped_caps: crate::caps::to_drop(),
            masked,
            disk,
            nofile,
            net,
            oci,
            commits,
        })
    }

    /// The cgroups corral manages (for tests and leak checks).
    /// The image store sandboxes' images come from (share it: one store per data dir).
    pub fn image_store(&self) -> std::sync::Arc<crate::oci::ImageStore> {
        self.oci.clone()
    }

    /// The `Images` port over this runtime's image store and snapshots (share it: one per
    /// data dir).
    pub fn images(&self) -> crate::oci::images::OciImages {
        crate::oci::images::OciImages::new(self.oci.clone(), self.commits.clone())
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn archive_path(&self, id: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("archives")
            .join(format!("{id}.tar.zst"))
    }

    /// What a sandbox leaves on the host while it runs: cgroups and socket.
    fn runtime_traces(&self, id: &str) -> RuntimeTraces {
        RuntimeTraces {
            id: id.to_owned(),
            cgroups: self.cgroups.clone(),
            sock: self.agent_socket(id),
        }
    }

    /// Ends a sandbox's processes, then removes its cgroups and socket.
    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.kill_and_wait(id).await;
        let t = Instant::now();
        let r = self.remove_traces(id).await;
        metrics::histogram!("corral_stop_phase_seconds", "phase" => "cgroups_socket")
            .record(t.elapsed().as_secs_f64());
        r
    }

    /// Removes a sandbox's cgroups and socket (its processes must be gone), off the runtime.
    async fn remove_traces(&self, id: &str) -> Result<(), RuntimeError> {
        let traces = self.runtime_traces(id);
        tokio::task::spawn_blocking(move || traces.remove())
            .await
            .map_err(|e| RuntimeError::host("joining cleanup task", e))?
    }

    /// Ends a sandbox's processes: through its pidfd when this process started or adopted
    /// it, else through its cgroup.
    async fn kill_and_wait(&self, id: &str) {
        let t = Instant::now();
        let running = self.running().remove(id);
        if let Some(mut r) = running {
            if let Err(e) = pidfd_kill(&r.pidfd) {
                tracing::debug!(sandbox = id, error = %e, "kill of sandbox init failed (already gone?)");
            }
            // Frozen processes (cgroup v1) die only once thawed.
            if r.paused
                && let Err(e) = self.cgroups.thaw(id)
            {
                tracing::warn!(sandbox = id, error = %e, "cannot thaw a paused sandbox to end it");
            }
            // Killing a pid namespace's init kills every process in it; its exit is visible
            // once they are all gone.
            if tokio::time::timeout(Duration::from_secs(10), r.exited.wait_for(|e| *e))
                .await
                .is_err()
            {
                tracing::warn!(
                    sandbox = id,
                    "sandbox init did not exit within 10 s of SIGKILL"
                );
            }
        } else {
            self.cgroups.kill_all(id);
        }
        // Its processes are gone: its network slot can serve another sandbox.
        if let Some(net) = &self.net {
            net.release(id);
        }
        metrics::histogram!("corral_stop_phase_seconds", "phase" => "kill_and_wait")
            .record(t.elapsed().as_secs_f64());
    }

    /// Restores an archived sandbox's files, if it is archived.
    async fn restore_if_archived(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let archive = self.archive_path(&spec.id);
        if !archive.exists() {
            return Ok(());
        }
        let disk = self.disk.clone();
        let id = spec.id.clone();
        let limit = u64::from(spec.resources.disk_gib) << 30;
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            let upper = disk.create(&id, limit)?.join("upper");
            if upper.exists() {
                fs::remove_dir_all(&upper)
                    .map_err(|e| RuntimeError::host("clearing a partial restore", e))?;
            }
            crate::layer::unpack(&archive, &upper)
                .map_err(|e| RuntimeError::host("restoring archive", e))?;
            fs::remove_file(&archive).map_err(|e| RuntimeError::host("removing archive", e))
        })
        .await
        .map_err(|e| RuntimeError::host("joining restore task", e))?
    }

    /// Finds the init process of a sandbox left running by an earlier server: the member of
    /// its cgroup whose pid is 1 in its own pid namespace.
    fn find_init(&self, id: &str) -> Option<i32> {
        self.cgroups.procs(id).into_iter().find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("NSpid:"))
                        .map(|l| l.split_whitespace().last() == Some("1"))
                })
                .unwrap_or(false)
        })
    }

    fn watch(&self, id: &str, pid: i32, pidfd: OwnedFd) -> Result<(), RuntimeError> {
        let watcher_fd = pidfd
            .try_clone()
            .map_err(|e| RuntimeError::host("duplicating pidfd", e))?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(watch_exit(pid, watcher_fd, tx));
        let paused = self.cgroups.is_frozen(id);
        self.running().insert(
            id.to_owned(),
            Running {
                pidfd,
                exited: rx,
                paused,
            },
        );
        Ok(())
    }
}

/// A running sandbox's host-side traces, removable from a blocking thread.
struct RuntimeTraces {
    id: String,
    cgroups: Cgroups,
    sock: PathBuf,
}

impl RuntimeTraces {
    /// Removes the cgroups and socket; the sandbox's processes must be gone.
    fn remove(&self) -> Result<(), RuntimeError> {
        let id = self.id.as_str();
        // cgroup removal can race with the kernel finishing the last exits; retry briefly.
        let mut attempt = 0;
        loop {
            match self.cgroups.remove(id) {
                Ok(()) => break,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    if attempt == 10 {
                        self.cgroups.kill_all(id);
                    }
                    tracing::debug!(sandbox = id, error = %e, "cgroup busy, retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(RuntimeError::host("removing cgroup", e)),
            }
        }
        remove_file_if_exists(&self.sock).map_err(|e| RuntimeError::host("removing socket", e))
    }
}

/// Raises the server's open-files soft limit to its hard limit (each sandbox costs the
/// server a few fds: pidfds, pooled agent connections). Returns the limits it started with.
fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (1024, 1024);
        }
        let original = (lim.rlim_cur, lim.rlim_max);
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            tracing::warn!("could not raise the open-files limit; many sandboxes may exhaust it");
        }
        original
    }
}

/// A placeholder id as long as a real one, to check socket path lengths.
fn uuid_like_max() -> String {
    "0".repeat(36)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Waits for the init process behind `pidfd` to exit and reaps it when it is our child
/// (an adopted init belongs to whoever the kernel re-parented it to).
async fn watch_exit(pid: i32, pidfd: OwnedFd, done: watch::Sender<bool>) {
    // SAFETY: an OwnedFd keeps the same open pidfd for as long as the AsyncFd owns it.
    match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        Ok(fd) => {
            let _ = fd.readable().await;
            // Readable means exited, so this does not block.
            // SAFETY: waitpid on a pid; ECHILD (not our child: adopted) is harmless.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
        Err(e) => {
            tracing::error!(pid, error = %e, "cannot watch sandbox init; reaping blocking");
            let _ = tokio::task::spawn_blocking(move || {
                // SAFETY: waitpid on a pid; ECHILD (not our child) is harmless.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) }
            })
            .await;
        }
    }
    let _ = done.send(true);
}

#[async_trait]
impl Runtime for LinuxRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if self.is_running(&spec.id) {
            return Ok(());
        }
        let phase = |name: &'static str, since: Instant| {
            metrics::histogram!("corral_start_phase_seconds", "phase" => name)
                .record(since.elapsed().as_secs_f64());
        };
        let t = Instant::now();
        self.restore_if_archived(spec).await?;
        phase("restore", t);
        let t = Instant::now();
        let limits = Limits::from_resources(&spec.resources, self.cfg.pids_limit);
        self.cgroups
            .create(&spec.id, &limits)
            .map_err(|e| RuntimeError::host("creating cgroup", e))?;
        phase("cgroup", t);
        let t = Instant::now();
        let spawned = match self.prepare(spec) {
            Ok(plan) => {
                // Writable layer, config, socket and the clone plan are ready.
                phase("prepare", t);
                let t = Instant::now();
                // Clone into namespaces, mounts, pivot_root, hardening, exec of the agent.
                let r = self.spawner.spawn(plan).await.map_err(|e| match e {
                    // A volume subpath that became a symlink (or another filesystem)
                    // between the server's check and the mount: the request's problem.
                    crate::spawn::SpawnError::Step {
                        kind: crate::spawn::StepKind::Volume,
                        source,
                        ..
                    } if matches!(
                        source.raw_os_error(),
                        Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR)
                    ) =>
                    {
                        RuntimeError::Invalid(format!(
                            "a volume subpath cannot be mounted ({source}): symlinks and \
                                 other filesystems in its path are refused"
                        ))
                    }
                    e => RuntimeError::host("starting sandbox", e),
                });
                phase("namespaces_mounts_exec", t);
                r
            }
            Err(e) => Err(e),
        };
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let Some(net) = &self.net {
                    net.release(&spec.id);
                }
                if let Err(clean) = self.runtime_traces(&spec.id).remove() {
                    tracing::warn!(sandbox = %spec.id, error = %clean, "cleanup after a failed start");
                }
                return Err(e);
            }
        };
        tracing::debug!(sandbox = %spec.id, pid = spawned.pid, "sandbox started");
        self.watch(&spec.id, spawned.pid, spawned.pidfd)
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.kill(id).await?;
        // The overlays are volatile (nothing synced on the way down, which keeps deletes
        // cheap): a stopped sandbox's files are made durable here, once.
        let layer = self.disk.layer_dir(id);
        let names = self.layer_names_of(id)?;
        let t = Instant::now();
        let r = tokio::task::spawn_blocking(move || persist_layer(&layer, &names))
            .await
            .map_err(|e| RuntimeError::host("joining sync task", e))?;
        metrics::histogram!("corral_stop_phase_seconds", "phase" => "sync")
            .record(t.elapsed().as_secs_f64());
        r
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.kill_and_wait(id).await;
        // With its processes gone, the cgroups, socket and files are independent: removed
        // at the same time.
        let t = Instant::now();
        let dir = self.sandbox_dir(id);
        let archive = self.archive_path(id);
        let disk = self.disk.clone();
        let owned = id.to_owned();
        let data = self.cfg.data_dir.clone();
        let oci = self.oci.clone();
        let commits = self.commits.clone();
        let files = async {
            tokio::task::spawn_blocking(move || {
                disk.remove(&owned)?;
                remove_dir_if_exists(&dir)
                    .map_err(|e| RuntimeError::host("removing sandbox dir", e))?;
                remove_file_if_exists(&archive)
                    .map_err(|e| RuntimeError::host("removing archive", e))?;
                let binding = bound::read_binding(&data, &owned).ok().flatten();
                bound::remove_binding(&data, &owned)
                    .map_err(|e| RuntimeError::host("removing image binding", e))?;
                if binding.as_ref().is_some_and(|b| !b.commits.is_empty()) {
                    // Snapshot layers only this sandbox still used.
                    commits
                        .gc()
                        .map_err(|e| RuntimeError::host("removing unused snapshot layers", e))?;
                }
                // Image layers only this sandbox still used: its image's record went (its
                // snapshot was deleted) while it was being destroyed. While the record stays,
                // the image keeps its layers and there is nothing to collect.
                let unrecorded = |b: &BoundImage| {
                    !b.is_host() && !matches!(oci.resolve(&b.reference), Ok(Some(_)))
                };
                if binding.as_ref().is_some_and(unrecorded)
                    && let Err(e) = oci.gc(&crate::oci::images::layers_in_use(&data))
                {
                    tracing::warn!(sandbox = %owned, error = %e, "image garbage collection failed");
                }
                Ok(())
            })
            .await
            .map_err(|e| RuntimeError::host("joining cleanup task", e))?
        };
        let (host_side, files) = tokio::join!(self.remove_traces(id), files);
        metrics::histogram!("corral_stop_phase_seconds", "phase" => "cleanup")
            .record(t.elapsed().as_secs_f64());
        host_side?;
        files
    }

    async fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        if self.is_running(id) {
            return Err(RuntimeError::Invalid(format!(
                "sandbox {id} must be stopped before it is archived"
            )));
        }
        let dir = self.disk.layer_dir(id);
        let sandbox_dir = self.sandbox_dir(id);
        let archive = self.archive_path(id);
        let layers = self.layer_names_of(id)?;
        let disk = self.disk.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            if !dir.exists() {
                return if archive.exists() {
                    Ok(())
                } else {
                    Err(RuntimeError::NotRunning(dir.display().to_string()))
                };
            }
            let tmp = archive.with_extension("partial");
            crate::layer::pack_uppers(&dir, &layers, &tmp)
                .map_err(|e| RuntimeError::host("packing sandbox files", e))?;
            fs::rename(&tmp, &archive).map_err(|e| RuntimeError::host("installing archive", e))?;
            disk.remove(&id)?;
            remove_dir_if_exists(&sandbox_dir)
                .map_err(|e| RuntimeError::host("freeing archived sandbox", e))
        })
        .await
        .map_err(|e| RuntimeError::host("joining archive task", e))?
    }

    async fn resize(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        self.disk
            .set_limit(id, u64::from(resources.disk_gib) << 30)?;
        if self.is_running(id) {
            let limits = Limits::from_resources(resources, self.cfg.pids_limit);
            self.cgroups
                .set_limits(id, &limits)
                .map_err(|e| RuntimeError::host("updating cgroup limits", e))?;
        }
        Ok(())
    }

    async fn set_egress(&self, id: &str, egress: &corral_core::Egress) -> Result<(), RuntimeError> {
        let Some(net) = self.net.clone() else {
            return match egress {
                corral_core::Egress::Open => Ok(()),
                _ => Err(RuntimeError::Invalid(
                    "this server runs sandboxes without network (--network none): they \
                     have no egress to limit"
                        .into(),
                )),
            };
        };
        let (id, egress) = (id.to_owned(), egress.clone());
        tokio::task::spawn_blocking(move || net.set_egress(&id, &egress))
            .await
            .map_err(|e| RuntimeError::host("joining network task", e))?
            .map(|_| ())
            .map_err(|e| RuntimeError::host("applying the egress policy", e))
    }

    fn shutdown(&self) {
        if let Some(net) = &self.net {
            net.shutdown();
        }
    }

    fn is_running(&self, id: &str) -> bool {
        self.running().get(id).is_some_and(|r| !*r.exited.borrow())
    }

    fn is_paused(&self, id: &str) -> bool {
        self.running().get(id).is_some_and(|r| r.paused)
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.is_running(id) {
            return Err(RuntimeError::Invalid(format!(
                "sandbox {id} is not running"
            )));
        }
        let cgroups = self.cgroups.clone();
        let owned = id.to_owned();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || cgroups.freeze(&owned, FREEZE_WAIT))
            .await
            .map_err(|e| RuntimeError::host("joining freeze task", e))?
            .map_err(|e| RuntimeError::host("freezing the sandbox's processes", e))?;
        if let Some(r) = self.running().get_mut(id) {
            r.paused = true;
        }
        metrics::histogram!("corral_sandbox_pause_seconds").record(t.elapsed().as_secs_f64());
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let t = Instant::now();
        self.cgroups
            .thaw(id)
            .map_err(|e| RuntimeError::host("thawing the sandbox's processes", e))?;
        if let Some(r) = self.running().get_mut(id) {
            r.paused = false;
        }
        metrics::histogram!("corral_sandbox_resume_seconds").record(t.elapsed().as_secs_f64());
        Ok(())
    }

    async fn adopt(&self, id: &str) -> Result<bool, RuntimeError> {
        if self.is_running(id) {
            return Ok(true);
        }
        let Some(pid) = self.find_init(id) else {
            return Ok(false);
        };
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) => return Err(RuntimeError::host("opening pidfd of adopted sandbox", e)),
        };
        tracing::info!(sandbox = id, pid, "adopted a running sandbox");
        if let Some(net) = &self.net {
            net.adopt(id, pid);
        }
        let log = self.disk.layer_dir(id).join("agent.log");
        if let Err(e) = crate::agent_log::reattach(pid, log) {
            tracing::warn!(sandbox = id, error = %e, "cannot copy the adopted agent's log");
        }
        self.watch(id, pid, pidfd)?;
        Ok(true)
    }

    fn traces(&self) -> Vec<String> {
        let mut ids: std::collections::BTreeSet<String> = self
            .cgroups
            .list()
            .into_iter()
            .chain(self.disk.list())
            .collect();
        for dir in ["sandboxes", "archives", "bound"] {
            if let Ok(entries) = fs::read_dir(self.cfg.data_dir.join(dir)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    ids.insert(
                        name.trim_end_matches(".tar.zst")
                            .trim_end_matches(".json")
                            .trim_end_matches(".partial")
                            .to_owned(),
                    );
                }
            }
        }
        ids.into_iter().collect()
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("run").join(format!("{id}.sock"))
    }

    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        config: &CommitConfig,
    ) -> Result<ImageInfo, RuntimeError> {
        let data = self.cfg.data_dir.clone();
        let mut base = bound::read_binding(&data, id)
            .map_err(|e| RuntimeError::host("reading the sandbox's image binding", e))?
            .unwrap_or_else(BoundImage::host);
        let c = &mut base.config;
        let set = |dst: &mut Vec<String>, src: &Option<Vec<String>>| {
            if let Some(v) = src {
                dst.clone_from(v);
            }
        };
        set(&mut c.env, &config.env);
        set(&mut c.entrypoint, &config.entrypoint);
        set(&mut c.cmd, &config.cmd);
        if config.user.is_some() {
            c.user.clone_from(&config.user);
        }
        if config.working_dir.is_some() {
            c.working_dir.clone_from(&config.working_dir);
        }
        let names = self.layer_names(!base.is_host());
        let image_size = if base.is_host() {
            0
        } else {
            self.oci
                .resolve(&base.reference)
                .ok()
                .flatten()
                .map_or(0, |i| i.size)
        };
        let disk = self.disk.clone();
        let commits = self.commits.clone();
        let (id, snapshot_id) = (id.to_owned(), snapshot_id.to_owned());
        let t = Instant::now();
        let m = tokio::task::spawn_blocking(move || {
            commits.commit(&disk, &id, &snapshot_id, base, &names, image_size)
        })
        .await
        .map_err(|e| RuntimeError::host("joining snapshot task", e))??;
        metrics::histogram!("corral_snapshot_seconds").record(t.elapsed().as_secs_f64());
        Ok(crate::commit::info(&m))
    }

    async fn fork(
        &self,
        id: &str,
        new_id: &str,
        resources: &Resources,
    ) -> Result<(), RuntimeError> {
        let data = self.cfg.data_dir.clone();
        let names = self.layer_names_of(id)?;
        let disk = self.disk.clone();
        let limit = u64::from(resources.disk_gib) << 30;
        let (id, new_id) = (id.to_owned(), new_id.to_owned());
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            crate::commit::fork(&data, &disk, &id, &new_id, limit, &names)
        })
        .await
        .map_err(|e| RuntimeError::host("joining fork task", e))??;
        metrics::histogram!("corral_fork_copy_seconds").record(t.elapsed().as_secs_f64());
        Ok(())
    }

    async fn create_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let limit = self.cfg.volume_size_bytes;
        crate::volume::create(&self.cfg.data_dir, &self.disk, id, limit)
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let data_dir = self.cfg.data_dir.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || crate::volume::delete(&data_dir, &id))
            .await
            .map_err(|e| RuntimeError::host("deleting volume", e))?
    }

    fn is_ready(&self) -> bool {
        true
    }

    async fn usage(&self, id: &str) -> Option<corral_core::ports::Usage> {
        if !self.is_running(id) {
            return None;
        }
        let mut usage =
            self.cgroups
                .usage(id, crate::cgroup::host_cpus(), crate::cgroup::host_memory())?;
        usage.disk_used_bytes = self.disk.used(id);
        usage.network = self.net.as_ref().and_then(|n| n.counters(id));
        Some(usage)
    }
}

/// The marker overlayfs leaves in a workdir mounted with `volatile`: while it exists the
/// overlay refuses to mount again, since the upper layer may have lost unsynced writes.
fn volatile_marker(layer: &Path, name: &str) -> PathBuf {
    layer.join("work").join(name).join("work/incompat/volatile")
}

/// Removes the volatile markers of a sandbox's overlays; whether there were any.
fn clear_volatile_markers(layer: &Path, names: &[String]) -> io::Result<bool> {
    let mut found = false;
    for name in names {
        let marker = volatile_marker(layer, name);
        match fs::remove_dir_all(&marker) {
            Ok(()) => found = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Makes a stopped sandbox's writable layer durable (`syncfs` of the filesystem holding it),
/// then clears the volatile markers so it can be mounted again.
fn persist_layer(layer: &Path, names: &[String]) -> Result<(), RuntimeError> {
    if !layer.exists() {
        return Ok(());
    }
    let dir = fs::File::open(layer).map_err(|e| RuntimeError::host("opening layer dir", e))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| RuntimeError::host("syncing layer", io::Error::from(e)))?;
    clear_volatile_markers(layer, names)
        .map(|_| ())
        .map_err(|e| RuntimeError::host("clearing overlay markers", e))
}

/// A host-side failure on a sandbox-controlled tree: a link planted in the way is the
/// sandbox's doing (a clear refusal), anything else the host's.
fn layer_error(context: &'static str, e: io::Error) -> RuntimeError {
    if crate::beneath::is_link_error(&e) {
        RuntimeError::Invalid(format!(
            "{context}: {e}; corral never follows links in a sandbox's files"
        ))
    } else {
        RuntimeError::host(context, e)
    }
}
