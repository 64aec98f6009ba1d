//! Safe unpacking of one OCI layer (tar, gzip'd tar or zstd'd tar) into an empty directory
//! that overlayfs can use as a lower layer.
//!
//! Nothing is written through a symlink: every entry's parent is reached from the layer root
//! one component at a time with `openat(O_DIRECTORY | O_NOFOLLOW)`, so a parent that is a
//! symlink (or not a directory) is an error, and files are created with `O_EXCL |
//! O_NOFOLLOW` relative to that parent's descriptor. Paths with `..` or a leading `/` are
//! errors, hard links must name a path inside the layer, and device nodes are skipped with a
//! warning (only the 0/0 character device, overlayfs's whiteout, is made). Ownership, modes
//! (setuid included) and mtimes are kept as in the archive. OCI whiteouts become overlayfs
//! ones: `.wh.<name>` → a 0/0 character device `<name>`, `.wh..wh..opq` → the directory's
//! `trusted.overlay.opaque=y` xattr. The sha256 of the uncompressed tar stream (the layer's
//! diff id) is computed on the way.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use super::{OciError, hex, io_err};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque\0";

/// What unpacking a layer produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar (`sha256:<hex>`).
    pub diff_id: String,
    /// Bytes of regular file content written.
    pub size: u64,
    /// Entries written.
    pub entries: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
}

struct HashRead<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The decompressed tar stream of a layer blob, whatever its compression (detected from the
/// first bytes: gzip, zstd or none).
pub fn decompress<'a, R: Read + 'a>(blob: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 16, blob);
    let head = buf.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(buf)?)
    } else {
        Box::new(buf)
    })
}

/// Unpacks a layer blob into `dest` (an existing, empty directory). On error `dest` holds a
/// partial tree: callers unpack into a temporary directory and rename it into place only on
/// success.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<UnpackStats, OciError> {
    let dec = decompress(blob).map_err(io_err("decompress layer into", dest))?;
    let mut hashing = HashRead {
        inner: dec,
        hasher: sha2::Sha256::new(),
    };
    let root = open_dir(libc::AT_FDCWD, &cstring(dest.as_os_str())?)
        .map_err(io_err("open layer dir", dest))?;
    let mut stats = UnpackStats::default();
    let mut dirs = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(io_err("read layer", dest))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("read layer entry", dest))?;
            extract(&root, &mut entry, &mut dirs, &mut stats)?;
        }
    }
    // The diff id covers the whole stream, trailing blocks included.
    io::copy(&mut hashing, &mut io::sink()).map_err(io_err("read layer", dest))?;
    // Directory metadata last: creating children changes mtimes, and modes may forbid
    // writing (root passes those checks, but the mtime would still move).
    for (comps, meta) in dirs.iter().rev() {
        let fd = walk(&root, comps, false, Path::new(""))?;
        apply_meta(&fd, meta).map_err(io_err("set metadata of", join(comps)))?;
    }
    stats.diff_id = format!("sha256:{}", hex(&hashing.hasher.finalize()));
    Ok(stats)
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn cstring(s: &OsStr) -> Result<CString, OciError> {
    CString::new(s.as_bytes()).map_err(|_| OciError::Unsafe {
        path: PathBuf::from(s),
        why: "NUL byte in a name",
    })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_dir(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor or AT_FDCWD and a NUL-terminated name; the result is owned.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Splits an archive path into its normal components; refuses absolute paths and `..`.
fn components(path: &Path) -> Result<Vec<OsString>, OciError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(OciError::Unsafe {
                    path: path.to_owned(),
                    why: "`..` in the path",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(OciError::Unsafe {
                    path: path.to_owned(),
                    why: "absolute path",
                });
            }
        }
    }
    Ok(out)
}

/// Opens the directory `comps` below `root` without following any symlink; missing
/// directories are created (0755, root) when `create`.
fn walk(
    root: &OwnedFd,
    comps: &[OsString],
    create: bool,
    entry: &Path,
) -> Result<OwnedFd, OciError> {
    let mut cur = root.try_clone().map_err(io_err("dup", entry))?;
    for c in comps {
        let name = cstring(c)?;
        let next = match open_dir(cur.as_raw_fd(), &name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                // SAFETY: valid descriptor and NUL-terminated name.
                cvt(unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) })
                    .map_err(io_err("mkdir", entry))?;
                open_dir(cur.as_raw_fd(), &name)
            }
            other => other,
        };
        cur = next.map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => OciError::Unsafe {
                path: entry.to_owned(),
                why: "a parent directory is a symlink or not a directory",
            },
            _ => OciError::Io {
                op: "open parent of",
                path: entry.to_owned(),
                source: e,
            },
        })?;
    }
    Ok(cur)
}

fn lstat_at(dir: &OwnedFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name and a writable stat buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `name` (an empty directory included) so a new entry can take its
/// place. A later entry for the same path replaces an earlier one, as in `tar -x`.
fn clear(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        libc::AT_REMOVEDIR
    } else {
        0
    };
    // SAFETY: valid descriptor and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

fn apply_meta(fd: &OwnedFd, m: &Meta) -> io::Result<()> {
    // SAFETY: valid descriptor. Ownership first: chown clears setuid/setgid bits.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), m.uid, m.gid) })?;
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), m.mode & 0o7777) })?;
    let t = libc::timespec {
        tv_sec: m.mtime,
        tv_nsec: 0,
    };
    // SAFETY: valid descriptor and two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), [t, t].as_ptr()) }).map(drop)
}

fn meta_of(h: &tar::Header, path: &Path) -> Result<Meta, OciError> {
    let bad = |why| OciError::Unsafe {
        path: path.to_owned(),
        why,
    };
    // Empty numeric fields (some writers leave them blank) read as 0 / 0644.
    let mode = h.mode().unwrap_or(0o644);
    let uid = h.uid().unwrap_or(0);
    let gid = h.gid().unwrap_or(0);
    let mtime = h.mtime().unwrap_or(0);
    Ok(Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| bad("uid out of range"))?,
        gid: u32::try_from(gid).map_err(|_| bad("gid out of range"))?,
        mtime: i64::try_from(mtime).unwrap_or(0),
    })
}

fn extract<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<(Vec<OsString>, Meta)>,
    stats: &mut UnpackStats,
) -> Result<(), OciError> {
    let path = entry
        .path()
        .map_err(|e| OciError::Invalid(format!("layer entry path: {e}")))?
        .into_owned();
    let mut comps = components(&path)?;
    let Some(leaf) = comps.pop() else {
        return Ok(()); // the layer root itself
    };
    let kind = entry.header().entry_type();
    let meta = meta_of(entry.header(), &path)?;
    let leaf_bytes = leaf.as_bytes();
    let parent = walk(root, &comps, true, &path)?;
    let pfd = parent.as_raw_fd();
    stats.entries += 1;

    if leaf_bytes == OPAQUE_MARKER {
        // SAFETY: valid descriptor of a directory, NUL-terminated name, one-byte value.
        let r = unsafe {
            libc::fsetxattr(
                pfd,
                OPAQUE_XATTR.as_ptr().cast(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        return cvt(r).map(drop).map_err(io_err("mark opaque", &path));
    }
    if let Some(hidden) = leaf_bytes.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` metadata (aufs hard-link dirs): not content.
            tracing::warn!(path = %path.display(), "skipping aufs metadata in layer");
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(OciError::Unsafe {
                path,
                why: "malformed whiteout",
            });
        }
        let name = cstring(OsStr::from_bytes(hidden))?;
        clear(&parent, &name).map_err(io_err("replace", &path))?;
        // SAFETY: valid descriptor and name; a 0/0 character device is overlayfs's whiteout.
        let r = unsafe { libc::mknodat(pfd, name.as_ptr(), libc::S_IFCHR, 0) };
        return cvt(r).map(drop).map_err(io_err("whiteout", &path));
    }

    let name = cstring(&leaf)?;
    match kind {
        tar::EntryType::Directory => {
            match lstat_at(&parent, &name).map_err(io_err("stat", &path))? {
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                _ => {
                    clear(&parent, &name).map_err(io_err("replace", &path))?;
                    // SAFETY: valid descriptor and NUL-terminated name.
                    cvt(unsafe { libc::mkdirat(pfd, name.as_ptr(), 0o700) })
                        .map_err(io_err("mkdir", &path))?;
                }
            }
            comps.push(leaf);
            dirs.push((comps, meta));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            clear(&parent, &name).map_err(io_err("replace", &path))?;
            // SAFETY: valid descriptor and name; O_EXCL|O_NOFOLLOW never opens an existing
            // file or a symlink.
            let fd = cvt(unsafe {
                libc::openat(
                    pfd,
                    name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            })
            .map_err(io_err("create", &path))?;
            // SAFETY: `fd` was just opened and is owned by nobody else.
            let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            stats.size += io::copy(entry, &mut file).map_err(io_err("write", &path))?;
            let fd = OwnedFd::from(file);
            apply_meta(&fd, &meta).map_err(io_err("set metadata of", &path))?;
            set_xattrs(&fd, entry, &path);
        }
        tar::EntryType::Symlink => {
            // The target is stored as is: it is never followed here, and inside the sandbox
            // it resolves within the sandbox's root.
            let target = entry
                .link_name_bytes()
                .ok_or(OciError::Unsafe {
                    path: path.clone(),
                    why: "symlink without a target",
                })?
                .into_owned();
            let target = cstring(OsStr::from_bytes(&target))?;
            clear(&parent, &name).map_err(io_err("replace", &path))?;
            // SAFETY: valid descriptor and NUL-terminated strings.
            cvt(unsafe { libc::symlinkat(target.as_ptr(), pfd, name.as_ptr()) })
                .map_err(io_err("symlink", &path))?;
            // SAFETY: valid descriptor and name; the link itself, not its target.
            cvt(unsafe {
                libc::fchownat(
                    pfd,
                    name.as_ptr(),
                    meta.uid,
                    meta.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(io_err("chown", &path))?;
            let t = libc::timespec {
                tv_sec: meta.mtime,
                tv_nsec: 0,
            };
            // SAFETY: valid descriptor, name and two timespecs; the link itself.
            cvt(unsafe {
                libc::utimensat(
                    pfd,
                    name.as_ptr(),
                    [t, t].as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(io_err("set mtime of", &path))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(|e| OciError::Invalid(format!("hard link target: {e}")))?
                .ok_or(OciError::Unsafe {
                    path: path.clone(),
                    why: "hard link without a target",
                })?
                .into_owned();
            let mut tcomps = components(&target).map_err(|_| OciError::Unsafe {
                path: path.clone(),
                why: "hard link target outside the layer",
            })?;
            let tleaf = tcomps.pop().ok_or(OciError::Unsafe {
                path: path.clone(),
                why: "hard link to the layer root",
            })?;
            let tparent = walk(root, &tcomps, false, &path)?;
            let tname = cstring(&tleaf)?;
            clear(&parent, &name).map_err(io_err("replace", &path))?;
            // SAFETY: valid descriptors and names; flags 0 links a symlink itself, never
            // its target.
            cvt(unsafe {
                libc::linkat(tparent.as_raw_fd(), tname.as_ptr(), pfd, name.as_ptr(), 0)
            })
            .map_err(io_err("hard link", &path))?;
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = entry.header().device_major().ok().flatten().unwrap_or(1);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(1);
            if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                clear(&parent, &name).map_err(io_err("replace", &path))?;
                // SAFETY: valid descriptor and name; the 0/0 whiteout form only.
                let r = unsafe { libc::mknodat(pfd, name.as_ptr(), libc::S_IFCHR, 0) };
                return cvt(r).map(drop).map_err(io_err("whiteout", &path));
            }
            stats.skipped_devices += 1;
            tracing::warn!(path = %path.display(), major, minor, "skipping a device node in an image layer");
        }
        tar::EntryType::Fifo => {
            clear(&parent, &name).map_err(io_err("replace", &path))?;
            // SAFETY: valid descriptor and NUL-terminated name.
            cvt(unsafe {
                libc::mknodat(pfd, name.as_ptr(), libc::S_IFIFO | (meta.mode & 0o777), 0)
            })
            .map_err(io_err("mkfifo", &path))?;
            // SAFETY: valid descriptor and name; a fifo is not a symlink.
            cvt(unsafe { libc::fchownat(pfd, name.as_ptr(), meta.uid, meta.gid, 0) })
                .map_err(io_err("chown", &path))?;
        }
        other => {
            tracing::debug!(path = %path.display(), kind = ?other, "skipping tar entry");
        }
    }
    Ok(())
}

/// File capabilities (`security.capability`, e.g. on ping) and `user.*` xattrs from PAX
/// headers; others (`trusted.*`, which overlayfs interprets) are never set from an image.
fn set_xattrs<R: Read>(fd: &OwnedFd, entry: &mut tar::Entry<'_, R>, path: &Path) {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return;
    };
    for ext in exts.flatten() {
        let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if !(key == b"security.capability" || key.starts_with(b"user.")) {
            continue;
        }
        let Ok(ckey) = CString::new(key) else {
            continue;
        };
        let v = ext.value_bytes();
        // SAFETY: valid descriptor, NUL-terminated key, value buffer of its length.
        let r = unsafe {
            libc::fsetxattr(fd.as_raw_fd(), ckey.as_ptr(), v.as_ptr().cast(), v.len(), 0)
        };
        if r != 0 {
            tracing::warn!(path = %path.display(), error = %io::Error::last_os_error(), "could not set an xattr from the layer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Builds a tar with raw headers (so unsafe names can be written), every entry owned by
    /// the given uid and gid.
    struct T(Vec<u8>, (u32, u32));

    impl T {
        /// Entries owned by 1234:4321: unpacking them needs root (chown).
        fn new() -> Self {
            Self(Vec::new(), (1234, 4321))
        }
        /// Entries owned by the user running the test, for tests where the owner does not
        /// matter: they run without root.
        fn mine() -> Self {
            let ids = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            Self(Vec::new(), ids)
        }
        fn entry(mut self, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_ustar();
            {
                let raw = h.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            h.set_uid(self.1.0.into());
            h.set_gid(self.1.1.into());
            h.set_mtime(1_000_000);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(name, tar::EntryType::Regular, "", data)
        }
        fn done(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    fn unpack_bytes(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, OciError>) {
        let d = tempfile::tempdir().expect("tempdir");
        let dest = d.path().join("layer");
        fs::create_dir(&dest).expect("mkdir");
        let r = unpack_layer(tar, &dest);
        (d, r)
    }

    fn sample() -> Vec<u8> {
        T::new()
            .entry("etc/", tar::EntryType::Directory, "", b"")
            .file("etc/hello", b"hi")
            .entry("etc/sh", tar::EntryType::Symlink, "/bin/busybox", b"")
            .entry("etc/hard", tar::EntryType::Link, "etc/hello", b"")
            .file("etc/.wh.gone", b"")
            .entry("opq/", tar::EntryType::Directory, "", b"")
            .file("opq/.wh..wh..opq", b"")
            .done()
    }

    fn check_sample(root: &Path) {
        let l = root.join("layer");
        assert_eq!(fs::read(l.join("etc/hello")).expect("read"), b"hi");
        let m = fs::metadata(l.join("etc/hello")).expect("stat");
        assert_eq!((m.uid(), m.gid()), (1234, 4321));
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(m.nlink(), 2, "hard link");
        assert_eq!(
            fs::read_link(l.join("etc/sh")).expect("link"),
            Path::new("/bin/busybox")
        );
        let wh = fs::symlink_metadata(l.join("etc/gone")).expect("whiteout");
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(!l.join("etc/.wh.gone").exists());
        assert!(!l.join("opq/.wh..wh..opq").exists());
        let mut buf = [0u8; 4];
        let c = CString::new(l.join("opq").as_os_str().as_bytes()).expect("c");
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                OPAQUE_XATTR.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                4,
            )
        };
        assert_eq!((n, buf[0]), (1, b'y'), "opaque xattr");
        let d = fs::metadata(l.join("etc")).expect("stat dir");
        assert_eq!(
            (d.uid(), d.mode() & 0o777, d.mtime()),
            (1234, 0o755, 1_000_000)
        );
    }

    #[test]
    #[ignore = "needs root (chown to the layer's owners, trusted.* xattrs): run by scripts/test.sh as root"]
    fn plain_gzip_and_zstd_layers_unpack_with_whiteouts_and_diff_id() {
        let tar = sample();
        let want = super::super::sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gz");
        let gz = gz.finish().expect("gz");
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        for blob in [tar.clone(), gz, zst] {
            let (d, r) = unpack_bytes(&blob);
            let stats = r.expect("unpack");
            assert_eq!(stats.diff_id, want, "diff id is of the uncompressed tar");
            assert_eq!(stats.size, 2);
            check_sample(d.path());
        }
    }

    fn refused(tar: Vec<u8>, why_part: &str) -> tempfile::TempDir {
        let (d, r) = unpack_bytes(&tar);
        match r {
            Err(OciError::Unsafe { why, .. }) => assert!(why.contains(why_part), "{why}"),
            other => panic!("expected refusal ({why_part}), got {other:?}"),
        }
        d
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let d = refused(T::new().file("../x", b"evil").done(), "..");
        assert!(!d.path().join("x").exists());
        refused(T::new().file("a/../../x", b"evil").done(), "..");
        refused(T::new().file("/abs", b"evil").done(), "absolute");
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let target = outside.path().to_str().expect("utf8").to_owned();
        let tar = T::mine()
            .entry("evil", tar::EntryType::Symlink, &target, b"")
            .file("evil/passwd", b"pwned")
            .done();
        let d = refused(tar, "symlink");
        assert!(!outside.path().join("passwd").exists(), "wrote outside");
        assert!(fs::symlink_metadata(d.path().join("layer/evil")).is_ok());
    }

    #[test]
    fn hard_links_outside_the_layer_are_refused() {
        refused(
            T::new()
                .entry("x", tar::EntryType::Link, "../../x", b"")
                .done(),
            "outside",
        );
        refused(
            T::new()
                .entry("x", tar::EntryType::Link, "/etc/passwd", b"")
                .done(),
            "outside",
        );
        // Through a symlinked directory inside the layer: refused as well.
        refused(
            T::mine()
                .entry("d", tar::EntryType::Symlink, "/etc", b"")
                .entry("x", tar::EntryType::Link, "d/passwd", b"")
                .done(),
            "symlink",
        );
    }

    #[test]
    #[ignore = "needs root (chown to the layer's owners): run by scripts/test.sh as root"]
    fn device_nodes_are_skipped_except_whiteouts() {
        let mut tar = T::new();
        tar = tar.entry("dev/", tar::EntryType::Directory, "", b"");
        let mut h = tar::Header::new_ustar();
        h.set_path("dev/sda").expect("path");
        h.set_entry_type(tar::EntryType::Block);
        h.set_device_major(8).expect("major");
        h.set_device_minor(0).expect("minor");
        h.set_size(0);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.0.extend_from_slice(h.as_bytes());
        let mut w = tar::Header::new_ustar();
        w.set_path("dev/wh").expect("path");
        w.set_entry_type(tar::EntryType::Char);
        w.set_device_major(0).expect("major");
        w.set_device_minor(0).expect("minor");
        w.set_size(0);
        w.set_mode(0o600);
        w.set_uid(0);
        w.set_gid(0);
        w.set_mtime(0);
        w.set_cksum();
        tar.0.extend_from_slice(w.as_bytes());
        let (d, r) = unpack_bytes(&tar.done());
        assert_eq!(r.expect("unpack").skipped_devices, 1);
        assert!(fs::symlink_metadata(d.path().join("layer/dev/sda")).is_err());
        let wh = fs::symlink_metadata(d.path().join("layer/dev/wh")).expect("whiteout");
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    }

    #[test]
    fn malformed_whiteouts_are_refused() {
        refused(T::new().file(".wh..", b"").done(), "whiteout");
        refused(T::new().file("a/.wh...", b"").done(), "whiteout");
    }
}
