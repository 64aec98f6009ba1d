//! Peers measured in the same run: a plain `true` spawn (the floor), `bwrap` and
//! `podman run`. Each is optional: a missing or failing tool is reported as skipped.
//!
//! podman needs an image and no registry is reachable, so the bench imports one, once, as
//! [`PODMAN_IMAGE`]: a rootfs holding only a static busybox (Debian's `busybox-static`) with
//! `/bin/true` linked to it. The image (about 2 MB) is kept for later runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procfs::is_static_elf;
use super::stats::Stats;

pub const PODMAN_IMAGE: &str = "localhost/corral-bench:latest";
/// Every container the bench starts carries this label, so leftovers can be found.
const PODMAN_LABEL: &str = "corral-bench";

pub const BWRAP_ARGS: &[&str] = &[
    "--ro-bind",
    "/",
    "/",
    "--unshare-all",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "true",
];

/// One peer's outcome.
#[derive(Debug, Clone)]
pub enum Peer {
    Measured {
        stats: Stats,
        /// The exact command line measured.
        command: String,
        /// Anything worth saying (e.g. how the podman image was obtained).
        note: Option<String>,
    },
    Skipped(String),
}

impl Peer {
    pub fn p50(&self) -> Option<f64> {
        match self {
            Peer::Measured { stats, .. } => Some(stats.p50),
            Peer::Skipped(_) => None,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Peer::Measured {
                stats,
                command,
                note,
            } => {
                let mut v = stats.json();
                v["command"] = command.clone().into();
                if let Some(n) = note {
                    v["note"] = n.clone().into();
                }
                v
            }
            Peer::Skipped(reason) => serde_json::json!({ "skipped": reason }),
        }
    }
}

#[derive(Debug)]
pub struct Peers {
    pub floor: Peer,
    pub bwrap: Peer,
    pub podman: Peer,
}

/// Runs every peer (blocking; call from a blocking thread).
pub fn measure(floor_n: usize, bwrap_n: usize, podman_n: usize) -> Peers {
    let true_bin = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("true");
    let floor = measure_command(true_bin, &[], floor_n, None);
    let bwrap = if which("bwrap").is_none() {
        Peer::Skipped("bwrap not found (Debian package bubblewrap)".into())
    } else {
        measure_command("bwrap", BWRAP_ARGS, bwrap_n, None)
    };
    let podman = podman(podman_n);
    Peers {
        floor,
        bwrap,
        podman,
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command once; Ok(elapsed) if it exited 0, else the reason.
fn run_once(program: &str, args: &[&str]) -> Result<Duration, String> {
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let elapsed = t.elapsed();
    match out {
        Ok(o) if o.status.success() => Ok(elapsed),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            Err(format!("{program} exited with {}: {line}", o.status))
        }
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// One unmeasured run (a failure there skips the peer), then `n` measured runs.
fn measure_command(program: &str, args: &[&str], n: usize, note: Option<String>) -> Peer {
    if let Err(reason) = run_once(program, args) {
        return Peer::Skipped(reason);
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        match run_once(program, args) {
            Ok(d) => samples.push(d),
            Err(reason) => return Peer::Skipped(format!("failed after it had worked: {reason}")),
        }
    }
    Peer::Measured {
        stats: Stats::of(&samples),
        command: command_line(program, args),
        note,
    }
}

fn podman(n: usize) -> Peer {
    if which("podman").is_none() {
        return Peer::Skipped("podman not found (Debian packages podman and runc)".into());
    }
    let note = match ensure_podman_image() {
        Ok(note) => note,
        Err(reason) => return Peer::Skipped(reason),
    };
    // These hosts use cgroup v1 (hybrid), where crun refuses to run; runc works. Try the
    // plain invocation first, then ones that pick runc and the cgroupfs manager.
    let run_args: Vec<&str> = vec![
        "run",
        "--rm",
        "--network=none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--label",
        PODMAN_LABEL,
        PODMAN_IMAGE,
        "true",
    ];
    let globals: [&[&str]; 4] = [
        &[],
        &["--runtime", "runc"],
        &["--cgroup-manager", "cgroupfs"],
        &["--runtime", "runc", "--cgroup-manager", "cgroupfs"],
    ];
    let mut reasons = Vec::new();
    let mut result = None;
    for g in globals {
        let args: Vec<&str> = g.iter().copied().chain(run_args.iter().copied()).collect();
        match run_once("podman", &args) {
            Ok(_) => {
                result = Some(measure_command("podman", &args, n, note.clone()));
                break;
            }
            Err(reason) => reasons.push(reason),
        }
        remove_podman_leftovers();
    }
    remove_podman_leftovers();
    result.unwrap_or_else(|| {
        Peer::Skipped(format!(
            "no podman invocation worked; first: {}; last: {}",
            reasons.first().map(String::as_str).unwrap_or(""),
            reasons.last().map(String::as_str).unwrap_or("")
        ))
    })
}

/// Removes any container the bench may have left (a run that failed before `--rm` applied).
pub fn remove_podman_leftovers() {
    let Ok(out) = Command::new("podman")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={PODMAN_LABEL}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("podman")
            .args(["rm", "-f"])
            .args(&ids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes sure [`PODMAN_IMAGE`] exists; imports it from a static busybox if not.
/// Ok(note) says which; Err is the reason to skip podman.
fn ensure_podman_image() -> Result<Option<String>, String> {
    let exists = Command::new("podman")
        .args(["image", "exists", PODMAN_IMAGE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("podman: {e}"))?;
    if exists.success() {
        return Ok(Some(format!("image {PODMAN_IMAGE} (cached)")));
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .chain(which("busybox"))
        .find(|p| is_static_elf(p))
        .ok_or(
            "no podman image and no static busybox to make one (Debian package busybox-static)",
        )?;
    let dir = std::env::temp_dir().join(format!("corral-bench-image-{}", std::process::id()));
    let result = import_image(&busybox, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| {
        Some(format!(
            "image {PODMAN_IMAGE} imported now from {} (kept for later runs)",
            busybox.display()
        ))
    })
}

fn import_image(busybox: &Path, dir: &Path) -> Result<(), String> {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    let io = |e: std::io::Error| format!("making the podman image: {e}");
    std::fs::create_dir_all(&bin).map_err(io)?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(io)?;
    for link in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(link)).map_err(io)?;
    }
    let tar = dir.join("rootfs.tar");
    let tar_s = tar.to_string_lossy().into_owned();
    let rootfs_s = rootfs.to_string_lossy().into_owned();
    run_once("tar", &["-C", &rootfs_s, "-cf", &tar_s, "."])?;
    run_once("podman", &["import", &tar_s, PODMAN_IMAGE])?;
    Ok(())
}
