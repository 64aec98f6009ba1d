//! The sandbox seccomp policy, kept as reviewed data: one entry per denied system call with
//! the reason it is denied. At least as strict as Docker's default profile for what it covers;
//! it is a deny-list over a default-allow, like Docker's effective behaviour for root
//! containers without the capabilities those calls would need anyway (defence in depth).
//!
//! Two filters are compiled (with `seccompiler`) before the sandbox init is cloned and loaded
//! by the child just before `execve`, so they bind the agent and every process of the sandbox:
//! the deny-list answering `EPERM`, and `clone3` answering `ENOSYS` so libc falls back to
//! `clone`, whose flags the first filter can inspect (clone3 passes them in memory).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Namespace-creating flags of `clone`/`unshare`.
const NAMESPACE_FLAGS: &[(u64, &str)] = &[
    (libc::CLONE_NEWNS as u64, "mount namespace"),
    (libc::CLONE_NEWUTS as u64, "uts namespace"),
    (libc::CLONE_NEWIPC as u64, "ipc namespace"),
    (
        libc::CLONE_NEWUSER as u64,
        "user namespace: would regain every capability inside it",
    ),
    (libc::CLONE_NEWPID as u64, "pid namespace"),
    (libc::CLONE_NEWNET as u64, "net namespace"),
    (libc::CLONE_NEWCGROUP as u64, "cgroup namespace"),
    (0x80, "time namespace (CLONE_NEWTIME)"),
];

/// System calls denied outright, with the reason.
pub const DENIED: &[(i64, &str)] = &[
    (
        libc::SYS_mount,
        "no mounting: the sandbox's mounts are fixed by corral",
    ),
    (
        libc::SYS_umount2,
        "no unmounting: would reveal what masked paths hide",
    ),
    (libc::SYS_pivot_root, "no changing the root"),
    (libc::SYS_open_tree, "new mount API"),
    (libc::SYS_move_mount, "new mount API"),
    (libc::SYS_fsopen, "new mount API"),
    (libc::SYS_fsconfig, "new mount API"),
    (libc::SYS_fsmount, "new mount API"),
    (libc::SYS_fspick, "new mount API"),
    (libc::SYS_mount_setattr, "new mount API"),
    (libc::SYS_setns, "no joining other namespaces"),
    (
        libc::SYS_ptrace,
        "no tracing: could read or steer the agent or other processes",
    ),
    (libc::SYS_process_vm_readv, "reads another process's memory"),
    (
        libc::SYS_process_vm_writev,
        "writes another process's memory",
    ),
    (
        libc::SYS_kcmp,
        "compares kernel objects of other processes (needs ptrace rights)",
    ),
    (
        libc::SYS_pidfd_getfd,
        "steals file descriptors of other processes",
    ),
    (libc::SYS_keyctl, "kernel keyring is not namespaced"),
    (libc::SYS_add_key, "kernel keyring is not namespaced"),
    (libc::SYS_request_key, "kernel keyring is not namespaced"),
    (libc::SYS_bpf, "eBPF: large kernel attack surface"),
    (
        libc::SYS_perf_event_open,
        "perf: kernel attack surface and side channels",
    ),
    (
        libc::SYS_userfaultfd,
        "used to widen kernel race windows in exploits",
    ),
    (libc::SYS_kexec_load, "loads a new kernel"),
    (libc::SYS_kexec_file_load, "loads a new kernel"),
    (libc::SYS_init_module, "loads kernel modules"),
    (libc::SYS_finit_module, "loads kernel modules"),
    (libc::SYS_delete_module, "unloads kernel modules"),
    (libc::SYS_reboot, "reboots the host"),
    (libc::SYS_swapon, "host swap"),
    (libc::SYS_swapoff, "host swap"),
    (libc::SYS_acct, "host process accounting"),
    (libc::SYS_settimeofday, "host clock"),
    (libc::SYS_clock_settime, "host clock"),
    (libc::SYS_clock_adjtime, "host clock"),
    (libc::SYS_adjtimex, "host clock"),
    (libc::SYS_syslog, "kernel log"),
    (libc::SYS_quotactl, "host quotas"),
    (
        libc::SYS_open_by_handle_at,
        "bypasses path checks (the 'shocker' escape)",
    ),
    (
        libc::SYS_name_to_handle_at,
        "companion of open_by_handle_at",
    ),
    (libc::SYS_iopl, "raw I/O port access"),
    (libc::SYS_ioperm, "raw I/O port access"),
    (libc::SYS_vhangup, "hangs up terminals"),
    (libc::SYS_lookup_dcookie, "kernel profiling"),
    (libc::SYS_uselib, "obsolete"),
    (
        libc::SYS_personality,
        "denied only with ADDR_NO_RANDOMIZE: turning off ASLR helps exploits",
    ),
    (
        libc::SYS_unshare,
        "denied only with namespace flags: see NAMESPACE_FLAGS",
    ),
    (
        libc::SYS_clone,
        "denied only with namespace flags: see NAMESPACE_FLAGS",
    ),
];

/// Errors compiling the policy (a bug in the policy, not a runtime condition).
#[derive(Debug, thiserror::Error)]
#[error("compiling the seccomp policy: {0}")]
pub struct PolicyError(String);

fn target() -> Result<TargetArch, PolicyError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| PolicyError(format!("{e:?}")))
}

/// `personality(2)` flag that turns off address-space randomisation.
const ADDR_NO_RANDOMIZE: u64 = 0x0040000;

/// A rule matching when every bit of `flag` is set in argument `arg`.
fn masked_rule(arg: u8, flag: u64) -> Result<SeccompRule, PolicyError> {
    let cond = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )
    .map_err(|e| PolicyError(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| PolicyError(e.to_string()))
}

/// Rules matching any namespace flag in argument `arg`.
fn flag_rules(arg: u8) -> Result<Vec<SeccompRule>, PolicyError> {
    NAMESPACE_FLAGS
        .iter()
        .map(|(flag, _)| masked_rule(arg, *flag))
        .collect()
}

/// The compiled filters, in the order to load them.
pub fn compile() -> Result<Vec<BpfProgram>, PolicyError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED {
        let r = match *nr {
            // clone's first argument is the flags; unshare's only argument is the flags.
            libc::SYS_clone | libc::SYS_unshare => flag_rules(0)?,
            libc::SYS_personality => vec![masked_rule(0, ADDR_NO_RANDOMIZE)?],
            _ => Vec::new(),
        };
        rules.insert(*nr, r);
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target()?,
    )
    .map_err(|e| PolicyError(e.to_string()))?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target()?,
    )
    .map_err(|e| PolicyError(e.to_string()))?;
    Ok(vec![
        deny.try_into()
            .map_err(|e: seccompiler::BackendError| PolicyError(e.to_string()))?,
        clone3
            .try_into()
            .map_err(|e: seccompiler::BackendError| PolicyError(e.to_string()))?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_every_rule_has_a_reason() {
        let progs = compile().expect("compile");
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
        assert!(DENIED.iter().all(|(_, why)| !why.is_empty()));
        let mut seen = std::collections::HashSet::new();
        assert!(
            DENIED.iter().all(|(nr, _)| seen.insert(*nr)),
            "duplicate syscall in policy"
        );
    }
}
