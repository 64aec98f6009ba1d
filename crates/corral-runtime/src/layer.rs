//! Packing an overlayfs upper directory into a compressed tar and back.
//!
//! Overlayfs marks deletions with whiteouts (character devices 0/0) and replaced directories
//! with the `trusted.overlay.opaque` xattr; tar libraries keep neither. Archives use the OCI
//! layer convention instead (`.wh.<name>` files and `.wh..wh..opq` markers), translated on
//! the way in and out, so an archive is also a valid OCI layer diff. Unpacking refuses paths
//! that would escape the destination (absolute, `..`, through symlinks), and device nodes
//! other than whiteouts.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::sys::stat::{FileStat, SFlag};

use crate::beneath::Tree;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque\0";
const ZSTD_LEVEL: i32 = 3;

/// Errors packing or unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unsafe entry {0:?} in layer archive")]
    Unsafe(PathBuf),
    #[error("{0} kept changing between a directory and a link while it was copied")]
    Changing(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let path = path.to_owned();
    move |source| LayerError::Io { op, path, source }
}

/// Whether the directory open at `dir` is an opaque overlayfs directory.
fn is_opaque(dir: &Tree) -> bool {
    let mut buf = [0u8; 4];
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the given length.
    let n = unsafe {
        libc::fgetxattr(
            dir.raw_fd(),
            OPAQUE_XATTR.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Packs each `(name, upper dir)` under `name/` into one zstd-compressed tar at `out`.
///
/// The upper dirs are the sandbox's, possibly while it runs (a snapshot of a running sandbox
/// on plain disks): each directory is walked by fd and each file opened relative to its
/// directory's fd without following links ([`Tree`]), so a directory swapped for a link
/// mid-walk fails the pack instead of packing host files. Links are stored as links.
pub fn pack(layers: &[(&str, &Path)], out: &Path) -> Result<u64, LayerError> {
    let file = fs::File::create(out).map_err(io_err("create", out))?;
    let enc = zstd::Encoder::new(file, ZSTD_LEVEL).map_err(io_err("zstd", out))?;
    let mut tar = tar::Builder::new(enc);
    for (name, dir) in layers {
        match Tree::open(dir) {
            Ok(tree) => pack_dir(&mut tar, &tree, Path::new(name))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("open", dir)(e)),
        }
    }
    let enc = tar.into_inner().map_err(io_err("finish tar", out))?;
    let file = enc.finish().map_err(io_err("finish zstd", out))?;
    file.sync_all().map_err(io_err("fsync", out))?;
    Ok(fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

/// [`pack`] of the upper dirs `layer/upper/<name>` of a sandbox's layer dir, one per name.
pub fn pack_uppers(layer: &Path, names: &[String], out: &Path) -> Result<u64, LayerError> {
    let uppers: Vec<(&str, PathBuf)> = names
        .iter()
        .map(|n| (n.as_str(), layer.join("upper").join(n)))
        .collect();
    let refs: Vec<(&str, &Path)> = uppers.iter().map(|(n, p)| (*n, p.as_path())).collect();
    pack(&refs, out)
}

/// A tar header for an entry with `st`'s owner, mode and mtime.
fn header(st: &FileStat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h
}

fn pack_dir<W: io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Tree,
    name: &Path,
) -> Result<(), LayerError> {
    let path = dir.path().to_owned();
    let st = dir.stat().map_err(io_err("stat", &path))?;
    let mut h = header(&st, tar::EntryType::Directory, 0);
    tar.append_data(&mut h, name, io::empty())
        .map_err(io_err("pack", &path))?;
    if is_opaque(dir) {
        append_marker(tar, &name.join(OPAQUE_MARKER), &path)?;
    }
    for entry in dir.names().map_err(io_err("readdir", &path))? {
        let child = name.join(&entry);
        let child_path = path.join(&entry);
        // A running sandbox may replace the entry between the `lstat` and the open (a
        // directory by a link, say): the open then fails without following anything, and
        // the entry is looked at again. One deleted meanwhile is left out, as a snapshot
        // taken a moment later would.
        let mut tries = 0;
        loop {
            match pack_entry(tar, dir, &entry, &child) {
                Ok(()) | Err(Attempt::Gone) => break,
                Err(Attempt::Raced) if tries < RACE_RETRIES => tries += 1,
                Err(Attempt::Raced) => return Err(LayerError::Changing(child_path)),
                Err(Attempt::Failed(e)) => return Err(io_err("pack", &child_path)(e)),
                Err(Attempt::Nested(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// How often an entry that keeps changing type is looked at again.
const RACE_RETRIES: u32 = 8;

/// Why an entry was not packed.
enum Attempt {
    /// Deleted meanwhile: left out.
    Gone,
    /// Replaced meanwhile by something of another type (nothing written yet): look again.
    Raced,
    Failed(io::Error),
    /// A failure below a directory already (partly) written.
    Nested(LayerError),
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            Attempt::Gone
        } else if crate::beneath::is_link_error(&e) || e.raw_os_error() == Some(libc::EINVAL) {
            // ELOOP/ENOTDIR: a link or file where a directory or file was; EINVAL from
            // readlink: no longer a link.
            Attempt::Raced
        } else if e.kind() == io::ErrorKind::InvalidInput {
            // `open_file` found something other than a regular file.
            Attempt::Raced
        } else {
            Attempt::Failed(e)
        }
    }
}

/// Packs one entry of `dir` as what `lstat` says it is now.
fn pack_entry<W: io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Tree,
    entry: &std::ffi::OsStr,
    child: &Path,
) -> Result<(), Attempt> {
    let Some(st) = dir.lstat(Path::new(entry))? else {
        return Err(Attempt::Gone);
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFDIR {
        let sub = dir.open_dir(Path::new(entry))?;
        pack_dir(tar, &sub, child).map_err(Attempt::Nested)?;
    } else if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
        let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
        wh.push(entry);
        let parent = child.parent().unwrap_or(Path::new(""));
        append_marker(tar, &parent.join(wh), child).map_err(Attempt::Nested)?;
    } else if kind == SFlag::S_IFREG {
        let (file, st) = dir.open_file(entry)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut h = header(&st, tar::EntryType::Regular, size);
        // Exactly the size fstat gave: a file growing meanwhile is cut there; one
        // shrinking is an error (the archive would be corrupt).
        tar.append_data(&mut h, child, file.take(size))
            .map_err(|e| Attempt::Nested(io_err("pack", child)(e)))?;
    } else if kind == SFlag::S_IFLNK {
        let target = dir.read_link(entry)?;
        let mut h = header(&st, tar::EntryType::Symlink, 0);
        tar.append_link(&mut h, child, &target)
            .map_err(|e| Attempt::Nested(io_err("pack", child)(e)))?;
    }
    // Sockets, fifos and device nodes are not carried over (nothing in a sandbox can make
    // device nodes; sockets and fifos are runtime objects).
    Ok(())
}

fn append_marker<W: io::Write>(
    tar: &mut tar::Builder<W>,
    name: &Path,
    src: &Path,
) -> Result<(), LayerError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, name, io::empty())
        .map_err(io_err("pack marker", src))
}

/// Unpacks an archive made by [`pack`] (or an OCI layer) into `dest`, translating OCI
/// whiteouts into overlayfs ones. The archive holds a sandbox's files, so it is unpacked as
/// an untrusted image layer is ([`crate::oci::unpack`]): nothing is written through a link,
/// `..` and absolute names are refused, device nodes other than whiteouts are skipped.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), LayerError> {
    fs::create_dir_all(dest).map_err(io_err("mkdir", dest))?;
    let file = fs::File::open(archive).map_err(io_err("open", archive))?;
    crate::oci::unpack::unpack_layer(file, dest).map_err(|e| match e {
        crate::oci::OciError::Unsafe { path, .. } => LayerError::Unsafe(path),
        e => LayerError::Io {
            op: "unpack",
            path: archive.to_owned(),
            source: io::Error::other(e),
        },
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};

    fn cpath(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).expect("path")
    }

    fn make_whiteout(path: &Path) {
        // SAFETY: valid C string; a 0/0 character device is overlayfs's whiteout.
        let r = unsafe { libc::mknod(cpath(path).as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    fn set_opaque(dir: &Path) {
        // SAFETY: valid C strings and a one-byte value.
        let r = unsafe {
            libc::lsetxattr(
                cpath(dir).as_ptr(),
                OPAQUE_XATTR.as_ptr().cast(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    fn opaque(dir: &Path) -> bool {
        is_opaque(&Tree::open(dir).expect("open"))
    }

    #[test]
    #[ignore = "needs root (whiteouts, trusted.* xattrs): run by scripts/test.sh as root"]
    fn round_trip_keeps_files_links_whiteouts_and_opaque_dirs() {
        let src = tempfile::tempdir().expect("tempdir");
        let root = src.path().join("root");
        fs::create_dir_all(root.join("home/daytona/sub")).expect("mkdir");
        fs::write(root.join("home/daytona/a.txt"), b"hello").expect("write");
        symlink("a.txt", root.join("home/daytona/link")).expect("symlink");
        make_whiteout(&root.join("home/daytona/deleted"));
        set_opaque(&root.join("home/daytona/sub"));
        let out = src.path().join("layer.tar.zst");
        pack(&[("root", &root)], &out).expect("pack");

        let dst = tempfile::tempdir().expect("tempdir");
        unpack(&out, dst.path()).expect("unpack");
        let r = dst.path().join("root/home/daytona");
        assert_eq!(fs::read(r.join("a.txt")).expect("read"), b"hello");
        assert_eq!(
            fs::read_link(r.join("link")).expect("link"),
            PathBuf::from("a.txt")
        );
        let wh = fs::symlink_metadata(r.join("deleted")).expect("whiteout");
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(opaque(&r.join("sub")));
    }

    #[test]
    fn pack_stores_linked_dirs_as_links_and_never_reads_through_them() {
        let src = tempfile::tempdir().expect("tempdir");
        let root = src.path().join("root");
        let host = src.path().join("host");
        fs::create_dir_all(root.join("home")).expect("mkdir");
        fs::create_dir_all(&host).expect("mkdir");
        fs::write(host.join("secret"), b"host secret").expect("write");
        symlink(&host, root.join("home/escape")).expect("symlink");
        symlink("../../host/secret", root.join("home/rel")).expect("symlink");
        fs::write(root.join("home/mine"), b"sandbox file").expect("write");
        let out = src.path().join("layer.tar.zst");
        pack(&[("root", &root)], &out).expect("pack");

        let dec = zstd::Decoder::new(fs::File::open(&out).expect("open")).expect("zstd");
        let mut names = Vec::new();
        for e in tar::Archive::new(dec).entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut body = Vec::new();
            e.read_to_end(&mut body).expect("read");
            assert_ne!(body, b"host secret", "a host file was packed");
            names.push((
                e.path().expect("path").display().to_string(),
                e.header().entry_type(),
            ));
        }
        assert!(names.contains(&("root/home/escape".into(), tar::EntryType::Symlink)));
        assert!(names.contains(&("root/home/rel".into(), tar::EntryType::Symlink)));
        assert!(names.contains(&("root/home/mine".into(), tar::EntryType::Regular)));
        assert!(
            !names.iter().any(|(n, _)| n.contains("secret")),
            "{names:?}"
        );
    }

    /// An archive whose entries try to write outside the destination through a link the
    /// archive itself plants, and through `..`.
    #[test]
    fn unpack_never_writes_through_a_planted_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host");
        fs::create_dir_all(&host).expect("mkdir");
        fs::write(host.join("passwd"), b"host").expect("write");
        for (second, data) in [
            ("root/x/passwd", &b"evil"[..]),
            ("root/x/.wh.passwd", &b""[..]),
            ("root/x/.wh..wh..opq", &b""[..]),
            ("root/../../host/passwd", &b"evil"[..]),
        ] {
            let out = dir.path().join("evil.tar.zst");
            {
                let enc = zstd::Encoder::new(fs::File::create(&out).expect("create"), 1)
                    .expect("zstd")
                    .auto_finish();
                let mut tar = tar::Builder::new(enc);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                tar.append_link(&mut h, "root/x", &host).expect("link");
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                // `append_data` refuses `..` itself; write the name into the header raw.
                let name = second.as_bytes();
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                tar.append(&h, data).expect("entry");
                tar.finish().expect("finish");
            }
            let dest = dir.path().join("dest");
            let _ = fs::remove_dir_all(&dest);
            let r = unpack(&out, &dest);
            assert!(r.is_err(), "{second}: unpack succeeded");
            assert_eq!(
                fs::read(host.join("passwd")).expect("read"),
                b"host",
                "{second}"
            );
            assert!(!opaque(&host), "{second}");
        }
    }
}
