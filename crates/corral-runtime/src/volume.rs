//! Volumes on the host: one directory per volume, outliving sandboxes, bind-mounted into the
//! sandboxes that ask for it. With the btrfs disk pool a volume is a subvolume,
//! `<data>/disk/.volumes/<id>`, whose quota group limits its size (`--volume-size-gib`);
//! otherwise (and for volumes made before) a plain directory, `<data>/volumes/<id>`.
//!
//! A sandbox can write anything into a volume, symlinks included, and other sandboxes mount
//! the same directory later, perhaps only a subpath of it. So a subpath is never resolved
//! through a symlink: at prepare time it is walked component by component with
//! `O_NOFOLLOW` (creating what is missing, owned by the sandbox user), and the child resolves
//! it again with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` right before the mount, so a
//! symlink swapped in between fails the start instead of exposing the host. The mount point
//! inside the sandbox is resolved with `RESOLVE_IN_ROOT`: a symlink there stays inside the
//! sandbox's own tree.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use corral_core::{RuntimeError, VolumeMount};

use crate::disk::Disk;
use crate::spawn::VolumeBind;

/// Where volumes live under the data dir.
fn volumes_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("volumes")
}

/// A volume id as corral makes them (a uuid): nothing a path could abuse.
fn check_id(id: &str) -> Result<(), RuntimeError> {
    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!("invalid volume id {id:?}")))
    }
}

/// Where volumes live in the btrfs disk pool.
fn pool_volumes_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("disk").join(".volumes")
}

/// The host directory of volume `id`.
pub fn dir(data_dir: &Path, id: &str) -> Result<PathBuf, RuntimeError> {
    check_id(id)?;
    let in_pool = pool_volumes_dir(data_dir).join(id);
    Ok(if in_pool.exists() {
        in_pool
    } else {
        volumes_dir(data_dir).join(id)
    })
}

/// Creates volume `id` (root-owned and empty: the first sandbox that mounts it gets it),
/// limited to `limit` bytes when the disk pool can. Idempotent.
pub(crate) fn create(
    data_dir: &Path,
    disk: &Disk,
    id: &str,
    limit: Option<u64>,
) -> Result<(), RuntimeError> {
    let d = dir(data_dir, id)?;
    if d.is_dir() {
        return Ok(());
    }
    let host = |c: &'static str| move |e| RuntimeError::host(c, e);
    if let Disk::Pool(pool) = disk {
        let parent = pool_volumes_dir(data_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(host("creating the volumes dir"))?;
        let path = pool
            .create_subvolume(&parent, id, limit)
            .map_err(|e| RuntimeError::host("creating the volume's subvolume", e))?;
        return fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(host("creating the volume's subvolume"));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(volumes_dir(data_dir))
        .and_then(|()| match fs::DirBuilder::new().mode(0o755).create(&d) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        })
        .map_err(host("creating volume dir"))
}

/// Removes volume `id` and everything in it (symlinks are removed, never followed).
/// Idempotent.
pub fn delete(data_dir: &Path, id: &str) -> Result<(), RuntimeError> {
    let d = dir(data_dir, id)?;
    if let Some(parent) = d.parent() {
        match crate::btrfs::delete_subvolume(parent, id) {
            Ok(()) => return Ok(()),
            Err(crate::btrfs::BtrfsError::NotSubvolume { .. }) => {}
            Err(e) => return Err(RuntimeError::host("removing the volume's subvolume", e)),
        }
    }
    match fs::remove_dir_all(&d) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(RuntimeError::host("removing volume dir", e))
        }
        _ => Ok(()),
    }
}

fn open_dir_at(dirfd: RawFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: openat on a valid dirfd (or AT_FDCWD) with a NUL-terminated name; the result
    // is checked.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn fchown(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown on a valid fd.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstr(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::Invalid("a volume path contains NUL".into()))
}

/// Makes the mount's source ready on the host: gives a fresh (root-owned, empty) volume to
/// the sandbox user, and creates the subpath's missing directories, owned by that user,
/// refusing any component that is a symlink or not a directory.
fn prepare_source(root: &Path, m: &VolumeMount, uid: u32, gid: u32) -> Result<(), RuntimeError> {
    let host = |c: &'static str| move |e: io::Error| RuntimeError::host(c, e);
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Invalid("volume path contains NUL".into()))?;
    // The volume root is a trusted absolute path; only what lies inside it is not.
    let mut dirfd = match open_dir_at(libc::AT_FDCWD, &root_c) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RuntimeError::Invalid(format!(
                "volume {} has no storage (was it deleted?)",
                m.volume_id
            )));
        }
        Err(e) => return Err(RuntimeError::host("opening volume dir", e)),
    };
    let meta = fs::metadata(root).map_err(host("reading volume dir"))?;
    if meta.uid() == 0 && meta.gid() == 0 && (uid, gid) != (0, 0) {
        let empty = fs::read_dir(root)
            .map_err(host("reading volume dir"))?
            .next()
            .is_none();
        if empty {
            fchown(&dirfd, uid, gid).map_err(host("giving the volume to the sandbox user"))?;
        }
    }
    let Some(sub) = &m.subpath else {
        return Ok(());
    };
    for comp in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if comp == ".." {
            return Err(RuntimeError::Invalid(format!(
                "volume subpath {sub:?} leaves the volume"
            )));
        }
        let name = cstr(comp)?;
        let next = match open_dir_at(dirfd.as_raw_fd(), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: mkdirat on a valid dirfd with a single-component name.
                let r = unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), 0o755) };
                if r != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(RuntimeError::host("creating volume subpath", e));
                    }
                }
                let fd =
                    open_dir_at(dirfd.as_raw_fd(), &name).map_err(|e| refuse(sub, comp, &e))?;
                if r == 0 {
                    fchown(&fd, uid, gid).map_err(host("chowning volume subpath"))?;
                }
                fd
            }
            Err(e) => return Err(refuse(sub, comp, &e)),
        };
        dirfd = next;
    }
    Ok(())
}

fn refuse(sub: &str, comp: &str, e: &io::Error) -> RuntimeError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => RuntimeError::Invalid(format!(
            "volume subpath {sub:?}: {comp:?} is a symlink or not a directory (subpaths never follow symlinks)"
        )),
        _ => RuntimeError::host("opening volume subpath", io::Error::from(e.kind())),
    }
}

/// Prepares every volume of a sandbox on the host and returns their binds, which the plan
/// mounts just before `pivot_root` (after the root overlays, /proc, /dev and /sys).
pub fn prepare_binds(
    data_dir: &Path,
    volumes: &[VolumeMount],
    mnt: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<VolumeBind>, RuntimeError> {
    let mut binds = Vec::with_capacity(volumes.len());
    for m in volumes {
        let root = dir(data_dir, &m.volume_id)?;
        prepare_source(&root, m, uid, gid)?;
        let comps: Vec<&str> = m
            .mount_path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if comps.is_empty() || comps.contains(&"..") {
            return Err(RuntimeError::Invalid(format!(
                "invalid volume mount path {:?}",
                m.mount_path
            )));
        }
        let mut prefixes = Vec::with_capacity(comps.len());
        let mut names = Vec::with_capacity(comps.len());
        for i in 0..comps.len() {
            prefixes.push(cstr(&comps[..=i].join("/"))?);
            names.push(cstr(comps[i])?);
        }
        binds.push(VolumeBind {
            source: CString::new(root.as_os_str().as_bytes())
                .map_err(|_| RuntimeError::Invalid("volume path contains NUL".into()))?,
            subpath: m.subpath.as_deref().map(cstr).transpose()?,
            root: CString::new(mnt.as_os_str().as_bytes())
                .map_err(|_| RuntimeError::Invalid("root path contains NUL".into()))?,
            target_prefixes: prefixes,
            target_names: names,
        });
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(sub: Option<&str>) -> VolumeMount {
        VolumeMount {
            volume_id: "v1".into(),
            mount_path: "/data".into(),
            subpath: sub.map(str::to_owned),
        }
    }

    #[test]
    fn subpaths_are_created_and_symlinks_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let disk = Disk::Plain(data.path().join("sandboxes"));
        create(data.path(), &disk, "v1", None).expect("create");
        let root = dir(data.path(), "v1").expect("dir");
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        prepare_source(&root, &mount(Some("a/b")), uid, gid).expect("prepare");
        assert!(root.join("a/b").is_dir());
        let outside = data.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        for sub in ["link", "link/x", "a/../link"] {
            let err = prepare_source(&root, &mount(Some(sub)), uid, gid);
            assert!(
                matches!(err, Err(RuntimeError::Invalid(_))),
                "{sub}: {err:?}"
            );
        }
        assert!(!outside.join("x").exists());
        assert!(matches!(check_id("../x"), Err(RuntimeError::Invalid(_))));
        delete(data.path(), "v1").expect("delete");
        assert!(!root.exists() && outside.is_dir());
        delete(data.path(), "v1").expect("idempotent");
    }
}
