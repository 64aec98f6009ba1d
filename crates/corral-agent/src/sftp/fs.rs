//! File-system helpers of the SFTP server: attributes from metadata, `ls -l` lines, error
//! statuses, lexical paths, and applying `setstat` attributes.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use russh_sftp::server::StatusReply;

/// The SFTP status of a failed file operation, with the system's message.
pub fn status(e: &io::Error) -> StatusReply {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ if e.raw_os_error() == Some(libc::EPERM) => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

/// A failure with a message of our own.
pub fn failure(message: impl Into<String>) -> StatusReply {
    StatusCode::Failure.with_message(message)
}

fn nix_status(e: nix::Error) -> StatusReply {
    status(&io::Error::from(e))
}

fn secs(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// SFTP v3 attributes of `meta` (the mode keeps its file-type bits, as OpenSSH sends).
pub fn attrs(meta: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.size()),
        uid: Some(meta.uid()),
        user: None,
        gid: Some(meta.gid()),
        group: None,
        permissions: Some(meta.mode()),
        atime: Some(secs(meta.atime())),
        mtime: Some(secs(meta.mtime())),
    }
}

fn type_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    }
}

fn perm_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S')]
        .into_iter()
        .chain([(0, 0o1000, 't', 'T')])
    {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// The `ls -l` line of a directory entry (numeric owner and group: no NSS in here).
pub fn long_name(name: &str, meta: &Metadata) -> String {
    let when = time::OffsetDateTime::from_unix_timestamp(meta.mtime())
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[month repr:short] [day] [year] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_default();
    format!(
        "{}{} {:>3} {:<8} {:<8} {:>8} {} {}",
        type_char(meta.mode()),
        perm_string(meta.mode()),
        meta.nlink(),
        meta.uid(),
        meta.gid(),
        meta.size(),
        when,
        name
    )
}

/// `path` made absolute against `cwd` and cleaned of `.` and `..` without touching the disk
/// (`realpath` of a path that does not exist yet).
pub fn lexical(cwd: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    let joined = cwd.join(path);
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The path a request names: `""` is the working directory (the user's home).
pub fn req_path(p: &str) -> &Path {
    if p.is_empty() {
        Path::new(".")
    } else {
        Path::new(p)
    }
}

/// Applies `setstat` attributes to `path` (or an open file): size, owner, mode, times, in
/// that order (as OpenSSH's server does). Symlinks are followed, as SETSTAT specifies.
pub fn set_attrs(
    path: &Path,
    file: Option<&fs::File>,
    a: &FileAttributes,
) -> Result<(), StatusReply> {
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size),
            None => fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(size)),
        }
        .map_err(|e| status(&e))?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, a.uid, a.gid),
            None => std::os::unix::fs::chown(path, a.uid, a.gid),
        }
        .map_err(|e| status(&e))?;
    }
    if let Some(mode) = a.permissions {
        let perms = fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perms),
            None => fs::set_permissions(path, perms),
        }
        .map_err(|e| status(&e))?;
    }
    if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
        let at = TimeSpec::new(i64::from(atime), 0);
        let mt = TimeSpec::new(i64::from(mtime), 0);
        match file {
            Some(f) => nix::sys::stat::futimens(f, &at, &mt),
            None => utimensat(
                nix::fcntl::AT_FDCWD,
                path,
                &at,
                &mt,
                UtimensatFlags::FollowSymlink,
            ),
        }
        .map_err(nix_status)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_sftp_codes() {
        let code = |e: io::Error| status(&e).status_code;
        assert_eq!(
            code(io::Error::from_raw_os_error(libc::ENOENT)),
            StatusCode::NoSuchFile
        );
        assert_eq!(
            code(io::Error::from_raw_os_error(libc::EACCES)),
            StatusCode::PermissionDenied
        );
        assert_eq!(
            code(io::Error::from_raw_os_error(libc::EPERM)),
            StatusCode::PermissionDenied
        );
        assert_eq!(
            code(io::Error::from_raw_os_error(libc::ENOTEMPTY)),
            StatusCode::Failure
        );
    }

    #[test]
    fn lexical_paths() {
        let home = Path::new("/home/u");
        assert_eq!(lexical(home, Path::new(".")), Path::new("/home/u"));
        assert_eq!(
            lexical(home, Path::new("a/../b/./c")),
            Path::new("/home/u/b/c")
        );
        assert_eq!(lexical(home, Path::new("/x/../../y")), Path::new("/y"));
        assert_eq!(req_path(""), Path::new("."));
    }

    #[test]
    fn permission_strings() {
        assert_eq!(perm_string(0o755), "rwxr-xr-x");
        assert_eq!(perm_string(0o4644), "rwSr--r--");
        assert_eq!(perm_string(0o1777), "rwxrwxrwt");
        assert_eq!(type_char(libc::S_IFLNK | 0o777), 'l');
    }
}
