//! The contract between the server and the in-sandbox agent.
//!
//! The server reaches a sandbox's agent over the unix socket the runtime names
//! (`Runtime::agent_socket`). Most toolbox calls are proxied as they come (the server does not
//! read them); the routes the server calls *itself* (image builds, preview tunnels) have their
//! wire types here, and the agent's handlers of those routes take and answer the same types,
//! so the two sides cannot drift apart:
//!
//! | route | request | answer |
//! |---|---|---|
//! | `POST /corral/run` | [`RunRequest`] (JSON) | [`RunFrame`] lines (NDJSON) |
//! | `POST /corral/untar` | [`UntarQuery`], a tar body | [`UntarAnswer`] |
//! | `GET /files/info` | [`PathQuery`] | [`FileInfo`] |
//! | `DELETE /files` | [`DeleteQuery`] | `204` |
//! | `POST /files/folder` | [`FolderQuery`] | `201` |
//! | `POST /files/permissions` | [`PermissionsQuery`] | `200` |
//! | `POST /files/upload-v2` | [`PathQuery`], a multipart body (field `file`) | `200` |
//! | `GET /port/{port}/tunnel` | `Upgrade:` [`TUNNEL_PROTOCOL`] | `101`, then raw bytes |
//!
//! Every error answer of the agent is an [`ErrorBody`] (Daytona's daemon error shape).
//!
//! With the `client` feature (the server's), [`client::AgentClient`] is the one way the server
//! talks to agents: a pooled HTTP/1.1 client with typed methods for the routes above, a raw
//! `request` for the toolbox proxy and `connect`/`upgrade` for connections of their own.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
pub mod client;
pub mod ssh;

#[cfg(feature = "client")]
pub use client::{AgentClient, AgentError, RequestBody};

/// `POST /corral/run` (corral's own route): runs an argv, streaming [`RunFrame`]s.
pub const RUN_PATH: &str = "/corral/run";
/// `POST /corral/untar` (corral's own route): unpacks a tar body under a directory.
pub const UNTAR_PATH: &str = "/corral/untar";
/// `GET /files/info`: a [`FileInfo`].
pub const FILE_INFO_PATH: &str = "/files/info";
/// `DELETE /files`: removes a file (or a directory with `recursive=true`).
pub const FILES_PATH: &str = "/files";
/// `POST /files/folder`: creates a directory.
pub const FOLDER_PATH: &str = "/files/folder";
/// `POST /files/permissions`: sets a file's owner and mode.
pub const PERMISSIONS_PATH: &str = "/files/permissions";
/// `POST /files/upload-v2`: writes one file from a multipart body.
pub const UPLOAD_PATH: &str = "/files/upload-v2";
/// The protocol name of the `Upgrade` header of `GET /port/{port}/tunnel`.
pub const TUNNEL_PROTOCOL: &str = "corral-tunnel";

/// The path of the tunnel to `port` (`GET`, with `Upgrade: corral-tunnel`).
pub fn tunnel_path(port: u16) -> String {
    format!("/port/{port}/tunnel")
}

/// The body of `POST /corral/run`: an argv run without a shell, as the sandbox user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// The working directory (absent: the sandbox's work dir).
    pub cwd: Option<String>,
    /// Added to (and overriding) the base environment.
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds; absent or 0 means no limit.
    pub timeout: Option<i64>,
}

/// One line of `POST /corral/run`'s answer (newline-delimited JSON): output as it is written,
/// then one exit frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunFrame {
    /// `{"output": "..."}`: merged stdout and stderr, whole UTF-8 characters.
    Output { output: String },
    /// `{"exitCode": n}`, with `"error"` when the argv could not start or timed out.
    Exit {
        #[serde(rename = "exitCode")]
        exit_code: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl RunFrame {
    /// The frame as a line of the answer (JSON and `\n`).
    pub fn to_line(&self) -> Vec<u8> {
        // Strings and integers only: serializing cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The query of `POST /corral/untar?dest=/abs/dir[&owner=..][&group=..][&mode=octal]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntarQuery {
    /// The absolute directory unpacked into (created with its parents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// A user name or uid owning everything written (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A group name or gid (default the owner's primary group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Octal; replaces every entry's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The answer of `POST /corral/untar`: the non-directory entries written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntarAnswer {
    pub files: u64,
}

/// A query with only a path (`GET /files/info`, `POST /files/upload-v2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The query of `POST /files/folder?path&mode`; an existing directory is fine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Octal (default `755`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The query of `DELETE /files?path[&recursive=true]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `true` removes a directory and everything in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<String>,
}

/// The query of `POST /files/permissions?path&owner&group&mode`; absent parts stay unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A user name or uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A group name or gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Octal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Daytona's `FileInfo` (`GET /files/info`, and the entries of `GET /files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub name: String,
    pub is_dir: bool,
    pub size: i64,
    /// Go's `FileMode.String()`, e.g. `-rw-r--r--`.
    pub mode: String,
    /// Go's `time.Time.String()` layout.
    pub mod_time: String,
    /// RFC 3339.
    pub modified_at: String,
    /// Octal, e.g. `0644`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub path: String,
}

/// The body of every error answer of the agent: Daytona's daemon error shape. Reading one,
/// only `message` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub status_code: u16,
    pub message: String,
    /// `BAD_REQUEST`, `NOT_FOUND`, ...
    #[serde(default)]
    pub code: String,
    /// Always `DAYTONA_DAEMON`.
    #[serde(default)]
    pub source: String,
    /// RFC 3339.
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub method: String,
}

impl ErrorBody {
    /// The `source` of every agent error.
    pub const SOURCE: &'static str = "DAYTONA_DAEMON";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("serializes")
    }

    fn back<T: for<'de> Deserialize<'de>>(s: &str) -> T {
        serde_json::from_str(s).expect("deserializes")
    }

    #[test]
    fn run_request_wire() {
        let req = RunRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            cwd: Some("/app".into()),
            envs: Some(BTreeMap::from([("A".into(), "1".into())])),
            timeout: Some(3600),
        };
        let wire = r#"{"argv":["sh","-c","echo hi"],"cwd":"/app","envs":{"A":"1"},"timeout":3600}"#;
        assert_eq!(json(&req), wire);
        assert_eq!(back::<RunRequest>(wire), req);
        // The agent takes a bare argv too.
        assert_eq!(
            back::<RunRequest>(r#"{"argv":["true"]}"#),
            RunRequest {
                argv: vec!["true".into()],
                cwd: None,
                envs: None,
                timeout: None
            }
        );
    }

    #[test]
    fn run_frames_wire() {
        let cases = [
            (
                RunFrame::Output {
                    output: "hi\n".into(),
                },
                r#"{"output":"hi\n"}"#,
            ),
            (
                RunFrame::Exit {
                    exit_code: 0,
                    error: None,
                },
                r#"{"exitCode":0}"#,
            ),
            (
                RunFrame::Exit {
                    exit_code: -1,
                    error: Some("timed out".into()),
                },
                r#"{"exitCode":-1,"error":"timed out"}"#,
            ),
        ];
        for (frame, wire) in cases {
            assert_eq!(json(&frame), wire);
            assert_eq!(back::<RunFrame>(wire), frame);
            assert_eq!(frame.to_line(), format!("{wire}\n").into_bytes());
        }
        // Key order does not matter.
        assert_eq!(
            back::<RunFrame>(r#"{"error":"x: not found","exitCode":127}"#),
            RunFrame::Exit {
                exit_code: 127,
                error: Some("x: not found".into())
            }
        );
    }

    #[test]
    fn queries_wire() {
        let untar = UntarQuery {
            dest: Some("/app dir".into()),
            owner: Some("1000".into()),
            group: None,
            mode: Some("755".into()),
        };
        let wire = "dest=%2Fapp+dir&owner=1000&mode=755";
        assert_eq!(serde_urlencoded::to_string(&untar).expect("query"), wire);
        assert_eq!(
            serde_urlencoded::from_str::<UntarQuery>(wire).expect("query"),
            untar
        );
        assert_eq!(
            serde_urlencoded::from_str::<UntarQuery>("").expect("query"),
            UntarQuery::default()
        );

        let folder = FolderQuery {
            path: Some("/a/b".into()),
            mode: Some("755".into()),
        };
        let wire = "path=%2Fa%2Fb&mode=755";
        assert_eq!(serde_urlencoded::to_string(&folder).expect("query"), wire);
        assert_eq!(
            serde_urlencoded::from_str::<FolderQuery>(wire).expect("query"),
            folder
        );

        let perms = PermissionsQuery {
            path: Some("/f".into()),
            owner: Some("app".into()),
            group: Some(String::new()),
            mode: Some("644".into()),
        };
        let wire = "path=%2Ff&owner=app&group=&mode=644";
        assert_eq!(serde_urlencoded::to_string(&perms).expect("query"), wire);
        assert_eq!(
            serde_urlencoded::from_str::<PermissionsQuery>(wire).expect("query"),
            perms
        );

        let delete = DeleteQuery {
            path: Some("/tmp/x".into()),
            recursive: Some("true".into()),
        };
        let wire = "path=%2Ftmp%2Fx&recursive=true";
        assert_eq!(serde_urlencoded::to_string(&delete).expect("query"), wire);
        assert_eq!(
            serde_urlencoded::from_str::<DeleteQuery>(wire).expect("query"),
            delete
        );

        let path = PathQuery {
            path: Some("/x".into()),
        };
        assert_eq!(
            serde_urlencoded::to_string(&path).expect("query"),
            "path=%2Fx"
        );
        assert_eq!(
            serde_urlencoded::from_str::<PathQuery>("path=%2Fx").expect("query"),
            path
        );
    }

    #[test]
    fn answers_wire() {
        assert_eq!(json(&UntarAnswer { files: 2 }), r#"{"files":2}"#);
        assert_eq!(
            back::<UntarAnswer>(r#"{"files":2}"#),
            UntarAnswer { files: 2 }
        );

        let info = FileInfo {
            name: "f".into(),
            is_dir: false,
            size: 3,
            mode: "-rw-r--r--".into(),
            mod_time: "2026-01-02 03:04:05 +0000 UTC".into(),
            modified_at: "2026-01-02T03:04:05Z".into(),
            permissions: "0644".into(),
            owner: "root".into(),
            group: "root".into(),
            path: "/f".into(),
        };
        let wire = r#"{"name":"f","isDir":false,"size":3,"mode":"-rw-r--r--","modTime":"2026-01-02 03:04:05 +0000 UTC","modifiedAt":"2026-01-02T03:04:05Z","permissions":"0644","owner":"root","group":"root","path":"/f"}"#;
        assert_eq!(json(&info), wire);
        assert_eq!(back::<FileInfo>(wire), info);
    }

    #[test]
    fn error_body_wire() {
        let body = ErrorBody {
            status_code: 400,
            message: "bad".into(),
            code: "BAD_REQUEST".into(),
            source: ErrorBody::SOURCE.into(),
            timestamp: "2026-01-02T03:04:05Z".into(),
            path: "/corral/run".into(),
            method: "POST".into(),
        };
        let wire = r#"{"statusCode":400,"message":"bad","code":"BAD_REQUEST","source":"DAYTONA_DAEMON","timestamp":"2026-01-02T03:04:05Z","path":"/corral/run","method":"POST"}"#;
        assert_eq!(json(&body), wire);
        assert_eq!(back::<ErrorBody>(wire), body);
        // Reading, only the message is needed.
        assert_eq!(back::<ErrorBody>(r#"{"message":"m"}"#).message, "m");
        assert!(serde_json::from_str::<ErrorBody>(r#"{"error":"m"}"#).is_err());
    }

    #[test]
    fn tunnel_path_wire() {
        assert_eq!(tunnel_path(8080), "/port/8080/tunnel");
    }
}
