//! Capabilities a sandbox may hold: at most Podman's default set, minus NET_RAW, MKNOD and
//! AUDIT_WRITE. Everything else is dropped from the bounding set before the agent is
//! executed, so no process in the sandbox can ever gain it (root included).

/// Kept capabilities (numbers from linux/capability.h) and why each is harmless enough.
pub const KEPT: &[(u32, &str)] = &[
    (
        0,
        "CHOWN: chown files in the sandbox's own tree (package managers)",
    ),
    (1, "DAC_OVERRIDE: root reading its own sandbox's files"),
    (3, "FOWNER: chmod/utime on the sandbox's files"),
    (4, "FSETID: keep setgid bits when root writes files"),
    (
        5,
        "KILL: root signalling the sandbox's own processes (pid namespace bounds it)",
    ),
    (
        6,
        "SETGID: the agent starting processes as the sandbox user",
    ),
    (
        7,
        "SETUID: the agent starting processes as the sandbox user",
    ),
    (8, "SETPCAP: dropping capabilities further"),
    (
        10,
        "NET_BIND_SERVICE: servers on ports below 1024 inside the sandbox's netns",
    ),
    (
        18,
        "SYS_CHROOT: tools that chroot inside the sandbox (as Docker and Podman allow)",
    ),
    (
        31,
        "SETFCAP: installing packages that set file capabilities",
    ),
];

/// Whether capability `cap` is kept.
pub fn is_kept(cap: u32) -> bool {
    KEPT.iter().any(|(c, _)| *c == cap)
}

/// The highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Capabilities to drop from the bounding set.
pub fn to_drop() -> Vec<u32> {
    (0..=last_cap()).filter(|c| !is_kept(*c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_capabilities_are_dropped() {
        let drop = to_drop();
        // NET_RAW 13, MKNOD 27, AUDIT_WRITE 29, SYS_ADMIN 21, SYS_PTRACE 19, SYS_MODULE 16,
        // SYS_TIME 25, NET_ADMIN 12, DAC_READ_SEARCH 2, SYS_RAWIO 17, SYSLOG 34, BPF 39, PERFMON 38.
        for cap in [13, 27, 29, 21, 19, 16, 25, 12, 2, 17, 34, 39, 38] {
            assert!(drop.contains(&cap), "capability {cap} must be dropped");
        }
        assert!(!drop.contains(&6) && !drop.contains(&7));
    }
}
