//! Folder creation, delete, move and permissions.

use std::os::fd::AsFd;

use axum::extract::{Query, State};
use axum::http::StatusCode;
pub use corral_agent_proto::{DeleteQuery, FolderQuery, PermissionsQuery};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::Deserialize;

use super::safe::{self, NewDirs};
use super::users::Db;
use super::{blocking, invalid_path, io_error, parse_mode, required, resolve};
use crate::api::{ApiError, AppState};

/// `POST /files/folder?path&mode` → 201; an existing directory is fine.
pub async fn create_folder(
    State(state): State<AppState>,
    Query(query): Query<FolderQuery>,
) -> Result<StatusCode, ApiError> {
    let path = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let mode = match query.mode.as_deref() {
        None | Some("") => 0o755,
        Some(m) => parse_mode(m)?,
    };
    let (uid, gid) = (state.config.uid, state.config.gid);
    blocking(move || {
        safe::ensure_dir(&path, NewDirs { mode, uid, gid })?;
        Ok(StatusCode::CREATED)
    })
    .await
}

/// `DELETE /files?path&recursive` → 204. A directory needs `recursive=true`.
pub async fn delete(
    State(state): State<AppState>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let path = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let recursive = match query.recursive.as_deref() {
        None | Some("") | Some("false") | Some("False") | Some("0") => false,
        Some("true") | Some("True") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "recursive must be true or false, not {other:?}"
            )));
        }
    };
    blocking(move || {
        if path.parent().is_none() {
            return Err(invalid_path("refusing to delete /"));
        }
        let at = safe::parent(&path, "delete")?;
        let meta =
            safe::lstat_at(at.dir.as_fd(), &at.name).map_err(|e| io_error("delete", &path, &e))?;
        if safe::is_dir(&meta) {
            if !recursive {
                return Err(ApiError::bad_request(format!(
                    "delete {}: is a directory; set recursive=true to delete it",
                    path.display()
                )));
            }
            safe::remove_tree(at.dir.as_fd(), &at.name)
        } else {
            unlinkat(&at.dir, at.name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(std::io::Error::from)
        }
        .map_err(|e| io_error("delete", &path, &e))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Query of `POST /files/move`.
#[derive(Debug, Deserialize)]
pub struct MoveQuery {
    source: Option<String>,
    destination: Option<String>,
}

/// `POST /files/move?source&destination` → 200; an existing destination is a 409.
pub async fn move_path(
    State(state): State<AppState>,
    Query(query): Query<MoveQuery>,
) -> Result<StatusCode, ApiError> {
    let work_dir = &state.config.work_dir;
    let source = resolve(work_dir, required(&query.source, "source")?)?;
    let destination = resolve(work_dir, required(&query.destination, "destination")?)?;
    blocking(move || {
        let from = safe::parent(&source, "move")?;
        let to = safe::parent(&destination, "move to")?;
        safe::lstat_at(from.dir.as_fd(), &from.name).map_err(|e| io_error("move", &source, &e))?;
        if safe::lstat_at(to.dir.as_fd(), &to.name).is_ok() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("move: destination {} already exists", destination.display()),
            ));
        }
        nix::fcntl::renameat(
            &from.dir,
            from.name.as_os_str(),
            &to.dir,
            to.name.as_os_str(),
        )
        .map_err(|e| {
            if e == nix::errno::Errno::EXDEV {
                ApiError::bad_request(format!(
                    "move {} to {}: source and destination are on different filesystems",
                    source.display(),
                    destination.display()
                ))
            } else {
                io_error("move to", &destination, &e.into())
            }
        })?;
        Ok(StatusCode::OK)
    })
    .await
}

/// A user name or numeric uid.
fn lookup_uid(owner: &str) -> Result<u32, ApiError> {
    Db::users()
        .id(owner)
        .ok_or_else(|| ApiError::bad_request(format!("unknown user {owner:?}")))
}

/// A group name or numeric gid.
fn lookup_gid(group: &str) -> Result<u32, ApiError> {
    Db::groups()
        .id(group)
        .ok_or_else(|| ApiError::bad_request(format!("unknown group {group:?}")))
}

/// `POST /files/permissions?path&owner&group&mode` → 200; absent parts stay unchanged.
pub async fn permissions(
    State(state): State<AppState>,
    Query(query): Query<PermissionsQuery>,
) -> Result<StatusCode, ApiError> {
    let path = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    let mode = match query.mode.as_deref() {
        None | Some("") => None,
        Some(m) => Some(parse_mode(m)?),
    };
    let owner = query.owner.filter(|s| !s.is_empty());
    let group = query.group.filter(|s| !s.is_empty());
    blocking(move || {
        let uid = owner.as_deref().map(lookup_uid).transpose()?;
        let gid = group.as_deref().map(lookup_gid).transpose()?;
        let (fd, _) = safe::object(&path, "stat")?;
        safe::set_owner_and_mode(&fd, uid, gid, mode)
            .map_err(|e| io_error("change permissions of", &path, &e))?;
        Ok(StatusCode::OK)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_need_no_lookup() {
        assert_eq!(lookup_uid("1234").expect("uid"), 1234);
        assert_eq!(lookup_gid("55").expect("gid"), 55);
        assert!(lookup_uid("no-such-user-corral").is_err());
    }
}
