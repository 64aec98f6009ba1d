//! The spawn plan as a value: [`build`] turns plain inputs (ids, paths, lower dirs, the
//! masked and read-only lists, capabilities, limits, seccomp programs, prepared volume
//! binds) into the ordered [`Step`]s a sandbox's init runs before it execs the agent.
//!
//! No I/O happens here: the server prepares layers, fds and volume sources first
//! (`linux/prepare.rs`), then calls [`build`]; the child runs the steps (`spawn.rs`). The
//! security invariants of the order (cgroup join first, the network namespace before
//! `/sys`, masks and read-only remounts before `pivot_root`, `no_new_privs` and seccomp
//! last) are unit-tested below without root.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::spawn::{Step, VolumeBind};

/// The longest `lowerdir=` list the mount options can carry (they travel in one page).
pub const MAX_LOWERDIR: usize = 3500;

/// One overlay of the sandbox's root.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Where it is mounted (the new root, or a directory below it).
    pub target: PathBuf,
    /// Its lower dirs, bottom-most first.
    pub lowers: Vec<PathBuf>,
    /// Its layer name: `upper/<name>` and `work/<name>` in the sandbox's layer.
    pub name: String,
}

/// Everything [`build`] needs, already decided and prepared.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The sandbox id (its hostname).
    pub id: &'a str,
    /// The `cgroup.procs` files the child writes itself into, first of all.
    pub cgroup_procs: &'a [PathBuf],
    /// The prepared network namespace to enter (`None`: the child's own, empty one, whose
    /// loopback it brings up itself).
    pub netns: Option<RawFd>,
    /// The sandbox's writable layer (holds `upper/<name>` and `work/<name>`).
    pub layer: &'a Path,
    /// Where the new root is assembled.
    pub mnt: &'a Path,
    /// The root overlays, the root itself first.
    pub overlays: &'a [Overlay],
    /// The agent binary on the host, bound read-only into the root.
    pub agent_binary: &'a Path,
    /// The agent's path inside the sandbox (absolute).
    pub agent_in_sandbox: &'a str,
    /// Paths (relative to the root) hidden from the sandbox, and whether each is a directory.
    pub masked: &'a [(&'a str, bool)],
    /// Paths (relative to the root) the sandbox may read but not write.
    pub read_only: &'a [&'a str],
    /// Capabilities dropped from the bounding set.
    pub dropped_caps: &'a [u32],
    /// The open-files limit (soft, hard).
    pub nofile: (u64, u64),
    /// Seccomp programs, loaded in this order, last of all.
    pub seccomp: &'a [Vec<seccompiler::sock_filter>],
    /// Volume binds (sources prepared on the host), mounted just before `pivot_root`.
    pub volumes: Vec<VolumeBind>,
}

/// Why a plan cannot be built: the request's problem, never the host's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("a value contains a NUL byte")]
    Nul,
    #[error(
        "the sandbox's image has too many layers ({0}) to mount; create the snapshot from a \
         sandbox with fewer snapshots below it"
    )]
    TooManyLayers(usize),
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, PlanError> {
    CString::new(s.as_ref()).map_err(|_| PlanError::Nul)
}

fn cpath(p: &Path) -> Result<CString, PlanError> {
    cstr(p.as_os_str().as_bytes())
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<Step, PlanError> {
    Ok(Step::Mount {
        source: source.map(cstr).transpose()?,
        target: cpath(target)?,
        fstype: fstype.map(cstr).transpose()?,
        flags,
        data: data.map(cstr).transpose()?,
    })
}

/// overlayfs wants the top-most lower dir first.
fn lowerdir(lowers: &[PathBuf]) -> Result<String, PlanError> {
    let s = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    if s.len() > MAX_LOWERDIR {
        return Err(PlanError::TooManyLayers(lowers.len()));
    }
    Ok(s)
}

/// The ordered steps of a sandbox's init, from cgroup join to the seccomp filter.
pub fn build(input: &PlanInput<'_>) -> Result<Vec<Step>, PlanError> {
    let mnt = input.mnt;
    // First the child moves itself into its cgroups ("0" is the writer), so everything
    // it does from then on is accounted and limited.
    let mut steps = Vec::new();
    for procs in input.cgroup_procs {
        steps.push(Step::WriteFile {
            path: cpath(procs)?,
            data: b"0".to_vec(),
        });
    }
    // Then into its network slot (before /sys is mounted, which shows the mounter's
    // network namespace), with its egress policy already in force.
    if let Some(fd) = input.netns {
        steps.push(Step::Setns {
            fd,
            nstype: libc::CLONE_NEWNET,
        });
    }
    steps.push(Step::Umask { mask: 0 });
    // Our own cgroup namespace, rooted at the sandbox's cgroup we were just moved to.
    steps.push(Step::Unshare {
        flags: libc::CLONE_NEWCGROUP,
    });
    // Nothing we mount may propagate back to the host.
    steps.push(mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?);
    for o in input.overlays {
        steps.push(Step::Mount {
            source: Some(cstr("overlay")?),
            target: cpath(&o.target)?,
            fstype: Some(cstr("overlay")?),
            flags: 0,
            data: Some(cstr(format!(
                "lowerdir={},upperdir={},workdir={},volatile",
                lowerdir(&o.lowers)?,
                input.layer.join("upper").join(&o.name).display(),
                input.layer.join("work").join(&o.name).display()
            ))?),
        });
    }
    let agent = mnt.join(input.agent_in_sandbox.trim_start_matches('/'));
    let agent_src = input.agent_binary.display().to_string();
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
    dev_steps(&mut steps, &mnt.join("dev"))?;
    steps.push(mount(
        Some("sysfs"),
        &mnt.join("sys"),
        Some("sysfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?);
    let null = mnt.join("dev/null").display().to_string();
    for (rel, is_dir) in input.masked {
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
    for rel in input.read_only {
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
    steps.push(Step::Sethostname {
        name: cstr(input.id)?,
    });
    // Volumes last among the mounts, over everything above (the child mounts each with
    // `nosuid,nodev`).
    for v in &input.volumes {
        steps.push(Step::BindVolume(Box::new(v.clone())));
    }
    steps.push(Step::PivotRoot { root: cpath(mnt)? });
    steps.push(Step::Umask { mask: 0o022 });
    // Hardening, last: loopback up needs CAP_NET_ADMIN, which is then dropped for good.
    // (A network slot's loopback is up already.)
    if input.netns.is_none() {
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
        caps: input.dropped_caps.to_vec(),
    });
    steps.push(Step::Rlimit {
        resource: libc::RLIMIT_NOFILE,
        soft: input.nofile.0,
        hard: input.nofile.1,
    });
    steps.push(Step::NoNewPrivs);
    for program in input.seccomp {
        steps.push(Step::Seccomp {
            program: program.clone(),
        });
    }
    Ok(steps)
}

/// A minimal `/dev`: a small tmpfs, the usual character devices, `pts` and `shm`.
fn dev_steps(steps: &mut Vec<Step>, dev: &Path) -> Result<(), PlanError> {
    steps.push(mount(
        Some("tmpfs"),
        dev,
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED: &[(&str, bool)] = &[("proc/kcore", false), ("sys/firmware", true)];
    const READ_ONLY: &[&str] = &["proc/sys", "proc/bus"];

    fn c(s: &str) -> CString {
        CString::new(s).expect("no NUL")
    }

    fn volume() -> VolumeBind {
        VolumeBind {
            source: c("/data/volumes/v1"),
            subpath: None,
            root: c("/data/mnt"),
            target_prefixes: vec![c("work")],
            target_names: vec![c("work")],
        }
    }

    /// Builds a plan over fixed inputs; `netns` picks a network slot or the own namespace.
    fn plan(netns: Option<RawFd>, volumes: Vec<VolumeBind>) -> Vec<Step> {
        let procs = [
            PathBuf::from("/sys/fs/cgroup/corral/sb1/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/corral-x/sb1/cgroup.procs"),
        ];
        let overlays = [
            Overlay {
                target: "/data/mnt".into(),
                lowers: vec!["/img/skel".into(), "/img/commit1".into()],
                name: "root".into(),
            },
            Overlay {
                target: "/data/mnt/usr".into(),
                lowers: vec!["/usr".into()],
                name: "usr".into(),
            },
        ];
        let seccomp = [vec![], vec![]];
        build(&PlanInput {
            id: "sb1",
            cgroup_procs: &procs,
            netns,
            layer: Path::new("/data/sandboxes/sb1"),
            mnt: Path::new("/data/mnt"),
            overlays: &overlays,
            agent_binary: Path::new("/opt/corral/corral-agent"),
            agent_in_sandbox: "/usr/local/bin/corral-agent",
            masked: MASKED,
            read_only: READ_ONLY,
            dropped_caps: &[21, 12],
            nofile: (1024, 4096),
            seccomp: &seccomp,
            volumes,
        })
        .expect("plan")
    }

    /// Every shape the tests run over: with and without a netns, with and without volumes.
    fn plans() -> Vec<(Option<RawFd>, Vec<Step>)> {
        let mut v = Vec::new();
        for netns in [None, Some(7)] {
            for vols in [vec![], vec![volume(), volume()]] {
                v.push((netns, plan(netns, vols)));
            }
        }
        v
    }

    /// The step itself, or the step an `Optional`/`BestEffort` wraps.
    fn inner(s: &Step) -> &Step {
        match s {
            Step::Optional(i) | Step::BestEffort(i) => inner(i),
            s => s,
        }
    }

    fn pos(steps: &[Step], f: impl Fn(&Step) -> bool) -> Vec<usize> {
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| f(inner(s)))
            .map(|(i, _)| i)
            .collect()
    }

    fn one(steps: &[Step], f: impl Fn(&Step) -> bool) -> usize {
        let p = pos(steps, f);
        assert_eq!(p.len(), 1, "expected exactly one such step: {steps:#?}");
        p[0]
    }

    /// Mounts onto `target`: (index, source, fstype, flags, data).
    fn mounts_on(
        steps: &[Step],
        target: &str,
    ) -> Vec<(usize, Option<String>, Option<String>, libc::c_ulong)> {
        let s = |c: &Option<CString>| c.as_ref().map(|c| c.to_string_lossy().into_owned());
        steps
            .iter()
            .enumerate()
            .filter_map(|(i, st)| match inner(st) {
                Step::Mount {
                    source,
                    target: t,
                    fstype,
                    flags,
                    ..
                } if t.to_bytes() == target.as_bytes() => Some((i, s(source), s(fstype), *flags)),
                _ => None,
            })
            .collect()
    }

    fn is_mount(s: &Step) -> bool {
        matches!(s, Step::Mount { .. } | Step::BindVolume(_))
    }

    #[test]
    fn cgroup_join_comes_first() {
        for (_, steps) in plans() {
            for (i, want) in [
                "/sys/fs/cgroup/corral/sb1/cgroup.procs",
                "/sys/fs/cgroup/corral-x/sb1/cgroup.procs",
            ]
            .iter()
            .enumerate()
            {
                match &steps[i] {
                    Step::WriteFile { path, data } => {
                        assert_eq!(path.to_bytes(), want.as_bytes());
                        assert_eq!(data, b"0");
                    }
                    s => panic!("step {i} is {s:?}, not the cgroup join"),
                }
            }
        }
    }

    #[test]
    fn netns_is_entered_before_sys_and_any_mount() {
        let steps = plan(Some(7), vec![]);
        let setns = one(
            &steps,
            |s| matches!(s, Step::Setns { fd: 7, nstype } if *nstype == libc::CLONE_NEWNET),
        );
        let sys = mounts_on(&steps, "/data/mnt/sys");
        assert_eq!(sys.len(), 1);
        assert_eq!(sys[0].2.as_deref(), Some("sysfs"));
        assert!(setns < sys[0].0);
        assert!(pos(&steps, is_mount).iter().all(|&m| setns < m));
        // Right after the cgroup join.
        assert_eq!(setns, 2);
        // Without a slot there is nothing to enter.
        assert!(pos(&plan(None, vec![]), |s| matches!(s, Step::Setns { .. })).is_empty());
    }

    #[test]
    fn sys_is_read_only() {
        for (_, steps) in plans() {
            let sys = mounts_on(&steps, "/data/mnt/sys");
            let want = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            assert_eq!(sys[0].3 & want, want);
        }
    }

    #[test]
    fn every_masked_path_is_masked() {
        for (_, steps) in plans() {
            let file = mounts_on(&steps, "/data/mnt/proc/kcore");
            assert_eq!(file.len(), 1);
            assert_eq!(file[0].1.as_deref(), Some("/data/mnt/dev/null"));
            assert_eq!(file[0].3, libc::MS_BIND);
            let dir = mounts_on(&steps, "/data/mnt/sys/firmware");
            assert_eq!(dir.len(), 1);
            assert_eq!(dir[0].2.as_deref(), Some("tmpfs"));
            assert_ne!(dir[0].3 & libc::MS_RDONLY, 0);
            // After what they hide is mounted (/dev/null too), before pivot_root.
            let sys = mounts_on(&steps, "/data/mnt/sys")[0].0;
            let proc = mounts_on(&steps, "/data/mnt/proc")[0].0;
            let null = one(
                &steps,
                |s| matches!(s, Step::Mknod { path, .. } if path.to_bytes() == b"/data/mnt/dev/null"),
            );
            let pivot = one(&steps, |s| matches!(s, Step::PivotRoot { .. }));
            for m in [file[0].0, dir[0].0] {
                assert!(sys < m && proc < m && null < m && m < pivot);
            }
        }
    }

    #[test]
    fn every_read_only_path_is_remounted_read_only() {
        for (_, steps) in plans() {
            for rel in READ_ONLY {
                let target = format!("/data/mnt/{rel}");
                let m = mounts_on(&steps, &target);
                assert_eq!(m.len(), 2, "{target}");
                // A bind of itself, then the read-only remount of that bind.
                assert_eq!(m[0].1.as_deref(), Some(target.as_str()));
                assert_ne!(m[0].3 & libc::MS_BIND, 0);
                let want = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC;
                assert_eq!(m[1].3 & want, want, "{target}");
                assert!(m[0].0 < m[1].0);
                let proc = mounts_on(&steps, "/data/mnt/proc")[0].0;
                assert!(proc < m[0].0);
            }
        }
    }

    #[test]
    fn agent_is_bound_read_only_nosuid_nodev() {
        for (_, steps) in plans() {
            let agent = "/data/mnt/usr/local/bin/corral-agent";
            let m = mounts_on(&steps, agent);
            assert_eq!(m.len(), 2);
            assert_eq!(m[0].1.as_deref(), Some("/opt/corral/corral-agent"));
            assert_eq!(m[0].3, libc::MS_BIND);
            let want = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            assert_eq!(m[1].3 & want, want);
            assert_eq!(m[1].0, m[0].0 + 1);
            // Over the overlays (else an overlay would hide it).
            let root = mounts_on(&steps, "/data/mnt")
                .into_iter()
                .find(|m| m.2.as_deref() == Some("overlay"))
                .expect("root overlay");
            let usr = mounts_on(&steps, "/data/mnt/usr")[0].0;
            assert!(root.0 < m[0].0 && usr < m[0].0);
        }
    }

    #[test]
    fn mounts_stay_private_and_pivot_root_comes_after_all_mounts() {
        for (_, steps) in plans() {
            let private = mounts_on(&steps, "/");
            assert_eq!(private.len(), 1);
            assert_eq!(private[0].3, libc::MS_REC | libc::MS_PRIVATE);
            let pivot = one(
                &steps,
                |s| matches!(s, Step::PivotRoot { root } if root.to_bytes() == b"/data/mnt"),
            );
            let mounts = pos(&steps, |s| {
                is_mount(s)
                    || matches!(
                        s,
                        Step::Mknod { .. } | Step::Mkdir { .. } | Step::Symlink { .. }
                    )
            });
            assert!(!mounts.is_empty());
            assert!(private[0].0 <= mounts[0]);
            assert!(mounts.iter().all(|&m| m < pivot), "{steps:#?}");
        }
    }

    #[test]
    fn hardening_comes_after_pivot_root_and_seccomp_last() {
        for (_, steps) in plans() {
            let pivot = one(&steps, |s| matches!(s, Step::PivotRoot { .. }));
            let caps = one(
                &steps,
                |s| matches!(s, Step::DropCaps { caps } if caps == &[21, 12]),
            );
            let nnp = one(&steps, |s| matches!(s, Step::NoNewPrivs));
            let seccomp = pos(&steps, |s| matches!(s, Step::Seccomp { .. }));
            let rlimit = one(
                &steps,
                |s| matches!(s, Step::Rlimit { resource, soft: 1024, hard: 4096 } if *resource == libc::RLIMIT_NOFILE),
            );
            assert!(pivot < caps && caps < nnp && pivot < rlimit && rlimit < nnp);
            assert_eq!(seccomp.len(), 2);
            assert!(seccomp.iter().all(|&s| nnp < s));
            // The filters are the last steps: nothing runs between them and the exec.
            assert_eq!(seccomp, vec![steps.len() - 2, steps.len() - 1]);
        }
    }

    #[test]
    fn volumes_are_bound_before_pivot_root_over_everything_else() {
        let steps = plan(None, vec![volume(), volume()]);
        let binds = pos(&steps, |s| matches!(s, Step::BindVolume(_)));
        assert_eq!(binds.len(), 2);
        let pivot = one(&steps, |s| matches!(s, Step::PivotRoot { .. }));
        let last_mount = pos(&steps, |s| matches!(s, Step::Mount { .. }))
            .into_iter()
            .max()
            .expect("mounts");
        for b in binds {
            assert!(last_mount < b && b < pivot);
        }
        // `Step::BindVolume` is the one way a volume is mounted: the child binds it with
        // nosuid,nodev (spawn.rs) and no plain bind of a volume source exists.
        assert_eq!(
            crate::spawn::VOLUME_ATTRS,
            0x2 | 0x4,
            "MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV"
        );
        for b in pos(&steps, |s| matches!(s, Step::BindVolume(_))) {
            assert_eq!(steps[b].kind(), crate::spawn::StepKind::Volume);
        }
        assert!(
            steps
                .iter()
                .filter(|s| !matches!(s, Step::BindVolume(_)))
                .all(|s| s.kind() == crate::spawn::StepKind::Setup)
        );
        assert!(
            pos(
                &steps,
                |s| matches!(s, Step::Mount { source: Some(src), .. }
                if src.to_bytes().starts_with(b"/data/volumes"))
            )
            .is_empty()
        );
    }

    #[test]
    fn own_loopback_only_without_a_netns() {
        for (netns, steps) in plans() {
            let lo = pos(&steps, |s| matches!(s, Step::LoopbackUp));
            if netns.is_some() {
                assert!(lo.is_empty());
            } else {
                assert_eq!(lo.len(), 1);
                // Needs CAP_NET_ADMIN: before the capabilities are dropped.
                let caps = one(&steps, |s| matches!(s, Step::DropCaps { .. }));
                let pivot = one(&steps, |s| matches!(s, Step::PivotRoot { .. }));
                assert!(pivot < lo[0] && lo[0] < caps);
            }
        }
    }

    #[test]
    fn overlays_list_the_top_most_lower_first() {
        let steps = plan(None, vec![]);
        let data = steps
            .iter()
            .find_map(|s| match s {
                Step::Mount {
                    target,
                    data: Some(d),
                    ..
                } if target.to_bytes() == b"/data/mnt" => Some(d.to_string_lossy().into_owned()),
                _ => None,
            })
            .expect("root overlay");
        assert_eq!(
            data,
            "lowerdir=/img/commit1:/img/skel,upperdir=/data/sandboxes/sb1/upper/root,\
             workdir=/data/sandboxes/sb1/work/root,volatile"
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let deep = Overlay {
            target: "/data/mnt".into(),
            lowers: (0..400)
                .map(|i| PathBuf::from(format!("/layers/{i:04}")))
                .collect(),
            name: "root".into(),
        };
        let input = |id, overlays| PlanInput {
            id,
            cgroup_procs: &[],
            netns: None,
            layer: Path::new("/l"),
            mnt: Path::new("/m"),
            overlays,
            agent_binary: Path::new("/a"),
            agent_in_sandbox: "/a",
            masked: &[],
            read_only: &[],
            dropped_caps: &[],
            nofile: (1, 1),
            seccomp: &[],
            volumes: vec![],
        };
        assert_eq!(
            build(&input("sb", std::slice::from_ref(&deep))).map(|_| ()),
            Err(PlanError::TooManyLayers(400))
        );
        assert_eq!(build(&input("s\0b", &[])).map(|_| ()), Err(PlanError::Nul));
        assert!(build(&input("sb", &[])).is_ok());
    }
}
