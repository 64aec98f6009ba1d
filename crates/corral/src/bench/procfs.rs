//! What the bench reads from /proc and the cgroup tree: host memory, a process's RSS and
//! PSS, the server's children, and the bench server's cgroups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const KIB: f64 = 1024.0;

/// Kibibytes to mebibytes.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / KIB
}

/// The figures of /proc/meminfo the density test uses, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemInfo {
    pub available: u64,
    pub anon: u64,
    pub shmem: u64,
    pub slab_unreclaimable: u64,
    /// Kernel stacks, page tables and per-cpu allocations.
    pub kernel_other: u64,
}

impl MemInfo {
    pub fn read() -> Option<Self> {
        let s = std::fs::read_to_string("/proc/meminfo").ok()?;
        let f = |name: &str| field_kib(&s, name);
        Some(MemInfo {
            available: f("MemAvailable:")?,
            anon: f("AnonPages:")?,
            shmem: f("Shmem:")?,
            slab_unreclaimable: f("SUnreclaim:")?,
            kernel_other: f("KernelStack:")? + f("PageTables:")? + f("Percpu:").unwrap_or(0),
        })
    }

    /// Memory nothing can reclaim without killing or deleting something: anonymous pages,
    /// shmem/tmpfs, unreclaimable slab, kernel stacks, page tables and per-cpu memory.
    /// Unlike `MemAvailable` it does not move with page cache, which creating sandboxes also
    /// fills (and which counts as available).
    pub fn pinned(&self) -> u64 {
        self.anon + self.shmem + self.slab_unreclaimable + self.kernel_other
    }
}

/// A `Name:   123 kB` field of a /proc file, in KiB.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&s, "VmRSS:")
}

/// RSS and PSS of a process from /proc/<pid>/smaps_rollup, in KiB.
pub fn rss_pss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((field_kib(&s, "Rss:")?, field_kib(&s, "Pss:")?))
}

/// Every process's parent, from /proc/<pid>/stat.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields after it start
        // after the last ')'. They are: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// The direct children of `pid` and, for each, its whole subtree.
pub fn children_with_descendants(pid: u32) -> Vec<(u32, Vec<u32>)> {
    let parents = parents();
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&p, &pp) in &parents {
        kids.entry(pp).or_default().push(p);
    }
    let direct = kids.get(&pid).cloned().unwrap_or_default();
    direct
        .into_iter()
        .map(|child| {
            let mut tree = vec![child];
            let mut i = 0;
            while i < tree.len() {
                if let Some(k) = kids.get(&tree[i]) {
                    tree.extend(k.iter().copied());
                }
                i += 1;
            }
            (child, tree)
        })
        .collect()
}

/// The sandboxes' inits (children of the server) and the sum of RSS and PSS over them and
/// everything below them, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeMemory {
    pub inits: usize,
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

pub fn server_children_memory(server_pid: u32) -> TreeMemory {
    let mut m = TreeMemory::default();
    for (_, tree) in children_with_descendants(server_pid) {
        m.inits += 1;
        for p in tree {
            if let Some((rss, pss)) = rss_pss_kib(p) {
                m.processes += 1;
                m.rss_kib += rss;
                m.pss_kib += pss;
            }
        }
    }
    m
}

/// The directories of the bench server's cgroup parent: one per v1 controller, or the v2 one.
pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    corral_runtime::cgroup::V1_HIERARCHIES
        .iter()
        .chain([&""])
        .map(|c| root.join(c).join(parent))
        .filter(|d| d.join("cgroup.procs").exists())
        .collect()
}

/// Memory charged to the cgroup parent (sandboxes' processes, their kernel memory and page
/// cache), in KiB; v1 `memory.usage_in_bytes` or v2 `memory.current`.
pub fn cgroup_charged_kib(parent: &str) -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    for f in [
        root.join("memory")
            .join(parent)
            .join("memory.usage_in_bytes"),
        root.join(parent).join("memory.current"),
    ] {
        if let Some(b) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return Some(b / 1024);
        }
    }
    None
}

/// The sandbox cgroups still under the parent (the most found in any one controller).
pub fn child_cgroups(parent: &str) -> Vec<PathBuf> {
    let mut best: Vec<PathBuf> = Vec::new();
    for d in cgroup_parent_dirs(parent) {
        let kids = subdirs(&d);
        if kids.len() > best.len() {
            best = kids;
        }
    }
    best
}

/// Last resort after the server is gone: SIGKILLs whatever is left in the parent's child
/// cgroups and removes them. Returns (distinct processes killed, sandbox cgroups found).
pub fn kill_and_remove_child_cgroups(parent: &str) -> (usize, usize) {
    let mut pids = std::collections::BTreeSet::new();
    let dirs = cgroup_parent_dirs(parent);
    let groups = child_cgroups(parent).len();
    for d in &dirs {
        for g in subdirs(d) {
            let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.split_whitespace().map(str::to_owned));
        }
    }
    if !pids.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(std::process::Stdio::null())
            .status();
    }
    for d in &dirs {
        for g in subdirs(d) {
            for _ in 0..100 {
                if std::fs::remove_dir(&g).is_ok() || !g.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    (pids.len(), groups)
}

fn subdirs(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an ELF file has no program interpreter (is statically linked). 64-bit ELF only;
/// anything unreadable counts as not static.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (entsize, num) = (u16_at(0x36), u16_at(0x38));
    for i in 0..num {
        let o = phoff + i * entsize;
        if o + 4 > b.len() {
            return false;
        }
        // PT_INTERP
        if u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3 {
            return false;
        }
    }
    true
}
