//! `POST /corral/untar?dest=/abs/dir[&owner=..][&group=..][&mode=octal]` (corral's own, not
//! Daytona's): unpacks the tar stream of the request body under `dest`, as a Dockerfile `COPY`
//! writes files. Image builds use it to copy files of the uploaded build context into the
//! build sandbox. Answers `{"files": n}` (the non-directory entries written). The query and
//! the answer are `corral_agent_proto`'s `UntarQuery` and `UntarAnswer`.
//!
//! - `dest` and its missing parents are created (0755); so are directories the archive
//!   implies but does not list.
//! - Regular files, directories, symlinks and hard links to earlier entries of the same
//!   archive. Names may start with `./`; an entry `.` is `dest` itself (its mode, owner and
//!   mtime apply only when this request created `dest`, as Docker leaves an existing
//!   destination's metadata alone). Absolute names, `..` components, hard links to anything
//!   else, devices and fifos are refused with a 400 naming the entry.
//! - Everything written (and every directory created) is owned by `root:root`, or by
//!   `owner`/`group` (names or numbers, looked up in the sandbox's own `/etc/passwd` and
//!   `/etc/group`; an owner given alone brings its primary group, a number alone the same
//!   number as gid, as Docker's `--chown` does). Modes come from the entries unless `mode`
//!   is given (Docker's `--chmod` applies to files and directories); mtimes are kept.
//! - An existing file, symlink or hard link in the way is replaced; an existing directory
//!   stays (its mode and owner are updated), as does an existing symlink to a directory
//!   where the archive has a directory. A directory is never replaced by a file.
//!
//! The body is read as it arrives (never buffered whole). A failure answers the error after
//! reading the rest of the body; what was written before it stays (a failed build step
//! discards its sandbox anyway).
//!
//! The agent runs as root, like the file API, which can write and chown anything in the
//! sandbox already: this grants nothing new.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::Query;
use corral_agent_proto::{UntarAnswer, UntarQuery};
use futures_util::TryStreamExt as _;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::ApiError;
use super::files::safe::{self, Last, NewDirs};
use super::files::{blocking, io_error, parse_mode};

/// Where and how an archive is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// An absolute directory.
    pub dest: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Replaces every entry's mode when set.
    pub mode: Option<u32>,
}

/// `POST /corral/untar`.
pub async fn untar(
    Query(query): Query<UntarQuery>,
    body: Body,
) -> Result<Json<UntarAnswer>, ApiError> {
    let dest = match query.dest.as_deref() {
        Some(d) if d.starts_with('/') && !d.contains('\0') => PathBuf::from(d),
        Some(d) if !d.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "dest must be an absolute path, not {d:?}"
            )));
        }
        _ => return Err(ApiError::bad_request("dest is required")),
    };
    let mode = match query.mode.as_deref() {
        None | Some("") => None,
        Some(m) => Some(parse_mode(m)?),
    };
    let owner = query.owner.filter(|s| !s.is_empty());
    let group = query.group.filter(|s| !s.is_empty());
    let stream = body.into_data_stream().map_err(io::Error::other);
    // Made here: the bridge needs the runtime's handle.
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let files = blocking(move || {
        let read = |p: &str| safe::read_text(Path::new(p)).unwrap_or_default();
        let done = owner_ids(
            owner.as_deref(),
            group.as_deref(),
            &read("/etc/passwd"),
            &read("/etc/group"),
        )
        .map_err(ApiError::bad_request)
        .and_then(|(uid, gid)| {
            unpack(
                &mut reader,
                &Target {
                    dest,
                    uid,
                    gid,
                    mode,
                },
            )
        });
        // The rest of the body (the archive's end blocks, or what follows a bad entry), so
        // the client gets the answer rather than a reset connection.
        let _ = io::copy(&mut reader, &mut io::sink());
        done
    })
    .await?;
    Ok(Json(UntarAnswer {
        files: files as u64,
    }))
}

/// The uid and gid `--chown=owner[:group]` means: root when neither is given; an owner by
/// name brings its primary group, by number the same number, unless a group is given.
pub(crate) fn owner_ids(
    owner: Option<&str>,
    group: Option<&str>,
    passwd: &str,
    groups: &str,
) -> Result<(u32, u32), String> {
    let resolve = |spec: &str| crate::runas::resolve(spec, passwd, groups);
    match (owner, group) {
        (None, None) => Ok((0, 0)),
        (Some(o), None) => match o.parse::<u32>() {
            Ok(n) => Ok((n, n)),
            Err(_) => resolve(o).map(|id| (id.uid, id.gid)),
        },
        (Some(o), Some(g)) => resolve(&format!("{o}:{g}")).map(|id| (id.uid, id.gid)),
        (None, Some(g)) => resolve(&format!("0:{g}")).map(|id| (0, id.gid)),
    }
}

fn refused(name: &[u8], why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "refusing tar entry {:?}: {why}",
        String::from_utf8_lossy(name)
    ))
}

/// An entry's name as a relative path below the destination (empty: the destination
/// itself), or why it is refused.
fn relative(name: &[u8]) -> Result<PathBuf, &'static str> {
    if name.starts_with(b"/") {
        return Err("absolute names are not allowed");
    }
    let mut out = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("names with '..' are not allowed"),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

fn timespec(mtime: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}

/// Removes a file, symlink or other non-directory `file` of `dir` (shown as `shown`), so an
/// entry can take its place.
fn clear(dir: BorrowedFd<'_>, file: &OsStr, shown: &Path, name: &[u8]) -> Result<(), ApiError> {
    match safe::lstat_at(dir, file) {
        Ok(m) if safe::is_dir(&m) => Err(refused(
            name,
            &format!("{} is a directory and cannot be replaced", shown.display()),
        )),
        Ok(_) => unlinkat(dir, file, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| io_error("replace", shown, &e.into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("stat", shown, &e)),
    }
}

/// An error about entry `name`, keeping the status of `e`.
fn about(name: &[u8], e: ApiError) -> ApiError {
    ApiError {
        message: format!(
            "refusing tar entry {:?}: {}",
            String::from_utf8_lossy(name),
            e.message
        ),
        ..e
    }
}

/// Unpacks the archive `reader` carries under `t.dest`; the number of non-directory entries
/// written. Reads no further than the archive's end.
///
/// Paths are resolved as every file route resolves them ([`safe`]): symlinks in the
/// destination and below it are followed (e.g. `lib -> usr/lib`), `/proc` magic links are
/// refused, and each entry is written relative to the descriptor of its directory, never
/// through a symlink at its own name.
pub(crate) fn unpack(reader: impl Read, t: &Target) -> Result<usize, ApiError> {
    let bad_tar = |e: io::Error| ApiError::bad_request(format!("the tar stream is invalid: {e}"));
    let new_dirs = NewDirs {
        mode: 0o755,
        uid: t.uid,
        gid: t.gid,
    };
    let (dest, created_dest) = safe::ensure_dir(&t.dest, new_dirs)?;
    // The directory the previous entry went into (relative), reused while entries stay in it.
    let mut cached: Option<(PathBuf, OwnedFd)> = None;
    // Non-directory entries written, which hard links may name.
    let mut written: HashSet<PathBuf> = HashSet::new();
    // Directory mtimes, set last: adding entries changes them.
    let mut mtimes: Vec<(PathBuf, u64)> = Vec::new();
    let mut files = 0usize;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let name = entry.path_bytes().into_owned();
        let rel = relative(&name).map_err(|why| refused(&name, why))?;
        let path = t.dest.join(&rel);
        let mode = match t.mode {
            Some(m) => m,
            None => entry.header().mode().map_err(bad_tar)? & 0o7777,
        };
        let mtime = entry.header().mtime().unwrap_or(0);
        let (Some(parent_rel), Some(file)) = (rel.parent(), rel.file_name()) else {
            if !kind.is_dir() {
                return Err(refused(&name, "only a directory can name the destination"));
            }
            if created_dest {
                safe::set_owner_and_mode(&dest, Some(t.uid), Some(t.gid), Some(mode))
                    .map_err(|e| io_error("chmod", &path, &e))?;
                mtimes.push((rel, mtime));
            }
            continue;
        };
        let file = file.to_owned();
        // The parents inside the destination, created as needed.
        if cached.as_ref().is_none_or(|(p, _)| p != parent_rel) {
            let (fd, _) = safe::ensure_dir_at(dest.as_fd(), parent_rel, new_dirs)
                .map_err(|e| about(&name, e))?;
            cached = Some((parent_rel.to_owned(), fd));
        }
        let Some((_, dir)) = cached.as_ref() else {
            continue;
        };
        let dir = dir.as_fd();
        match kind {
            tar::EntryType::Directory => {
                let (make, replace) = match safe::lstat_at(dir, &file) {
                    Ok(m) if safe::is_dir(&m) => (false, false),
                    // A link to a directory stays (e.g. `lib -> usr/lib`): entries go through it.
                    Ok(m)
                        if safe::is_symlink(&m)
                            && safe::open_at(
                                dir,
                                Path::new(&file),
                                OFlag::O_PATH | OFlag::O_DIRECTORY,
                                Last::Follow,
                            )
                            .is_ok() =>
                    {
                        continue;
                    }
                    Ok(_) => (true, true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => (true, false),
                    Err(e) => return Err(io_error("stat", &path, &e)),
                };
                if replace {
                    unlinkat(dir, file.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| io_error("replace", &path, &e.into()))?;
                }
                if make {
                    mkdirat(dir, file.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| io_error("create directory", &path, &e.into()))?;
                }
                let d = openat(
                    dir,
                    file.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_error("open directory", &path, &e.into()))?;
                fchown(&d, Some(Uid::from_raw(t.uid)), Some(Gid::from_raw(t.gid)))
                    .map_err(|e| io_error("chown", &path, &e.into()))?;
                fchmod(&d, Mode::from_bits_truncate(mode))
                    .map_err(|e| io_error("chmod", &path, &e.into()))?;
                mtimes.push((rel.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(dir, &file, &path, &name)?;
                let fd = openat(
                    dir,
                    file.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_error("create", &path, &e.into()))?;
                let mut f = File::from(fd);
                let size = entry.size();
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(bad_tar)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n])
                        .map_err(|e| io_error("write", &path, &e))?;
                    total += n as u64;
                }
                if total != size {
                    return Err(bad_tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "entry {:?} ends after {total} of its {size} bytes",
                            String::from_utf8_lossy(&name)
                        ),
                    )));
                }
                std::os::unix::fs::fchown(&f, Some(t.uid), Some(t.gid))
                    .map_err(|e| io_error("chown", &path, &e))?;
                // After the chown, which clears setuid bits.
                f.set_permissions(Permissions::from_mode(mode))
                    .map_err(|e| io_error("chmod", &path, &e))?;
                let ts = timespec(mtime);
                futimens(&f, &ts, &ts)
                    .map_err(|e| io_error("set the mtime of", &path, &io::Error::from(e)))?;
                written.insert(rel.clone());
                files += 1;
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes().filter(|l| !l.is_empty()) else {
                    return Err(refused(&name, "a symlink without a target"));
                };
                clear(dir, &file, &path, &name)?;
                symlinkat(OsStr::from_bytes(&target), dir, file.as_os_str())
                    .map_err(|e| io_error("create symlink", &path, &e.into()))?;
                fchownat(
                    dir,
                    file.as_os_str(),
                    Some(Uid::from_raw(t.uid)),
                    Some(Gid::from_raw(t.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_error("chown", &path, &e.into()))?;
                let ts = timespec(mtime);
                utimensat(
                    dir,
                    file.as_os_str(),
                    &ts,
                    &ts,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io_error("set the mtime of", &path, &e.into()))?;
                written.insert(rel.clone());
                files += 1;
            }
            tar::EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    return Err(refused(&name, "a hard link without a target"));
                };
                let target_rel = relative(&target).map_err(|why| {
                    refused(
                        &name,
                        &format!(
                            "its link target {:?} is unsafe: {why}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                if !written.contains(&target_rel) {
                    return Err(refused(
                        &name,
                        &format!(
                            "a hard link must name an earlier file of the same archive, not {:?}",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                if target_rel != rel {
                    clear(dir, &file, &path, &name)?;
                    let from = t.dest.join(&target_rel);
                    let (Some(from_dir), Some(from_file)) =
                        (target_rel.parent(), target_rel.file_name())
                    else {
                        return Err(refused(&name, "a hard link must name a file"));
                    };
                    let from_dir = safe::open_at(
                        dest.as_fd(),
                        &Path::new(".").join(from_dir),
                        OFlag::O_PATH | OFlag::O_DIRECTORY,
                        Last::Follow,
                    )
                    .map_err(|e| {
                        safe::open_error(
                            "create hard link",
                            dest.as_fd(),
                            from_dir,
                            &from,
                            Last::Follow,
                            &e,
                        )
                    })?;
                    linkat(
                        &from_dir,
                        from_file,
                        dir,
                        file.as_os_str(),
                        AtFlags::empty(),
                    )
                    .map_err(|e| io_error("create hard link", &path, &e.into()))?;
                }
                written.insert(rel.clone());
                files += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(refused(
                    &name,
                    "devices and fifos cannot be copied into a sandbox",
                ));
            }
            other => {
                return Err(refused(
                    &name,
                    &format!(
                        "entries of type {:?} are not supported",
                        other.as_byte() as char
                    ),
                ));
            }
        }
        // Whatever this entry replaced may have been the cached directory or above it.
        if cached.as_ref().is_some_and(|(p, _)| p.starts_with(&rel)) {
            cached = None;
        }
    }
    for (rel, mtime) in mtimes.iter().rev() {
        let path = t.dest.join(rel);
        let ts = timespec(*mtime);
        let set = match (rel.parent(), rel.file_name()) {
            (Some(up), Some(file)) => safe::open_at(
                dest.as_fd(),
                &Path::new(".").join(up),
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Last::Follow,
            )
            .and_then(|d| {
                utimensat(&d, file, &ts, &ts, UtimensatFlags::NoFollowSymlink)
                    .map_err(io::Error::from)
            }),
            _ => utimensat(
                AT_FDCWD,
                &safe::proc_path(&dest),
                &ts,
                &ts,
                UtimensatFlags::FollowSymlink,
            )
            .map_err(io::Error::from),
        };
        set.map_err(|e| io_error("set the mtime of", &path, &e))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1500:1600::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1600:\n";

    /// A raw header for `name`, so tests can write names the `tar` builder refuses.
    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(4242);
        h.set_gid(4242);
        h.set_cksum();
        h
    }

    /// A test entry: name, type, content or link target, mode.
    type Spec<'a> = (&'a str, tar::EntryType, &'a str, u32);

    /// An archive of these entries.
    fn archive(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, mode) in entries {
            let mut h = match kind {
                tar::EntryType::Regular => header(name.as_bytes(), *kind, data.len() as u64, *mode),
                _ => header(name.as_bytes(), *kind, 0, *mode),
            };
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                h.set_link_name(data).expect("link name");
                h.set_cksum();
            }
            out.extend_from_slice(h.as_bytes());
            if *kind == tar::EntryType::Regular {
                out.extend_from_slice(data.as_bytes());
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// A target owned by the user running the test (root in CI), so the chown of what is
    /// written works without root. Tests of other owners are marked as needing root.
    fn target(dir: &Path) -> Target {
        Target {
            dest: dir.join("dest"),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: None,
        }
    }

    use tar::EntryType as E;

    #[test]
    fn owners_resolve_as_docker_chown_does() {
        let ids = |o, g| owner_ids(o, g, PASSWD, GROUP);
        assert_eq!(ids(None, None), Ok((0, 0)));
        assert_eq!(ids(Some("app"), None), Ok((1500, 1600)));
        assert_eq!(ids(Some("77"), None), Ok((77, 77)));
        assert_eq!(ids(Some("app"), Some("staff")), Ok((1500, 50)));
        assert_eq!(ids(Some("77"), Some("88")), Ok((77, 88)));
        assert_eq!(ids(None, Some("staff")), Ok((0, 50)));
        assert!(ids(Some("nobody-here"), None).is_err_and(|e| e.contains("nobody-here")));
        assert!(ids(Some("app"), Some("no-group")).is_err_and(|e| e.contains("no-group")));
    }

    #[test]
    fn names_must_stay_below_the_destination() {
        assert_eq!(relative(b"./a//b/./c"), Ok(PathBuf::from("a/b/c")));
        assert_eq!(relative(b"."), Ok(PathBuf::new()));
        assert!(relative(b"/etc/passwd").is_err());
        assert!(relative(b"a/../../b").is_err());
        assert!(relative(b"..").is_err());
    }

    #[test]
    fn files_dirs_symlinks_and_hard_links_are_written_with_modes_and_mtimes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let tar = archive(&[
            ("./app/", E::Directory, "", 0o750),
            ("./app/run.sh", E::Regular, "#!/bin/sh\necho hi\n", 0o4755),
            ("app/deep/er/data.txt", E::Regular, "data", 0o640),
            ("app/link", E::Symlink, "run.sh", 0o777),
            ("app/hard", E::Link, "app/run.sh", 0o644),
        ]);
        assert_eq!(unpack(&tar[..], &t).expect("unpack"), 4);
        let app = t.dest.join("app");
        let meta = fs::metadata(&app).expect("app");
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(meta.mtime(), 1_600_000_000);
        let run = fs::metadata(app.join("run.sh")).expect("run.sh");
        assert_eq!(run.mode() & 0o7777, 0o4755);
        assert_eq!(
            (run.uid(), run.gid()),
            (t.uid, t.gid),
            "the archive's 4242 is ignored"
        );
        assert_eq!(run.mtime(), 1_600_000_000);
        assert_eq!(run.nlink(), 2);
        assert_eq!(
            fs::read_to_string(app.join("hard")).expect("hard"),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(app.join("link")).expect("link"),
            PathBuf::from("run.sh")
        );
        assert_eq!(
            fs::read_to_string(app.join("deep/er/data.txt")).expect("data"),
            "data"
        );
        // Implied directories get 0755.
        let deep = fs::metadata(app.join("deep")).expect("deep");
        assert_eq!(deep.mode() & 0o7777, 0o755);
    }

    #[test]
    #[ignore = "needs root (chown to another user): run by scripts/test.sh as root"]
    fn owner_and_mode_apply_to_everything_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Target {
            uid: 1500,
            gid: 50,
            mode: Some(0o700),
            ..target(dir.path())
        };
        let tar = archive(&[
            ("d/", E::Directory, "", 0o755),
            ("d/f", E::Regular, "x", 0o644),
            ("d/l", E::Symlink, "f", 0o777),
            ("g/h", E::Regular, "y", 0o644),
        ]);
        assert_eq!(unpack(&tar[..], &t).expect("unpack"), 3);
        for (p, mode) in [
            ("", Some(0o755)),
            ("d", Some(0o700)),
            ("d/f", Some(0o700)),
            ("g", Some(0o755)),
            ("g/h", Some(0o700)),
            ("d/l", None),
        ] {
            let m = fs::symlink_metadata(t.dest.join(p)).expect(p);
            assert_eq!((m.uid(), m.gid()), (1500, 50), "{p}");
            if let Some(mode) = mode {
                assert_eq!(m.mode() & 0o7777, mode, "{p}");
            }
        }
    }

    #[test]
    fn existing_files_are_replaced_and_existing_dirs_updated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        fs::create_dir_all(t.dest.join("d")).expect("d");
        fs::set_permissions(t.dest.join("d"), Permissions::from_mode(0o700)).expect("chmod");
        fs::set_permissions(&t.dest, Permissions::from_mode(0o711)).expect("chmod");
        fs::write(t.dest.join("d/old"), "old").expect("old");
        fs::write(dir.path().join("outside"), "keep").expect("outside");
        std::os::unix::fs::symlink(dir.path().join("outside"), t.dest.join("f")).expect("ln");
        let tar = archive(&[
            (".", E::Directory, "", 0o700),
            ("d", E::Directory, "", 0o751),
            ("d/old", E::Regular, "new", 0o644),
            ("f", E::Regular, "mine", 0o644),
        ]);
        assert_eq!(unpack(&tar[..], &t).expect("unpack"), 2);
        assert_eq!(
            fs::read_to_string(t.dest.join("d/old")).expect("old"),
            "new"
        );
        // The symlink in the way was replaced, not written through.
        assert_eq!(fs::read_to_string(t.dest.join("f")).expect("f"), "mine");
        assert_eq!(
            fs::read_to_string(dir.path().join("outside")).expect("outside"),
            "keep"
        );
        let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
        assert_eq!(mode(&t.dest.join("d")), 0o751);
        // The destination existed: the `.` entry left it alone.
        assert_eq!(mode(&t.dest), 0o711);
        // A directory is never replaced by a file.
        let e = unpack(&archive(&[("d", E::Regular, "x", 0o644)])[..], &t).expect_err("dir");
        assert!(e.message.contains("is a directory"), "{}", e.message);
    }

    #[test]
    fn unsafe_entries_are_refused_by_name() {
        let cases: &[(&[Spec<'_>], &str)] = &[
            (&[("../evil", E::Regular, "x", 0o644)], "../evil"),
            (&[("a/../../evil", E::Regular, "x", 0o644)], "a/../../evil"),
            (&[("/etc/evil", E::Regular, "x", 0o644)], "/etc/evil"),
            (&[("dev", E::Char, "", 0o644)], "\"dev\""),
            (&[("disk", E::Block, "", 0o644)], "\"disk\""),
            (&[("pipe", E::Fifo, "", 0o644)], "\"pipe\""),
            (&[("h", E::Link, "/etc/passwd", 0o644)], "\"h\""),
            (&[("h", E::Link, "not-yet", 0o644)], "earlier file"),
        ];
        for (entries, word) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = target(dir.path());
            let e = unpack(&archive(entries)[..], &t).expect_err(word);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{word}");
            assert!(e.message.contains(word), "{word}: {}", e.message);
            assert!(!dir.path().join("evil").exists());
            assert!(!t.dest.join("dev").exists() && !t.dest.join("pipe").exists());
        }
    }

    #[tokio::test]
    #[ignore = "needs root (chown to root, the route's default owner): run by scripts/test.sh as root"]
    async fn the_route_reads_a_chunked_body_and_answers_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out/dest");
        let tar = archive(&[
            ("a.txt", E::Regular, &"a".repeat(3000), 0o644),
            ("b/c.txt", E::Regular, "c", 0o600),
        ]);
        // Small chunks, as a streamed request body arrives.
        let chunks: Vec<Result<Vec<u8>, io::Error>> =
            tar.chunks(700).map(|c| Ok(c.to_vec())).collect();
        let query = UntarQuery {
            dest: Some(dest.to_string_lossy().into_owned()),
            owner: None,
            group: None,
            mode: Some("640".into()),
        };
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let Json(answer) = untar(Query(query), body).await.expect("untar");
        assert_eq!(answer, UntarAnswer { files: 2 });
        assert_eq!(
            fs::read_to_string(dest.join("a.txt")).expect("a"),
            "a".repeat(3000)
        );
        let m = fs::metadata(dest.join("b/c.txt")).expect("c");
        assert_eq!(m.mode() & 0o7777, 0o640);
        let m = fs::metadata(dir.path().join("out")).expect("out");
        assert_eq!(m.mode() & 0o7777, 0o755);

        for (dest, word) in [(None, "required"), (Some("rel/dir"), "absolute")] {
            let query = UntarQuery {
                dest: dest.map(str::to_owned),
                owner: None,
                group: None,
                mode: None,
            };
            let e = untar(Query(query), Body::empty()).await.expect_err(word);
            assert!(e.message.contains(word), "{}", e.message);
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = archive(&[("f", E::Regular, &"x".repeat(2000), 0o644)]);
        let e = unpack(&tar[..1000], &target(dir.path())).expect_err("truncated");
        assert!(e.message.contains("invalid"), "{}", e.message);
    }
}
