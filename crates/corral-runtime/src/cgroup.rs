//! Per-sandbox cgroups on cgroup v1 (one hierarchy per controller, as on hybrid hosts) and
//! cgroup v2 (one unified hierarchy). The cgroup root is a parameter so both layouts are
//! unit-tested against a fake tree in a temp dir.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use corral_core::Resources;
use corral_core::ports::Usage;

/// Controllers corral uses.
const CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];
/// On v1, CPU time is accounted by `cpuacct`, which some hosts mount as a hierarchy of its
/// own (not joined with `cpu`); corral uses it when present, for usage figures only.
const CPUACCT: &str = "cpuacct";
/// On v1, the freezer (pause and resume) is a hierarchy of its own; joined when present.
const FREEZER: &str = "freezer";
/// Every v1 hierarchy a sandbox (and so corral's parent group) may have a group in.
pub const V1_HIERARCHIES: &[&str] = &["memory", "cpu", "pids", CPUACCT, FREEZER];
/// The CFS period used for CPU quotas, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Errors managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no usable cgroup hierarchy under {0} (need memory, cpu and pids controllers)")]
    NoHierarchy(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one mount per controller under the root (`<root>/memory`, ...).
    V1 { root: PathBuf },
    /// cgroup v2: the unified hierarchy at the root.
    V2 { root: PathBuf },
}

/// The per-sandbox limits written into cgroup files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_quota_us: u64,
    pub pids: u64,
}

impl Limits {
    /// Limits for a sandbox's resources with the given pids cap.
    pub fn from_resources(r: &Resources, pids: u64) -> Self {
        Self {
            memory_bytes: u64::from(r.memory_gib) << 30,
            cpu_quota_us: u64::from(r.cpu.max(1)) * CPU_PERIOD_US,
            pids,
        }
    }
}

/// corral's cgroups: a parent group (`corral` by default) with one child per sandbox.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    parent: String,
    /// On v1, the controller hierarchies a sandbox gets a group in.
    v1_controllers: Vec<&'static str>,
}

impl Cgroups {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`). v2 when `root` itself is a
    /// unified hierarchy (`cgroup.controllers` exists); v1 when each controller has its own
    /// directory. On hybrid hosts the controllers are bound to v1, so v1 is used.
    pub fn detect(root: &Path, parent: &str) -> Result<Self, CgroupError> {
        let hierarchy = if root.join("cgroup.controllers").exists() {
            Hierarchy::V2 {
                root: root.to_owned(),
            }
        } else if CONTROLLERS
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").exists())
        {
            Hierarchy::V1 {
                root: root.to_owned(),
            }
        } else {
            return Err(CgroupError::NoHierarchy(root.to_owned()));
        };
        let mut v1_controllers = CONTROLLERS.to_vec();
        if root.join(CPUACCT).join("cgroup.procs").exists() {
            v1_controllers.push(CPUACCT);
        }
        if root.join(FREEZER).join("cgroup.procs").exists() {
            v1_controllers.push(FREEZER);
        }
        Ok(Self {
            hierarchy,
            parent: parent.to_owned(),
            v1_controllers,
        })
    }

    /// The detected layout.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Creates the parent group(s); on v2 also delegates the controllers to its children.
    pub fn init(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { root } => {
                for c in &self.v1_controllers {
                    let p = root.join(c).join(&self.parent);
                    fs::create_dir_all(&p).map_err(io_err("mkdir", &p))?;
                }
            }
            Hierarchy::V2 { root } => {
                let enable = "+memory +cpu +pids";
                write(&root.join("cgroup.subtree_control"), enable)?;
                let p = root.join(&self.parent);
                fs::create_dir_all(&p).map_err(io_err("mkdir", &p))?;
                write(&p.join("cgroup.subtree_control"), enable)?;
            }
        }
        Ok(())
    }

    /// The directories of one sandbox's group (one per controller on v1).
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V1 { root } => self
                .v1_controllers
                .iter()
                .map(|c| root.join(c).join(&self.parent).join(id))
                .collect(),
            Hierarchy::V2 { root } => vec![root.join(&self.parent).join(id)],
        }
    }

    /// Creates a sandbox's group with its limits.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<(), CgroupError> {
        for d in self.dirs(id) {
            match fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "mkdir",
                        path: d,
                        source: e,
                    });
                }
            }
        }
        self.set_limits(id, limits)
    }

    /// Writes (or rewrites) a sandbox's limits.
    pub fn set_limits(&self, id: &str, l: &Limits) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { root } => {
                let g = |c: &str| root.join(c).join(&self.parent).join(id);
                // With swap accounting, memory+swap gets the same cap (no swapping past the
                // limit). The two limits must stay ordered (memsw >= mem) at every step, so
                // try both orders.
                let mem = g("memory");
                let bytes = l.memory_bytes.to_string();
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    if write(&memsw, &bytes).is_ok() {
                        write(&mem.join("memory.limit_in_bytes"), &bytes)?;
                    } else {
                        write(&mem.join("memory.limit_in_bytes"), &bytes)?;
                        write(&memsw, &bytes)?;
                    }
                } else {
                    write(&mem.join("memory.limit_in_bytes"), &bytes)?;
                }
                write(
                    &g("cpu").join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                )?;
                write(
                    &g("cpu").join("cpu.cfs_quota_us"),
                    &l.cpu_quota_us.to_string(),
                )?;
                write(&g("pids").join("pids.max"), &l.pids.to_string())?;
            }
            Hierarchy::V2 { root } => {
                let g = root.join(&self.parent).join(id);
                write(&g.join("memory.max"), &l.memory_bytes.to_string())?;
                if g.join("memory.swap.max").exists() {
                    write(&g.join("memory.swap.max"), "0")?;
                }
                write(
                    &g.join("cpu.max"),
                    &format!("{} {CPU_PERIOD_US}", l.cpu_quota_us),
                )?;
                write(&g.join("pids.max"), &l.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Moves a process into a sandbox's group.
    pub fn attach(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        for procs in self.procs_files(id) {
            write(&procs, &pid.to_string())?;
        }
        Ok(())
    }

    /// The `cgroup.procs` file of each of a sandbox's groups: writing a pid (or "0", the
    /// writer itself) there moves that process in.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Removes a sandbox's group; its processes must be gone. Missing groups are fine.
    pub fn remove(&self, id: &str) -> Result<(), CgroupError> {
        for d in self.dirs(id) {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "rmdir",
                        path: d,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// The file that freezes a sandbox's group, and the values that freeze and thaw it;
    /// `None` on a v1 host without the freezer hierarchy.
    fn freezer(&self, id: &str) -> Option<(PathBuf, &'static str, &'static str)> {
        match &self.hierarchy {
            Hierarchy::V1 { root } => self.v1_controllers.contains(&FREEZER).then(|| {
                (
                    root.join(FREEZER)
                        .join(&self.parent)
                        .join(id)
                        .join("freezer.state"),
                    "FROZEN",
                    "THAWED",
                )
            }),
            Hierarchy::V2 { root } => Some((
                root.join(&self.parent).join(id).join("cgroup.freeze"),
                "1",
                "0",
            )),
        }
    }

    /// Whether every process of the group is frozen now (v1: `freezer.state` reads
    /// `FROZEN`, not `FREEZING`; v2: `cgroup.events` says `frozen 1`).
    pub fn is_frozen(&self, id: &str) -> bool {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => self
                .freezer(id)
                .and_then(|(f, ..)| fs::read_to_string(f).ok())
                .is_some_and(|s| s.trim() == "FROZEN"),
            Hierarchy::V2 { root } => {
                let events = root.join(&self.parent).join(id).join("cgroup.events");
                fs::read_to_string(events)
                    .ok()
                    .and_then(|t| stat_field(&t, "frozen"))
                    == Some(1)
            }
        }
    }

    /// Freezes a sandbox's group and waits (up to `wait`) until every process in it is
    /// frozen; thaws it again when they are not by then.
    pub fn freeze(&self, id: &str, wait: std::time::Duration) -> Result<(), CgroupError> {
        let (file, frozen, thawed) = self.freezer(id).ok_or_else(|| CgroupError::Io {
            op: "freeze",
            path: PathBuf::from(FREEZER),
            source: io::Error::new(
                io::ErrorKind::Unsupported,
                "the host has no cgroup freezer (mount the v1 freezer hierarchy or use cgroup v2)",
            ),
        })?;
        write(&file, frozen)?;
        let deadline = std::time::Instant::now() + wait;
        while !self.is_frozen(id) {
            if std::time::Instant::now() >= deadline {
                let _ = write(&file, thawed);
                return Err(CgroupError::Io {
                    op: "freeze",
                    path: file,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("processes not frozen within {wait:?}"),
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Thaws a sandbox's group (a group without a freezer is never frozen).
    pub fn thaw(&self, id: &str) -> Result<(), CgroupError> {
        match self.freezer(id) {
            Some((file, _, thawed)) if file.parent().is_some_and(Path::exists) => {
                write(&file, thawed)
            }
            _ => Ok(()),
        }
    }

    /// SIGKILLs every process left in a sandbox's group (best effort).
    pub fn kill_all(&self, id: &str) {
        for pid in self.procs(id) {
            // SAFETY: kill(2) with a pid read from the cgroup; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Frozen processes (v1) die only once thawed.
        let _ = self.thaw(id);
    }

    /// The processes in a sandbox's group.
    pub fn procs(&self, id: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs(id)
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Ids of sandbox groups that exist (to find leftovers).
    pub fn list(&self) -> Vec<String> {
        let dir = match &self.hierarchy {
            Hierarchy::V1 { root } => root.join("pids").join(&self.parent),
            Hierarchy::V2 { root } => root.join(&self.parent),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Cgroups {
    /// A sandbox's resource figures from its group's files; `None` when they cannot be read
    /// (no such group, or a group made before `cpuacct` was joined). Unlimited CPU or memory
    /// (and limits above the host's) count as the host's `host_cpus` and `host_memory`.
    pub fn usage(&self, id: &str, host_cpus: f64, host_memory: u64) -> Option<Usage> {
        let (cores, cpu_time_ns, mem_limit, current, stat, inactive_key, cache_key) =
            match &self.hierarchy {
                Hierarchy::V1 { root } => {
                    let g = |c: &str| root.join(c).join(&self.parent).join(id);
                    let quota: i64 = read_number(&g("cpu").join("cpu.cfs_quota_us"))?;
                    let period: i64 = read_number(&g("cpu").join("cpu.cfs_period_us"))?;
                    let cores = (quota > 0 && period > 0).then(|| quota as f64 / period as f64);
                    let cpu_time_ns = read_number(&g(CPUACCT).join("cpuacct.usage"))
                        .or_else(|| read_number(&g("cpu").join("cpuacct.usage")))?;
                    let mem = g("memory");
                    (
                        cores,
                        cpu_time_ns,
                        read_number::<u64>(&mem.join("memory.limit_in_bytes")),
                        read_number::<u64>(&mem.join("memory.usage_in_bytes"))?,
                        fs::read_to_string(mem.join("memory.stat")).ok()?,
                        "total_inactive_file",
                        "total_cache",
                    )
                }
                Hierarchy::V2 { root } => {
                    let g = root.join(&self.parent).join(id);
                    let cpu_max = fs::read_to_string(g.join("cpu.max")).ok()?;
                    let mut f = cpu_max.split_whitespace();
                    let quota = f.next()?.parse::<f64>().ok();
                    let period = f.next().and_then(|p| p.parse::<f64>().ok());
                    let cores = match (quota, period) {
                        (Some(q), Some(p)) if q > 0.0 && p > 0.0 => Some(q / p),
                        _ => None,
                    };
                    let cpu_stat = fs::read_to_string(g.join("cpu.stat")).ok()?;
                    let usec = stat_field(&cpu_stat, "usage_usec")?;
                    (
                        cores,
                        usec.saturating_mul(1000),
                        read_number::<u64>(&g.join("memory.max")),
                        read_number::<u64>(&g.join("memory.current"))?,
                        fs::read_to_string(g.join("memory.stat")).ok()?,
                        "inactive_file",
                        "file",
                    )
                }
            };
        let inactive = stat_field(&stat, inactive_key).unwrap_or(0);
        let host_cpus = host_cpus.max(1.0);
        Some(Usage {
            cpu_limit_cores: cores.map_or(host_cpus, |c| c.min(host_cpus)),
            cpu_time_ns,
            memory_limit_bytes: mem_limit.map_or(host_memory, |m| m.min(host_memory)),
            memory_used_bytes: current.saturating_sub(inactive),
            memory_cache_bytes: stat_field(&stat, cache_key).unwrap_or(0),
            disk_used_bytes: None,
            network: None,
        })
    }
}

/// The host's online CPUs.
pub fn host_cpus() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as f64 } else { 1.0 }
}

/// The host's memory in bytes (`MemTotal` of `/proc/meminfo`), `u64::MAX` if unreadable.
pub fn host_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(u64::MAX)
}

/// A control file holding one number; `None` when missing or not a number (e.g. `max`).
fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed control file (`memory.stat`, `cpu.stat`).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).expect("read")
    }

    /// A fake cgroup tree: real cgroupfs creates control files on mkdir; the fake makes
    /// them appear by writing, which `fs::write` does.
    fn fake_v1() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for c in CONTROLLERS {
            fs::create_dir_all(t.path().join(c)).expect("mkdir");
            fs::write(t.path().join(c).join("cgroup.procs"), "").expect("write");
        }
        t
    }

    #[test]
    fn v1_layout_limits_attach_remove() {
        let t = fake_v1();
        let cg = Cgroups::detect(t.path(), "corral").expect("detect");
        assert!(matches!(cg.hierarchy(), Hierarchy::V1 { .. }));
        cg.init().expect("init");
        let limits = Limits::from_resources(
            &Resources {
                cpu: 2,
                gpu: 0,
                memory_gib: 1,
                disk_gib: 3,
            },
            4096,
        );
        cg.create("sb1", &limits).expect("create");
        let root = t.path();
        assert_eq!(
            read(&root.join("memory/corral/sb1/memory.limit_in_bytes")),
            "1073741824"
        );
        assert_eq!(
            read(&root.join("cpu/corral/sb1/cpu.cfs_quota_us")),
            "200000"
        );
        assert_eq!(read(&root.join("pids/corral/sb1/pids.max")), "4096");
        cg.attach("sb1", 42).expect("attach");
        assert_eq!(read(&root.join("memory/corral/sb1/cgroup.procs")), "42");
        assert_eq!(cg.list(), vec!["sb1".to_string()]);
        // A real cgroupfs rmdir ignores control files; the fake needs them gone first.
        for d in cg.dirs("sb1") {
            for e in fs::read_dir(&d).expect("readdir").flatten() {
                fs::remove_file(e.path()).expect("rm");
            }
        }
        cg.remove("sb1").expect("remove");
        cg.remove("sb1").expect("remove is idempotent");
        assert!(cg.list().is_empty());
    }

    #[test]
    fn v2_layout_delegates_and_writes_unified_files() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join("cgroup.controllers"), "cpu memory pids").expect("write");
        let cg = Cgroups::detect(t.path(), "corral").expect("detect");
        assert!(matches!(cg.hierarchy(), Hierarchy::V2 { .. }));
        cg.init().expect("init");
        assert_eq!(
            read(&t.path().join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(&t.path().join("corral/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let limits = Limits::from_resources(&Resources::default(), 100);
        cg.create("x", &limits).expect("create");
        let g = t.path().join("corral/x");
        assert_eq!(read(&g.join("memory.max")), "1073741824");
        assert_eq!(read(&g.join("cpu.max")), "100000 100000");
        assert_eq!(read(&g.join("pids.max")), "100");
        cg.attach("x", 7).expect("attach");
        assert_eq!(read(&g.join("cgroup.procs")), "7");
    }

    #[test]
    fn v1_usage_reads_cpuacct_and_memory_stat() {
        let t = fake_v1();
        fs::create_dir_all(t.path().join("cpuacct")).expect("mkdir");
        fs::write(t.path().join("cpuacct/cgroup.procs"), "").expect("write");
        let cg = Cgroups::detect(t.path(), "corral").expect("detect");
        cg.init().expect("init");
        let limits = Limits::from_resources(
            &Resources {
                cpu: 2,
                gpu: 0,
                memory_gib: 1,
                disk_gib: 3,
            },
            64,
        );
        cg.create("s", &limits).expect("create");
        assert_eq!(cg.dirs("s").len(), 4);
        // No cpuacct.usage yet: no figures rather than wrong ones.
        assert_eq!(cg.usage("s", 8.0, 16 << 30), None);
        let root = t.path();
        fs::write(root.join("cpuacct/corral/s/cpuacct.usage"), "123456789\n").expect("w");
        fs::write(
            root.join("memory/corral/s/memory.usage_in_bytes"),
            "500000000\n",
        )
        .expect("w");
        fs::write(
            root.join("memory/corral/s/memory.stat"),
            "cache 5\ninactive_file 7\ntotal_cache 300000000\ntotal_inactive_file 100000000\n",
        )
        .expect("w");
        let u = cg.usage("s", 8.0, 16 << 30).expect("usage");
        assert_eq!(u.cpu_limit_cores, 2.0);
        assert_eq!(u.cpu_time_ns, 123_456_789);
        assert_eq!(u.memory_limit_bytes, 1 << 30);
        assert_eq!(u.memory_used_bytes, 400_000_000);
        assert_eq!(u.memory_cache_bytes, 300_000_000);
        // Unlimited quota and a huge memory limit count as the host's.
        fs::write(root.join("cpu/corral/s/cpu.cfs_quota_us"), "-1").expect("w");
        fs::write(
            root.join("memory/corral/s/memory.limit_in_bytes"),
            "9223372036854771712",
        )
        .expect("w");
        let u = cg.usage("s", 8.0, 16 << 30).expect("usage");
        assert_eq!(u.cpu_limit_cores, 8.0);
        assert_eq!(u.memory_limit_bytes, 16 << 30);
        assert_eq!(cg.usage("missing", 8.0, 16 << 30), None);
    }

    #[test]
    fn v2_usage_reads_unified_files() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join("cgroup.controllers"), "cpu memory pids").expect("write");
        let cg = Cgroups::detect(t.path(), "corral").expect("detect");
        cg.init().expect("init");
        let limits = Limits::from_resources(&Resources::default(), 100);
        cg.create("x", &limits).expect("create");
        let g = t.path().join("corral/x");
        fs::write(
            g.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )
        .expect("w");
        fs::write(g.join("memory.current"), "300000\n").expect("w");
        fs::write(
            g.join("memory.stat"),
            "anon 100000\nfile 200000\nactive_file 150000\ninactive_file 50000\n",
        )
        .expect("w");
        let u = cg.usage("x", 4.0, 8 << 30).expect("usage");
        assert_eq!(u.cpu_limit_cores, 1.0);
        assert_eq!(u.cpu_time_ns, 2_500_000);
        assert_eq!(u.memory_limit_bytes, 1 << 30);
        assert_eq!(u.memory_used_bytes, 250_000);
        assert_eq!(u.memory_cache_bytes, 200_000);
        fs::write(g.join("cpu.max"), "max 100000\n").expect("w");
        fs::write(g.join("memory.max"), "max\n").expect("w");
        let u = cg.usage("x", 4.0, 8 << 30).expect("usage");
        assert_eq!(u.cpu_limit_cores, 4.0);
        assert_eq!(u.memory_limit_bytes, 8 << 30);
    }

    #[test]
    fn no_hierarchy_is_an_error() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Cgroups::detect(t.path(), "corral"),
            Err(CgroupError::NoHierarchy(_))
        ));
    }
}
