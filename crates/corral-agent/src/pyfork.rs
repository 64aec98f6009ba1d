//! Warm python for `/process/code-run`: a per-sandbox fork server.
//!
//! Starting `python3` costs tens of milliseconds; forking an interpreter that has already
//! started costs about one. On the first python code-run the agent starts `pyfork.py` (next to
//! this file, embedded in the binary) as `python3 -u -c <script> <fd>`, the way a per-call run
//! starts (sandbox user, the sandbox's env, cwd = work dir, its own process group, stdin a pipe
//! at EOF, `oom_score_adj` +500), with stdout/stderr on a pipe the agent logs and `<fd>` one
//! end of a `socketpair` (its close-on-exec flag cleared between fork and exec). It is a child
//! of the agent, reaped by the reaper, and kept for the agent's life; idle sandboxes never
//! start one. The server owns nothing the sandbox user does not: it runs as that user. Its
//! last argument is `charts.py` ([`CHARTS_SCRIPT`]), whose import hook every child gets.
//!
//! Per run, the agent creates the output pipe and sends `{id, code, argv, env, cwd}` with the
//! pipe's write end attached (SCM_RIGHTS). The server forks a child that takes its own process
//! group, moves the fd onto 1 and 2, applies env/argv/cwd and runs the code as a fresh
//! `python3 -u - <argv..>` would (the script lists what it resets and what cannot be). It
//! answers `{id, pid}` at once and `{pid, exit}` once it has reaped the child. The child waits
//! for the server's go-ahead, given after the pid is sent: a request that got no pid never ran
//! and may be retried. From the pid on, the run is [`runner::supervise`]d like any other: same
//! output rule, timeout → SIGKILL the child's group and 408, client gone → kill, output cap;
//! only the exit code comes from the server instead of the reaper.
//!
//! Concurrency: one socket multiplexes every run (answers carry the request id, exit reports
//! the pid); one task writes requests (so a cancelled request never leaves half a frame), one
//! reads answers. The server is single-threaded: it only forks and reaps.
//!
//! A run goes to a per-call `python3 -u -` instead (`None` from [`ForkServer::run`]) when the
//! fork server is disabled ([`SWITCH_ENV`]) or cannot start (no python3); when the request
//! changes a variable that shapes interpreter start-up ([`warm_env`]); when the server asks
//! (code declaring a source encoding); or when two servers in a row did not take it. A server
//! is replaced when it died, stopped answering, reported its `sys.path` stale (site-packages
//! changed, e.g. by `pip install`), or when `python3` on PATH is no longer the one it runs.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use corral_core::agent::AgentConfig;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, Shutdown, SockFlag, SockType, UnixAddr, send, sendmsg,
    shutdown, socketpair,
};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::coderun::{CHARTS_SCRIPT, find_on_path};
use crate::reaper::{ExitCode, Reaper};
use crate::runner::{RunOutcome, supervise};
use crate::spawn::{self, Credentials, KillGuard};

/// The fork server, run as `python3 -u -c SCRIPT <fd> CHARTS_SCRIPT`.
const SCRIPT: &str = include_str!("pyfork.py");
/// The agent's environment variable that disables the fork server when `0`, `off`, `false` or
/// `no` (every python code-run then starts its own `python3`).
pub const SWITCH_ENV: &str = "CORRAL_PYTHON_FORKSERVER";
/// How long a new server may take to say it is ready.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long the server may take to answer a request before it is deemed stuck and killed.
const REPLY_LIMIT: Duration = Duration::from_secs(10);
/// Servers tried per run before falling back to a per-call python3.
const ATTEMPTS: usize = 2;
/// The largest message the server may send.
const MAX_MESSAGE: usize = 1 << 20;
/// At most this much of the server's own stderr is logged.
const LOG_LIMIT: usize = 64 << 10;

/// A python code-run for the fork server.
#[derive(Debug)]
pub struct Job<'a> {
    pub code: &'a str,
    pub argv: &'a [String],
    /// Only the variables that differ from the sandbox's env (see [`warm_env`]).
    pub env: BTreeMap<String, String>,
    pub cwd: &'a Path,
}

/// The variables `env` (the run's complete environment) sets differently from `base` (the
/// sandbox's, which the server started with), or `None` when one of them shapes interpreter
/// start-up: which python runs and its `sys.path` (PATH, HOME, `PYTHON*`, `PYENV*`), encodings
/// and locale, `time`'s zone, the dynamic loader and allocator. Those runs need a fresh python3.
pub fn warm_env(
    base: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    const PREFIXES: [&str; 5] = ["PYTHON", "PYENV", "LC_", "LD_", "MALLOC_"];
    const NAMES: [&str; 6] = ["PATH", "HOME", "LANG", "LANGUAGE", "TZ", "GLIBC_TUNABLES"];
    let changed: BTreeMap<String, String> = env
        .iter()
        .filter(|(key, value)| base.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let shapes_startup =
        |key: &str| NAMES.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix));
    (!changed.keys().any(|key| shapes_startup(key))).then_some(changed)
}

/// The agent's handle on its fork server, started on first use.
#[derive(Debug)]
pub struct ForkServer {
    enabled: bool,
    current: tokio::sync::Mutex<Option<Arc<Instance>>>,
}

impl ForkServer {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Enabled unless [`SWITCH_ENV`] in the agent's environment says otherwise.
    pub fn from_env() -> Self {
        let value = std::env::var(SWITCH_ENV).unwrap_or_default();
        let disabled = matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        );
        Self::new(!disabled)
    }

    /// Runs `job` on the fork server; `None` means "run it per call instead" (nothing of it
    /// has run). Dropping the future kills the child.
    pub async fn run(
        self: &Arc<Self>,
        reaper: &Arc<Reaper>,
        creds: Credentials,
        config: &Arc<AgentConfig>,
        job: &Job<'_>,
        deadline: Option<Instant>,
    ) -> Option<RunOutcome> {
        // Always UTF-8 in practice (it comes from the config); anything else runs per call.
        let cwd = job.cwd.to_str()?;
        if !self.enabled {
            return None;
        }
        for _ in 0..ATTEMPTS {
            let instance = self.instance(reaper, creds, config);
            let instance = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, instance).await {
                    Ok(instance) => instance?,
                    Err(_) => return Some(RunOutcome::TimedOut),
                },
                None => instance.await?,
            };
            let (output, writer) = match output_pipe() {
                Ok(pipe) => pipe,
                Err(err) => {
                    return Some(RunOutcome::SpawnFailed(format!(
                        "failed to start python3: {err}"
                    )));
                }
            };
            let Some(reply) = instance.submit(job, cwd, writer) else {
                self.retire(&instance).await;
                continue;
            };
            let limit = Instant::now() + REPLY_LIMIT;
            let reply = match deadline {
                Some(deadline) if deadline <= limit => {
                    match tokio::time::timeout_at(deadline, reply).await {
                        Ok(reply) => reply,
                        // The child, if it starts, is killed when its pid arrives.
                        Err(_) => return Some(RunOutcome::TimedOut),
                    }
                }
                _ => match tokio::time::timeout_at(limit, reply).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        tracing::warn!(
                            "python fork server {} did not answer in {REPLY_LIMIT:?}; killing it",
                            instance.process.pid
                        );
                        instance.process.kill();
                        self.retire(&instance).await;
                        continue;
                    }
                },
            };
            match reply {
                Ok(Reply::Started { pid, exit }) => {
                    drop(instance);
                    let guard = KillGuard::new(pid);
                    return Some(supervise(guard, output, None, exit, deadline).await);
                }
                Ok(Reply::Failed(message)) => {
                    return Some(RunOutcome::SpawnFailed(format!(
                        "failed to start python3: {message}"
                    )));
                }
                Ok(Reply::Cold) => return None,
                // Stale, or gone before it forked: a fresh server gets the request.
                Ok(Reply::Stale) | Err(_) => self.retire(&instance).await,
            }
        }
        None
    }

    /// The running server, or a new one; `None` when none can be started. A start goes on
    /// (for later runs) even if the caller stops waiting.
    async fn instance(
        self: &Arc<Self>,
        reaper: &Arc<Reaper>,
        creds: Credentials,
        config: &Arc<AgentConfig>,
    ) -> Option<Arc<Instance>> {
        let (this, reaper, config) = (Arc::clone(self), Arc::clone(reaper), Arc::clone(config));
        tokio::spawn(async move { this.current_or_start(&reaper, creds, &config).await })
            .await
            .ok()
            .flatten()
    }

    async fn current_or_start(
        &self,
        reaper: &Reaper,
        creds: Credentials,
        config: &AgentConfig,
    ) -> Option<Arc<Instance>> {
        let mut current = self.current.lock().await;
        if let Some(instance) = current.as_ref() {
            if instance.usable(&config.env) {
                return Some(Arc::clone(instance));
            }
            // Dropping it closes the request side; it exits once its children have.
            *current = None;
        }
        match Instance::start(reaper, creds, config).await {
            Ok(instance) => {
                tracing::debug!("python fork server {} ready", instance.process.pid);
                *current = Some(Arc::clone(&instance));
                Some(instance)
            }
            Err(err) => {
                if err.kind() == io::ErrorKind::NotFound {
                    tracing::debug!("python fork server: {err}");
                } else {
                    tracing::warn!("python fork server: {err}; running python per call");
                }
                None
            }
        }
    }

    /// Stops sending requests to `instance` (if it is still the current one).
    async fn retire(&self, instance: &Arc<Instance>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, instance)) {
            *current = None;
        }
    }
}

/// One fork server process and the tasks talking to it.
#[derive(Debug)]
struct Instance {
    process: Arc<Process>,
    /// `python3` on the sandbox's PATH when it started.
    python: Option<Stamp>,
    requests: mpsc::UnboundedSender<Outgoing>,
    table: Arc<Mutex<Table>>,
}

/// The server process (a child of the agent).
#[derive(Debug)]
struct Process {
    pid: Pid,
    /// Set once the reaper collected it: its pid may then belong to someone else.
    exited: AtomicBool,
}

impl Process {
    fn kill(&self) {
        if !self.exited.load(Ordering::SeqCst) {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

/// Who waits for what from the server.
#[derive(Debug, Default)]
struct Table {
    /// The connection is gone: nothing more will be answered.
    closed: bool,
    next_id: u64,
    ready: Option<oneshot::Sender<()>>,
    /// Requests not answered yet, and since when they wait.
    replies: HashMap<u64, (Instant, oneshot::Sender<Reply>)>,
    exits: HashMap<i32, oneshot::Sender<ExitCode>>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server's answer to a request. A closed channel means it never got to fork.
#[derive(Debug)]
enum Reply {
    Started {
        pid: i32,
        exit: oneshot::Receiver<ExitCode>,
    },
    Stale,
    Cold,
    Failed(String),
}

/// A request frame and the output pipe's write end travelling with it.
#[derive(Debug)]
struct Outgoing {
    frame: Vec<u8>,
    output: OwnedFd,
}

#[derive(Debug, Serialize)]
struct Request<'a> {
    id: u64,
    code: &'a str,
    argv: &'a [String],
    env: &'a BTreeMap<String, String>,
    cwd: &'a str,
}

/// Any message from the server (see the protocol in `pyfork.py`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message {
    id: Option<u64>,
    pid: Option<i32>,
    exit: Option<i32>,
    ready: bool,
    version: Option<String>,
    stale: bool,
    cold: bool,
    error: Option<String>,
}

impl Instance {
    async fn start(
        reaper: &Reaper,
        creds: Credentials,
        config: &AgentConfig,
    ) -> io::Result<Arc<Self>> {
        let python = Stamp::of_python(&config.env);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let theirs = spawn::above_stdio(theirs)?;
        let socket = {
            let socket = std::os::unix::net::UnixStream::from(ours);
            socket.set_nonblocking(true)?;
            Arc::new(UnixStream::from_std(socket)?)
        };
        let (log_reader, log_writer) = io::pipe()?;
        let log = pipe::Receiver::from_owned_fd(OwnedFd::from(log_reader))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg("-c")
            .arg(SCRIPT)
            .arg(fd.to_string())
            .arg(CHARTS_SCRIPT)
            .current_dir(&config.work_dir)
            .env_clear()
            .envs(&config.env)
            // A pipe at EOF, as `python3 -`'s stdin is once it has read the code.
            .stdin(Stdio::piped())
            .stdout(log_writer.try_clone()?)
            .stderr(log_writer)
            .process_group(0);
        spawn::confine(&mut cmd, creds);
        // SAFETY: `inherit` only calls fcntl, which is async-signal-safe.
        unsafe { cmd.pre_exec(move || spawn::inherit(fd)) };
        let (mut child, exit) = reaper.spawn(&mut cmd)?;
        drop(cmd);
        drop(theirs);
        drop(child.stdin.take());
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        // Dropping a std Child neither waits nor kills; the reaper owns its exit status.
        drop(child);
        let process = Arc::new(Process {
            pid,
            exited: AtomicBool::new(false),
        });
        tokio::spawn(watch_exit(Arc::clone(&process), exit));
        tokio::spawn(log_output(pid, log));
        let (ready_tx, ready) = oneshot::channel();
        let table = Arc::new(Mutex::new(Table {
            ready: Some(ready_tx),
            ..Table::default()
        }));
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(read_messages(
            Arc::clone(&socket),
            Arc::clone(&table),
            Arc::clone(&process),
        ));
        tokio::spawn(write_requests(socket, queue, Arc::clone(&process)));
        let instance = Arc::new(Self {
            process,
            python,
            requests,
            table,
        });
        match tokio::time::timeout(START_LIMIT, ready).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(_)) => Err(io::Error::other(format!(
                "python3 (pid {pid}) exited before it was ready"
            ))),
            Err(_) => {
                instance.process.kill();
                Err(io::Error::other(format!(
                    "python3 (pid {pid}) was not ready after {START_LIMIT:?}"
                )))
            }
        }
    }

    /// Whether new requests may go to this server: it is connected, answers, and `python3` on
    /// PATH is still the one it runs. One that sits on a request for longer than
    /// [`REPLY_LIMIT`] (stopped, say) is killed.
    fn usable(&self, env: &BTreeMap<String, String>) -> bool {
        let table = lock(&self.table);
        if table.closed {
            return false;
        }
        if table
            .replies
            .values()
            .any(|(since, _)| since.elapsed() > REPLY_LIMIT)
        {
            tracing::warn!(
                "python fork server {} did not answer in {REPLY_LIMIT:?}; killing it",
                self.process.pid
            );
            self.process.kill();
            return false;
        }
        drop(table);
        Stamp::of_python(env) == self.python
    }

    /// Queues `job`; `None` when the server is gone.
    fn submit(
        &self,
        job: &Job<'_>,
        cwd: &str,
        output: OwnedFd,
    ) -> Option<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut table = lock(&self.table);
            if table.closed {
                return None;
            }
            table.next_id += 1;
            let id = table.next_id;
            table.replies.insert(id, (Instant::now(), tx));
            id
        };
        let body = serde_json::to_vec(&Request {
            id,
            code: job.code,
            argv: job.argv,
            env: &job.env,
            cwd,
        });
        let sent = body.ok().and_then(|body| {
            let mut frame = u32::try_from(body.len()).ok()?.to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            self.requests.send(Outgoing { frame, output }).ok()
        });
        if sent.is_none() {
            lock(&self.table).replies.remove(&id);
            return None;
        }
        Some(rx)
    }
}

/// Identifies the `python3` found on PATH, to notice it being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of_python(env: &BTreeMap<String, String>) -> Option<Self> {
        let path = find_on_path("python3", env.get("PATH").map(String::as_str))?;
        let meta = path.metadata().ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            path,
        })
    }
}

/// A pipe for a run's merged output: our read end (close-on-exec) and the write end to send.
fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (reader, writer) = io::pipe()?;
    Ok((
        pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?,
        OwnedFd::from(writer),
    ))
}

async fn watch_exit(process: Arc<Process>, exit: oneshot::Receiver<ExitCode>) {
    let code = exit.await;
    process.exited.store(true, Ordering::SeqCst);
    tracing::debug!("python fork server {} exited: {code:?}", process.pid);
}

/// Logs what the server writes on its stdout/stderr (only its own errors: children have
/// their own fds 1 and 2), up to [`LOG_LIMIT`].
async fn log_output(pid: Pid, mut log: pipe::Receiver) {
    let mut chunk = vec![0u8; 4096];
    let mut logged = 0;
    loop {
        match log.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if logged < LOG_LIMIT {
                    logged += n;
                    let text = String::from_utf8_lossy(&chunk[..n]);
                    tracing::warn!("python fork server {pid}: {}", text.trim_end());
                }
            }
        }
    }
}

/// Writes queued requests, each with its fd, until the instance is dropped; then shuts the
/// socket's sending side so the server exits once its children have.
async fn write_requests(
    socket: Arc<UnixStream>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    process: Arc<Process>,
) {
    while let Some(request) = queue.recv().await {
        if let Err(err) = send_frame(&socket, &request.frame, request.output.as_fd()).await {
            tracing::warn!("python fork server {}: sending: {err}", process.pid);
            // A frame cut short cannot be completed; the reader then sees the end.
            process.kill();
            return;
        }
        // `request.output` drops here: the server has its own copy now.
    }
    let _ = shutdown(socket.as_raw_fd(), Shutdown::Write);
}

/// Sends `frame` with `fd` attached to its first byte.
async fn send_frame(socket: &UnixStream, frame: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = socket.as_raw_fd();
    let fds = [fd.as_raw_fd()];
    let mut sent = socket
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(frame)];
            let cmsgs = [ControlMessage::ScmRights(&fds)];
            sendmsg::<UnixAddr>(raw, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        })
        .await?;
    while sent < frame.len() {
        let rest = &frame[sent..];
        sent += socket
            .async_io(Interest::WRITABLE, || {
                send(raw, rest, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            })
            .await?;
    }
    Ok(())
}

/// Reads the server's messages until it closes the connection, then fails everything still
/// waiting (their channels close).
async fn read_messages(socket: Arc<UnixStream>, table: Arc<Mutex<Table>>, process: Arc<Process>) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    let end = loop {
        match next_frame(&mut buffer) {
            Ok(Some(frame)) => {
                if let Err(err) = dispatch(&table, &frame) {
                    break Err(err);
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => break Err(err),
        }
        if let Err(err) = socket.readable().await {
            break Err(err.to_string());
        }
        match socket.try_read(&mut chunk) {
            // A reset is the end too: the server died with our request unread.
            Ok(0) => break Ok(()),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break Ok(()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => break Err(err.to_string()),
        }
    };
    if let Err(err) = end {
        tracing::warn!("python fork server {}: {err}; killing it", process.pid);
        process.kill();
    }
    let mut table = lock(&table);
    table.closed = true;
    table.ready = None;
    table.replies.clear();
    table.exits.clear();
}

/// Takes the next complete frame off `buffer`.
fn next_frame(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    let Some(header) = buffer.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = u32::from_be_bytes(*header) as usize;
    if size > MAX_MESSAGE {
        return Err(format!("message of {size} bytes"));
    }
    if buffer.len() < 4 + size {
        return Ok(None);
    }
    let frame = buffer[4..4 + size].to_vec();
    buffer.drain(..4 + size);
    Ok(Some(frame))
}

/// Hands one message to whoever waits for it. An error means the server broke the protocol.
fn dispatch(table: &Mutex<Table>, frame: &[u8]) -> Result<(), String> {
    let message: Message =
        serde_json::from_slice(frame).map_err(|err| format!("bad message: {err}"))?;
    let mut table = lock(table);
    if message.ready {
        tracing::debug!("python fork server runs python {:?}", message.version);
        if let Some(ready) = table.ready.take() {
            let _ = ready.send(());
        }
        return Ok(());
    }
    // The pid becomes a process group to SIGKILL: never ours, init's, or "every process".
    let pid = match message.pid {
        Some(pid) if pid <= 1 || u32::try_from(pid).ok() == Some(std::process::id()) => {
            return Err(format!("bad pid {pid}"));
        }
        pid => pid,
    };
    match (message.id, pid, message.exit) {
        (Some(id), pid, None) => {
            let Some((_, waiter)) = table.replies.remove(&id) else {
                return Err(format!("answer to unknown request {id}"));
            };
            let reply = if let Some(pid) = pid {
                let (tx, exit) = oneshot::channel();
                table.exits.insert(pid, tx);
                Reply::Started { pid, exit }
            } else if message.stale {
                Reply::Stale
            } else if message.cold {
                Reply::Cold
            } else {
                Reply::Failed(message.error.unwrap_or_else(|| "unknown error".to_owned()))
            };
            if let Err(Reply::Started { pid, .. }) = waiter.send(reply) {
                // The request was cancelled (timeout, client gone) before it started.
                table.exits.remove(&pid);
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        (None, Some(pid), Some(code)) => {
            if let Some(waiter) = table.exits.remove(&pid) {
                let _ = waiter.send(code);
            }
        }
        _ => return Err("unexpected message".to_owned()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::tests::map;

    #[test]
    fn only_changed_variables_are_sent() {
        let base = map(&[("PATH", "/bin"), ("HOME", "/root"), ("FOO", "bar")]);
        let env = map(&[
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("FOO", "baz"),
            ("X", "1"),
        ]);
        assert_eq!(
            warm_env(&base, &env),
            Some(map(&[("FOO", "baz"), ("X", "1")]))
        );
        assert_eq!(warm_env(&base, &base), Some(BTreeMap::new()));
    }

    #[test]
    fn start_up_variables_need_a_fresh_interpreter() {
        let base = map(&[("PATH", "/bin")]);
        for key in [
            "PATH",
            "HOME",
            "PYTHONPATH",
            "PYENV_VERSION",
            "LC_ALL",
            "LANG",
            "TZ",
        ] {
            let mut env = base.clone();
            env.insert(key.to_owned(), "/elsewhere".to_owned());
            assert_eq!(warm_env(&base, &env), None, "{key}");
        }
    }

    #[test]
    fn frames_are_length_prefixed() {
        let mut buffer = vec![0, 0, 0, 2, b'{', b'}', 0, 0];
        assert_eq!(next_frame(&mut buffer), Ok(Some(b"{}".to_vec())));
        assert_eq!(next_frame(&mut buffer), Ok(None));
        buffer.extend_from_slice(&[0, 1, b'x']);
        assert_eq!(next_frame(&mut buffer), Ok(Some(b"x".to_vec())));
        assert!(buffer.is_empty());
        let mut huge = vec![0xff, 0xff, 0xff, 0xff];
        assert!(next_frame(&mut huge).is_err());
    }

    #[test]
    fn answers_reach_their_waiters() {
        let table = Mutex::new(Table::default());
        let (tx, mut rx) = oneshot::channel();
        lock(&table).replies.insert(7, (Instant::now(), tx));
        dispatch(&table, br#"{"id": 7, "pid": 4242}"#).expect("valid");
        let Ok(Reply::Started { pid, mut exit }) = rx.try_recv() else {
            panic!("not started");
        };
        assert_eq!(pid, 4242);
        dispatch(&table, br#"{"pid": 4242, "exit": 3}"#).expect("valid");
        assert_eq!(exit.try_recv(), Ok(3));
        assert!(dispatch(&table, br#"{"id": 8, "stale": true}"#).is_err());
        assert!(dispatch(&table, br#"{"id": 9, "pid": 0}"#).is_err());
        assert!(dispatch(&table, b"nonsense").is_err());
    }
}
