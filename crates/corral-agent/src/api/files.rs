//! The `/files` routes: listing, metadata, folder/delete/move/permissions, grep-like find,
//! glob search, replace, and streamed uploads and downloads.
//!
//! The agent runs as root; everything it creates is handed to the sandbox user
//! (`config.uid`/`config.gid`). Relative paths are resolved against the work dir. Every path
//! is opened through [`safe`], which refuses `/proc` magic links (`/proc/1/fd/1` and the
//! like), and the operation is done through the descriptor it returns.

mod info;
mod ops;
pub(crate) mod safe;
mod search;
mod transfer;
mod unread;
mod users;

use std::io;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::{ApiError, AppState};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/files", get(info::list).delete(ops::delete))
        .route("/files/info", get(info::info))
        .route("/files/folder", post(ops::create_folder))
        .route("/files/move", post(ops::move_path))
        .route("/files/permissions", post(ops::permissions))
        .route("/files/find", get(search::find))
        .route("/files/search", get(search::search))
        .route("/files/replace", post(search::replace))
        .route("/files/download", get(transfer::download))
        .route("/files/bulk-download", post(transfer::bulk_download))
        .route(
            "/files/bulk-upload",
            post(transfer::bulk_upload)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::from_fn(unread::drain_unread)),
        )
        .route(
            "/files/upload-v2",
            post(transfer::upload_v2)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::from_fn(unread::drain_unread)),
        )
}

/// `path` as an absolute path: relative paths are taken from `work_dir`.
pub(crate) fn resolve(work_dir: &str, path: &str) -> Result<PathBuf, ApiError> {
    if path.contains('\0') {
        return Err(invalid_path("path contains a NUL byte"));
    }
    let p = Path::new(path);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(work_dir).join(p)
    })
}

/// A required query parameter that must not be empty.
pub(crate) fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(invalid_path(format!("{name} is required"))),
    }
}

/// A 400 with Daytona's `INVALID_FILE_PATH` code.
pub(crate) fn invalid_path(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "INVALID_FILE_PATH".to_owned(),
        message: message.into(),
    }
}

/// An I/O error on `path` as the API answers it: missing → 404, denied → 403, a user
/// mistake (wrong type, not empty, bad name, full disk...) → 400.
pub(crate) fn io_error(what: &str, path: &Path, e: &io::Error) -> ApiError {
    let message = format!("{what} {}: {}", path.display(), strip_os_code(e));
    let (status, code) = match e.kind() {
        io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, "FILE_NOT_FOUND"),
        io::ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "FILE_ACCESS_DENIED"),
        io::ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "CONFLICT"),
        _ => match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => {
                (StatusCode::FORBIDDEN, "FILE_ACCESS_DENIED")
            }
            Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) | Some(libc::ELOOP) => {
                (StatusCode::BAD_REQUEST, "INVALID_FILE_PATH")
            }
            Some(libc::EIO) => (StatusCode::INTERNAL_SERVER_ERROR, "FILE_READ_FAILED"),
            _ => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        },
    };
    ApiError {
        status,
        code: code.to_owned(),
        message,
    }
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
fn strip_os_code(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Parses an octal mode such as `755` or `0644`.
pub(crate) fn parse_mode(mode: &str) -> Result<u32, ApiError> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(ApiError::bad_request(format!(
            "invalid mode {mode:?}: expected octal such as 755"
        ))),
    }
}

/// Runs blocking filesystem work off the async thread.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("file operation failed: {e}"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_work_dir() {
        assert_eq!(
            resolve("/home/daytona", "a/b").expect("ok"),
            PathBuf::from("/home/daytona/a/b")
        );
        assert_eq!(
            resolve("/w", "/etc/x").expect("ok"),
            PathBuf::from("/etc/x")
        );
        assert!(resolve("/w", "a\0b").is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("755").expect("ok"), 0o755);
        assert_eq!(parse_mode("0644").expect("ok"), 0o644);
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("77777").is_err());
    }

    #[test]
    fn io_errors_map_to_statuses() {
        let p = Path::new("/x");
        let e = io_error("open", p, &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, "FILE_NOT_FOUND");
        assert_eq!(e.message, "open /x: No such file or directory");
        let e = io_error("open", p, &io::Error::from_raw_os_error(libc::ENOTEMPTY));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = io_error("open", p, &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.status, StatusCode::FORBIDDEN);
    }
}
