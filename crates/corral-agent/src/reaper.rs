//! Reaps every child of the agent, including orphans re-parented to it as PID 1.
//!
//! One task waits for SIGCHLD and loops `waitpid(-1, WNOHANG)`. Exit codes of children the
//! agent spawned are delivered through a registry of `pid -> oneshot`; other pids are just reaped.
//!
//! The race "child exits before it is registered" cannot happen: [`Reaper::spawn`] holds the
//! registry lock across `Command::spawn` and the insertion, and [`Reaper::reap_all`] holds the
//! same lock around its `waitpid` calls, so no pid can be reaped between fork and registration
//! (on the current-thread runtime the reaper task could not run there anyway, since spawning
//! does not await). Holding the lock also keeps the reaper from stealing the pid that std's
//! `spawn` itself waits for when `exec` fails.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

/// The exit code reported for a registered child: its status, or 128+signal.
pub type ExitCode = i32;

/// The registry of children whose exit somebody awaits.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitCode>>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitCode>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `cmd` and registers its pid atomically with respect to reaping.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitCode>)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited so far, without blocking.
    pub fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!("waitpid: {err}");
                    break;
                }
                Ok(status) => {
                    let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else {
                        continue;
                    };
                    if let Some(tx) = waiters.remove(&pid.as_raw()) {
                        // The receiver is gone if the request was dropped; nothing to do then.
                        let _ = tx.send(code);
                    }
                }
            }
        }
    }
}

/// Runs forever: reaps once (orphans may predate the handler), then on every SIGCHLD.
///
/// `sigchld` must be created before the first child is spawned so no SIGCHLD is missed.
pub async fn reap_forever(reaper: Arc<Reaper>, mut sigchld: Signal) {
    reaper.reap_all();
    while sigchld.recv().await.is_some() {
        reaper.reap_all();
    }
}

/// The shell convention: the exit status, or 128 + the signal number for a signal death.
pub fn exit_code(status: WaitStatus) -> Option<ExitCode> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
