//! Packing an overlayfs upper directory into a compressed tar and back.
//!
//! Overlayfs marks deletions with whiteouts (character devices 0/0) and replaced directories
//! with the `trusted.overlay.opaque` xattr; tar libraries keep neither. Archives use the OCI
//! layer convention instead (`.wh.<name>` files and `.wh..wh..opq` markers), translated on
//! the way in and out, so an archive is also a valid OCI layer diff. Unpacking refuses paths
//! that would escape the destination (absolute, `..`, through symlinks), and device nodes
//! other than whiteouts.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

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
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let path = path.to_owned();
    move |source| LayerError::Io { op, path, source }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = cpath(dir) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            OPAQUE_XATTR.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let c = cpath(dir)?;
    // SAFETY: valid C strings and a one-byte value.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            OPAQUE_XATTR.as_ptr().cast(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn make_whiteout(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: valid C string; a 0/0 character device is overlayfs's whiteout.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Packs each `(name, upper dir)` under `name/` into one zstd-compressed tar at `out`.
pub fn pack(layers: &[(&str, &Path)], out: &Path) -> Result<u64, LayerError> {
    let file = fs::File::create(out).map_err(io_err("create", out))?;
    let enc = zstd::Encoder::new(file, ZSTD_LEVEL).map_err(io_err("zstd", out))?;
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(false);
    for (name, dir) in layers {
        if dir.is_dir() {
            pack_dir(&mut tar, dir, Path::new(name))?;
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

fn pack_dir<W: io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
) -> Result<(), LayerError> {
    tar.append_path_with_name(dir, name)
        .map_err(io_err("pack", dir))?;
    if is_opaque(dir) {
        append_marker(tar, &name.join(OPAQUE_MARKER), dir)?;
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err("readdir", dir))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let child = name.join(e.file_name());
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            pack_dir(tar, &path, &child)?;
        } else if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh.push(e.file_name());
            append_marker(tar, &name.join(wh), &path)?;
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(&path, &child)
                .map_err(io_err("pack", &path))?;
        }
        // Sockets, fifos and device nodes are not carried over (nothing in a sandbox can make
        // device nodes; sockets and fifos are runtime objects).
    }
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

/// Whether a relative archive path stays inside the destination.
fn safe_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Unpacks an archive made by [`pack`] (or an OCI layer) into `dest`, translating OCI
/// whiteouts into overlayfs ones.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), LayerError> {
    fs::create_dir_all(dest).map_err(io_err("mkdir", dest))?;
    let file = fs::File::open(archive).map_err(io_err("open", archive))?;
    let dec = zstd::Decoder::new(file).map_err(io_err("zstd", archive))?;
    let mut tar = tar::Archive::new(dec);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read entry", archive))?;
        let rel = entry
            .path()
            .map_err(io_err("entry path", archive))?
            .into_owned();
        if !safe_relative(&rel) {
            return Err(LayerError::Unsafe(rel));
        }
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        if file_name == OPAQUE_MARKER {
            fs::create_dir_all(&parent).map_err(io_err("mkdir", &parent))?;
            set_opaque(&parent).map_err(io_err("set opaque", &parent))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(LayerError::Unsafe(rel));
            }
            fs::create_dir_all(&parent).map_err(io_err("mkdir", &parent))?;
            let target = parent.join(hidden);
            let _ = fs::remove_file(&target);
            make_whiteout(&target).map_err(io_err("whiteout", &target))?;
            continue;
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link
            | tar::EntryType::Continuous
            | tar::EntryType::GNULongName
            | tar::EntryType::XHeader => {}
            _ => return Err(LayerError::Unsafe(rel)),
        }
        // `unpack_in` refuses paths that would leave `dest`, including through symlinks.
        let inside = entry
            .unpack_in(dest)
            .map_err(io_err("unpack", &dest.join(&rel)))?;
        if !inside {
            return Err(LayerError::Unsafe(rel));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn round_trip_keeps_files_links_whiteouts_and_opaque_dirs() {
        let src = tempfile::tempdir().expect("tempdir");
        let root = src.path().join("root");
        fs::create_dir_all(root.join("home/daytona/sub")).expect("mkdir");
        fs::write(root.join("home/daytona/a.txt"), b"hello").expect("write");
        symlink("a.txt", root.join("home/daytona/link")).expect("symlink");
        make_whiteout(&root.join("home/daytona/deleted")).expect("whiteout");
        set_opaque(&root.join("home/daytona/sub")).expect("opaque");
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
        assert!(is_opaque(&r.join("sub")));
    }

    #[test]
    fn traversal_is_refused() {
        for bad in ["../evil", "/etc/evil", "a/../../evil"] {
            assert!(!safe_relative(Path::new(bad)), "{bad}");
        }
        assert!(safe_relative(Path::new("root/home/x")));
    }
}
