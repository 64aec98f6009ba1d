//! `GET /files` (list) and `GET /files/info`.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::{Query, State};
pub use corral_agent_proto::{FileInfo, PathQuery};
use nix::fcntl::{AT_FDCWD, OFlag};
use nix::sys::stat::FileStat;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::safe::{self, Last};
use super::users::Db;
use super::{blocking, invalid_path, io_error, required, resolve};
use crate::api::{ApiError, AppState};

/// Query of `GET /files`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    path: Option<String>,
    depth: Option<String>,
}

/// Names of uids and gids, read once per request.
#[derive(Debug)]
pub(crate) struct Names {
    users: Db,
    groups: Db,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            users: Db::users(),
            groups: Db::groups(),
        }
    }
}

impl Names {
    fn user(&mut self, uid: u32) -> String {
        self.users.name(uid)
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups.name(gid)
    }
}

/// Go's `FileMode.String()` of a file with status `st`.
pub(crate) fn mode_string(st: &FileStat) -> String {
    let kind = st.st_mode & libc::S_IFMT;
    let bits = st.st_mode;
    let mut s = String::new();
    if kind == libc::S_IFDIR {
        s.push('d');
    }
    if kind == libc::S_IFLNK {
        s.push('L');
    }
    if kind == libc::S_IFBLK || kind == libc::S_IFCHR {
        s.push('D');
    }
    if kind == libc::S_IFIFO {
        s.push('p');
    }
    if kind == libc::S_IFSOCK {
        s.push('S');
    }
    if bits & 0o4000 != 0 {
        s.push('u');
    }
    if bits & 0o2000 != 0 {
        s.push('g');
    }
    if kind == libc::S_IFCHR {
        s.push('c');
    }
    if bits & 0o1000 != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        if bits & (1 << (8 - i)) != 0 {
            s.push(char::from(*c));
        } else {
            s.push('-');
        }
    }
    s
}

/// Go's `time.Time.String()` for a UTC time: `2006-01-02 15:04:05.123 +0000 UTC`.
fn go_time(t: OffsetDateTime) -> String {
    let mut s = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// The `FileInfo` of `path`, whose status is `st`.
pub(crate) fn file_info(path: &Path, st: &FileStat, names: &mut Names) -> FileInfo {
    let modified = OffsetDateTime::from_unix_timestamp(st.st_mtime)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(u32::try_from(st.st_mtime_nsec).unwrap_or(0))
                .ok()
        })
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned());
    FileInfo {
        name,
        is_dir: safe::is_dir(st),
        size: st.st_size,
        mode: mode_string(st),
        mod_time: go_time(modified),
        modified_at: modified.format(&Rfc3339).unwrap_or_default(),
        permissions: format!("{:04o}", st.st_mode & 0o7777),
        owner: names.user(st.st_uid),
        group: names.group(st.st_gid),
        path: path.to_string_lossy().into_owned(),
    }
}

/// `GET /files/info?path`.
pub async fn info(
    State(state): State<AppState>,
    Query(query): Query<PathQuery>,
) -> Result<Json<FileInfo>, ApiError> {
    let path = resolve(&state.config.work_dir, required(&query.path, "path")?)?;
    blocking(move || {
        let (_, st) = safe::object(&path, "stat")?;
        Ok(Json(file_info(&path, &st, &mut Names::default())))
    })
    .await
}

/// `GET /files?path&depth`: the entries of a directory, `depth` levels down (default 1).
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let raw = query.path.as_deref().unwrap_or("");
    let path = if raw.is_empty() {
        PathBuf::from(&state.config.work_dir)
    } else {
        resolve(&state.config.work_dir, raw)?
    };
    let depth = match query.depth.as_deref() {
        None | Some("") => 1,
        Some(d) => match d.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(ApiError::bad_request("depth must be an integer >= 1")),
        },
    };
    blocking(move || {
        let root = safe::open_at(
            AT_FDCWD,
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Last::Follow,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => {
                invalid_path(format!("list {}: not a directory", path.display()))
            }
            _ => safe::open_error("list", AT_FDCWD, &path, &path, Last::Follow, &e),
        })?;
        let mut names = Names::default();
        let mut out = Vec::new();
        safe::walk(root, &path, depth, |e| {
            out.push(file_info(e.path, e.stat, &mut names));
        })
        .map_err(|e| io_error("list", &path, &e))?;
        Ok(Json(out))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use nix::sys::stat::stat;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn go_time_layout() {
        assert_eq!(
            go_time(datetime!(2026-01-02 03:04:05.5 UTC)),
            "2026-01-02 03:04:05.5 +0000 UTC"
        );
        assert_eq!(
            go_time(datetime!(2026-01-02 03:04:05 UTC)),
            "2026-01-02 03:04:05 +0000 UTC"
        );
    }

    #[test]
    fn modes_like_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let meta = stat(&f).expect("stat");
        assert_eq!(mode_string(&meta), "-rw-r-----");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let meta = stat(dir.path()).expect("stat");
        assert_eq!(mode_string(&meta), "drwxr-xr-x");
        let info = file_info(&f, &stat(&f).expect("stat"), &mut Names::default());
        assert_eq!(info.name, "f");
        assert_eq!(info.permissions, "0640");
        assert_eq!(info.size, 1);
        assert!(!info.is_dir);
    }
}
