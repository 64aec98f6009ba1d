//! Path resolution for every route that takes a path: `/proc` magic links are never followed.
//!
//! The agent is root and PID 1 in the sandbox, so `/proc/1/fd/<n>` and `/proc/self/fd/<n>`
//! (and `cwd`, `root`, `exe`, `map_files` of any process it can see) lead it to whatever its
//! own or another process's descriptors point at, even objects outside the sandbox's mount
//! namespace, such as what the runtime handed it as stdout. Sandbox processes are kept out
//! of PID 1's by the kernel (the agent is not dumpable); the agent itself is not, so every
//! path a request names is opened here with `openat2(RESOLVE_NO_MAGICLINKS)`, and the
//! operation then works on that descriptor, or on a name relative to the descriptor of the
//! directory holding it: the path is never resolved a second time. Ordinary symlinks keep
//! working, as with Daytona's daemon (it is the user's own sandbox).
//!
//! Where Linux has no descriptor-based call for an `O_PATH` descriptor (chmod, opening the
//! object for I/O), the agent goes through `/proc/self/fd/<n>` of its own descriptor, which
//! names exactly the object already resolved.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::{invalid_path, io_error};
use crate::api::ApiError;

/// Whether the last component of a path is followed when it is a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    Follow,
    NoFollow,
}

fn how(flags: OFlag, last: Last, magic: bool) -> OpenHow {
    let mut flags = flags | OFlag::O_CLOEXEC;
    if !flags.contains(OFlag::O_PATH) {
        flags |= OFlag::O_NOCTTY;
    }
    if last == Last::NoFollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let resolve = if magic {
        ResolveFlag::empty()
    } else {
        ResolveFlag::RESOLVE_NO_MAGICLINKS
    };
    OpenHow::new().flags(flags).resolve(resolve)
}

/// Opens `path` relative to `dir` (an absolute `path` from the root) without following a
/// magic link anywhere on the way.
pub(crate) fn open_at(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    last: Last,
) -> io::Result<OwnedFd> {
    openat2(dir, path, how(flags, last, false)).map_err(io::Error::from)
}

/// Whether an `ELOOP` from [`open_at`] came from a magic link rather than a symlink loop (or
/// `O_NOFOLLOW` on an ordinary symlink): the same lookup as `O_PATH` still fails with `ELOOP`,
/// and no longer does once magic links are allowed (it may then succeed, or miss a name
/// further on). Only `O_PATH` descriptors are taken, and closed at once.
fn through_magic_link(dir: BorrowedFd<'_>, path: &Path, last: Last) -> bool {
    let eloop = |magic| {
        matches!(
            openat2(dir, path, how(OFlag::O_PATH, last, magic)),
            Err(Errno::ELOOP)
        )
    };
    eloop(false) && !eloop(true)
}

/// The answer to a request naming a path through a magic link: a 400.
pub(crate) fn magic_link(path: &Path) -> ApiError {
    invalid_path(format!(
        "{}: the path goes through a /proc magic link (such as /proc/<pid>/fd/<n>, cwd, root \
         or exe), which the toolbox does not follow",
        path.display()
    ))
}

/// The API error for a failed [`open_at`] of `path` (named `shown` in the message).
pub(crate) fn open_error(
    what: &str,
    dir: BorrowedFd<'_>,
    path: &Path,
    shown: &Path,
    last: Last,
    e: &io::Error,
) -> ApiError {
    if e.raw_os_error() == Some(libc::ELOOP) && through_magic_link(dir, path, last) {
        return magic_link(shown);
    }
    io_error(what, shown, e)
}

/// Opens the absolute `path`; a failure is the API's answer (`what` names the operation).
pub(crate) fn open(path: &Path, flags: OFlag, last: Last, what: &str) -> Result<OwnedFd, ApiError> {
    open_at(AT_FDCWD, path, flags, last)
        .map_err(|e| open_error(what, AT_FDCWD, path, path, last, &e))
}

/// `path` resolved (a symlink at its end followed) to an `O_PATH` descriptor, with its status.
pub(crate) fn object(path: &Path, what: &str) -> Result<(OwnedFd, FileStat), ApiError> {
    let fd = open(path, OFlag::O_PATH, Last::Follow, what)?;
    let st = fstat(&fd).map_err(|e| io_error(what, path, &e.into()))?;
    Ok((fd, st))
}

/// `/proc/self/fd/<n>`: the agent's own descriptor `fd` as a path.
pub(crate) fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The object behind a descriptor (typically `O_PATH`) opened again for I/O, through the
/// agent's own `/proc/self/fd/<n>`: the same inode, no path resolved again.
pub(crate) fn reopen(fd: &OwnedFd, flags: OFlag) -> io::Result<File> {
    let fd = nix::fcntl::open(
        &proc_path(fd),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// A regular file named by `path` (a symlink to one is followed), opened for reading, and
/// its size. Anything else (directory, device, FIFO, socket) is a 400.
pub(crate) fn open_regular(path: &Path, what: &str) -> Result<(File, FileStat), ApiError> {
    let (fd, st) = object(path, what)?;
    if is_dir(&st) {
        return Err(invalid_path(format!(
            "{what} {}: is a directory",
            path.display()
        )));
    }
    if !is_file(&st) {
        return Err(invalid_path(format!(
            "{what} {}: not a regular file",
            path.display()
        )));
    }
    let file = reopen(&fd, OFlag::O_RDONLY).map_err(|e| io_error(what, path, &e))?;
    Ok((file, st))
}

/// The text of a small regular file the agent reads for itself (`/etc/passwd`,
/// `/etc/group`), which a sandbox's root may have replaced: a symlink to a magic link or a
/// FIFO is an error rather than a host file or a read that never ends.
pub(crate) fn read_text(path: &Path) -> io::Result<String> {
    let (fd, st) = object(path, "read").map_err(|e| io::Error::other(e.message))?;
    if !is_file(&st) {
        return Err(io::Error::other(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    io::read_to_string(reopen(&fd, OFlag::O_RDONLY)?)
}

/// Changes owner and group (absent ones stay) and then the mode (after the chown, which
/// clears set-id bits) of the object behind the `O_PATH` descriptor `fd`.
pub(crate) fn set_owner_and_mode(
    fd: &OwnedFd,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
) -> io::Result<()> {
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchownat(
            fd,
            "",
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            AtFlags::AT_EMPTY_PATH,
        )?;
    }
    if let Some(mode) = mode {
        nix::sys::stat::fchmodat(
            AT_FDCWD,
            &proc_path(fd),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    Ok(())
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_file(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

pub(crate) fn is_symlink(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// The status of `name` in `dir`, a symlink not followed.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileStat> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

/// The directory holding the last component of a path (as a descriptor) and that component.
#[derive(Debug)]
pub(crate) struct Parent {
    pub dir: OwnedFd,
    pub name: OsString,
}

/// `path` split into its directory and last component; a path ending in `..`, or `/`, names
/// no entry of a directory.
pub(crate) fn split(path: &Path) -> Result<(&Path, &OsStr), ApiError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if dir.as_os_str().is_empty() => Ok((Path::new("."), name)),
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(invalid_path(format!(
            "{}: does not name an entry of a directory (it is / or ends in ..)",
            path.display()
        ))),
    }
}

/// The [`Parent`] of the absolute `path`; its directory is resolved like any path here
/// (symlinks followed, magic links refused).
pub(crate) fn parent(path: &Path, what: &str) -> Result<Parent, ApiError> {
    let (dir, name) = split(path)?;
    let fd = open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Last::Follow, what)?;
    Ok(Parent {
        dir: fd,
        name: name.to_owned(),
    })
}

/// Who new directories belong to and their mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewDirs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Opens the directory `path` (relative to `base`, or absolute), first creating it and its
/// missing parents as `mkdir -p` does, each new one with `new`'s mode and owner. Symlinks to
/// directories on the way are followed; magic links are refused. Returns the directory and
/// whether this call created it.
pub(crate) fn ensure_dir_at(
    base: BorrowedFd<'_>,
    path: &Path,
    new: NewDirs,
) -> Result<(OwnedFd, bool), ApiError> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let failed = |at: &Path, e: &io::Error| -> ApiError {
        match e.raw_os_error() {
            Some(libc::ENOTDIR) => invalid_path(format!(
                "create {}: {} (or a directory above it) exists and is not a directory",
                path.display(),
                at.display()
            )),
            _ => open_error("create directory", base, at, at, Last::Follow, e),
        }
    };
    let target = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    // The deepest existing directory on the way, and the names to create below it.
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut cur = target;
    let mut dir = loop {
        match open_at(base, cur, dir_flags, Last::Follow) {
            Ok(fd) if missing.is_empty() => return Ok((fd, false)),
            Ok(fd) => break fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let (up, name) = split(cur)?;
                missing.push(name);
                cur = up;
            }
            Err(e) => return Err(failed(cur, &e)),
        }
    };
    let mut created = false;
    for name in missing.iter().rev() {
        let shown = path.display();
        match mkdirat(&dir, *name, Mode::from_bits_truncate(new.mode)) {
            Ok(()) => {
                // Just made by us, owned by root: opened without following anything.
                let fd = openat(
                    &dir,
                    *name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_error("create directory", path, &e.into()))?;
                fchown(
                    &fd,
                    Some(Uid::from_raw(new.uid)),
                    Some(Gid::from_raw(new.gid)),
                )
                .map_err(|e| io_error("chown", path, &e.into()))?;
                fchmod(&fd, Mode::from_bits_truncate(new.mode))
                    .map_err(|e| io_error("chmod", path, &e.into()))?;
                dir = fd;
                created = true;
            }
            // Made meanwhile, or something (a symlink?) is there: open it as any directory.
            Err(Errno::EEXIST) => {
                dir = open_at(dir.as_fd(), Path::new(name), dir_flags, Last::Follow).map_err(
                    |e| match e.raw_os_error() {
                        Some(libc::ENOTDIR | libc::ENOENT) => invalid_path(format!(
                            "create {shown}: {} exists and is not a directory",
                            Path::new(name).display()
                        )),
                        _ => open_error(
                            "create directory",
                            dir.as_fd(),
                            Path::new(name),
                            path,
                            Last::Follow,
                            &e,
                        ),
                    },
                )?;
                created = false;
            }
            Err(e) => return Err(io_error("create directory", path, &e.into())),
        }
    }
    Ok((dir, created))
}

/// [`ensure_dir_at`] for an absolute path.
pub(crate) fn ensure_dir(path: &Path, new: NewDirs) -> Result<(OwnedFd, bool), ApiError> {
    ensure_dir_at(AT_FDCWD, path, new)
}

/// The names in a directory but `.` and `..`, sorted; a read error ends the list.
fn names(dir: &mut Dir) -> Vec<OsString> {
    let mut names: Vec<OsString> = dir
        .iter()
        .map_while(Result::ok)
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Dir> {
    Dir::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// One entry met by [`walk`].
pub(crate) struct Entry<'a> {
    /// The directory holding it.
    pub dir: BorrowedFd<'a>,
    pub name: &'a OsStr,
    /// Its path: the walk's root path joined with the names below it.
    pub path: &'a Path,
    /// Its status (a symlink's own).
    pub stat: &'a FileStat,
}

/// Walks the tree below the directory `root` (a descriptor opened for reading, shown as
/// `root_path`) depth first, each directory's entries sorted by name, down to `max_depth`
/// levels (1: only `root`'s entries). Symlinks are never followed; entries that cannot be
/// read are skipped.
pub(crate) fn walk(
    root: OwnedFd,
    root_path: &Path,
    max_depth: usize,
    mut visit: impl FnMut(&Entry<'_>),
) -> io::Result<()> {
    struct Frame {
        dir: Dir,
        path: PathBuf,
        names: std::vec::IntoIter<OsString>,
        depth: usize,
    }
    let mut dir = Dir::from_fd(root)?;
    let mut stack = vec![Frame {
        names: names(&mut dir).into_iter(),
        dir,
        path: root_path.to_owned(),
        depth: 1,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.next() else {
            stack.pop();
            continue;
        };
        let Ok(stat) = lstat_at(frame.dir.as_fd(), &name) else {
            continue;
        };
        let path = frame.path.join(&name);
        visit(&Entry {
            dir: frame.dir.as_fd(),
            name: &name,
            path: &path,
            stat: &stat,
        });
        if is_dir(&stat) && frame.depth < max_depth {
            let depth = frame.depth + 1;
            if let Ok(mut child) = open_dir_at(frame.dir.as_fd(), &name) {
                stack.push(Frame {
                    names: names(&mut child).into_iter(),
                    dir: child,
                    path,
                    depth,
                });
            }
        }
    }
    Ok(())
}

/// Removes the directory `name` in `parent` and everything in it. Nothing is followed: a
/// symlink below it is removed, not what it points to.
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    struct Frame {
        dir: Dir,
        name: OsString,
        names: std::vec::IntoIter<OsString>,
    }
    let frame = |at: BorrowedFd<'_>, name: &OsStr| -> io::Result<Frame> {
        let mut dir = open_dir_at(at, name)?;
        Ok(Frame {
            names: names(&mut dir).into_iter(),
            dir,
            name: name.to_owned(),
        })
    };
    let gone_ok = |r: nix::Result<()>| match r {
        Err(Errno::ENOENT) | Ok(()) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    };
    let mut stack = vec![frame(parent, name)?];
    while let Some(top) = stack.last_mut() {
        match top.names.next() {
            Some(child) => match fstatat(&top.dir, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            {
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
                Ok(st) if is_dir(&st) => {
                    let below = frame(top.dir.as_fd(), &child)?;
                    stack.push(below);
                }
                Ok(_) => gone_ok(unlinkat(
                    &top.dir,
                    child.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                ))?,
            },
            None => {
                let Some(done) = stack.pop() else { break };
                let at = stack.last().map_or(parent, |f| f.dir.as_fd());
                gone_ok(unlinkat(
                    at,
                    done.name.as_os_str(),
                    UnlinkatFlags::RemoveDir,
                ))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use axum::http::StatusCode;

    use super::*;

    fn me() -> NewDirs {
        NewDirs {
            mode: 0o750,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn magic_links_are_refused_with_a_400_and_symlinks_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "keep").expect("write");
        let held = File::open(&marker).expect("open");
        let magic = proc_path(&held);
        let err = object(&magic, "stat").expect_err("magic link");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("magic link"), "{}", err.message);
        // A magic link anywhere on the way, too.
        let cwd_link = PathBuf::from(format!("/proc/{}/root", std::process::id()))
            .join(marker.strip_prefix("/").expect("absolute"));
        let err = object(&cwd_link, "stat").expect_err("magic root");
        assert!(err.message.contains("magic link"), "{}", err.message);
        // Positive control: an ordinary symlink to the same file is followed.
        let link = dir.path().join("link");
        symlink(&marker, &link).expect("symlink");
        let (_, st) = object(&link, "stat").expect("symlink followed");
        assert!(is_file(&st));
        assert_eq!(st.st_size, 4);
        // A real loop stays an ordinary ELOOP error.
        let a = dir.path().join("a");
        symlink(dir.path().join("b"), &a).expect("a");
        symlink(&a, dir.path().join("b")).expect("b");
        let err = object(&a, "stat").expect_err("loop");
        assert!(!err.message.contains("magic link"), "{}", err.message);
    }

    #[test]
    fn ensure_dir_creates_parents_owned_and_through_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("a/b/c");
        let (_, created) = ensure_dir(&target, me()).expect("created");
        assert!(created);
        let meta = std::fs::metadata(&target).expect("stat");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o750);
        let (_, created) = ensure_dir(&target, me()).expect("again");
        assert!(!created);
        symlink(dir.path().join("a"), dir.path().join("l")).expect("symlink");
        ensure_dir(&dir.path().join("l/x/y"), me()).expect("through a symlink");
        assert!(dir.path().join("a/x/y").is_dir());
        std::fs::write(dir.path().join("f"), b"").expect("write");
        let err = ensure_dir(&dir.path().join("f/g"), me()).expect_err("file in the way");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        symlink("/nonexistent-corral", dir.path().join("dangling")).expect("symlink");
        let err = ensure_dir(&dir.path().join("dangling/x"), me()).expect_err("dangling");
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{}", err.message);
    }

    #[test]
    fn walk_sorts_limits_depth_and_does_not_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("b/deeper")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"").expect("write");
        std::fs::write(root.join("a"), b"").expect("write");
        std::fs::write(root.join("b/deeper/z"), b"").expect("write");
        symlink(&outside, root.join("c")).expect("symlink");
        let seen = |depth| {
            let mut out = Vec::new();
            let f = File::open(&root).expect("open");
            walk(f.into(), &root, depth, |e| {
                out.push(e.path.strip_prefix(&root).expect("below").to_owned())
            })
            .expect("walk");
            out
        };
        let all: Vec<PathBuf> = ["a", "b", "b/deeper", "b/deeper/z", "c"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(seen(usize::MAX), all);
        assert_eq!(seen(1), vec![PathBuf::from("a"), "b".into(), "c".into()]);
    }

    #[test]
    fn remove_tree_removes_links_not_their_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(victim.join("x/y")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), b"").expect("write");
        std::fs::write(victim.join("x/y/f"), b"").expect("write");
        symlink(&outside, victim.join("x/link")).expect("symlink");
        let parent = File::open(dir.path()).expect("open");
        remove_tree(parent.as_fd(), OsStr::new("victim")).expect("removed");
        assert!(!victim.exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn read_text_refuses_fifos_and_magic_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        // Would block forever if it were opened for reading.
        assert!(read_text(&fifo).is_err());
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n").expect("write");
        let held = File::open(&passwd).expect("open");
        let planted = dir.path().join("planted");
        symlink(proc_path(&held), &planted).expect("symlink");
        let err = read_text(&planted).expect_err("magic");
        assert!(err.to_string().contains("magic link"), "{err}");
        assert_eq!(
            read_text(&passwd).expect("plain"),
            "root:x:0:0::/root:/bin/sh\n"
        );
    }

    #[test]
    fn split_refuses_root_and_dot_dot() {
        assert!(split(Path::new("/")).is_err());
        assert!(split(Path::new("/a/..")).is_err());
        let (dir, name) = split(Path::new("/a/b")).expect("ok");
        assert_eq!((dir, name), (Path::new("/a"), OsStr::new("b")));
    }
}
