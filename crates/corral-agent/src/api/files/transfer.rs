//! Streamed transfers: `POST /files/bulk-upload`, `POST /files/upload-v2`,
//! `POST /files/bulk-download` and `GET /files/download`.
//!
//! Nothing here holds a whole file in memory: uploads are written chunk by chunk (through a
//! bounded buffer) to a temporary sibling renamed into place, downloads are read in chunks.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::safe::{self, Last, NewDirs};
use super::{blocking, invalid_path, io_error, required, resolve};
use crate::api::json::JsonBody;
use crate::api::{ApiError, AppState};

/// Upload data is written to disk in pieces of at most this many bytes.
const WRITE_BUFFER: usize = 1 << 20;
/// Download data is read in pieces of this many bytes.
const READ_CHUNK: usize = 64 * 1024;

/// Who new files belong to.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn multipart_rejection(e: MultipartRejection) -> ApiError {
    ApiError::bad_request(format!("invalid multipart request: {}", e.body_text()))
}

fn multipart_error(e: &MultipartError) -> ApiError {
    ApiError::bad_request(format!("invalid multipart request: {}", e.body_text()))
}

/// Reads the rest of a field, discarding it.
async fn drain(field: &mut Field<'_>) -> Result<(), ApiError> {
    while field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e))?
        .is_some()
    {}
    Ok(())
}

/// Longest accepted text field (a destination path).
const MAX_TEXT_FIELD: usize = 64 * 1024;

/// A short text field, read without letting a huge one fill memory.
async fn small_text(field: &mut Field<'_>) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        if text.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(invalid_path(format!(
                "field {}: longer than {MAX_TEXT_FIELD} bytes",
                field.name().unwrap_or_default()
            )));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).map_err(|_| invalid_path("path is not UTF-8"))
}

/// What went wrong while writing one uploaded file.
enum WriteError {
    /// The file cannot be written; the rest of the field still has to be read.
    Destination(ApiError),
    /// The request body itself broke.
    Body(ApiError),
}

/// Where an upload goes: the directory (a descriptor) and the names in it.
struct Prepared {
    dir: OwnedFd,
    name: OsString,
    temp: OsString,
    /// The mode of the file being replaced, which the new one keeps.
    mode: Option<u32>,
}

/// Streams `field` into `dest`: parent directories created, the data written to a
/// temporary sibling which is then owned by the user and renamed over `dest`. Everything
/// happens relative to the parent directory's descriptor, resolved once.
async fn write_field(field: &mut Field<'_>, dest: &Path, owner: Owner) -> Result<u64, WriteError> {
    let (prepared, file) = prepare(dest, owner)
        .await
        .map_err(WriteError::Destination)?;
    let copied = copy_field(field, file, dest).await;
    let dest = dest.to_path_buf();
    blocking(move || {
        let result = copied.and_then(|(file, written)| {
            finish(&prepared, file, &dest, owner)
                .map(|()| written)
                .map_err(WriteError::Destination)
        });
        if result.is_err() {
            let _ = unlinkat(
                &prepared.dir,
                prepared.temp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
        Ok(result)
    })
    .await
    .map_err(WriteError::Destination)?
}

/// Creates `dest`'s parents, checks `dest`, and creates the temporary file next to it.
async fn prepare(dest: &Path, owner: Owner) -> Result<(Prepared, tokio::fs::File), ApiError> {
    let dest = dest.to_path_buf();
    blocking(move || {
        let (parent, name) = safe::split(&dest)?;
        let new = NewDirs {
            mode: 0o755,
            uid: owner.uid,
            gid: owner.gid,
        };
        let (dir, _) = safe::ensure_dir(parent, new)?;
        // What is there now (a symlink is followed, as the old file's mode is kept).
        let mode = match safe::open_at(dir.as_fd(), Path::new(name), OFlag::O_PATH, Last::Follow) {
            Ok(fd) => {
                let st =
                    nix::sys::stat::fstat(&fd).map_err(|e| io_error("stat", &dest, &e.into()))?;
                if safe::is_dir(&st) {
                    return Err(invalid_path(format!(
                        "upload to {}: is a directory",
                        dest.display()
                    )));
                }
                Some(st.st_mode & 0o7777)
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(safe::open_error(
                    "upload to",
                    dir.as_fd(),
                    Path::new(name),
                    &dest,
                    Last::Follow,
                    &e,
                ));
            }
            Err(_) => None,
        };
        let temp = OsString::from(format!(
            ".{}.corral-upload-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let fd = openat(
            &dir,
            temp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o666),
        )
        .map_err(|e| io_error("create", &dest, &e.into()))?;
        let prepared = Prepared {
            dir,
            name: name.to_owned(),
            temp,
            mode,
        };
        Ok((prepared, tokio::fs::File::from_std(std::fs::File::from(fd))))
    })
    .await
}

/// Writes the field's data into `file`; the file and the bytes written.
async fn copy_field(
    field: &mut Field<'_>,
    mut file: tokio::fs::File,
    dest: &Path,
) -> Result<(std::fs::File, u64), WriteError> {
    let dest_err = |what: &str, e: io::Error| WriteError::Destination(io_error(what, dest, &e));
    let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
    let mut written = 0u64;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err(WriteError::Body(multipart_error(&e))),
        };
        written += chunk.len() as u64;
        if buffer.len() + chunk.len() > WRITE_BUFFER && !buffer.is_empty() {
            file.write_all(&buffer)
                .await
                .map_err(|e| dest_err("write", e))?;
            buffer.clear();
        }
        if chunk.len() >= WRITE_BUFFER {
            file.write_all(&chunk)
                .await
                .map_err(|e| dest_err("write", e))?;
        } else {
            buffer.extend_from_slice(&chunk);
        }
    }
    file.write_all(&buffer)
        .await
        .map_err(|e| dest_err("write", e))?;
    file.flush().await.map_err(|e| dest_err("write", e))?;
    Ok((file.into_std().await, written))
}

/// Gives the written temporary file its owner and mode and renames it over the destination.
fn finish(
    prepared: &Prepared,
    file: std::fs::File,
    dest: &Path,
    owner: Owner,
) -> Result<(), ApiError> {
    // The owner first: a chown clears set-id bits the mode may carry.
    fchown(
        &file,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .map_err(|e| io_error("chown", dest, &e.into()))?;
    if let Some(mode) = prepared.mode {
        fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(|e| io_error("chmod", dest, &e.into()))?;
    }
    drop(file);
    renameat(
        &prepared.dir,
        prepared.temp.as_os_str(),
        &prepared.dir,
        prepared.name.as_os_str(),
    )
    .map_err(|e| io_error("write", dest, &e.into()))
}

/// `files[3].path` → (3, "path").
fn indexed_field(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("files[")?;
    let (index, kind) = rest.split_once("].")?;
    Some((index.parse().ok()?, kind))
}

/// One uploaded file in Daytona's `UploadFilesResponse`.
#[derive(Debug, Serialize)]
struct FileResult {
    path: String,
    bytes: u64,
}

/// `POST /files/bulk-upload`: multipart `files[i].path` + `files[i].file`. 200 with the
/// files written, or 400 with `errors` naming each file that could not be written.
pub async fn bulk_upload(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let owner = Owner {
        uid: state.config.uid,
        gid: state.config.gid,
    };
    let mut paths: BTreeMap<usize, String> = BTreeMap::new();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match indexed_field(&name) {
            Some((i, "path")) => match small_text(&mut field).await {
                Ok(text) => {
                    paths.insert(i, text);
                }
                Err(e) => {
                    // Answer once the client has sent everything: an answer while it is
                    // still sending resets the connection, and the client would see that
                    // instead of this error.
                    let _ = drain(&mut field).await;
                    drop(field);
                    while let Ok(Some(mut rest)) = multipart.next_field().await {
                        if drain(&mut rest).await.is_err() {
                            break;
                        }
                    }
                    return Err(e);
                }
            },
            Some((i, "file")) => {
                let target = paths
                    .get(&i)
                    .cloned()
                    .or_else(|| field.file_name().map(str::to_owned))
                    .filter(|p| !p.is_empty());
                let Some(target) = target else {
                    errors.push(format!("{name}: no destination path"));
                    drain(&mut field).await?;
                    continue;
                };
                let dest = match resolve(&state.config.work_dir, &target) {
                    Ok(dest) => dest,
                    Err(e) => {
                        errors.push(format!("{target}: {}", e.message));
                        drain(&mut field).await?;
                        continue;
                    }
                };
                match write_field(&mut field, &dest, owner).await {
                    Ok(bytes) => files.push(FileResult {
                        path: dest.to_string_lossy().into_owned(),
                        bytes,
                    }),
                    Err(WriteError::Destination(e)) => {
                        errors.push(e.message);
                        drain(&mut field).await?;
                    }
                    Err(WriteError::Body(e)) => return Err(e),
                }
            }
            _ => drain(&mut field).await?,
        }
    }
    if errors.is_empty() {
        return Ok(Json(json!({ "files": files })).into_response());
    }
    let message = errors.join(", ");
    Ok((
        StatusCode::BAD_REQUEST,
        Json(json!({
            "errors": errors,
            "files": files,
            "statusCode": 400,
            "message": message,
            "code": "BAD_REQUEST",
            "source": "DAYTONA_DAEMON",
        })),
    )
        .into_response())
}

/// Query with a path (`corral_agent_proto`'s: the server uploads build files).
pub use corral_agent_proto::PathQuery;

/// Daytona's `UploadedFile`.
#[derive(Debug, Serialize)]
pub struct UploadedFile {
    name: String,
    path: String,
    r#type: String,
}

/// `POST /files/upload-v2?path`: multipart field `file` written to `path`.
pub async fn upload_v2(
    State(state): State<AppState>,
    Query(query): Query<PathQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<UploadedFile>, ApiError> {
    let dest = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let owner = Owner {
        uid: state.config.uid,
        gid: state.config.gid,
    };
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        if field.name() != Some("file") {
            drain(&mut field).await?;
            continue;
        }
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        match write_field(&mut field, &dest, owner).await {
            Ok(_) => {
                let name = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(Json(UploadedFile {
                    name,
                    path: dest.to_string_lossy().into_owned(),
                    r#type: content_type,
                }));
            }
            Err(WriteError::Destination(e) | WriteError::Body(e)) => return Err(e),
        }
    }
    Err(ApiError::bad_request("multipart field \"file\" is missing"))
}

/// Opens `path` for download: a regular file (or a symlink to one). Devices, FIFOs and
/// sockets are refused (they could stream forever or block the open), as are magic links.
async fn open_for_download(path: &Path) -> Result<(tokio::fs::File, u64), ApiError> {
    let path = path.to_path_buf();
    blocking(move || {
        let (file, st) = safe::open_regular(&path, "download").map_err(|e| missing(e, &path))?;
        Ok((
            tokio::fs::File::from_std(file),
            u64::try_from(st.st_size).unwrap_or(0),
        ))
    })
    .await
}

/// A download of a path that does not exist says "file not found", in Daytona's daemon's
/// words (integrations match on them); other errors keep their own message.
fn missing(e: ApiError, path: &Path) -> ApiError {
    if e.status == StatusCode::NOT_FOUND {
        ApiError {
            message: format!("file not found or invalid: {}", path.display()),
            ..e
        }
    } else {
        e
    }
}

/// `GET /files/download?path`: the raw bytes, streamed.
pub async fn download(
    State(state): State<AppState>,
    Query(query): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let path = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let (file, len) = open_for_download(&path).await?;
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; {}", filename_params(&file_name(&path))),
        ),
    ];
    // Files such as those in /proc claim size 0 yet have content: those go chunked. Others
    // are sent as long as they were when opened, even if they grow meanwhile.
    if len > 0 {
        headers.push((header::CONTENT_LENGTH, len.to_string()));
    }
    let body = Body::from_stream(ReaderStream::with_capacity(
        file.take(read_limit(len)),
        READ_CHUNK,
    ));
    let mut response = body.into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// How much of a file of `len` bytes (at open) to send: `len`, or everything when the
/// size is unknown (0).
fn read_limit(len: u64) -> u64 {
    if len > 0 { len } else { u64::MAX }
}

/// The last component of `path`.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Daytona's `FilesDownloadRequest`.
#[derive(Debug, Deserialize)]
pub struct FilesDownloadRequest {
    paths: Vec<String>,
}

/// `filename="..."` with quotes and backslashes escaped, plus an RFC 5987 `filename*` when
/// the name is not plain printable ASCII (which header values cannot carry).
fn filename_params(name: &str) -> String {
    let plain = name.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
    let mut quoted = String::with_capacity(name.len() + 2);
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_ascii() && !c.is_ascii_control() => quoted.push(c),
            _ => quoted.push('_'),
        }
    }
    if plain {
        return format!("filename=\"{quoted}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filename=\"{quoted}\"; filename*=UTF-8''{encoded}")
}

/// One part of the bulk-download answer: the file, or an `error` part with a JSON body.
async fn part(
    work_dir: String,
    requested: String,
    boundary: String,
) -> BoxStream<'static, io::Result<Bytes>> {
    let params = filename_params(&requested);
    let opened = match resolve(&work_dir, &requested) {
        Ok(path) => open_for_download(&path).await,
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, len)) => {
            // Size 0 may be a /proc-like file with content: then no length is announced.
            let length = if len > 0 {
                format!("Content-Length: {len}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {params}\r\nContent-Type: application/octet-stream\r\n{length}\r\n"
            );
            let data = ReaderStream::with_capacity(file.take(read_limit(len)), READ_CHUNK);
            stream::once(async move { Ok(Bytes::from(head)) })
                .chain(data)
                .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
                .boxed()
        }
        Err(e) => {
            let body = json!({
                "message": e.message,
                "statusCode": e.status.as_u16(),
                "code": e.code,
                "source": "DAYTONA_DAEMON",
            })
            .to_string();
            let text = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"error\"; {params}\r\nContent-Type: application/json\r\n\r\n{body}\r\n"
            );
            stream::once(async move { Ok(Bytes::from(text)) }).boxed()
        }
    }
}

/// `POST /files/bulk-download {"paths":[..]}`: a streamed `multipart/form-data` answer with
/// one part per path (`file`, or `error` for a path that cannot be read).
pub async fn bulk_download(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<FilesDownloadRequest>,
) -> Response {
    let boundary = format!("corral-{}", uuid::Uuid::new_v4().simple());
    let work_dir = state.config.work_dir.clone();
    let b = boundary.clone();
    let parts = stream::iter(request.paths)
        .then(move |p| part(work_dir.clone(), p, b.clone()))
        .flatten();
    let closing = format!("--{boundary}--\r\n");
    let body = parts.chain(stream::once(async move { Ok(Bytes::from(closing)) }));
    (
        [(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_download_says_file_not_found() {
        let p = Path::new("/w/nope.txt");
        let e = missing(
            crate::api::files::io_error("download", p, &io::Error::from_raw_os_error(2)),
            p,
        );
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, "FILE_NOT_FOUND");
        assert_eq!(e.message, "file not found or invalid: /w/nope.txt");
        let denied = crate::api::files::io_error("download", p, &io::Error::from_raw_os_error(13));
        assert_eq!(missing(denied.clone(), p), denied);
    }

    #[test]
    fn indexed_fields() {
        assert_eq!(indexed_field("files[0].path"), Some((0, "path")));
        assert_eq!(indexed_field("files[12].file"), Some((12, "file")));
        assert_eq!(indexed_field("file"), None);
        assert_eq!(indexed_field("files[x].file"), None);
    }

    #[test]
    fn filenames_are_escaped() {
        assert_eq!(filename_params("a/b.txt"), "filename=\"a/b.txt\"");
        assert_eq!(filename_params("a\"b\\c"), "filename=\"a\\\"b\\\\c\"");
        assert_eq!(
            filename_params("é\n"),
            "filename=\"__\"; filename*=UTF-8''%C3%A9%0A"
        );
    }
}
