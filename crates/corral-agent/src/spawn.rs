//! Starts one child: as the sandbox user, in its own process group, stdout+stderr on one pipe.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getegid, geteuid};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::reaper::{ExitCode, Reaper};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub program: String,
    /// `argv[0]` when it differs from `program` (a command name found on `PATH`).
    pub arg0: Option<String>,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment (the agent's own is not inherited).
    pub env: BTreeMap<String, String>,
    /// Bytes for the child's stdin; `None` means `/dev/null`.
    pub stdin: Option<Vec<u8>>,
}

/// The user processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// A running child.
#[derive(Debug)]
pub struct Spawned {
    /// Kills the child's process group when dropped, unless disarmed.
    pub guard: KillGuard,
    /// The read end of the merged stdout+stderr pipe.
    pub output: pipe::Receiver,
    /// The write end of the child's stdin, when [`ProcessSpec::stdin`] was given.
    pub stdin: Option<pipe::Sender>,
    /// Resolves with the exit code once the reaper collected the child.
    pub exit: oneshot::Receiver<ExitCode>,
}

/// Spawns `spec` as `creds`. Must run inside the tokio runtime (the pipes join its reactor).
pub fn spawn(reaper: &Reaper, creds: Credentials, spec: &ProcessSpec) -> io::Result<Spawned> {
    // Both ends are close-on-exec; the child gets the write end only as its fds 1 and 2.
    let (reader, writer) = io::pipe()?;
    let output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

    let mut cmd = Command::new(&spec.program);
    if let Some(arg0) = &spec.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(match spec.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    confine(&mut cmd, creds);
    let (mut child, exit) = reaper.spawn(&mut cmd)?;
    // The Command holds our copies of the pipe's write end; close them so EOF can happen.
    drop(cmd);
    let guard = KillGuard::new(i32::try_from(child.id()).map_err(io::Error::other)?);
    let stdin = child
        .stdin
        .take()
        .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
        .transpose()?;
    // Dropping a std Child neither waits nor kills; the reaper owns its exit status.
    drop(child);
    Ok(Spawned {
        guard,
        output,
        stdin,
        exit,
    })
}

/// What every child of the agent gets between fork and exec: `oom_score_adj` +500, then the
/// switch to `creds`.
pub fn confine(cmd: &mut Command, creds: Credentials) {
    // SAFETY: `raise_oom_score` makes only open/write/close calls on static data.
    unsafe { cmd.pre_exec(raise_oom_score) };
    if let Some(switch) = IdSwitch::plan(creds) {
        // SAFETY: the closure only makes the async-signal-safe calls setgroups/setgid/setuid and
        // reads errno; it allocates nothing and touches no lock.
        unsafe { cmd.pre_exec(move || switch.apply()) };
    }
}

/// Children start at `oom_score_adj` +500 so the OOM killer picks them before the agent (which
/// the runtime sets to -1000 where the host allows it). Raising the value needs no privilege.
/// Best effort; async-signal-safe.
fn raise_oom_score() -> io::Result<()> {
    // SAFETY: a static NUL-terminated path and a static one-byte buffer.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"500".as_ptr().cast(), 3);
            libc::close(fd);
        }
    }
    Ok(())
}

/// SIGKILLs a process group on drop (request cancelled, timeout) unless disarmed after exit.
///
/// Once the leader has exited the pgid can only be reused after every member is gone, so a
/// late kill can hit nothing but stragglers of this same group.
#[derive(Debug)]
pub struct KillGuard {
    pgid: Pid,
    armed: bool,
}

impl KillGuard {
    /// An armed guard for the process group `pgid`.
    pub fn new(pgid: i32) -> Self {
        Self {
            pgid: Pid::from_raw(pgid),
            armed: true,
        }
    }

    /// Kills the group now (and not again on drop).
    pub fn kill(&mut self) {
        if self.armed {
            self.armed = false;
            if let Err(err) = killpg(self.pgid, Signal::SIGKILL) {
                tracing::debug!("killpg {}: {err}", self.pgid);
            }
        }
    }

    /// Sends `signal` to the group while it is still ours.
    pub fn signal(&self, signal: Signal) {
        if self.armed
            && let Err(err) = killpg(self.pgid, signal)
        {
            tracing::debug!("killpg {} {signal}: {err}", self.pgid);
        }
    }

    /// Leaves the group alone from now on (its leader exited normally).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The identity change done in the child between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdSwitch {
    /// As root: supplementary groups = just `gid`, then setgid, then setuid.
    Full(Credentials),
    /// Not root but asked for other ids: try setgid/setuid (fails with EPERM unless allowed).
    IdsOnly(Credentials),
}

impl IdSwitch {
    /// Decides in the parent what the child must do; `None` when it already runs as `creds`.
    fn plan(creds: Credentials) -> Option<Self> {
        let (euid, egid) = (geteuid().as_raw(), getegid().as_raw());
        if euid == 0 {
            Some(Self::Full(creds))
        } else if (creds.uid, creds.gid) == (euid, egid) {
            None
        } else {
            Some(Self::IdsOnly(creds))
        }
    }

    /// Runs in the forked child (after std's chdir and setpgid): async-signal-safe calls only.
    fn apply(self) -> io::Result<()> {
        let (creds, set_groups) = match self {
            Self::Full(c) => (c, true),
            Self::IdsOnly(c) => (c, false),
        };
        let gid: libc::gid_t = creds.gid;
        // SAFETY: `gid` lives on this stack frame for the call; setgroups reads one gid_t.
        if set_groups && unsafe { libc::setgroups(1, &gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscall wrappers without pointer arguments.
        if unsafe { libc::setgid(creds.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::setuid(creds.uid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `fd`, or a close-on-exec duplicate of it numbered 3 or above, so that setting up the
/// child's stdio cannot overwrite it.
pub fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; it takes no pointer.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Runs in the forked child before exec: lets `fd` survive the exec. Async-signal-safe.
pub fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFD/F_SETFD on a descriptor number; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
