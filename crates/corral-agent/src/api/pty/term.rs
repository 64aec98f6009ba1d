//! The terminal itself: a pty pair, the shell on its slave side, and non-blocking master I/O.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::reaper::{ExitCode, Reaper};
use crate::spawn::{Credentials, confine};

/// Shells tried for terminals, in order; started as login shells (`-l`).
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

/// A shell running on a fresh pty.
#[derive(Debug)]
pub struct Terminal {
    /// The non-blocking master side: output is read and input written here.
    pub master: AsyncFd<OwnedFd>,
    /// The shell's pid, which is also its session id and process group.
    pub pid: i32,
    /// Resolves with the shell's exit code once the reaper collected it.
    pub exit: oneshot::Receiver<ExitCode>,
}

/// Opens a pty of `cols`x`rows` and starts a login shell on it as `creds`, in its own session
/// with the pty as controlling terminal. Must run inside the tokio runtime.
pub fn start(
    reaper: &Reaper,
    creds: Credentials,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    cols: u16,
    rows: u16,
) -> io::Result<Terminal> {
    start_command(reaper, creds, cwd, env, (cols, rows), None)
}

/// [`start`], or with `command` the shell runs `-c command` instead of a login shell (the SSH
/// gateway's `ssh -t host command`).
pub fn start_command(
    reaper: &Reaper,
    creds: Credentials,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    (cols, rows): (u16, u16),
    command: Option<&str>,
) -> io::Result<Terminal> {
    let shell = SHELLS
        .into_iter()
        .find(|s| Path::new(s).is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no shell found"))?;
    let pty = openpty(Some(&winsize(cols, rows)), None).map_err(io::Error::from)?;
    let (master, slave) = (pty.master, pty.slave);
    // The terminal belongs to the user, as a login would arrange it. Best effort.
    // SAFETY: a plain syscall on an fd we own.
    if unsafe { libc::fchown(slave.as_raw_fd(), creds.uid, creds.gid) } != 0 {
        tracing::debug!("fchown pty slave: {}", io::Error::last_os_error());
    }
    let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(
        &master,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    // openpty leaves both fds inheritable: no child (this shell or any other) may keep them.
    for fd in [&master, &slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }

    let mut cmd = Command::new(shell);
    match command {
        Some(c) => cmd.arg("-c").arg(c),
        None => cmd.arg("-l"),
    };
    cmd.current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe syscalls; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // fd 0 is the slave (std set up stdio before the hooks run).
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    confine(&mut cmd, creds);
    let (child, exit) = reaper.spawn(&mut cmd)?;
    // Our copies of the slave live in `cmd`; closing them lets the master see EOF (EIO) later.
    drop(cmd);
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // Dropping a std Child neither waits nor kills; the reaper owns its exit status.
    drop(child);
    Ok(Terminal {
        // SAFETY: the OwnedFd is a valid, owned descriptor that nothing else replaces or closes
        // while the AsyncFd holds it.
        master: unsafe { AsyncFd::register(master)? },
        pid,
        exit,
    })
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the terminal size; the kernel sends SIGWINCH to the foreground process group.
pub fn resize(master: &AsyncFd<OwnedFd>, cols: u16, rows: u16) -> io::Result<()> {
    let size = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads one `winsize` struct, which lives on this stack frame.
    if unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The next chunk of output; `None` at end (every slave fd closed: Linux reports EIO).
pub async fn read_chunk(master: &AsyncFd<OwnedFd>) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut guard = master.readable().await?;
        let fd = guard.get_inner().as_raw_fd();
        let result = guard.try_io(|_| {
            // SAFETY: `buf` is a live, writable buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match result {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(None),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data` as terminal input.
pub async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        let fd = guard.get_inner().as_raw_fd();
        let result = guard.try_io(|_| {
            // SAFETY: `data` is a live buffer of the given length.
            let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match result {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// SIGKILLs every process of the session `sid` (the shell, its jobs in their own process
/// groups, and whatever they started), then the group `sid` once more for good measure.
pub fn kill_session(sid: i32) {
    // Two passes: a process forked during the first scan is caught by the second.
    for _ in 0..2 {
        for pid in session_members(sid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
}

/// Pids whose session id is `sid`, from `/proc/<pid>/stat`.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![sid];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| session_of(&stat))
                == Some(sid)
        })
        .collect()
}

/// The session field of a `/proc/<pid>/stat` line (the command name may contain anything, so
/// fields are counted after its closing parenthesis: state, ppid, pgrp, session).
fn session_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_the_fourth_field_after_the_name() {
        let stat = "1234 (a) b (c)) S 1 1234 1200 34816 1234 4194560 0";
        assert_eq!(session_of(stat), Some(1200));
        assert_eq!(session_of("garbage"), None);
    }
}
