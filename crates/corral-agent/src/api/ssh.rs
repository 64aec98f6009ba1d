//! `GET /corral/ssh` with `Upgrade: corral-ssh`: the process of one SSH channel of the
//! server's gateway (`corral-ssh`): a login shell, a command, or the sftp subsystem, as the
//! sandbox user, with or without a terminal. The framing is `corral_agent_proto::ssh`'s.
//!
//! Without a terminal the process gets three pipes (stdout and stderr apart, as sshd does)
//! in its own process group; with one it runs on a fresh pty in its own session. Closing the
//! connection kills the group (or the session); the process's exit ends the connection after
//! its output is drained.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_agent_proto::ssh::{self as proto, SshStart};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

use super::pty::term;
use super::{ApiError, AppState};
use crate::params;
use crate::reaper::ExitCode;
use crate::spawn::{KillGuard, confine};

/// Shells tried, in order.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];
/// The client must send its start frame this soon.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// After the process exited, output is still forwarded until this long passes without any...
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or at most this long (a background job may hold the output open).
const DRAIN_MAX: Duration = Duration::from_secs(1);
/// The exit code reported when the process could not start.
const CANNOT_START: i32 = 127;

/// Opens the channel's connection.
pub async fn ssh(State(state): State<AppState>, mut req: Request) -> Result<Response, ApiError> {
    let wanted = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(proto::SSH_PROTOCOL));
    if !wanted {
        return Err(ApiError::bad_request(format!(
            "an SSH channel needs Connection: upgrade and Upgrade: {}",
            proto::SSH_PROTOCOL
        )));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = session(&state, TokioIo::new(upgraded)).await {
                    tracing::debug!(error = %e, "ssh channel ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "ssh upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (
                header::UPGRADE,
                HeaderValue::from_static(proto::SSH_PROTOCOL),
            ),
        ],
    )
        .into_response())
}

/// Reads the next frame; `None` at the end of the connection. Cancel-safe: bytes read are
/// kept in `buf`.
async fn next_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(u8, Vec<u8>)>> {
    loop {
        if let Some(f) = proto::take_frame(buf).map_err(io::Error::other)? {
            return Ok(Some(f));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, kind: u8, payload: &[u8]) -> io::Result<()> {
    wr.write_all(&proto::frame(kind, payload)).await
}

async fn fail<W: AsyncWrite + Unpin>(wr: &mut W, message: &str) -> io::Result<()> {
    send(
        wr,
        proto::STDERR,
        format!("corral: {message}\r\n").as_bytes(),
    )
    .await?;
    send(wr, proto::EXIT, &CANNOT_START.to_be_bytes()).await?;
    wr.shutdown().await
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(state: &AppState, io: S) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = Vec::new();
    let start = match timeout(START_TIMEOUT, next_frame(&mut rd, &mut buf)).await {
        Ok(Ok(Some((proto::START, payload)))) => payload,
        Ok(Ok(_)) => return fail(&mut wr, "the channel did not start").await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return fail(&mut wr, "the channel did not start in time").await,
    };
    let start: SshStart = match serde_json::from_slice(&start) {
        Ok(s) => s,
        Err(e) => return fail(&mut wr, &format!("bad start frame: {e}")).await,
    };
    let process = match spawn(state, &start) {
        Ok(p) => p,
        Err(e) => return fail(&mut wr, &e).await,
    };
    match process {
        Process::Piped(p) => piped(p, rd, wr, buf).await,
        Process::Terminal(t) => terminal(t, rd, wr, buf).await,
    }
}

enum Process {
    Piped(Piped),
    Terminal(Terminal),
}

struct Piped {
    guard: KillGuard,
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    exit: oneshot::Receiver<ExitCode>,
}

struct Terminal {
    term: term::Terminal,
    /// Kills the terminal's session when the channel goes.
    _session: SessionGuard,
}

struct SessionGuard(i32);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        term::kill_session(self.0);
    }
}

fn spawn(state: &AppState, start: &SshStart) -> Result<Process, String> {
    let config = &state.config;
    let shell = SHELLS
        .into_iter()
        .find(|s| Path::new(s).is_file())
        .ok_or("no shell in the sandbox (/bin/bash or /bin/sh)")?;
    let mut base = state.base_env();
    if let Some(pty) = &start.pty {
        base.insert("TERM".into(), pty.term.clone());
    }
    let env = params::merge_env(&base, Some(&start.env))?;
    let (program, args): (String, Vec<String>) = match (&start.subsystem, &start.command) {
        (Some(s), _) if s == "sftp" => {
            let me = std::env::current_exe().map_err(|e| format!("no sftp server: {e}"))?;
            (me.display().to_string(), vec!["sftp-server".into()])
        }
        (Some(s), _) => return Err(format!("unknown subsystem {s:?}")),
        (None, Some(c)) => (shell.into(), vec!["-c".into(), c.clone()]),
        (None, None) => (shell.into(), vec!["-l".into()]),
    };
    let cwd = if start.subsystem.is_some() {
        Path::new(&config.home).to_owned()
    } else {
        params::resolve_cwd(&config.work_dir, &config.home, None)
    };
    let cwd = if cwd.is_dir() { cwd } else { "/".into() };
    if let Some(pty) = &start.pty
        && start.subsystem.is_none()
    {
        let t = term::start_command(
            &state.reaper,
            state.credentials(),
            &cwd,
            &env,
            (pty.cols.max(1), pty.rows.max(1)),
            start.command.as_deref(),
        )
        .map_err(|e| format!("cannot start a terminal: {e}"))?;
        let pid = t.pid;
        return Ok(Process::Terminal(Terminal {
            term: t,
            _session: SessionGuard(pid),
        }));
    }
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .current_dir(&cwd)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    confine(&mut cmd, state.credentials());
    let (mut child, exit) = state
        .reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    drop(cmd);
    let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    let guard = KillGuard::new(pid);
    let wrap = |e: io::Error| format!("cannot set up the pipes: {e}");
    let stdin = child
        .stdin
        .take()
        .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
        .transpose()
        .map_err(wrap)?;
    let stdout = child
        .stdout
        .take()
        .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
        .transpose()
        .map_err(wrap)?;
    let stderr = child
        .stderr
        .take()
        .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
        .transpose()
        .map_err(wrap)?;
    drop(child);
    Ok(Process::Piped(Piped {
        guard,
        stdin,
        stdout,
        stderr,
        exit,
    }))
}

/// Reads a chunk from an optional pipe; a finished pipe becomes `None` and never wakes again.
async fn read_opt(pipe: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => {
                *pipe = None;
                Some(0)
            }
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

async fn piped<R, W>(mut p: Piped, mut rd: R, mut wr: W, mut buf: Vec<u8>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = vec![0u8; 32 * 1024];
    let mut err = vec![0u8; 32 * 1024];
    let code = loop {
        tokio::select! {
            frame = next_frame(&mut rd, &mut buf) => match frame? {
                Some((proto::STDIN, data)) => {
                    if let Some(stdin) = &mut p.stdin
                        && stdin.write_all(&data).await.is_err()
                    {
                        p.stdin = None;
                    }
                }
                Some((proto::EOF, _)) => p.stdin = None,
                Some((proto::SIGNAL, name)) => signal_group(&p.guard, &name),
                Some(_) => {}
                // The client went: the guard kills the group.
                None => return Ok(()),
            },
            n = read_opt(&mut p.stdout, &mut out) => if let Some(n @ 1..) = n {
                send(&mut wr, proto::STDOUT, &out[..n]).await?;
            },
            n = read_opt(&mut p.stderr, &mut err) => if let Some(n @ 1..) = n {
                send(&mut wr, proto::STDERR, &err[..n]).await?;
            },
            code = &mut p.exit => break code.unwrap_or(-1),
        }
    };
    p.guard.disarm();
    // Drain what the process left in its pipes.
    let deadline = Instant::now() + DRAIN_MAX;
    while p.stdout.is_some() || p.stderr.is_some() {
        let idle = Instant::now() + DRAIN_IDLE;
        let until = idle.min(deadline);
        tokio::select! {
            n = read_opt(&mut p.stdout, &mut out) => if let Some(n @ 1..) = n {
                send(&mut wr, proto::STDOUT, &out[..n]).await?;
            },
            n = read_opt(&mut p.stderr, &mut err) => if let Some(n @ 1..) = n {
                send(&mut wr, proto::STDERR, &err[..n]).await?;
            },
            () = tokio::time::sleep_until(until) => break,
        }
    }
    send(&mut wr, proto::EXIT, &code.to_be_bytes()).await?;
    wr.shutdown().await
}

fn signal_of(name: &[u8]) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    Some(match name {
        b"INT" => Signal::SIGINT,
        b"TERM" => Signal::SIGTERM,
        b"KILL" => Signal::SIGKILL,
        b"HUP" => Signal::SIGHUP,
        b"QUIT" => Signal::SIGQUIT,
        b"USR1" => Signal::SIGUSR1,
        b"USR2" => Signal::SIGUSR2,
        b"ALRM" => Signal::SIGALRM,
        b"PIPE" => Signal::SIGPIPE,
        _ => return None,
    })
}

fn signal_group(guard: &KillGuard, name: &[u8]) {
    if let Some(sig) = signal_of(name) {
        guard.signal(sig);
    }
}

async fn terminal<R, W>(t: Terminal, mut rd: R, mut wr: W, mut buf: Vec<u8>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Terminal { term: tm, _session } = t;
    let mut exit = tm.exit;
    let master = tm.master;
    let mut output_open = true;
    let code = loop {
        tokio::select! {
            frame = next_frame(&mut rd, &mut buf) => match frame? {
                Some((proto::STDIN, data)) => {
                    let _ = term::write_all(&master, &data).await;
                }
                Some((proto::RESIZE, size)) if size.len() == 4 => {
                    let cols = u16::from_be_bytes([size[0], size[1]]).max(1);
                    let rows = u16::from_be_bytes([size[2], size[3]]).max(1);
                    let _ = term::resize(&master, cols, rows);
                }
                Some((proto::SIGNAL, name)) => {
                    if let Some(sig) = signal_of(&name) {
                        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(tm.pid), sig);
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
            chunk = term::read_chunk(&master), if output_open => match chunk {
                Ok(Some(data)) => send(&mut wr, proto::STDOUT, &data).await?,
                _ => output_open = false,
            },
            code = &mut exit => break code.unwrap_or(-1),
        }
    };
    let deadline = Instant::now() + DRAIN_MAX;
    while output_open {
        let until = (Instant::now() + DRAIN_IDLE).min(deadline);
        tokio::select! {
            chunk = term::read_chunk(&master) => match chunk {
                Ok(Some(data)) => send(&mut wr, proto::STDOUT, &data).await?,
                _ => output_open = false,
            },
            () = tokio::time::sleep_until(until) => break,
        }
    }
    send(&mut wr, proto::EXIT, &code.to_be_bytes()).await?;
    wr.shutdown().await
}
