//! The agent's stdout and stderr: a pipe, never a host file.
//!
//! A host file handed to the agent would stay reachable from inside the sandbox as
//! `/proc/1/fd/1`, a magic link to the host inode: the agent, root in the sandbox, could be
//! made to chmod, chown or rewrite it. A pipe names nothing on the host. The server keeps
//! the read end and copies what arrives into `<layer>/agent.log` (one tokio task per
//! sandbox, no thread, no buffer held while idle; the file is opened only while there is
//! something to write), and keeps that file under [`LOG_CAP`] bytes: when a write would
//! pass it, the older half is dropped (the newest lines are the useful ones).
//!
//! Both ends are non-blocking: the agent never stalls on a slow or stopped server (a full
//! pipe drops its log line instead). When the server restarts, its read end goes away:
//! until the new server adopts the sandbox the agent's writes fail with EPIPE (it ignores
//! SIGPIPE and drops failed log writes) and those lines are lost. On adoption,
//! [`reattach`] opens the agent's stdout again through `/proc/<pid>/fd/1` (opening a pipe
//! for reading that way yields a new read end of the same pipe) and copying resumes.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The most an `agent.log` holds.
pub(crate) const LOG_CAP: u64 = 1 << 20;
/// Read from the pipe at a time (on the stack of the task's poll, not kept in the task).
const CHUNK: usize = 16 << 10;
/// Chunks copied per wake-up before the task yields to others.
const CHUNKS_PER_TURN: usize = 16;
/// The first line of a log whose older part was dropped.
const DROPPED: &[u8] = b"[corral] agent.log reached its size limit; older lines were dropped\n";

/// Creates the pipe for a sandbox's agent and starts copying it into `path`. Returns the
/// write end (the agent's stdout and stderr). Must be called inside the tokio runtime.
pub(crate) fn start(path: PathBuf) -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    spawn_copier(read, path)?;
    Ok(write)
}

/// Resumes copying the log of an agent started by an earlier server (`pid`, host pid
/// namespace). `false` when its stdout is not a pipe (an agent started before logs were
/// piped writes its file itself); nothing is opened for reading then.
pub(crate) fn reattach(pid: i32, path: PathBuf) -> io::Result<bool> {
    let link = format!("/proc/{pid}/fd/1");
    let at = nix::fcntl::open(
        link.as_str(),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if fstat(&at)?.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Ok(false);
    }
    let read = nix::fcntl::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&at)).as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    spawn_copier(read, path)?;
    Ok(true)
}

fn spawn_copier(read: OwnedFd, path: PathBuf) -> io::Result<()> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let fd = {
        let _entered = handle.enter();
        // SAFETY: an OwnedFd keeps the same open pipe end for as long as the AsyncFd owns it.
        unsafe { AsyncFd::register_with_interest(read, Interest::READABLE)? }
    };
    handle.spawn(copy(fd, path));
    Ok(())
}

/// What one turn of reading found.
enum Turn {
    /// The pipe is empty for now.
    Drained,
    /// There may be more: yield, then go on.
    More,
    /// Every writer is gone (the agent exited) or the pipe broke.
    Closed,
}

async fn copy(fd: AsyncFd<OwnedFd>, path: PathBuf) {
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match turn(fd.get_ref().as_fd(), &path) {
            Turn::Drained => ready.clear_ready(),
            Turn::More => {
                drop(ready);
                tokio::task::yield_now().await;
            }
            Turn::Closed => return,
        }
    }
}

/// Copies what the pipe holds (up to [`CHUNKS_PER_TURN`] chunks) into the log.
fn turn(pipe: BorrowedFd<'_>, path: &Path) -> Turn {
    let mut buf = [0u8; CHUNK];
    let mut log = Log::Unopened;
    for _ in 0..CHUNKS_PER_TURN {
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => return Turn::Closed,
            Ok(n) => log.append(path, &buf[..n]),
            Err(Errno::EAGAIN) => return Turn::Drained,
            Err(Errno::EINTR) => {}
            Err(_) => return Turn::Closed,
        }
    }
    Turn::More
}

/// The log file during one turn: opened on the first write.
enum Log {
    Unopened,
    Open(File, u64),
    /// It cannot be written (the sandbox is being deleted, its disk is full...): what the
    /// agent writes is dropped, the pipe still drained.
    Failed,
}

impl Log {
    fn append(&mut self, path: &Path, data: &[u8]) {
        if let Log::Unopened = self {
            *self = match open(path) {
                Ok((file, len)) => Log::Open(file, len),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "agent log not written");
                    Log::Failed
                }
            };
        }
        if let Log::Open(file, len) = self
            && let Err(e) = write(file, len, data)
        {
            tracing::debug!(path = %path.display(), error = %e, "agent log not written");
            *self = Log::Failed;
        }
    }
}

/// Opens (creates) the log; never through a symlink.
fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Appends `data` at `len`, first dropping the older half of the file when the cap would
/// be passed.
fn write(file: &File, len: &mut u64, data: &[u8]) -> io::Result<()> {
    let add = data.len() as u64;
    if *len + add > LOG_CAP {
        *len = compact(file, *len, (LOG_CAP / 2).saturating_sub(add))?;
    }
    file.write_all_at(data, *len)?;
    *len += add;
    Ok(())
}

/// Keeps the last `keep` bytes of the file's `len` (from a line start), after a note that
/// older lines were dropped; returns the new length.
fn compact(file: &File, len: u64, keep: u64) -> io::Result<u64> {
    let from = len.saturating_sub(keep);
    let mut tail = vec![0u8; usize::try_from(len - from).map_err(io::Error::other)?];
    file.read_exact_at(&mut tail, from)?;
    let start = if from == 0 {
        0
    } else {
        tail.iter()
            .position(|&b| b == b'\n')
            .map_or(tail.len(), |i| i + 1)
    };
    let kept = &tail[start..];
    file.write_all_at(DROPPED, 0)?;
    file.write_all_at(kept, DROPPED.len() as u64)?;
    let new_len = (DROPPED.len() + kept.len()) as u64;
    file.set_len(new_len)?;
    Ok(new_len)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits up to 10 s for `cond`.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[tokio::test]
    async fn what_the_agent_writes_reaches_the_file_and_eof_ends_the_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        let fresh = dir.path().join("fresh.log");
        drop(
            start(fresh.clone())
                .map(File::from)
                .and_then(|mut w| w.write_all(b"x\n")),
        );
        assert!(eventually(|| read(&fresh) == "x\n").await);
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a new log is the server's alone");
        std::fs::write(&path, "from an earlier start\n").expect("seed");
        let write = start(path.clone()).expect("start");
        let mut w = File::from(write);
        w.write_all(b"line one\n").expect("write");
        w.write_all(b"line two\n").expect("write");
        assert!(
            eventually(|| read(&path).ends_with("line two\n")).await,
            "{}",
            read(&path)
        );
        assert_eq!(
            read(&path),
            "from an earlier start\nline one\nline two\n",
            "appended"
        );
        drop(w);
    }

    #[tokio::test]
    async fn the_file_stays_under_the_cap_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        let write = start(path.clone()).expect("start");
        let mut w = File::from(write);
        let total = 3 * LOG_CAP + 12345;
        let mut sent = 0u64;
        let mut n = 0u64;
        while sent < total {
            let line = format!("log line {n:08} {}\n", "x".repeat(90));
            match w.write(line.as_bytes()) {
                Ok(k) if k == line.len() => {
                    sent += k as u64;
                    n += 1;
                }
                // The pipe is full (non-blocking): let the copier catch up.
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        let last = format!("log line {:08} ", n - 1);
        assert!(
            eventually(|| read(&path).contains(&last)).await,
            "the newest line arrives"
        );
        let text = read(&path);
        assert!(text.len() as u64 <= LOG_CAP, "{} bytes", text.len());
        assert!(text.starts_with(std::str::from_utf8(DROPPED).expect("utf-8")));
        // Whole lines only after the note.
        assert!(
            text.lines().skip(1).all(|l| l.starts_with("log line ")),
            "cut mid-line"
        );
        assert!(!text.contains("log line 00000000 "), "the oldest are gone");
    }

    #[test]
    fn a_symlink_at_the_log_path_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").expect("target");
        let path = dir.path().join("agent.log");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let mut log = Log::Unopened;
        log.append(&path, b"hello\n");
        assert!(matches!(log, Log::Failed));
        assert_eq!(read(&target), "keep");
        // Positive control: a plain path is written.
        let plain = dir.path().join("plain.log");
        let mut log = Log::Unopened;
        log.append(&plain, b"hello\n");
        assert_eq!(read(&plain), "hello\n");
    }

    #[tokio::test]
    async fn reattach_reads_a_running_process_stdout_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        // A stand-in agent: echoes each line of its stdin to its stdout, a pipe whose first
        // reader (an earlier server) is gone.
        let (r, w) = std::io::pipe().expect("pipe");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("while read l; do echo \"got $l\"; done")
            .stdin(Stdio::piped())
            .stdout(w)
            .spawn()
            .expect("sh");
        drop(r);
        let pid = i32::try_from(child.id()).expect("pid");
        assert!(reattach(pid, path.clone()).expect("reattach"));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"after the restart\n").expect("send");
        let ok = eventually(|| read(&path) == "got after the restart\n").await;
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "{:?}", read(&path));
    }

    /// Resident memory of this process, in KiB.
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4
    }

    /// A figure, not a check: what 1,000 idle copiers (one per sandbox) cost the server.
    /// `cargo test -p corral-runtime --lib agent_log::tests::idle_copiers -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run by hand"]
    async fn idle_copiers() {
        const N: usize = 1000;
        let dir = tempfile::tempdir().expect("tempdir");
        // Warm the allocator and runtime with a first batch, then measure a second.
        let mut ends = Vec::new();
        for i in 0..100 {
            ends.push(start(dir.path().join(format!("warm{i}.log"))).expect("start"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = rss_kib();
        for i in 0..N {
            ends.push(start(dir.path().join(format!("{i}.log"))).expect("start"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib();
        eprintln!(
            "{N} idle agent-log copiers: {} KiB resident in the server ({} bytes each), \
             1 fd each (the read end), no thread",
            after.saturating_sub(before),
            after.saturating_sub(before) * 1024 / N as u64
        );
        drop(ends);
    }

    #[tokio::test]
    async fn reattach_leaves_a_file_stdout_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_log = File::create(dir.path().join("old.log")).expect("old log");
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(old_log)
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let r = reattach(pid, dir.path().join("agent.log"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!r.expect("reattach"));
        assert!(!dir.path().join("agent.log").exists());
    }
}
