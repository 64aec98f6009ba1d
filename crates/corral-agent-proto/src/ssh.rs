//! `GET /corral/ssh` with `Upgrade: corral-ssh`: one SSH channel's process inside the sandbox
//! (the gateway's shell, exec and sftp), over the raw upgraded connection.
//!
//! Both directions carry frames: one kind byte, a big-endian `u32` length, the payload. The
//! client's first frame is [`START`] with an [`SshStart`] as JSON; then [`STDIN`], [`EOF`],
//! [`RESIZE`] (`u16` cols, `u16` rows, big-endian) and [`SIGNAL`] (a signal name such as
//! `INT`). The agent answers [`STDOUT`] and [`STDERR`] chunks and ends with [`EXIT`] (an `i32`
//! exit code, big-endian). Closing the connection kills the process (its whole session).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The route.
pub const SSH_PATH: &str = "/corral/ssh";
/// The protocol name of the `Upgrade` header.
pub const SSH_PROTOCOL: &str = "corral-ssh";

/// Client → agent: the [`SshStart`] (first frame, once).
pub const START: u8 = 1;
/// Client → agent: bytes for the process's stdin (or the terminal).
pub const STDIN: u8 = 2;
/// Client → agent: end of stdin.
pub const EOF: u8 = 3;
/// Client → agent: the terminal's new size.
pub const RESIZE: u8 = 4;
/// Client → agent: deliver a signal (its name without `SIG`).
pub const SIGNAL: u8 = 5;
/// Agent → client: output (with a terminal: all of it).
pub const STDOUT: u8 = 16;
/// Agent → client: error output (never with a terminal).
pub const STDERR: u8 = 17;
/// Agent → client: the exit code; the last frame.
pub const EXIT: u8 = 18;

/// The largest payload either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// What to run for an SSH channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshStart {
    /// `exec`: the command line, run by the shell with `-c`. `None`: a login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A subsystem instead of a command (only `sftp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    /// With a terminal (`pty-req`): stdout and stderr are the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<SshPty>,
    /// Extra environment (`env` requests the gateway accepts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A terminal's type and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPty {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// One frame as bytes.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame too large to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame of {} bytes (at most {MAX_FRAME})", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// Takes the first whole frame off `buf`, if there is one.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, TooLarge> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(TooLarge(len));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = frame(STDIN, b"hello");
        wire.extend(frame(EOF, b""));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(f) = take_frame(&mut buf).expect("ok") {
                got.push(f);
            }
        }
        assert_eq!(got, vec![(STDIN, b"hello".to_vec()), (EOF, Vec::new())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = vec![STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut buf).is_err());
    }

    #[test]
    fn start_json() {
        let s = SshStart {
            command: Some("id".into()),
            pty: Some(SshPty {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
            }),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).expect("json");
        assert_eq!(
            j,
            r#"{"command":"id","pty":{"term":"xterm","cols":80,"rows":24}}"#
        );
        assert_eq!(serde_json::from_str::<SshStart>(&j).expect("back"), s);
        assert!(serde_json::from_str::<SshStart>(r#"{"x":1}"#).is_err());
    }
}
