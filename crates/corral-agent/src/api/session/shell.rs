//! One long-lived shell per session, and the commands it runs.
//!
//! The shell (bash, else sh) runs as the sandbox user and reads its script from a pipe held by
//! the agent, so `cd` and `export` persist between commands. For each command the agent makes
//! three FIFOs (`in`, `out`, `err`, owned by the user) in a directory of its own, opens them itself first (read-write,
//! so neither side's `open` blocks and no EOF happens before the agent closes them), then writes
//! one line to the shell:
//!
//! ```sh
//! { eval '<command>'
//! } <in >out 2>err; printf '%s %s %s\n' <token> <cmdId> "$?"
//! ```
//!
//! The group runs in the shell itself (state persists), with its own stdin, stdout and stderr.
//! The status line goes to the shell's own stdout, which only the agent reads; the random
//! token keeps a command from faking it. When the status arrives the command's FIFOs are
//! drained and closed. Should the shell die (`exit`, or the session is deleted), every command
//! still pending ends with the shell's exit code.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::stat::Mode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use crate::reaper::{ExitCode, Reaper};
use crate::spawn::{Credentials, KillGuard, ProcessSpec, spawn};

/// Where session directories live inside the sandbox.
const ROOT: &str = "/tmp/.corral-sessions";
/// At most this much output is kept per command; the rest is read and discarded.
const LOG_LIMIT: usize = 32 << 20;
/// The shells a session may use, in order of preference.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What is known about a command: its output so far and, once it ended, its exit code.
#[derive(Debug, Default)]
pub struct CommandState {
    pub chunks: Vec<(Stream, Vec<u8>)>,
    kept: usize,
    pub exit_code: Option<ExitCode>,
}

impl CommandState {
    fn push(&mut self, stream: Stream, data: &[u8]) {
        let room = LOG_LIMIT.saturating_sub(self.kept);
        let data = &data[..data.len().min(room)];
        if data.is_empty() {
            return;
        }
        self.kept += data.len();
        match self.chunks.last_mut() {
            // Merge small consecutive pieces of one stream; keeps the log compact.
            Some((last, bytes)) if *last == stream && bytes.len() < 4096 => {
                bytes.extend_from_slice(data);
            }
            _ => self.chunks.push((stream, data.to_vec())),
        }
    }

    /// The log as Daytona's daemon answers SDKs older than 0.167 (text): every chunk after
    /// its stream's marker (`stdout`/`stderr` prefixes), or with `markers` false (SDKs older
    /// than 0.27) just the bytes in order.
    pub fn text_log(&self, stdout: &[u8], stderr: &[u8], markers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (stream, bytes) in &self.chunks {
            if markers {
                out.extend_from_slice(match stream {
                    Stream::Stdout => stdout,
                    Stream::Stderr => stderr,
                });
            }
            out.extend_from_slice(bytes);
        }
        out
    }

    /// `(output, stdout, stderr)` as lossy UTF-8.
    pub fn logs(&self) -> (String, String, String) {
        let (mut all, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        for (stream, bytes) in &self.chunks {
            all.extend_from_slice(bytes);
            match stream {
                Stream::Stdout => out.extend_from_slice(bytes),
                Stream::Stderr => err.extend_from_slice(bytes),
            }
        }
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (text(all), text(out), text(err))
    }
}

/// One command of a session.
#[derive(Debug)]
pub struct Command {
    pub id: String,
    pub command: String,
    pub state: Mutex<CommandState>,
    /// Bumped whenever `state` changes; followers wait on it.
    pub changed: watch::Sender<u64>,
    /// The write end of the command's stdin FIFO while it runs.
    input: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Whether input sent to the command is also logged as its stdout (Daytona's default;
    /// `suppressInputEcho` turns it off).
    echo_input: bool,
}

impl Command {
    fn update(&self, f: impl FnOnce(&mut CommandState)) {
        f(&mut lock(&self.state));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The exit code, once the command ended.
    pub fn exit_code(&self) -> Option<ExitCode> {
        lock(&self.state).exit_code
    }

    /// Writes `data` to the command's stdin, ending it with a newline if it has none (as
    /// Daytona does, for `read`), and logs it as stdout unless the command suppresses the echo;
    /// `false` when the command is no longer running.
    pub async fn send_input(&self, data: &[u8]) -> io::Result<bool> {
        let mut line = data.to_vec();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut input = self.input.lock().await;
        match input.as_mut() {
            Some(tx) if self.exit_code().is_none() => {
                tx.write_all(&line).await?;
                if self.echo_input {
                    self.update(|state| state.push(Stream::Stdout, &line));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// State shared between a session and the task watching its shell.
#[derive(Debug, Default)]
struct Shared {
    /// Commands written to the shell whose status has not come back yet.
    pending: Mutex<HashMap<String, oneshot::Sender<ExitCode>>>,
    alive: AtomicBool,
    /// Kills the shell's process group; taken (disarmed) once the shell exited.
    guard: Mutex<Option<KillGuard>>,
    /// The shell's pid, as it reported it (0 until then).
    pid: AtomicI32,
}

/// A session: its shell and its commands.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    dir: PathBuf,
    token: String,
    creds: Credentials,
    shell: tokio::sync::Mutex<pipe::Sender>,
    pub commands: Mutex<Vec<Arc<Command>>>,
    shared: Arc<Shared>,
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the session's shell has exited")]
    ShellGone,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Session {
    /// Starts the session's shell.
    pub fn start(
        reaper: &Reaper,
        creds: Credentials,
        id: String,
        cwd: PathBuf,
        mut env: std::collections::BTreeMap<String, String>,
    ) -> io::Result<Arc<Self>> {
        let program = SHELLS
            .into_iter()
            .find(|s| Path::new(s).is_file())
            .ok_or_else(|| io::Error::other("no shell found (tried /bin/bash, /bin/sh)"))?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let dir = make_private_dir(&token)?;
        crate::shell::add_shell_env(&mut env, &cwd, Path::new(program));
        let spec = ProcessSpec {
            program: program.to_owned(),
            arg0: None,
            args: Vec::new(),
            cwd,
            env,
            stdin: Some(Vec::new()),
        };
        let spawned = spawn(reaper, creds, &spec)?;
        let stdin = spawned
            .stdin
            .ok_or_else(|| io::Error::other("the shell has no stdin"))?;
        // The shell first reports its pid, so deleting the session can find its descendants
        // even when they left its process group. The pipe is empty, so this cannot block.
        let hello = format!("printf '%s pid %s\\n' {token} \"$$\"\n");
        // A direct write: tokio's `try_write` trusts readiness the reactor has not seen yet.
        if let Err(err) = nix::unistd::write(stdin.as_fd(), hello.as_bytes()) {
            tracing::debug!("writing to a new session shell: {err}");
        }
        let shared = Arc::new(Shared {
            alive: AtomicBool::new(true),
            guard: Mutex::new(Some(spawned.guard)),
            ..Shared::default()
        });
        tokio::spawn(watch_shell(
            shared.clone(),
            token.clone(),
            spawned.output,
            spawned.exit,
            dir.clone(),
        ));
        Ok(Arc::new(Self {
            id,
            dir,
            token,
            creds,
            shell: tokio::sync::Mutex::new(stdin),
            commands: Mutex::new(Vec::new()),
            shared,
        }))
    }

    /// Starts `command` (`echo_input`: see [`Command`]); the returned receiver changes with
    /// its state.
    pub async fn execute(
        &self,
        command: String,
        echo_input: bool,
    ) -> Result<(Arc<Command>, watch::Receiver<u64>), StartError> {
        if !self.shared.alive.load(Ordering::SeqCst) {
            return Err(StartError::ShellGone);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = make_dir(&self.dir.join(&id))?;
        let mut fifos = Vec::new();
        for name in ["in", "out", "err"] {
            let path = dir.join(name);
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
            chown(&path, self.creds)?;
            fifos.push(path);
        }
        let input = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&fifos[0])?;
        let out = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifos[1])?;
        let err = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifos[2])?;
        let (changed, rx) = watch::channel(0);
        let cmd = Arc::new(Command {
            id: id.clone(),
            command: command.clone(),
            state: Mutex::new(CommandState::default()),
            changed,
            input: tokio::sync::Mutex::new(Some(input)),
            echo_input,
        });
        let (done_tx, done_rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id.clone(), done_tx);
        lock(&self.commands).push(cmd.clone());
        tokio::spawn(pump(cmd.clone(), out, err, done_rx, dir.clone()));
        let line = format!(
            "{{ eval {}\n}} <{} >{} 2>{}; printf '%s %s %s\\n' {} {} \"$?\"\n",
            quote(&command),
            quote_path(&fifos[0]),
            quote_path(&fifos[1]),
            quote_path(&fifos[2]),
            self.token,
            id,
        );
        let written = self.shell.lock().await.write_all(line.as_bytes()).await;
        if let Err(err) = written {
            // The shell is gone: end the command now rather than leave it pending forever.
            if let Some(tx) = lock(&self.shared.pending).remove(&id) {
                let _ = tx.send(-1);
            }
            tracing::debug!("writing to a session shell: {err}");
        }
        Ok((cmd, rx))
    }

    /// The command `id`.
    pub fn command(&self, id: &str) -> Option<Arc<Command>> {
        lock(&self.commands).iter().find(|c| c.id == id).cloned()
    }

    /// Kills the shell, everything in its process group and every descendant it still has.
    pub fn kill(&self) {
        let pid = self.shared.pid.load(Ordering::SeqCst);
        if let Some(mut guard) = lock(&self.shared.guard).take() {
            // Twice: a process forked while the first pass ran is caught by the second.
            for _ in 0..2 {
                if pid > 0 {
                    for descendant in descendants(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(descendant),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            guard.kill();
        }
    }
}

/// Every process descending from `root` (per `/proc/*/stat`), `root` excluded.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain anything, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// Quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn quote_path(path: &Path) -> String {
    quote(&path.display().to_string())
}

/// Hands a FIFO the agent just made to the sandbox user (without following symlinks).
fn chown(path: &Path, creds: Credentials) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(creds.uid), Some(creds.gid))
}

/// `ROOT/<name>`, a fresh directory of the agent's.
///
/// Every directory on the way belongs to the agent and is `0711`: the sandbox user can reach
/// the FIFOs (which it owns) by their unguessable paths, but can neither list nor replace
/// anything, so no path the agent later creates or chowns can be swapped for a symlink.
fn make_private_dir(name: &str) -> io::Result<PathBuf> {
    let root = Path::new(ROOT);
    let ours = fs::symlink_metadata(root)
        .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw());
    if !ours {
        // Missing, or planted by someone else (a file, a symlink, a user's directory): move
        // it out of the way and make our own.
        if fs::symlink_metadata(root).is_ok() {
            let aside = format!("{ROOT}.{}", uuid::Uuid::new_v4().simple());
            fs::rename(root, aside)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o711))?;
    make_dir(&root.join(name))
}

/// A new agent-owned `0711` directory (fails if `dir` exists).
fn make_dir(dir: &Path) -> io::Result<PathBuf> {
    fs::DirBuilder::new().mode(0o711).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
    Ok(dir.to_owned())
}

/// Reads the shell's status lines until it exits, then ends every pending command.
async fn watch_shell(
    shared: Arc<Shared>,
    token: String,
    output: pipe::Receiver,
    exit: oneshot::Receiver<ExitCode>,
    dir: PathBuf,
) {
    let mut lines = BufReader::new(output).lines();
    tokio::pin!(exit);
    let code = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => report(&shared, &token, &line),
                Ok(None) | Err(_) => break (&mut exit).await.unwrap_or(-1),
            },
            code = &mut exit => break code.unwrap_or(-1),
        }
    };
    shared.alive.store(false, Ordering::SeqCst);
    // The leader is gone; kill stragglers of its group (background jobs) once, then let go.
    if let Some(mut guard) = lock(&shared.guard).take() {
        guard.kill();
    }
    // Status lines already written before the exit still count.
    let mut rest = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        lines.get_mut().read_to_string(&mut rest),
    )
    .await;
    for line in rest.lines() {
        report(&shared, &token, line);
    }
    for (_, tx) in lock(&shared.pending).drain() {
        let _ = tx.send(code);
    }
    if let Err(err) = fs::remove_dir_all(&dir) {
        tracing::debug!("removing {}: {err}", dir.display());
    }
}

/// Handles one line of the shell's own output: a status line, or noise.
fn report(shared: &Shared, token: &str, line: &str) {
    let mut words = line.split_whitespace();
    if words.next() != Some(token) {
        tracing::debug!("session shell: {line}");
        return;
    }
    let (Some(id), Some(code)) = (words.next(), words.next().and_then(|c| c.parse().ok())) else {
        return;
    };
    if id == "pid" {
        shared.pid.store(code, Ordering::SeqCst);
        return;
    }
    if let Some(tx) = lock(&shared.pending).remove(id) {
        let _ = tx.send(code);
    }
}

/// Moves a command's output into its log until it ended, then drains and closes its FIFOs.
async fn pump(
    cmd: Arc<Command>,
    mut out: pipe::Receiver,
    mut err: pipe::Receiver,
    done: oneshot::Receiver<ExitCode>,
    dir: PathBuf,
) {
    tokio::pin!(done);
    let mut out_buf = vec![0u8; 64 << 10];
    let mut err_buf = vec![0u8; 64 << 10];
    // The agent holds both ends of each FIFO, so reads see no EOF; a failed read (which
    // should not happen) stops reading that FIFO rather than spinning on it.
    let (mut out_open, mut err_open) = (true, true);
    let code = loop {
        tokio::select! {
            biased;
            read = out.read(&mut out_buf), if out_open => match read {
                Ok(n) if n > 0 => cmd.update(|s| s.push(Stream::Stdout, &out_buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => out_open = false,
            },
            read = err.read(&mut err_buf), if err_open => match read {
                Ok(n) if n > 0 => cmd.update(|s| s.push(Stream::Stderr, &err_buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => err_open = false,
            },
            code = &mut done => break code.unwrap_or(-1),
        }
    };
    drain(&out, Stream::Stdout, &cmd, &mut out_buf);
    drain(&err, Stream::Stderr, &cmd, &mut err_buf);
    *cmd.input.lock().await = None;
    cmd.update(|s| s.exit_code = Some(code));
    drop((out, err));
    if let Err(err) = fs::remove_dir_all(&dir) {
        tracing::debug!("removing {}: {err}", dir.display());
    }
}

/// Non-blocking reads of what is buffered in a FIFO.
fn drain(fifo: &pipe::Receiver, stream: Stream, cmd: &Command, buf: &mut [u8]) {
    loop {
        match nix::unistd::read(fifo.as_fd(), buf) {
            Ok(0) => break,
            Ok(n) => cmd.update(|s| s.push(stream, &buf[..n])),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawns sleep");
        let pid = i32::try_from(child.id()).expect("pid fits");
        assert!(descendants(i32::try_from(std::process::id()).expect("pid fits")).contains(&pid));
        assert!(descendants(pid).is_empty());
        child.kill().expect("kills sleep");
        child.wait().expect("reaps sleep");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn text_logs_mark_each_chunk_with_its_stream() {
        let mut state = CommandState::default();
        state.push(Stream::Stdout, b"a");
        state.push(Stream::Stderr, b"b");
        state.push(Stream::Stdout, b"c");
        assert_eq!(state.text_log(b"<o>", b"<e>", true), b"<o>a<e>b<o>c");
        assert_eq!(state.text_log(b"<o>", b"<e>", false), b"abc");
    }

    #[test]
    fn logs_keep_streams_apart_and_in_order() {
        let mut state = CommandState::default();
        state.push(Stream::Stdout, b"a");
        state.push(Stream::Stderr, b"b");
        state.push(Stream::Stdout, b"c");
        state.push(Stream::Stdout, b"d");
        assert_eq!(state.chunks.len(), 3);
        assert_eq!(
            state.logs(),
            ("abcd".to_owned(), "acd".to_owned(), "b".to_owned())
        );
    }
}
