//! [`LinuxRuntime`]: the `Runtime` port on Linux namespaces, overlayfs and cgroups.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_core::agent::{AGENT_PATH_IN_SANDBOX, AgentConfig};
use corral_core::{CommitConfig, ImageInfo, Resources, Runtime, RuntimeError, SandboxSpec};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::beneath::Tree;
use crate::cgroup::{Cgroups, Limits};
use crate::disk::Disk;
use crate::host_image::{self, HostImage};
use crate::oci::images::{self as bound, BoundImage};
use crate::spawn::{Plan, Spawner, Step, pidfd_kill};
use crate::users::Account;

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

/// The longest `lowerdir=` value: overlayfs takes its options in one page, with the upper
/// and work dirs and the option names beside it.
const MAX_LOWERDIR: usize = 3500;

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
}

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

pub(crate) fn mkdirs(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, RuntimeError> {
    CString::new(s.as_ref())
        .map_err(|_| RuntimeError::Invalid("a value contains a NUL byte".into()))
}

fn cpath(p: &Path) -> Result<CString, RuntimeError> {
    cstr(p.as_os_str().as_bytes())
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

    /// Writes the sandbox's directories and files and builds the clone plan.
    fn prepare(&self, spec: &SandboxSpec) -> Result<Plan, RuntimeError> {
        let bound = self.root_of(spec)?;
        // An OCI root (one overlay) rather than the host image's overlays.
        let oci = bound.as_ref().filter(|b| !b.is_host());
        let host = |c: &'static str| move |e: io::Error| RuntimeError::host(c, e);
        // Every sandbox mounts its root on the same directory, each in its own mount
        // namespace: no mount point to create and remove per sandbox.
        let mnt = self.cfg.data_dir.join("mnt");
        let layer = self
            .disk
            .create(&spec.id, u64::from(spec.resources.disk_gib) << 30)?;
        let names = self.layer_names(oci.is_some());
        // The layer dir is corral's, but what an archive restore put in it came from the
        // sandbox: no link is followed there either.
        let layer_tree = Tree::open(&layer).map_err(host("opening the sandbox's layer"))?;
        for l in &names {
            layer_tree
                .mkdir_all(&Path::new("upper").join(l), 0o755, None)
                .map_err(host("creating upper dir"))?;
            layer_tree
                .mkdir_all(&Path::new("work").join(l), 0o700, None)
                .map_err(host("creating work dir"))?;
        }
        let account = match oci {
            Some(img) => oci_account(spec, img, &layer.join("upper/root"))?,
            None => self
                .image
                .account(&spec.user)
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "user {:?} does not exist in image {:?}",
                        spec.user, spec.image
                    ))
                })?
                .clone(),
        };
        if clear_volatile_markers(&layer, &names).map_err(host("clearing overlay markers"))? {
            tracing::warn!(
                sandbox = %spec.id,
                "sandbox was not stopped cleanly; if the host crashed while it ran, its most \
                 recent writes may be missing"
            );
        }
        if let Some(img) = oci {
            prepare_oci_upper(&layer.join("upper/root"), img, &account)?;
            self.write_etc(&layer.join("upper/root"), "etc", spec)?;
        } else if self.image.dirs.iter().any(|d| d.name == "etc") {
            self.write_etc(&layer.join("upper/etc"), "", spec)?;
        }

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        env.insert("HOME".into(), account.home.clone());
        env.insert("USER".into(), account.name.clone());
        env.insert("LOGNAME".into(), account.name.clone());
        env.insert("SHELL".into(), account.shell.clone());
        env.insert("HOSTNAME".into(), spec.id.clone());
        env.insert("LANG".into(), "C.UTF-8".into());
        let mut work_dir = account.home.clone();
        let mut entrypoint = Vec::new();
        if let Some(img) = &bound {
            oci_env(&mut env, &img.config.env);
            if let Some(w) = &img.config.working_dir {
                work_dir = w.clone();
            }
            entrypoint = img
                .config
                .entrypoint
                .iter()
                .chain(&img.config.cmd)
                .cloned()
                .collect();
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let config = AgentConfig {
            sandbox_id: spec.id.clone(),
            user: account.name.clone(),
            uid: account.uid,
            gid: account.gid,
            home: account.home.clone(),
            work_dir,
            env,
            entrypoint,
        };
        self.finish_prepare(spec, &config, &layer, &mnt, bound.as_ref())
    }

    /// Writes the sandbox's `/etc/hostname`, `/etc/hosts` and (with a network)
    /// `/etc/resolv.conf` into `etc`, the directory of its writable layer that is its `/etc`.
    /// The layer is the sandbox's: each file is replaced (a link planted there is replaced
    /// itself, never written through) and a link on the way to `etc` fails the start.
    fn write_etc(&self, upper: &Path, etc: &str, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let etc = Tree::open(upper)
            .and_then(|t| t.open_dir(Path::new(etc)))
            .map_err(|e| layer_error("opening the sandbox's /etc", e))?;
        let write = |name: &str, body: String| {
            etc.replace_file(Path::new(name), body.as_bytes(), 0o644)
                .map_err(|e| layer_error("writing the sandbox's /etc", e))
        };
        write("hostname", format!("{}\n", spec.id))?;
        write(
            "hosts",
            format!(
                "127.0.0.1\tlocalhost {id}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                id = spec.id
            ),
        )?;
        if let Some(net) = &self.net
            && !net.dns().is_empty()
        {
            let mut conf = String::from("# written by corral\n");
            for ns in net.dns() {
                conf.push_str(&format!("nameserver {ns}\n"));
            }
            // Replaces the host's file too when it is a link into /run (systemd-resolved).
            write("resolv.conf", conf)?;
        }
        Ok(())
    }

    /// The image a sandbox's root is built from: its binding when it has one, else the
    /// `host` image (`None`), else the committed snapshot or stored OCI image `spec.image`
    /// names (bound now, with the spec's entrypoint override).
    fn root_of(&self, spec: &SandboxSpec) -> Result<Option<BoundImage>, RuntimeError> {
        let data = &self.cfg.data_dir;
        if let Some(b) = bound::read_binding(data, &spec.id)
            .map_err(|e| RuntimeError::host("reading the sandbox's image binding", e))?
        {
            return Ok(Some(b));
        }
        if spec.image == "host" && spec.entrypoint.is_none() {
            return Ok(None);
        }
        let mut b = if spec.image == "host" {
            BoundImage::host()
        } else if let Some(id) = crate::commit::id_of(&spec.image) {
            crate::commit::read(data, id)
                .map_err(|e| RuntimeError::host("reading the snapshot manifest", e))?
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!("snapshot {:?} does not exist", spec.image))
                })?
                .image
        } else {
            let img = self
                .oci
                .resolve(&spec.image)
                .map_err(bound::runtime_error)?
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!("image {:?} has not been pulled", spec.image))
                })?;
            BoundImage::of(&img)
        };
        if let Some(e) = &spec.entrypoint {
            b.config.entrypoint = e.clone();
            b.config.cmd.clear();
        }
        bound::write_binding(data, &spec.id, &b)
            .map_err(|e| RuntimeError::host("recording the sandbox's image", e))?;
        Ok(Some(b))
    }

    /// The rest of `prepare`: agent config, log, socket and the clone plan.
    fn finish_prepare(
        &self,
        spec: &SandboxSpec,
        config: &AgentConfig,
        layer: &Path,
        mnt: &Path,
        oci: Option<&BoundImage>,
    ) -> Result<Plan, RuntimeError> {
        let host = |c: &'static str| move |e: io::Error| RuntimeError::host(c, e);
        let body = serde_json::to_vec(config)
            .map_err(|e| RuntimeError::host("encoding agent config", e))?;
        let config_fd = config_memfd(&body).map_err(host("writing agent config"))?;
        // A pipe the server copies into a file next to the sandbox's writable layer (so it
        // goes when the sandbox goes); never a host file the agent could name.
        let log =
            crate::agent_log::start(layer.join("agent.log")).map_err(host("opening agent log"))?;
        let sock = self.agent_socket(&spec.id);
        match fs::remove_file(&sock) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::host("removing stale socket", e));
            }
            _ => {}
        }
        let listener: OwnedFd = UnixListener::bind(&sock)
            .map_err(host("binding agent socket"))?
            .into();

        // First the child moves itself into its cgroups ("0" is the writer), so everything
        // it does from then on is accounted and limited.
        let mut steps = Vec::new();
        for procs in self.cgroups.procs_files(&spec.id) {
            steps.push(Step::WriteFile {
                path: cpath(&procs)?,
                data: b"0".to_vec(),
            });
        }
        // Then into its network slot (before /sys is mounted, which shows the mounter's
        // network namespace), with its egress policy already in force.
        let netns = match &self.net {
            Some(net) => {
                let lease = net
                    .lease(&spec.id, &spec.egress)
                    .map_err(|e| RuntimeError::host("taking a network slot", e))?;
                steps.push(Step::Setns {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&lease.netns),
                    nstype: libc::CLONE_NEWNET,
                });
                Some(lease.netns)
            }
            None => None,
        };
        steps.extend(self.mount_steps(&spec.id, layer, mnt, netns.is_none(), oci)?);
        crate::volume::insert_steps(
            &mut steps,
            &self.cfg.data_dir,
            &spec.volumes,
            mnt,
            config.uid,
            config.gid,
        )?;
        Ok(Plan {
            steps,
            exec_path: cstr(AGENT_PATH_IN_SANDBOX)?,
            argv: vec![cstr("corral-agent")?],
            envp: vec![cstr(format!("PATH={DEFAULT_PATH}"))?],
            listener,
            config: config_fd,
            log,
            netns,
        })
    }

    /// Names of a sandbox's overlay layers: its root and, for the host image, each
    /// overlaid host directory (an OCI image is one overlay).
    fn layer_names(&self, oci: bool) -> Vec<String> {
        if oci {
            return vec!["root".to_string()];
        }
        std::iter::once("root".to_string())
            .chain(self.image.dirs.iter().map(|d| d.name.clone()))
            .collect()
    }

    /// [`Self::layer_names`] of a sandbox, by its binding.
    fn layer_names_of(&self, id: &str) -> Result<Vec<String>, RuntimeError> {
        let b = bound::read_binding(&self.cfg.data_dir, id)
            .map_err(|e| RuntimeError::host("reading the sandbox's image binding", e))?;
        Ok(self.layer_names(b.is_some_and(|b| !b.is_host())))
    }

    /// The root overlays: (mount point, lower dirs, layer name).
    fn root_overlays(
        &self,
        mnt: &Path,
        bound: Option<&BoundImage>,
    ) -> Result<Vec<(PathBuf, String, String)>, RuntimeError> {
        // overlayfs wants the top-most lower dir first.
        let join = |dirs: Vec<PathBuf>| -> Result<String, RuntimeError> {
            let s = dirs
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            // The mount options travel in one page.
            if s.len() > MAX_LOWERDIR {
                return Err(RuntimeError::Invalid(format!(
                    "the sandbox's image has too many layers ({}) to mount; create the \
                     snapshot from a sandbox with fewer snapshots below it",
                    dirs.len()
                )));
            }
            Ok(s)
        };
        if let Some(img) = bound.filter(|b| !b.is_host()) {
            return Ok(vec![(
                mnt.to_owned(),
                join(img.lower_dirs())?,
                "root".into(),
            )]);
        }
        // The host image's overlays, with the upper dirs of any commits above each.
        let commits = |name: &str| -> Vec<PathBuf> {
            bound
                .map(|b| {
                    b.commits
                        .iter()
                        .map(|c| c.join("upper").join(name))
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut root = vec![self.image.skeleton.clone()];
        root.extend(commits("root"));
        let mut v = vec![(mnt.to_owned(), join(root)?, "root".to_string())];
        for d in &self.image.dirs {
            // `d.lowers` lists the top-most first.
            let mut lowers: Vec<PathBuf> = d.lowers.iter().rev().cloned().collect();
            lowers.extend(commits(&d.name));
            v.push((mnt.join(&d.name), join(lowers)?, d.name.clone()));
        }
        Ok(v)
    }

    fn mount_steps(
        &self,
        id: &str,
        layer: &Path,
        mnt: &Path,
        own_loopback: bool,
        oci: Option<&BoundImage>,
    ) -> Result<Vec<Step>, RuntimeError> {
        let overlay = |target: &Path, lowers: &str, name: &str| -> Result<Step, RuntimeError> {
            Ok(Step::Mount {
                source: Some(cstr("overlay")?),
                target: cpath(target)?,
                fstype: Some(cstr("overlay")?),
                flags: 0,
                data: Some(cstr(format!(
                    "lowerdir={lowers},upperdir={},workdir={},volatile",
                    layer.join("upper").join(name).display(),
                    layer.join("work").join(name).display()
                ))?),
            })
        };
        let mount = |source: Option<&str>,
                     target: &Path,
                     fstype: Option<&str>,
                     flags: libc::c_ulong,
                     data: Option<&str>| {
            Ok::<_, RuntimeError>(Step::Mount {
                source: source.map(cstr).transpose()?,
                target: cpath(target)?,
                fstype: fstype.map(cstr).transpose()?,
                flags,
                data: data.map(cstr).transpose()?,
            })
        };
        let dev = mnt.join("dev");
        let mut steps = vec![
            Step::Umask { mask: 0 },
            // Our own cgroup namespace, rooted at the sandbox's cgroup we were just moved to.
            Step::Unshare {
                flags: libc::CLONE_NEWCGROUP,
            },
            // Nothing we mount may propagate back to the host.
            mount(
                None,
                Path::new("/"),
                None,
                libc::MS_REC | libc::MS_PRIVATE,
                None,
            )?,
        ];
        for (target, lowers, name) in self.root_overlays(mnt, oci)? {
            steps.push(overlay(&target, &lowers, &name)?);
        }
        let agent = mnt.join(AGENT_PATH_IN_SANDBOX.trim_start_matches('/'));
        let agent_src = self.cfg.agent_binary.display().to_string();
        steps.push(mount(Some(&agent_src), &agent, None, libc::MS_BIND, None)?);
        steps.push(mount(
            None,
            &agent,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?);
        steps.push(mount(
            Some("proc"),
            &mnt.join("proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?);
        steps.push(mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_STRICTATIME,
            Some("mode=755,size=64k"),
        )?);
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            steps.push(Step::Mknod {
                path: cpath(&dev.join(name))?,
                mode: libc::S_IFCHR | 0o666,
                dev: libc::makedev(major, minor),
            });
        }
        steps.push(Step::Mkdir {
            path: cpath(&dev.join("pts"))?,
            mode: 0o755,
        });
        steps.push(Step::Mkdir {
            path: cpath(&dev.join("shm"))?,
            mode: 0o1777,
        });
        steps.push(mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )?);
        steps.push(mount(
            Some("shm"),
            &dev.join("shm"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777,size=65536k"),
        )?);
        for (target, link) in [
            ("pts/ptmx", "ptmx"),
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ] {
            steps.push(Step::Symlink {
                target: cstr(target)?,
                link: cpath(&dev.join(link))?,
            });
        }
        steps.push(mount(
            Some("sysfs"),
            &mnt.join("sys"),
            Some("sysfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?);
        let null = dev.join("null").display().to_string();
        for (rel, is_dir) in &self.masked {
            let target = mnt.join(rel);
            steps.push(Step::Optional(Box::new(if *is_dir {
                mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some("size=0"),
                )?
            } else {
                mount(Some(&null), &target, None, libc::MS_BIND, None)?
            })));
        }
        for rel in READ_ONLY {
            let target = mnt.join(rel);
            steps.push(Step::Optional(Box::new(mount(
                Some(&target.display().to_string()),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?)));
            steps.push(Step::Optional(Box::new(mount(
                None,
                &target,
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            )?)));
        }
        steps.push(Step::Sethostname { name: cstr(id)? });
        steps.push(Step::PivotRoot { root: cpath(mnt)? });
        steps.push(Step::Umask { mask: 0o022 });
        // Hardening, last: loopback up needs CAP_NET_ADMIN, which is then dropped for good.
        // (A network slot's loopback is up already.)
        if own_loopback {
            steps.push(Step::LoopbackUp);
        }
        // The OOM killer must pick a sandbox's hungry process, never its agent. -1000 needs
        // CAP_SYS_RESOURCE, which some hosts (containers) do not grant even to root, so it is
        // best effort; the agent also starts its children at +500, which needs no privilege.
        steps.push(Step::BestEffort(Box::new(Step::WriteFile {
            path: cstr("/proc/self/oom_score_adj")?,
            data: b"-1000".to_vec(),
        })));
        steps.push(Step::DropCaps {
            caps: self.dropped_caps.clone(),
        });
        steps.push(Step::Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: self.nofile.0,
            hard: self.nofile.1,
        });
        steps.push(Step::NoNewPrivs);
        for program in &self.seccomp {
            steps.push(Step::Seccomp {
                program: program.clone(),
            });
        }
        Ok(steps)
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
        self.running()
            .insert(id.to_owned(), Running { pidfd, exited: rx });
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

pub(crate) fn remove_file_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(crate) fn remove_dir_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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
                    crate::spawn::SpawnError::Step { step, source }
                        if step.starts_with("mounting volume")
                            && matches!(
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
        self.cgroups
            .usage(id, crate::cgroup::host_cpus(), crate::cgroup::host_memory())
    }
}

/// The agent's configuration in a sealed memfd: read by the agent on its fd 4, never on disk.
fn config_memfd(body: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"corral-agent-config",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io::Error::from)?;
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, body)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_WRITE
                | nix::fcntl::SealFlag::F_SEAL_GROW
                | nix::fcntl::SealFlag::F_SEAL_SHRINK
                | nix::fcntl::SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(io::Error::from)?;
    Ok(file.into())
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

/// The longest `/etc/passwd` corral reads from an image or a sandbox's layer.
const MAX_PASSWD: u64 = 4 << 20;

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

/// The trees of an image root, top first: the sandbox's upper dir, then its image's layers
/// (commits above OCI layers). Each is opened by fd; nothing below is resolved by the host.
fn image_trees(upper: &Path, img: &BoundImage) -> Result<Vec<Tree>, RuntimeError> {
    std::iter::once(upper.to_owned())
        .chain(img.lower_dirs().into_iter().rev())
        .map(|d| Tree::open(&d).map_err(|e| RuntimeError::host("opening an image layer", e)))
        .collect()
}

/// Finds `name`'s account in the image: the sandbox's own `/etc/passwd` (upper) first, else
/// the top-most layer that has one. `name` may be `user`, `uid`, `user:group` or `uid:gid`; a
/// numeric uid not in the file is used as is (home `/`). A passwd that is a link, or behind
/// one, is skipped, never followed.
fn oci_account(
    spec: &SandboxSpec,
    img: &BoundImage,
    upper: &Path,
) -> Result<Account, RuntimeError> {
    let passwd = image_trees(upper, img)?
        .iter()
        .find_map(|t| match t.read(Path::new("etc/passwd"), MAX_PASSWD) {
            Ok(Some(body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(sandbox = %spec.id, error = %e, "skipping an unreadable /etc/passwd");
                None
            }
        })
        .unwrap_or_default();
    let accounts = crate::users::parse_passwd(&passwd);
    let (user, group) = match spec.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.user.as_str(), None),
    };
    let mut account = match crate::users::find(&accounts, user) {
        Some(a) => a.clone(),
        None => match user.parse::<u32>() {
            Ok(uid) => Account {
                name: user.to_owned(),
                uid,
                gid: uid,
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
            Err(_) => {
                return Err(RuntimeError::Invalid(format!(
                    "user {:?} does not exist in image {:?}",
                    spec.user, img.reference
                )));
            }
        },
    };
    if let Some(gid) = group.and_then(|g| g.parse::<u32>().ok()) {
        account.gid = gid;
    }
    Ok(account)
}

/// Whether `rel` exists in the merged view of an image root (upper, then layers top first).
/// A link (or a file) on the way counts as existing: the caller then creates nothing there.
fn exists_in_image(trees: &[Tree], rel: &str) -> bool {
    trees
        .iter()
        .any(|t| !matches!(t.lstat(Path::new(rel)), Ok(None)))
}

/// Creates in an OCI sandbox's upper dir what the sandbox needs but images may lack: mount
/// points (`/proc`, `/sys`, `/dev`, the agent's file), `/tmp`, `/etc`, and the user's home
/// and working dir. Only missing names are made, each through [`Tree`]: a link planted in
/// the upper dir or an image layer is never followed.
fn prepare_oci_upper(
    upper: &Path,
    img: &BoundImage,
    account: &Account,
) -> Result<(), RuntimeError> {
    let trees = image_trees(upper, img)?;
    let top = &trees[0];
    let fail = |e| layer_error("preparing the image root", e);
    for (rel, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
    ] {
        if !exists_in_image(&trees, rel) {
            top.mkdir_all(Path::new(rel), mode, None).map_err(fail)?;
        }
    }
    // `/etc` in the upper dir itself (the image's may be only in a lower layer): files are
    // written there next.
    top.mkdir_all(Path::new("etc"), 0o755, None).map_err(fail)?;
    let agent = AGENT_PATH_IN_SANDBOX.trim_start_matches('/');
    if !exists_in_image(&trees, agent) {
        if let Some(parent) = Path::new(agent).parent() {
            top.mkdir_all(parent, 0o755, None).map_err(fail)?;
        }
        top.create_empty(Path::new(agent), 0o644).map_err(fail)?;
    }
    let owned = [
        Some(account.home.as_str()),
        img.config.working_dir.as_deref(),
    ];
    for dir in owned.into_iter().flatten() {
        let rel = dir.trim_start_matches('/');
        if !rel.is_empty() && !exists_in_image(&trees, rel) {
            top.mkdir_all(Path::new(rel), 0o755, Some((account.uid, account.gid)))
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Overlays an image's `KEY=value` environment on the defaults.
fn oci_env(env: &mut BTreeMap<String, String>, image_env: &[String]) {
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=')
            && !k.is_empty()
        {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
}
