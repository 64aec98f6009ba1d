//! Runs a child to completion: merged output, optional stdin, timeout, kill on cancel.
//!
//! Output rule: output is read while the child runs; once the child's exit is reported (by the
//! reaper, or by the python fork server for the children it forks), whatever is already
//! buffered in the pipe is drained with non-blocking reads and the result is returned.
//! Anything written later (by a background process such as `sleep 100 &` that
//! inherited the pipe) is dropped, so such processes never hold the response up.

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::reaper::{ExitCode, Reaper};
use crate::spawn::{Credentials, KillGuard, ProcessSpec, Spawned, spawn};

/// At most this much output is kept; the rest is read and discarded.
const OUTPUT_LIMIT: usize = 32 << 20;
/// How long to wait for a killed child to be reaped before answering anyway.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The child exited; `output` is stdout and stderr merged, decoded as lossy UTF-8.
    Exited { exit_code: ExitCode, output: String },
    /// The timeout expired; the process group was killed.
    TimedOut,
    /// The child could not be started.
    SpawnFailed(String),
}

/// Spawns `spec` and waits for it. Dropping the future kills the child's process group.
pub async fn run(
    reaper: &Reaper,
    creds: Credentials,
    spec: ProcessSpec,
    timeout: Option<Duration>,
) -> RunOutcome {
    run_until(reaper, creds, spec, deadline(timeout)).await
}

/// When a run that starts now with `timeout` must end.
pub fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|limit| Instant::now() + limit)
}

/// [`run`] with an absolute deadline.
pub async fn run_until(
    reaper: &Reaper,
    creds: Credentials,
    mut spec: ProcessSpec,
    deadline: Option<Instant>,
) -> RunOutcome {
    let Spawned {
        guard,
        output,
        stdin,
        exit,
    } = match spawn(reaper, creds, &spec) {
        Ok(spawned) => spawned,
        Err(err) => {
            return RunOutcome::SpawnFailed(format!("failed to start {}: {err}", spec.program));
        }
    };
    let stdin = stdin.zip(spec.stdin.take());
    supervise(guard, output, stdin, exit, deadline).await
}

/// Collects the output of a started child until it exits or `deadline` passes (then its group
/// is killed). `exit` delivers its exit code; should it close without one (the code is lost),
/// the group is killed and the exit code is -1. Dropping the future kills the group.
pub async fn supervise(
    mut guard: KillGuard,
    output: pipe::Receiver,
    stdin: Option<(pipe::Sender, Vec<u8>)>,
    mut exit: oneshot::Receiver<ExitCode>,
    deadline: Option<Instant>,
) -> RunOutcome {
    let collected = collect(output, stdin, &mut exit);
    let finished = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, collected).await.ok(),
        None => Some(collected.await),
    };
    match finished {
        Some((exit_code, output)) => {
            let exit_code = exit_code.unwrap_or_else(|| {
                tracing::warn!("the exit code of a child was lost; killing its process group");
                guard.kill();
                -1
            });
            guard.disarm();
            RunOutcome::Exited {
                exit_code,
                output: String::from_utf8_lossy(&output).into_owned(),
            }
        }
        None => {
            guard.kill();
            let _ = tokio::time::timeout(KILL_GRACE, exit).await;
            RunOutcome::TimedOut
        }
    }
}

/// Reads output and feeds stdin until the child exits, then drains what is buffered.
async fn collect(
    mut output: pipe::Receiver,
    stdin: Option<(pipe::Sender, Vec<u8>)>,
    exit: &mut oneshot::Receiver<ExitCode>,
) -> (Option<ExitCode>, Vec<u8>) {
    let mut writing = stdin.is_some();
    // Written concurrently with reading, so a child that fills its output pipe before it has
    // consumed its stdin cannot deadlock us; dropping the sender closes the child's stdin.
    let writer = async move {
        if let Some((mut tx, data)) = stdin {
            let _ = tx.write_all(&data).await;
        }
    };
    tokio::pin!(writer);
    let mut kept = Kept::default();
    let mut chunk = vec![0u8; 64 << 10];
    let mut reading = true;
    let exit_code = loop {
        tokio::select! {
            () = &mut writer, if writing => writing = false,
            read = output.read(&mut chunk), if reading => match read {
                Ok(0) => reading = false,
                Ok(n) => kept.push(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!("reading child output: {err}");
                    reading = false;
                }
            },
            code = &mut *exit => break code.ok(),
        }
    };
    if reading {
        drain(&output, &mut kept, &mut chunk);
    }
    (exit_code, kept.bytes)
}

/// Non-blocking reads straight on the fd until it is empty or at EOF. (tokio's `try_read`
/// trusts its cached readiness, which may not have caught up yet.)
fn drain(output: &pipe::Receiver, kept: &mut Kept, chunk: &mut [u8]) {
    loop {
        match nix::unistd::read(output.as_fd(), chunk) {
            Ok(0) => break,
            Ok(n) => kept.push(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break, // EAGAIN: nothing more buffered right now.
        }
    }
}

/// Output bytes up to [`OUTPUT_LIMIT`].
#[derive(Debug, Default)]
struct Kept {
    bytes: Vec<u8>,
}

impl Kept {
    fn push(&mut self, data: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped() {
        let mut kept = Kept::default();
        kept.push(&vec![b'a'; OUTPUT_LIMIT - 1]);
        kept.push(b"bcd");
        assert_eq!(kept.bytes.len(), OUTPUT_LIMIT);
        assert_eq!(kept.bytes.last(), Some(&b'b'));
    }
}
