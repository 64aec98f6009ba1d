//! `corral-agent run-as USER -- PROGRAM ARGS...`: runs a program as another user of the
//! sandbox, as a Dockerfile's `USER` does for later `RUN` steps. Used by image builds, whose
//! build sandbox runs as root: the agent binary is in every sandbox, so no image needs `su`.
//!
//! `USER` is `name`, `uid`, `name:group` or `uid:gid`, looked up in the sandbox's
//! `/etc/passwd` and `/etc/group` (no NSS). As Docker does: a numeric uid missing from
//! `/etc/passwd` runs with gid 0 and home `/`; the supplementary groups are those listing
//! the user in `/etc/group`; `HOME` is the user's home.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `spec` against the texts of `/etc/passwd` and `/etc/group`.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("invalid user {spec:?}"));
    }
    let entry = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && (f[0] == user || f[2] == user));
    let (name, uid, mut gid, home) = match entry {
        Some(f) => (
            f[0].to_owned(),
            f[2].parse::<u32>()
                .map_err(|_| format!("bad uid for {user} in /etc/passwd"))?,
            f[3].parse::<u32>()
                .map_err(|_| format!("bad gid for {user} in /etc/passwd"))?,
            f[5].to_owned(),
        ),
        None => match user.parse::<u32>() {
            Ok(uid) => (String::new(), uid, 0, "/".to_owned()),
            Err(_) => {
                return Err(format!(
                    "unable to find user {user}: no matching entries in passwd file"
                ));
            }
        },
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut supplementary = vec![gid];
    if !name.is_empty() && grp.is_none() {
        for f in &groups {
            let member = f.get(3).is_some_and(|m| m.split(',').any(|m| m == name));
            if let (true, Ok(id)) = (member, f[2].parse::<u32>())
                && !supplementary.contains(&id)
            {
                supplementary.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// Entry of the `run-as` mode: `args` is what follows `run-as`. Only returns on failure.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let fail = |msg: &str| {
        eprintln!("corral-agent run-as: {msg}");
        ExitCode::from(126)
    };
    let mut args = args.into_iter();
    let Some(spec) = args.next().and_then(|s| s.into_string().ok()) else {
        return fail("usage: run-as USER -- PROGRAM [ARGS...]");
    };
    if args.next().is_none_or(|s| s != "--") {
        return fail("usage: run-as USER -- PROGRAM [ARGS...]");
    }
    let Some(program) = args.next() else {
        return fail("no program to run");
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let id = match resolve(&spec, &read("/etc/passwd"), &read("/etc/group")) {
        Ok(id) => id,
        Err(e) => return fail(&e),
    };
    // SAFETY: plain syscall wrappers without arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (euid, egid) != (id.uid, id.gid) {
        // SAFETY: setgroups reads `groups.len()` gid_t values from a live slice.
        if unsafe { libc::setgroups(id.groups.len(), id.groups.as_ptr()) } != 0 {
            return fail(&format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: plain syscall wrappers without pointer arguments.
        if unsafe { libc::setgid(id.gid) } != 0 {
            return fail(&format!(
                "setgid {}: {}",
                id.gid,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        if unsafe { libc::setuid(id.uid) } != 0 {
            return fail(&format!(
                "setuid {}: {}",
                id.uid,
                std::io::Error::last_os_error()
            ));
        }
    }
    let err = Command::new(&program)
        .args(args)
        .env("HOME", &id.home)
        .exec();
    fail(&format!("cannot run {}: {err}", program.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n";

    #[test]
    fn users_resolve_as_docker_does() {
        let app = resolve("app", PASSWD, GROUP).expect("app");
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, vec![1000, 50]);
        assert_eq!(
            resolve("1000", PASSWD, GROUP).expect("uid").home,
            "/home/app"
        );
        let odd = resolve("4242", PASSWD, GROUP).expect("unknown uid");
        assert_eq!((odd.uid, odd.gid, odd.home.as_str()), (4242, 0, "/"));
        let g = resolve("app:staff", PASSWD, GROUP).expect("app:staff");
        assert_eq!((g.gid, g.groups.clone()), (50, vec![50]));
        assert_eq!(resolve("4242:7", PASSWD, GROUP).expect("ids").gid, 7);
        assert!(resolve("nobody", PASSWD, GROUP).is_err());
        assert!(resolve("app:nogroup", PASSWD, GROUP).is_err());
        assert!(resolve("", PASSWD, GROUP).is_err());
    }
}
