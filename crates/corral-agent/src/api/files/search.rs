//! `GET /files/find` (grep), `GET /files/search` (glob on names), `POST /files/replace`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::BorrowedFd;
use std::path::Path;

use axum::Json;
use axum::extract::{Query, State};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

use super::safe;
use super::{blocking, invalid_path, io_error, required, resolve};
use crate::api::json::JsonBody;
use crate::api::{ApiError, AppState};

/// Bytes looked at to decide that a file is binary (like grep: a NUL byte).
const BINARY_SNIFF: usize = 8192;

/// Query of find and search.
#[derive(Debug, Deserialize)]
pub struct PatternQuery {
    path: Option<String>,
    pattern: Option<String>,
}

/// Daytona's `Match`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Match {
    pub file: String,
    pub line: u64,
    pub content: String,
}

/// Daytona's `SearchFilesResponse`.
#[derive(Debug, Serialize)]
pub struct SearchFilesResponse {
    pub files: Vec<String>,
}

/// Daytona's `ReplaceRequest`.
#[derive(Debug, Deserialize)]
pub struct ReplaceRequest {
    files: Vec<String>,
    pattern: String,
    #[serde(rename = "newValue")]
    new_value: String,
}

/// Daytona's `ReplaceResult`.
#[derive(Debug, Serialize)]
pub struct ReplaceResult {
    file: String,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The pattern as a regular expression, or literally when it is not a valid one.
fn content_pattern(pattern: &str) -> Result<Regex, ApiError> {
    Regex::new(pattern)
        .or_else(|_| Regex::new(&regex::escape(pattern)))
        .map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))
}

/// Opens the entry `name` of `dir` for reading if it is (still) a regular file; nothing is
/// followed, and a FIFO put there meanwhile cannot block the open.
fn open_entry(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = fstat(&fd).ok()?;
    safe::is_file(&st).then(|| File::from(fd))
}

/// The matching lines of one file (shown as `path`); binary files have none.
fn grep_file(file: File, path: &Path, re: &Regex, out: &mut Vec<Match>) {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let Ok(head) = reader.fill_buf() else {
        return;
    };
    if head[..head.len().min(BINARY_SNIFF)].contains(&0) {
        return;
    }
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        match reader.by_ref().read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.contains(&0) {
            return;
        }
        if re.is_match(&line) {
            out.push(Match {
                file: path.to_string_lossy().into_owned(),
                line: number,
                content: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
}

/// `GET /files/find?path&pattern`: lines matching `pattern` in the file or under the
/// directory `path`, binary files skipped.
pub async fn find(
    State(state): State<AppState>,
    Query(query): Query<PatternQuery>,
) -> Result<Json<Vec<Match>>, ApiError> {
    let root = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let pattern = required(&query.pattern, "pattern")?;
    let re = content_pattern(pattern)?;
    blocking(move || {
        let (fd, st) = safe::object(&root, "find in")?;
        let mut out = Vec::new();
        if safe::is_file(&st) {
            if let Ok(file) = safe::reopen(&fd, OFlag::O_RDONLY) {
                grep_file(file, &root, &re, &mut out);
            }
        } else if safe::is_dir(&st) {
            let dir = safe::reopen(&fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| io_error("find in", &root, &e))?;
            safe::walk(dir.into(), &root, usize::MAX, |e| {
                if safe::is_file(e.stat)
                    && let Some(file) = open_entry(e.dir, e.name)
                {
                    grep_file(file, e.path, &re, &mut out);
                }
            })
            .map_err(|e| io_error("find in", &root, &e))?;
        }
        Ok(Json(out))
    })
    .await
}

/// `GET /files/search?path&pattern`: files and directories under `path` whose name matches
/// the glob `pattern` (a pattern with `/` is matched against the path below `path`).
pub async fn search(
    State(state): State<AppState>,
    Query(query): Query<PatternQuery>,
) -> Result<Json<SearchFilesResponse>, ApiError> {
    let root = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let pattern = required(&query.pattern, "pattern")?.to_owned();
    let glob = globset::GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))?
        .compile_matcher();
    let by_path = pattern.contains('/');
    blocking(move || {
        let (fd, st) = safe::object(&root, "search in")?;
        if !safe::is_dir(&st) {
            return Err(invalid_path(format!(
                "search in {}: not a directory",
                root.display()
            )));
        }
        let dir = safe::reopen(&fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| io_error("search in", &root, &e))?;
        let mut files = Vec::new();
        safe::walk(dir.into(), &root, usize::MAX, |e| {
            let hit = if by_path {
                e.path
                    .strip_prefix(&root)
                    .is_ok_and(|rel| glob.is_match(rel))
            } else {
                glob.is_match(e.name)
            };
            if hit {
                files.push(e.path.to_string_lossy().into_owned());
            }
        })
        .map_err(|e| io_error("search in", &root, &e))?;
        Ok(Json(SearchFilesResponse { files }))
    })
    .await
}

/// Replaces every occurrence of `pattern` by `new` in `data`; `None` when there is none.
fn replace_bytes(data: &[u8], pattern: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    let finder = |from: usize| {
        data[from..]
            .windows(pattern.len())
            .position(|w| w == pattern)
            .map(|i| i + from)
    };
    let mut at = finder(0)?;
    let mut out = Vec::with_capacity(data.len());
    let mut from = 0;
    loop {
        out.extend_from_slice(&data[from..at]);
        out.extend_from_slice(new);
        from = at + pattern.len();
        match finder(from) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(&data[from..]);
    Some(out)
}

/// Replaces `pattern` by `new` in the regular file `path`, read and rewritten through the
/// descriptor it was resolved to.
fn replace_in(path: &Path, pattern: &[u8], new: &[u8]) -> Result<(), ApiError> {
    let (mut file, _) = safe::open_regular(path, "read")?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| io_error("read", path, &e))?;
    let Some(new) = replace_bytes(&data, pattern, new) else {
        return Ok(());
    };
    // The same inode, now for writing (the read-only one above needs no write access when
    // nothing matches).
    let mut file = safe::reopen(&std::os::fd::OwnedFd::from(file), OFlag::O_WRONLY)
        .map_err(|e| io_error("write", path, &e))?;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(&new))
        .map_err(|e| io_error("write", path, &e))
}

/// `POST /files/replace`: replaces the literal `pattern` by `newValue` in each file; one
/// result per file.
pub async fn replace(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ReplaceRequest>,
) -> Result<Json<Vec<ReplaceResult>>, ApiError> {
    if request.pattern.is_empty() {
        return Err(ApiError::bad_request("pattern must not be empty"));
    }
    let work_dir = state.config.work_dir.clone();
    blocking(move || {
        let mut results = Vec::with_capacity(request.files.len());
        for file in request.files {
            let outcome = resolve(&work_dir, &file).and_then(|path| {
                replace_in(
                    &path,
                    request.pattern.as_bytes(),
                    request.new_value.as_bytes(),
                )
            });
            results.push(match outcome {
                Ok(()) => ReplaceResult {
                    file,
                    success: true,
                    error: None,
                },
                Err(e) => ReplaceResult {
                    file,
                    success: false,
                    error: Some(e.message),
                },
            });
        }
        Ok(Json(results))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!(
            replace_bytes(b"a.b a.b", b"a.b", b"X").expect("hit"),
            b"X X".to_vec()
        );
        assert_eq!(replace_bytes(b"abc", b"z", b"X"), None);
        assert_eq!(
            replace_bytes(b"\0\xffab\0", b"ab", b"").expect("hit"),
            b"\0\xff\0".to_vec()
        );
    }

    #[test]
    fn grep_skips_binary_and_numbers_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("t.txt");
        std::fs::write(&text, b"one\nTODO: two\r\nthree TODO:\n").expect("write");
        let bin = dir.path().join("b.bin");
        std::fs::write(&bin, b"TODO:\0\n").expect("write");
        let re = content_pattern("TODO:").expect("re");
        let mut out = Vec::new();
        let open = |p: &Path| File::open(p).expect("open");
        grep_file(open(&text), &text, &re, &mut out);
        grep_file(open(&bin), &bin, &re, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].line, 2);
        assert_eq!(out[0].content, "TODO: two");
        assert_eq!(out[1].line, 3);
    }

    #[test]
    fn invalid_regex_is_literal() {
        let re = content_pattern("foo(").expect("literal");
        assert!(re.is_match(b"call foo("));
    }
}
