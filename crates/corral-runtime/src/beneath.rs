//! Host-side access to trees a sandbox controls, without ever following a link.
//!
//! The server runs as host root. A sandbox's writable layer, the snapshot layers made from it,
//! its volumes and the layers of images from a registry are written by code nobody reviewed:
//! any name in them may be a symlink (absolute, or relative with `..`), and while a sandbox
//! runs it may swap a directory for a link between two of the server's calls. Resolving such
//! a path with the host's path resolution (`fs::write(upper.join("etc/hosts"))`) lets the
//! sandbox pick which host file the server writes, reads or chowns.
//!
//! So every host-side access to such a tree goes through a [`Tree`]: a directory fd of the
//! tree's root, from which each path is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`. A link anywhere on the way
//! is an error (`ELOOP`), never followed; files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` and replaced with `renameat` (which replaces a link itself, not its target);
//! owners and modes are set through the fd. The kernel checks each component at the moment
//! it is walked, so a swap during the operation fails instead of escaping.
//!
//! Written over `nix` rather than `cap-std`: cap-std follows links that stay inside the tree,
//! and the server must not follow any (a link inside an upper dir may point into a lower
//! layer, which is shared with other sandboxes).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// How every path below a tree's root is resolved.
fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))
}

/// The normal components of `rel`: a relative path with no `..` (leading `/` and `.` are
/// dropped, so `"/etc/hosts"` means `etc/hosts` of the tree).
pub fn components(rel: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {} leaves its tree", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Whether an error means "a link (or a non-directory) is in the way": what a planted
/// symlink produces.
pub fn is_link_error(e: &io::Error) -> bool {
    let errno = e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<PathError>())
            .and_then(|p| p.err.raw_os_error())
    });
    matches!(errno, Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV))
}

/// A directory of a sandbox-controlled tree, open by fd; paths below it are resolved by the
/// kernel without following any link.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    /// For messages only: never resolved again.
    path: PathBuf,
}

impl AsFd for Tree {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Tree {
    /// Opens the root of a tree. The root's own path belongs to corral (a layer or volume dir
    /// the server made), but its last component is still not followed if it is a link.
    pub fn open(root: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| annotate(e.into(), root))?;
        Ok(Self {
            fd,
            path: root.to_owned(),
        })
    }

    /// The path the tree was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel.strip_prefix("/").unwrap_or(rel))
    }

    /// `openat2` below this tree; `rel` empty means the tree's root itself.
    fn openat(&self, rel: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let comps = components(rel)?;
        let joined: PathBuf = if comps.is_empty() {
            PathBuf::from(".")
        } else {
            comps.iter().collect()
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(resolve_flags());
        retry_eagain(|| nix::fcntl::openat2(self.fd.as_fd(), joined.as_path(), how))
            .map_err(|e| annotate(e.into(), &self.display(rel)))
    }

    /// Opens directory `rel` of this tree as a tree of its own.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Tree> {
        let fd = self.openat(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok(Tree {
            fd,
            path: self.display(rel),
        })
    }

    /// The parent directory of `rel` and `rel`'s last name.
    fn parent_of(&self, rel: &Path) -> io::Result<(Tree, CString)> {
        let mut comps = components(rel)?;
        let name = comps.pop().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "an empty path names no file")
        })?;
        let parent: PathBuf = comps.iter().collect();
        Ok((self.open_dir(&parent)?, cstring(&name)?))
    }

    /// `lstat` of `rel`: `None` when it (or a directory above it) does not exist. A link on
    /// the way is an error ([`is_link_error`]); a link as the last component is reported as a
    /// link, not followed.
    pub fn lstat(&self, rel: &Path) -> io::Result<Option<FileStat>> {
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match nix::sys::stat::fstatat(
            parent.fd.as_fd(),
            name.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(annotate(e.into(), &self.display(rel))),
        }
    }

    /// Reads regular file `rel` (at most `max` bytes; longer is an error). `None` when it does
    /// not exist. A link, a fifo or a device is refused, never opened.
    pub fn read(&self, rel: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
        let fd = match self.openat(
            rel,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(io::Error::from)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.display(rel).display()),
            ));
        }
        let mut buf = Vec::new();
        File::from(fd).take(max + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {max} bytes", self.display(rel).display()),
            ));
        }
        Ok(Some(buf))
    }

    /// Makes directory `rel` and any missing parents, each with `mode` (exactly: the umask
    /// does not apply). Directories that exist are left as they are; the last one, when this
    /// call created it, gets `owner`. Returns the directory, open. A link on the way (or a
    /// file where a directory should be) is an error.
    pub fn mkdir_all(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<Tree> {
        let comps = components(rel)?;
        let mut cur = self.open_dir(Path::new(""))?;
        let last = comps.len();
        for (i, comp) in comps.iter().enumerate() {
            let name = cstring(comp)?;
            let created = match nix::sys::stat::mkdirat(
                cur.fd.as_fd(),
                name.as_c_str(),
                Mode::from_bits_truncate(mode),
            ) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(annotate(e.into(), &cur.display(Path::new(comp)))),
            };
            let next = cur.open_dir(Path::new(comp))?;
            if created {
                nix::sys::stat::fchmod(next.fd.as_fd(), Mode::from_bits_truncate(mode))
                    .map_err(|e| annotate(e.into(), &next.path))?;
                if i + 1 == last
                    && let Some((uid, gid)) = owner
                {
                    fchown(next.fd.as_fd(), uid, gid).map_err(|e| annotate(e, &next.path))?;
                }
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Writes `data` to `rel` as a new regular file with `mode`, replacing whatever was there
    /// (a file or a link is replaced itself; a directory is an error). The parent must exist.
    /// Atomic: a temporary file made with `O_EXCL | O_NOFOLLOW` is renamed over the name.
    pub fn replace_file(&self, rel: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let mut tmp_name = OsString::from(".corral-");
        tmp_name.push(OsStr::from_bytes(name.as_bytes()));
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = cstring(&tmp_name)?;
        // A leftover of an earlier crash (never followed: unlinkat removes the name).
        let _ = nix::unistd::unlinkat(
            parent.fd.as_fd(),
            tmp.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = nix::fcntl::openat(
            parent.fd.as_fd(),
            tmp.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| annotate(e.into(), &self.display(rel)))?;
        let written = (|| {
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
            let mut f = File::from(fd);
            f.write_all(data)?;
            nix::fcntl::renameat(
                parent.fd.as_fd(),
                tmp.as_c_str(),
                parent.fd.as_fd(),
                name.as_c_str(),
            )?;
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = written {
            let _ = nix::unistd::unlinkat(
                parent.fd.as_fd(),
                tmp.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(annotate(e, &self.display(rel)));
        }
        Ok(())
    }

    /// Creates an empty regular file `rel` with `mode` unless something is there already
    /// (left as it is, link or not: nothing is opened through it). The parent must exist.
    pub fn create_empty(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        match nix::fcntl::openat(
            parent.fd.as_fd(),
            name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(annotate(e.into(), &self.display(rel))),
        }
    }

    /// Removes the name `rel` (a file, link or special file; never what a link points to).
    /// Missing is fine.
    pub fn remove_file(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match nix::unistd::unlinkat(
            parent.fd.as_fd(),
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(annotate(e.into(), &self.display(rel))),
        }
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fd = nix::fcntl::openat(
            self.fd.as_fd(),
            c".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| annotate(e.into(), &self.path))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| annotate(e.into(), &self.path))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| annotate(e.into(), &self.path))?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsString::from_vec(n.to_vec()));
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens regular file `name` of this directory for reading (a link or special file is
    /// refused), with its metadata from the open fd.
    pub fn open_file(&self, name: &OsStr) -> io::Result<(File, FileStat)> {
        let fd = self.openat(
            Path::new(name),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(io::Error::from)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file",
                    self.display(Path::new(name)).display()
                ),
            ));
        }
        Ok((File::from(fd), st))
    }

    /// The target of link `name` of this directory (read, never followed).
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        nix::fcntl::readlinkat(self.fd.as_fd(), name)
            .map_err(|e| annotate(e.into(), &self.display(Path::new(name))))
    }

    /// The directory's own metadata.
    pub fn stat(&self) -> io::Result<FileStat> {
        nix::sys::stat::fstat(self.fd.as_fd()).map_err(|e| annotate(e.into(), &self.path))
    }

    /// The raw fd (for `fgetxattr` and similar calls on the directory itself).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(io::Error::from)
}

/// `openat2` answers `EAGAIN` when a rename raced with the lookup; the call may be retried.
fn retry_eagain<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

/// An I/O error on a path of a tree (the errno stays readable for [`is_link_error`]).
#[derive(Debug, thiserror::Error)]
#[error("{}: {err}{}", path.display(), hint(err))]
struct PathError {
    path: PathBuf,
    err: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ELOOP) => " (a symbolic link is in the way; links are never followed)",
        Some(libc::EXDEV) => " (another filesystem is in the way)",
        _ => "",
    }
}

/// Adds the path to an error.
fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        PathError {
            path: path.to_owned(),
            err: e,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    /// A tree and, beside it, a directory holding a marker file links point at.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("marker"), b"host").expect("write");
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    fn marker_untouched(f: &Fixture) {
        assert_eq!(fs::read(f.outside.join("marker")).expect("marker"), b"host");
        let names: Vec<_> = fs::read_dir(&f.outside)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [OsString::from("marker")], "nothing created outside");
    }

    #[test]
    fn replace_file_replaces_a_planted_link_not_its_target() {
        let f = fixture();
        let targets = [
            f.outside.join("marker"),
            PathBuf::from("../../outside/marker"),
        ];
        for target in targets {
            let hosts = f.root.join("etc/hosts");
            let _ = fs::remove_file(&hosts);
            symlink(&target, &hosts).expect("symlink");
            let t = Tree::open(&f.root).expect("open");
            t.replace_file(Path::new("/etc/hosts"), b"127.0.0.1 x\n", 0o644)
                .expect("replace");
            let m = fs::symlink_metadata(&hosts).expect("hosts");
            assert!(m.is_file(), "the link itself was replaced");
            assert_eq!(m.permissions().mode() & 0o7777, 0o644);
            assert_eq!(fs::read(&hosts).expect("read"), b"127.0.0.1 x\n");
            marker_untouched(&f);
        }
    }

    #[test]
    fn a_linked_directory_on_the_way_is_refused() {
        let f = fixture();
        fs::remove_dir(f.root.join("etc")).expect("rmdir");
        symlink(&f.outside, f.root.join("etc")).expect("symlink");
        let t = Tree::open(&f.root).expect("open");
        let e = t
            .replace_file(Path::new("etc/hostname"), b"x\n", 0o644)
            .expect_err("through a link");
        assert!(is_link_error(&e), "{e}");
        assert!(t.read(Path::new("etc/marker"), 100).is_err());
        assert!(t.lstat(Path::new("etc/marker")).is_err());
        let e = t
            .mkdir_all(Path::new("etc/home/user"), 0o755, Some((1000, 1000)))
            .expect_err("mkdir through a link");
        assert!(is_link_error(&e), "{e}");
        t.create_empty(Path::new("etc/agent"), 0o644)
            .expect_err("create through a link");
        t.remove_file(Path::new("etc/marker"))
            .expect_err("remove through a link");
        marker_untouched(&f);
        // The link itself is seen as a link, not followed.
        let st = t.lstat(Path::new("etc")).expect("lstat").expect("exists");
        assert_eq!(
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
            SFlag::S_IFLNK
        );
    }

    #[test]
    fn relative_links_escaping_with_dotdot_are_refused() {
        let f = fixture();
        symlink("../../outside", f.root.join("etc/up")).expect("symlink");
        symlink("../outside/marker", f.root.join("passwd")).expect("symlink");
        let t = Tree::open(&f.root).expect("open");
        assert!(t.read(Path::new("passwd"), 100).is_err());
        assert!(t.read(Path::new("etc/up/marker"), 100).is_err());
        assert!(
            t.components_refused("../outside/marker"),
            "a .. in the path itself"
        );
        marker_untouched(&f);
    }

    impl Tree {
        fn components_refused(&self, rel: &str) -> bool {
            self.read(Path::new(rel), 100).is_err()
        }
    }

    #[test]
    fn even_a_link_inside_the_tree_is_not_followed() {
        let f = fixture();
        fs::write(f.root.join("etc/real"), b"r").expect("write");
        symlink("real", f.root.join("etc/alias")).expect("symlink");
        let t = Tree::open(&f.root).expect("open");
        assert!(t.read(Path::new("etc/alias"), 10).is_err());
        assert_eq!(
            t.read(Path::new("etc/real"), 10).expect("read"),
            Some(b"r".to_vec())
        );
        assert_eq!(t.read(Path::new("etc/none"), 10).expect("read"), None);
    }

    #[test]
    fn fifos_and_devices_are_not_opened() {
        let f = fixture();
        nix::unistd::mkfifo(&f.root.join("etc/passwd"), Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        let t = Tree::open(&f.root).expect("open");
        // Would block forever if the fifo were opened for reading without O_NONBLOCK.
        assert!(t.read(Path::new("etc/passwd"), 100).is_err());
    }

    #[test]
    fn mkdir_all_makes_missing_dirs_with_exact_modes_and_owns_only_the_last() {
        let f = fixture();
        let t = Tree::open(&f.root).expect("open");
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        t.mkdir_all(Path::new("/home/user/work"), 0o750, Some(me))
            .expect("mkdir");
        let m = fs::metadata(f.root.join("home/user/work")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        assert_eq!((m.uid(), m.gid()), me);
        // Existing dirs are left alone.
        fs::set_permissions(f.root.join("etc"), fs::Permissions::from_mode(0o700)).expect("chmod");
        t.mkdir_all(Path::new("etc"), 0o755, None).expect("mkdir");
        let m = fs::metadata(f.root.join("etc")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        // A file where a directory should be.
        fs::write(f.root.join("file"), b"").expect("write");
        assert!(t.mkdir_all(Path::new("file/x"), 0o755, None).is_err());
    }

    #[test]
    fn create_empty_leaves_an_existing_name_alone() {
        let f = fixture();
        fs::create_dir(f.root.join(".corral")).expect("mkdir");
        symlink(f.outside.join("new"), f.root.join(".corral/agent")).expect("symlink");
        let t = Tree::open(&f.root).expect("open");
        t.create_empty(Path::new(".corral/agent"), 0o644)
            .expect("exists: fine");
        marker_untouched(&f);
        t.create_empty(Path::new("etc/new"), 0o600).expect("create");
        assert!(f.root.join("etc/new").is_file());
    }

    #[test]
    fn the_root_itself_may_not_be_a_link() {
        let f = fixture();
        let link = f.root.parent().expect("parent").join("rootlink");
        symlink(&f.outside, &link).expect("symlink");
        assert!(Tree::open(&link).is_err());
    }

    #[test]
    fn names_lists_without_following() {
        let f = fixture();
        symlink(&f.outside, f.root.join("l")).expect("symlink");
        let t = Tree::open(&f.root).expect("open");
        assert_eq!(t.names().expect("names"), ["etc", "l"].map(OsString::from));
        assert_eq!(
            t.read_link(OsStr::new("l")).expect("readlink"),
            f.outside.as_os_str()
        );
        assert!(t.open_file(OsStr::new("l")).is_err());
    }
}
