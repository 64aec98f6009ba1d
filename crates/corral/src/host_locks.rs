//! Host resources one `corral serve` owns alone: its data dir, its cgroup parent and, with
//! NAT networking, its interface prefix and its sandbox network.
//!
//! A server's start-up cleanup removes whatever it finds under its cgroup parent, interface
//! prefix and data dir that it has no record of, and its stop may delete its nftables table:
//! a second server sharing any of them destroys the first one's sandboxes. So before anything
//! touches the host, `serve` takes an exclusive `flock` per resource on a file under
//! `/run/corral/` ([`LOCK_DIR`], a tmpfs: a reboot, which ends every sandbox, clears it) and
//! holds it for its lifetime; the kernel releases it when the process ends, however it ends.
//!
//! Two resources can clash without being equal: nested data dirs or cgroup parents, an
//! interface prefix that starts with another (`crv` matches `crv1`'s interfaces, whose names
//! are `<prefix><n>`, and nftables rules match `<prefix>*`), overlapping networks. Each lock
//! file therefore records its resource and owner (pid, data dir, listen address), and a start
//! checks every recorded resource of the same kind whose owner still holds its lock, all under
//! a short global lock (`registry.lock`) so two starts cannot pass each other.
//!
//! Sandboxes outlive their server. A cgroup parent or interface prefix whose last owner (a
//! server with another data dir) stopped while its sandboxes kept running is still refused:
//! this server would remove those sandboxes as leftovers of sandboxes it never had.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

/// Where lock files live.
pub const LOCK_DIR: &str = "/run/corral";
/// The short global lock every start holds while it checks and takes its locks.
const REGISTRY: &str = "registry.lock";
/// How long a start waits for the global lock (held for milliseconds by each start).
const REGISTRY_WAIT: Duration = Duration::from_secs(10);
/// On cgroup v1, the hierarchies a cgroup parent may hold sandbox groups in.
const V1_CONTROLLERS: &[&str] = corral_runtime::cgroup::V1_HIERARCHIES;

/// A host resource a server owns alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// The canonical data dir.
    DataDir(PathBuf),
    /// A cgroup parent (a relative path of normal components) under a cgroup root.
    CgroupParent { root: PathBuf, parent: PathBuf },
    /// The prefix of sandboxes' host-side interfaces (and of the nftables table's name).
    NetPrefix(String),
    /// The sandboxes' network.
    NetCidr(Ipv4Net),
}

impl Resource {
    /// A cgroup parent as `serve` takes it: a relative path without `.` or `..` (any other
    /// would name a group outside the root, or one another server names differently).
    pub fn cgroup_parent(root: &Path, parent: &str) -> Result<Self, LockError> {
        let path = Path::new(parent);
        let normal = path.components().all(|c| matches!(c, Component::Normal(_)));
        if parent.is_empty() || !normal || parent.contains("/./") || parent.starts_with("./") {
            return Err(LockError::Invalid(format!(
                "cgroup parent {parent:?} must be a relative path of plain names (no '.', '..' \
                 or leading '/'): pass another --cgroup-parent (env CORRAL_CGROUP_PARENT)"
            )));
        }
        // Both spellings of one hierarchy (e.g. through a symlink) must meet.
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        Ok(Self::CgroupParent {
            root,
            parent: path.components().collect(),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::DataDir(_) => "data-dir",
            Self::CgroupParent { .. } => "cgroup-parent",
            Self::NetPrefix(_) => "net-prefix",
            Self::NetCidr(_) => "net-cidr",
        }
    }

    /// The resource as recorded and compared.
    fn value(&self) -> String {
        match self {
            Self::DataDir(p) => p.to_string_lossy().into_owned(),
            Self::CgroupParent { root, parent } => root.join(parent).to_string_lossy().into_owned(),
            Self::NetPrefix(p) => p.clone(),
            Self::NetCidr(n) => n.trunc().to_string(),
        }
    }

    /// The resource in a message.
    fn describe(&self) -> String {
        match self {
            Self::DataDir(p) => format!("the data dir {}", p.display()),
            Self::CgroupParent { root, parent } => format!(
                "the cgroup parent {:?} ({})",
                parent.to_string_lossy(),
                root.join(parent).display()
            ),
            Self::NetPrefix(p) => {
                format!("the network interface prefix {p:?} (nftables table corral_{p})")
            }
            Self::NetCidr(n) => format!("the sandbox network {}", n.trunc()),
        }
    }

    /// The flag and environment variable that choose this resource.
    fn flag(&self) -> (&'static str, &'static str) {
        match self {
            Self::DataDir(_) => ("--data-dir", "CORRAL_DATA_DIR"),
            Self::CgroupParent { .. } => ("--cgroup-parent", "CORRAL_CGROUP_PARENT"),
            Self::NetPrefix(_) => ("--net-prefix", "CORRAL_NET_PREFIX"),
            Self::NetCidr(_) => ("--net-cidr", "CORRAL_NET_CIDR"),
        }
    }

    /// Whether two servers holding `self` and `other` would touch each other's things.
    fn clashes(&self, other: &Resource) -> bool {
        let nested = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        match (self, other) {
            (Self::DataDir(a), Self::DataDir(b)) => nested(a, b),
            (Self::CgroupParent { .. }, Self::CgroupParent { .. }) => {
                nested(Path::new(&self.value()), Path::new(&other.value()))
            }
            (Self::NetPrefix(a), Self::NetPrefix(b)) => a.starts_with(b) || b.starts_with(a),
            (Self::NetCidr(a), Self::NetCidr(b)) => {
                let (a, b) = (a.trunc(), b.trunc());
                a.contains(&b.network()) || b.contains(&a.network())
            }
            _ => false,
        }
    }

    /// The lock file's name: kind, a readable part of the value, and a hash of the value.
    fn file_name(&self) -> String {
        let value = self.value();
        let digest = Sha256::digest(format!("{}\0{value}", self.kind()).as_bytes());
        let hash = hex::encode(&digest[..8]);
        let readable: String = value
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        format!("{}.{readable}.{hash}.lock", self.kind())
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "kind": self.kind(), "value": self.value() });
        if let Self::CgroupParent { root, parent } = self {
            v["root"] = root.to_string_lossy().into_owned().into();
            v["parent"] = parent.to_string_lossy().into_owned().into();
        }
        v
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        let value = v["value"].as_str()?;
        Some(match v["kind"].as_str()? {
            "data-dir" => Self::DataDir(PathBuf::from(value)),
            "cgroup-parent" => Self::CgroupParent {
                root: PathBuf::from(v["root"].as_str()?),
                parent: PathBuf::from(v["parent"].as_str()?),
            },
            "net-prefix" => Self::NetPrefix(value.to_owned()),
            "net-cidr" => Self::NetCidr(value.parse().ok()?),
            _ => return None,
        })
    }

    /// Sandboxes that hold the resource without a server: groups under a cgroup parent, or
    /// taken network slots (a host interface `<prefix><n>` carrying a sandbox id as alias).
    fn occupants(&self, probe: &Probe) -> Vec<String> {
        let subdirs = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let found: BTreeSet<String> = match self {
            Self::CgroupParent { root, parent } => {
                if root.join("cgroup.controllers").exists() {
                    subdirs(&root.join(parent)).into_iter().collect()
                } else {
                    V1_CONTROLLERS
                        .iter()
                        .flat_map(|c| subdirs(&root.join(c).join(parent)))
                        .collect()
                }
            }
            Self::NetPrefix(prefix) => fs::read_dir(&probe.sys_class_net)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            let n = name.strip_prefix(prefix.as_str())?;
                            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                                return None;
                            }
                            let alias = fs::read_to_string(e.path().join("ifalias")).ok()?;
                            let alias = alias.trim();
                            (!alias.is_empty()).then(|| alias.to_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Self::DataDir(_) | Self::NetCidr(_) => BTreeSet::new(),
        };
        found.into_iter().collect()
    }
}

/// The server taking the locks, as recorded in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The canonical data dir.
    pub data_dir: String,
    pub listen: String,
}

impl Owner {
    fn describe(&self) -> String {
        format!(
            "pid {}, data dir {}, listening on {}",
            self.pid, self.data_dir, self.listen
        )
    }
}

/// Where the host's state is read (a parameter for tests).
#[derive(Debug, Clone)]
pub struct Probe {
    /// Network interfaces, normally `/sys/class/net`.
    pub sys_class_net: PathBuf,
}

impl Probe {
    pub fn host() -> Self {
        Self {
            sys_class_net: PathBuf::from("/sys/class/net"),
        }
    }
}

/// Who holds a resource this server wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A running server (it holds the lock).
    Running(Owner),
    /// A stopped server with another data dir whose sandboxes still hold the resource.
    Stopped { last: Owner, sandboxes: Vec<String> },
}

/// A resource this server wants and what stands in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub wanted: Resource,
    /// Equal to `wanted`, or one it clashes with.
    pub held: Resource,
    pub holder: Holder,
    pub lock_file: PathBuf,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (flag, env) = self.wanted.flag();
        let wanted = self.wanted.describe();
        let what = if self.held == self.wanted {
            format!("{wanted} is")
        } else {
            format!("{wanted} overlaps {}, which is", self.held.describe())
        };
        match &self.holder {
            Holder::Running(owner) => write!(
                f,
                "{what} in use by another corral server ({}); sharing it would let each \
                 server remove the other's sandboxes. Give this server its own with {flag} \
                 (env {env})",
                owner.describe()
            ),
            Holder::Stopped { last, sandboxes } => {
                let shown: Vec<&str> = sandboxes.iter().take(3).map(String::as_str).collect();
                let more = if sandboxes.len() > shown.len() {
                    format!(", and {} more", sandboxes.len() - shown.len())
                } else {
                    String::new()
                };
                write!(
                    f,
                    "{what} still held by {} sandbox(es) of a corral server that is not \
                     running (data dir {}, last pid {}): {}{more}. This server would remove \
                     them as leftovers. Start that server again (it adopts them) or delete \
                     them there, or give this server its own with {flag} (env {env}); to \
                     have them removed, delete {}",
                    sandboxes.len(),
                    last.data_dir,
                    last.pid,
                    shown.join(", "),
                    self.lock_file.display()
                )
            }
        }
    }
}

/// Errors taking the locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0}")]
    Conflict(Box<Conflict>),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the lock registry {} stayed locked for {} s (another corral server is starting, \
         or hangs while starting)",
        .0.display(),
        REGISTRY_WAIT.as_secs()
    )]
    Busy(PathBuf),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LockError + use<> {
    let path = path.to_owned();
    move |source| LockError::Io { op, path, source }
}

/// The locks a server holds; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct HostLocks {
    dir: PathBuf,
    held: Vec<(PathBuf, File, Resource)>,
    probe: Probe,
}

impl HostLocks {
    /// The lock files held.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|(p, _, _)| p.as_path())
    }

    /// Lets the locks go without removing any record, as a killed server does.
    #[cfg(test)]
    fn abandon(mut self) {
        self.held.clear();
    }
}

impl Drop for HostLocks {
    /// Removes the records of resources nothing holds any more. A cgroup parent or prefix
    /// that sandboxes still hold keeps its record: it names their server to the next one.
    /// Best effort: a record left behind is removed by the next start that finds it unlocked.
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Ok(_registry) = lock_registry(&self.dir, Duration::from_secs(1)) else {
            return;
        };
        for (path, _, res) in &self.held {
            if res.occupants(&self.probe).is_empty() {
                let _ = fs::remove_file(path);
            }
        }
        // The files (and their locks) go after the registry lock: unlinked, nobody can
        // open them any more.
    }
}

/// Takes the global lock, waiting at most `wait`.
fn lock_registry(dir: &Path, wait: Duration) -> Result<File, LockError> {
    let path = dir.join(REGISTRY);
    let registry = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    let deadline = Instant::now() + wait;
    while !try_lock(&registry, &path)? {
        if Instant::now() > deadline {
            return Err(LockError::Busy(path));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(registry)
}

/// A lock file's record: its resource and the server that holds (or last held) it.
fn read_record(path: &Path) -> Option<(Resource, Owner)> {
    let text = fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let owner = Owner {
        pid: u32::try_from(v["pid"].as_u64()?).ok()?,
        data_dir: v["data_dir"].as_str()?.to_owned(),
        listen: v["listen"].as_str()?.to_owned(),
    };
    Some((Resource::from_json(&v["resource"])?, owner))
}

fn open_lock_file(path: &Path, create: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if create {
        o.create_new(true);
    }
    o.open(path)
}

/// `Ok(true)`: the lock is ours now; `Ok(false)`: another process holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool, LockError> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(io_err("locking", path)(e)),
    }
}

/// Takes an exclusive lock on every resource in `wanted` for `me`, or none: the first
/// conflict found is returned and nothing is held. Only `dir` is written.
pub fn acquire(
    dir: &Path,
    wanted: &[Resource],
    me: &Owner,
    probe: &Probe,
) -> Result<HostLocks, LockError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io_err("reading", dir))?;
    if !meta.is_dir() {
        return Err(LockError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", dir))?;
    }
    let _registry = lock_registry(dir, REGISTRY_WAIT)?;
    let mut created = Vec::new();
    let r = acquire_locked(dir, wanted, me, probe, &mut created);
    if r.is_err() {
        // A failed start leaves no file of its own behind.
        for p in created {
            let _ = fs::remove_file(p);
        }
    }
    // The registry lock goes with `_registry`.
    r
}

fn acquire_locked(
    dir: &Path,
    wanted: &[Resource],
    me: &Owner,
    probe: &Probe,
    created: &mut Vec<PathBuf>,
) -> Result<HostLocks, LockError> {
    let conflict = |wanted: &Resource, held: Resource, holder: Holder, lock_file: PathBuf| {
        LockError::Conflict(Box::new(Conflict {
            wanted: wanted.clone(),
            held,
            holder,
            lock_file,
        }))
    };
    // A resource whose last owner had another data dir and whose sandboxes live on.
    let left_by_other = |res: &Resource, last: &Owner| -> Option<Holder> {
        if last.data_dir == me.data_dir {
            return None;
        }
        let sandboxes = res.occupants(probe);
        (!sandboxes.is_empty()).then(|| Holder::Stopped {
            last: last.clone(),
            sandboxes,
        })
    };

    // The lock on each resource itself.
    let mut held = Vec::new();
    for res in wanted {
        let path = dir.join(res.file_name());
        let file = match open_lock_file(&path, true) {
            Ok(f) => {
                created.push(path.clone());
                f
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                open_lock_file(&path, false).map_err(io_err("opening", &path))?
            }
            Err(e) => return Err(io_err("creating", &path)(e)),
        };
        let record = read_record(&path);
        if !try_lock(&file, &path)? {
            let owner = record.map(|(_, o)| o).unwrap_or_else(|| Owner {
                pid: 0,
                data_dir: "unknown".into(),
                listen: "unknown".into(),
            });
            return Err(conflict(res, res.clone(), Holder::Running(owner), path));
        }
        if let Some((_, last)) = record
            && let Some(holder) = left_by_other(res, &last)
        {
            return Err(conflict(res, res.clone(), holder, path));
        }
        held.push((path, file, res.clone()));
    }

    // Other recorded resources that clash with a wanted one; stale records are removed.
    let ours: BTreeSet<String> = wanted.iter().map(Resource::file_name).collect();
    let entries = fs::read_dir(dir).map_err(io_err("listing", dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == REGISTRY || !name.ends_with(".lock") || ours.contains(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = open_lock_file(&path, false) else {
            continue;
        };
        let record = read_record(&path);
        let live = !try_lock(&file, &path)?;
        let Some((res, owner)) = record else {
            if !live {
                // Left by a start that died before writing its record.
                let _ = fs::remove_file(&path);
            }
            continue;
        };
        if let Some(w) = wanted.iter().find(|w| w.clashes(&res)) {
            if live {
                return Err(conflict(w, res, Holder::Running(owner), path));
            }
            if let Some(holder) = left_by_other(&res, &owner) {
                return Err(conflict(w, res, holder, path));
            }
        }
        if !live && res.occupants(probe).is_empty() {
            let _ = fs::remove_file(&path);
        }
    }

    // Records are written last: a file only names its owner once everything is held.
    for (path, file, res) in &held {
        let record = serde_json::json!({
            "resource": res.to_json(),
            "pid": me.pid,
            "data_dir": me.data_dir,
            "listen": me.listen,
        });
        file.set_len(0).map_err(io_err("truncating", path))?;
        file.write_all_at(format!("{record}\n").as_bytes(), 0)
            .map_err(io_err("writing", path))?;
    }
    Ok(HostLocks {
        dir: dir.to_owned(),
        held,
        probe: probe.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn owner(n: u32) -> Owner {
        Owner {
            pid: 1000 + n,
            data_dir: format!("/srv/corral-{n}"),
            listen: format!("127.0.0.1:{}", 3000 + n),
        }
    }

    struct Host {
        _tmp: tempfile::TempDir,
        locks: PathBuf,
        cgroup: PathBuf,
        probe: Probe,
    }

    /// A fake host: a lock dir, a cgroup v2 root and a `/sys/class/net`.
    fn host() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let locks = tmp.path().join("run/corral");
        let cgroup = tmp.path().join("cgroup");
        fs::create_dir_all(&cgroup).unwrap();
        fs::write(cgroup.join("cgroup.controllers"), "memory cpu pids\n").unwrap();
        let net = tmp.path().join("net");
        fs::create_dir_all(&net).unwrap();
        Host {
            locks,
            cgroup: fs::canonicalize(&cgroup).unwrap(),
            probe: Probe { sys_class_net: net },
            _tmp: tmp,
        }
    }

    impl Host {
        fn set(&self, n: u32, parent: &str, prefix: &str, cidr: &str) -> Vec<Resource> {
            vec![
                Resource::DataDir(PathBuf::from(owner(n).data_dir)),
                Resource::cgroup_parent(&self.cgroup, parent).unwrap(),
                Resource::NetPrefix(prefix.into()),
                Resource::NetCidr(cidr.parse().unwrap()),
            ]
        }

        fn take(&self, n: u32, set: &[Resource]) -> Result<HostLocks, LockError> {
            acquire(&self.locks, set, &owner(n), &self.probe)
        }
    }

    fn conflict(r: Result<HostLocks, LockError>) -> Conflict {
        match r {
            Err(LockError::Conflict(c)) => *c,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn a_second_server_with_any_shared_resource_is_refused_naming_it_and_the_holder() {
        let h = host();
        let _a = h
            .take(1, &h.set(1, "corral", "crv", "10.117.0.0/16"))
            .unwrap();
        let cases = [
            (h.set(2, "corral", "b", "10.2.0.0/16"), "--cgroup-parent"),
            (h.set(2, "other", "crv", "10.2.0.0/16"), "--net-prefix"),
            (h.set(2, "other", "b", "10.117.0.0/16"), "--net-cidr"),
            (h.set(1, "other", "b", "10.2.0.0/16"), "--data-dir"),
        ];
        for (set, flag) in cases {
            let c = conflict(h.take(2, &set));
            let msg = c.to_string();
            assert_eq!(c.held, c.wanted, "{msg}");
            assert_eq!(c.holder, Holder::Running(owner(1)), "{msg}");
            assert!(msg.contains(flag), "{msg}");
            assert!(msg.contains("pid 1001"), "{msg}");
            assert!(msg.contains("/srv/corral-1"), "{msg}");
            assert!(msg.contains("127.0.0.1:3001"), "{msg}");
        }
        // Positive control: nothing shared, so it starts.
        h.take(2, &h.set(2, "other", "b", "10.2.0.0/16")).unwrap();
    }

    #[test]
    fn clashing_but_unequal_resources_are_refused_too() {
        let h = host();
        let _a = h
            .take(1, &h.set(1, "corral", "crv", "10.0.0.0/16"))
            .unwrap();
        let free = |n| h.set(n, &format!("free{n}"), &format!("f{n}x"), "10.200.0.0/16");
        let mut cases = Vec::new();
        // Networks overlapping either way.
        let mut s = free(2);
        s[3] = Resource::NetCidr("10.0.0.0/8".parse().unwrap());
        cases.push((s, "10.0.0.0/16"));
        let mut s = free(2);
        s[3] = Resource::NetCidr("10.0.3.0/24".parse().unwrap());
        cases.push((s, "10.0.0.0/16"));
        // A prefix one of whose interface names the other's rules match.
        let mut s = free(2);
        s[2] = Resource::NetPrefix("crv1".into());
        cases.push((s, "\"crv\""));
        let mut s = free(2);
        s[2] = Resource::NetPrefix("cr".into());
        cases.push((s, "\"crv\""));
        // Nested cgroup parents and data dirs.
        let mut s = free(2);
        s[1] = Resource::cgroup_parent(&h.cgroup, "corral/sub").unwrap();
        cases.push((s, "cgroup parent \"corral\""));
        let mut s = free(2);
        s[0] = Resource::DataDir("/srv/corral-1/inner".into());
        cases.push((s, "data dir /srv/corral-1,"));
        for (set, held) in cases {
            let c = conflict(h.take(2, &set));
            let msg = c.to_string();
            assert_ne!(c.held, c.wanted, "{msg}");
            assert!(
                msg.contains(&format!("overlaps {}", c.held.describe())),
                "{msg}"
            );
            assert!(msg.contains(held), "{held} in {msg}");
            assert!(msg.contains("pid 1001"), "{msg}");
        }
        // Positive control: adjacent networks and a prefix that is not a prefix do not clash.
        let mut s = free(2);
        s[3] = Resource::NetCidr("10.1.0.0/16".parse().unwrap());
        s[2] = Resource::NetPrefix("crw".into());
        s[1] = Resource::cgroup_parent(&h.cgroup, "corral2").unwrap();
        s[0] = Resource::DataDir("/srv/corral-10".into());
        h.take(2, &s).unwrap();
    }

    #[test]
    fn a_refused_start_holds_nothing_and_leaves_no_file() {
        let h = host();
        let _a = h
            .take(1, &h.set(1, "corral", "crv", "10.117.0.0/16"))
            .unwrap();
        let before: BTreeSet<_> = fs::read_dir(&h.locks)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // Its data dir, cgroup parent and prefix are new; only the network is taken.
        conflict(h.take(2, &h.set(2, "b", "b", "10.117.5.0/24")));
        let after: BTreeSet<_> = fs::read_dir(&h.locks)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(before, after);
        // And what it did lock first is free again.
        h.take(3, &h.set(3, "b", "b", "10.3.0.0/16")).unwrap();
    }

    #[test]
    fn locks_are_released_with_their_holder_and_records_name_it() {
        let h = host();
        let set = h.set(1, "corral", "crv", "10.117.0.0/16");
        let a = h.take(1, &set).unwrap();
        for f in a.files() {
            let (_, o) = read_record(f).unwrap();
            assert_eq!(o, owner(1));
        }
        drop(a);
        // A stop removes its records.
        assert_eq!(fs::read_dir(&h.locks).unwrap().count(), 1);
        // The other way round: the values are free once the holder is gone (for a server
        // with another data dir too, as nothing holds them).
        let mut b_set = set.clone();
        b_set[0] = Resource::DataDir("/srv/corral-2".into());
        let b = h.take(2, &b_set).unwrap();
        let (_, o) = read_record(b.files().nth(1).unwrap()).unwrap();
        assert_eq!(o, owner(2));
        // Killed: its records stay, unlocked, and do not stop anyone.
        b.abandon();
        assert_eq!(fs::read_dir(&h.locks).unwrap().count(), 1 + 4);
        let c = h.take(3, &h.set(3, "corral", "c", "10.3.0.0/16")).unwrap();
        // The next start removes the stale records it finds.
        assert_eq!(fs::read_dir(&h.locks).unwrap().count(), 1 + 4);
        let (_, o) = read_record(c.files().nth(1).unwrap()).unwrap();
        assert_eq!(o, owner(3));
    }

    #[test]
    fn sandboxes_left_by_a_stopped_server_keep_their_cgroup_parent_and_prefix() {
        let h = host();
        let set = h.set(1, "corral", "crv", "10.117.0.0/16");
        let a = h.take(1, &set).unwrap();
        // A's sandbox, which outlives it: its group and its slot interface (alias = its id).
        fs::create_dir_all(h.cgroup.join("corral/sb-1")).unwrap();
        let link = h.probe.sys_class_net.join("crv0");
        fs::create_dir_all(&link).unwrap();
        fs::write(link.join("ifalias"), "sb-1\n").unwrap();
        // A spare slot (no alias) is no sandbox.
        let spare = h.probe.sys_class_net.join("crv1");
        fs::create_dir_all(&spare).unwrap();
        fs::write(spare.join("ifalias"), "\n").unwrap();
        drop(a);

        let mut b = h.set(2, "corral", "zz", "10.2.0.0/16");
        let c = conflict(h.take(2, &b));
        assert_eq!(
            c.holder,
            Holder::Stopped {
                last: owner(1),
                sandboxes: vec!["sb-1".into()]
            }
        );
        let msg = c.to_string();
        assert!(
            msg.contains("--cgroup-parent") && msg.contains("sb-1"),
            "{msg}"
        );
        assert!(msg.contains("/srv/corral-1"), "{msg}");
        b[1] = Resource::cgroup_parent(&h.cgroup, "other").unwrap();
        b[2] = Resource::NetPrefix("crv".into());
        let msg = conflict(h.take(2, &b)).to_string();
        assert!(
            msg.contains("--net-prefix") && msg.contains("sb-1"),
            "{msg}"
        );
        // Its network and data dir are free.
        h.take(2, &h.set(2, "other", "zz", "10.117.0.0/16"))
            .unwrap();
        // A itself restarts and adopts them.
        drop(h.take(1, &set).unwrap());
        // Once they are gone, B may have the values.
        fs::remove_dir(h.cgroup.join("corral/sb-1")).unwrap();
        fs::remove_dir_all(&link).unwrap();
        h.take(2, &h.set(2, "corral", "crv", "10.2.0.0/16"))
            .unwrap();
    }

    #[test]
    fn cgroup_parents_outside_the_root_are_refused() {
        let h = host();
        for bad in ["", "/corral", "../corral", "a/../b", "./a", "a/./b"] {
            let e = Resource::cgroup_parent(&h.cgroup, bad).unwrap_err();
            assert!(e.to_string().contains("--cgroup-parent"), "{bad}: {e}");
        }
        for good in ["corral", "a/b", "a/b/"] {
            Resource::cgroup_parent(&h.cgroup, good).unwrap();
        }
    }

    #[test]
    fn a_symlinked_lock_dir_is_refused() {
        let h = host();
        let real = h.locks.with_file_name("real");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(h.locks.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &h.locks).unwrap();
        let e = h.take(1, &h.set(1, "c", "c", "10.1.0.0/16")).unwrap_err();
        assert!(matches!(e, LockError::Invalid(_)), "{e}");
        assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    }
}
