//! One session channel: collect its requests (`pty-req`, `env`) until `shell`, `exec` or the
//! `sftp` subsystem, ask the gate again, then pump bytes between the channel and the
//! sandbox's agent (`/corral/ssh`, framed as `corral_agent_proto::ssh`).

use bytes::Bytes;
use corral_agent_proto::ssh::{self as proto, SshPty, SshStart};
use corral_agent_proto::{AgentClient, AgentError, RequestBody};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::Gateway;

/// Environment variables a client may set (as OpenSSH's default `AcceptEnv`).
pub fn accepts_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// Subsystems served: only `sftp` (which `scp` uses too).
pub fn serves_subsystem(name: &str) -> bool {
    name == "sftp"
}

/// Environment entries kept per channel.
const MAX_ENV: usize = 64;
/// The exit status reported when the session could not start or the agent went away.
const FAILED: u32 = 255;

/// A terminal side from the client's value (0 means "unknown": the usual 80x24).
fn side(v: u32, default: u16) -> u16 {
    match v {
        0 => default,
        v => u16::try_from(v.min(1000)).unwrap_or(default),
    }
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// Runs the channel to its end.
pub async fn run(gw: Gateway, token: String, channel: Channel<Msg>) {
    let (mut rd, wr) = channel.split();
    let mut start = SshStart::default();
    loop {
        match rd.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                start.pty = Some(SshPty {
                    term,
                    cols: side(col_width, 80),
                    rows: side(row_height, 24),
                });
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => {
                if accepts_env(&variable_name)
                    && start.env.len() < MAX_ENV
                    && !variable_value.contains('\0')
                {
                    start.env.insert(variable_name, variable_value);
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break,
            Some(ChannelMsg::Exec { command, .. }) => {
                start.command = Some(String::from_utf8_lossy(&command).into_owned());
                break;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) => {
                if !serves_subsystem(&name) {
                    return refuse(&wr, &format!("the {name} subsystem is not served")).await;
                }
                // Run inside the sandbox by the agent (`corral-agent sftp-server`, as the
                // sandbox user); its stream is the process's stdin/stdout like any exec.
                start.subsystem = Some(name);
                break;
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
    // Asked again for every channel: a token revoked or expired since login opens nothing.
    let sandbox = match gw.gate.open(&token).await {
        Ok(id) => id,
        Err(e) => return refuse(&wr, &e.to_string()).await,
    };
    let upgraded = match open_agent(&gw.agents, &sandbox).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(sandbox, error = %e, "ssh: cannot reach the agent");
            return refuse(&wr, "cannot reach the sandbox (is it running?)").await;
        }
    };
    tracing::info!(
        sandbox,
        kind = match (&start.subsystem, &start.command) {
            (Some(_), _) => "sftp",
            (None, Some(_)) => "exec",
            (None, None) => "shell",
        },
        pty = start.pty.is_some(),
        "ssh channel opened"
    );
    let (mut ard, mut awr) = tokio::io::split(TokioIo::new(upgraded));
    let json = serde_json::to_vec(&start).unwrap_or_default();
    if awr
        .write_all(&proto::frame(proto::START, &json))
        .await
        .is_err()
    {
        return refuse(&wr, "the sandbox's agent closed the channel").await;
    }

    let to_client = async {
        let mut buf = Vec::new();
        loop {
            match next_frame(&mut ard, &mut buf).await {
                Ok(Some((proto::STDOUT, data))) => {
                    if wr.data_bytes(Bytes::from(data)).await.is_err() {
                        return;
                    }
                }
                Ok(Some((proto::STDERR, data))) => {
                    if wr.extended_data_bytes(1, Bytes::from(data)).await.is_err() {
                        return;
                    }
                }
                Ok(Some((proto::EXIT, code))) => {
                    let code = <[u8; 4]>::try_from(code.as_slice())
                        .map(i32::from_be_bytes)
                        .unwrap_or(-1);
                    let status = u32::try_from(code).unwrap_or(FAILED);
                    let _ = wr.exit_status(status).await;
                    let _ = wr.eof().await;
                    let _ = wr.close().await;
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let _ = wr.exit_status(FAILED).await;
                    let _ = wr.eof().await;
                    let _ = wr.close().await;
                    return;
                }
            }
        }
    };
    let from_client = async {
        loop {
            let frame = match rd.wait().await {
                Some(ChannelMsg::Data { data }) => proto::frame(proto::STDIN, &data),
                Some(ChannelMsg::Eof) => proto::frame(proto::EOF, b""),
                Some(ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                }) => {
                    let mut size = side(col_width, 80).to_be_bytes().to_vec();
                    size.extend_from_slice(&side(row_height, 24).to_be_bytes());
                    proto::frame(proto::RESIZE, &size)
                }
                Some(ChannelMsg::Signal { signal }) => {
                    proto::frame(proto::SIGNAL, signal_name(&signal).as_bytes())
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => continue,
            };
            if awr.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    // Whichever ends first ends the channel; dropping the agent connection kills the process.
    tokio::select! {
        () = to_client => {}
        () = from_client => {}
    }
}

/// Tells the client why nothing runs, then ends the channel.
async fn refuse(wr: &ChannelWriteHalf<Msg>, message: &str) {
    tracing::info!(reason = message, "ssh channel refused");
    let _ = wr
        .extended_data_bytes(1, Bytes::from(format!("corral: {message}\r\n")))
        .await;
    let _ = wr.exit_status(FAILED).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

async fn open_agent(
    agents: &AgentClient<RequestBody>,
    sandbox: &str,
) -> Result<hyper::upgrade::Upgraded, AgentError> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(proto::SSH_PATH)
        .header(header::HOST, HeaderValue::from_static("agent"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, proto::SSH_PROTOCOL)
        .body(RequestBody::default())
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let mut resp = agents.upgrade(sandbox, req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(AgentError::Status { status, body });
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(AgentError::Handshake)
}

async fn next_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    loop {
        if let Some(f) = proto::take_frame(buf).map_err(std::io::Error::other)? {
            return Ok(Some(f));
        }
        let mut chunk = [0u8; 32 * 1024];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_sides() {
        assert!(accepts_env("LANG") && accepts_env("LC_ALL"));
        assert!(!accepts_env("LD_PRELOAD") && !accepts_env("PATH"));
        assert_eq!(side(0, 80), 80);
        assert_eq!(side(120, 80), 120);
        assert_eq!(side(99_999, 80), 1000);
        assert_eq!(signal_name(&Sig::INT), "INT");
        assert_eq!(signal_name(&Sig::Custom("WINCH".into())), "WINCH");
        assert!(serves_subsystem("sftp"));
        assert!(!serves_subsystem("netconf") && !serves_subsystem("SFTP"));
    }
}
