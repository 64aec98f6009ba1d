//! `POST /corral/run` (corral's own, not Daytona's): runs an argv (no shell) and streams its
//! merged output while it runs, as newline-delimited JSON: `{"output": "..."}` frames, then
//! one `{"exitCode": n}` (with `"error"` when it could not start or timed out). Image builds
//! use it so a long `RUN` step shows its progress in the build log. The request and the
//! frames are `corral_agent_proto`'s `RunRequest` and `RunFrame`, which the server sends and
//! reads.
//!
//! Like `/process/execute` it runs as the sandbox user, so it grants nothing new.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use corral_agent_proto::{RunFrame, RunRequest};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::json::JsonBody;
use super::{ApiError, AppState};
use crate::params;
use crate::spawn::{ProcessSpec, spawn};

/// `argv[0]` as a path: as written when it has a `/`, else the first executable file of
/// that name on `PATH`.
fn resolve(name: &str, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    env.get("PATH")?
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn output_frame(text: String) -> Vec<u8> {
    RunFrame::Output { output: text }.to_line()
}

fn exit_frame(code: i64, error: Option<String>) -> Vec<u8> {
    RunFrame::Exit {
        exit_code: code,
        error,
    }
    .to_line()
}

/// The longest prefix of `buf` that is whole UTF-8 (a character split across reads waits
/// for its next bytes); invalid bytes are replaced.
fn take_text(buf: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    let rest = buf.split_off(cut);
    let text = String::from_utf8_lossy(buf).into_owned();
    *buf = rest;
    text
}

pub async fn run(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<Response, ApiError> {
    let env =
        params::merge_env(&state.base_env(), req.envs.as_ref()).map_err(ApiError::bad_request)?;
    let cwd = params::resolve_cwd(
        &state.config.work_dir,
        &state.config.home,
        req.cwd.as_deref(),
    );
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let Some(first) = req.argv.first() else {
        return Err(ApiError::bad_request("argv must not be empty"));
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>(32);
    let Some(program) = resolve(first, &env) else {
        let _ = tx
            .send(exit_frame(127, Some(format!("{first}: not found"))))
            .await;
        return Ok(stream(rx));
    };
    let spec = ProcessSpec {
        program: program.display().to_string(),
        arg0: Some(first.clone()),
        args: req.argv[1..].to_vec(),
        cwd,
        env,
        stdin: None,
    };
    let spawned = match spawn(&state.reaper, state.credentials(), &spec) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(exit_frame(126, Some(format!("cannot run {first}: {e}"))))
                .await;
            return Ok(stream(rx));
        }
    };
    let limit = params::timeout(req.timeout);
    tokio::spawn(async move {
        let mut guard = spawned.guard;
        let mut output = spawned.output;
        let mut exit = spawned.exit;
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut reading = true;
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let end = loop {
            tokio::select! {
                read = output.read(&mut chunk), if reading => match read {
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        pending.extend_from_slice(&chunk[..n]);
                        let text = take_text(&mut pending);
                        if !text.is_empty() && tx.send(output_frame(text)).await.is_err() {
                            // The caller went away: stop the command.
                            guard.kill();
                            return;
                        }
                    }
                },
                code = &mut exit => break exit_frame(code.map_or(-1, i64::from), None),
                () = &mut sleep => {
                    guard.kill();
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut exit).await;
                    break exit_frame(-1, Some("timed out".to_owned()));
                }
            }
        };
        guard.disarm();
        // What the command wrote just before it exited.
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), output.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        let mut text = take_text(&mut pending);
        text.push_str(&String::from_utf8_lossy(&pending));
        if !text.is_empty() {
            let _ = tx.send(output_frame(text)).await;
        }
        let _ = tx.send(end).await;
    });
    Ok(stream(rx))
}

fn stream(rx: mpsc::Receiver<Vec<u8>>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_wait_for_their_bytes() {
        let mut buf = "añb".as_bytes()[..2].to_vec(); // 'a' and half of 'ñ'
        assert_eq!(take_text(&mut buf), "a");
        assert_eq!(buf.len(), 1);
        buf.extend_from_slice(&"añb".as_bytes()[2..]);
        assert_eq!(take_text(&mut buf), "ñb");
        assert!(buf.is_empty());
        let mut bad = vec![b'x', 0xff, b'y'];
        assert_eq!(take_text(&mut bad), "x\u{fffd}y");
    }
}
