//! Snapshots of sandboxes ("commits") and forks.
//!
//! A commit is a frozen copy of a sandbox's writable layer. With the btrfs pool it is a
//! read-only snapshot of the sandbox's subvolume, `<data>/disk/.commits/<id>`: atomic (a
//! point-in-time copy, as a power cut would leave it, taken while the sandbox runs), copy-on-
//! write, and as cheap for 100 MB of files as for none. With plain directories it is a copy
//! made through the archive format under `<data>/commits/layers/<id>`.
//!
//! Its manifest, `<data>/commits/<id>.json`, is the source sandbox's binding (base image and
//! earlier commits) with the new commit on top. A sandbox created from it is bound to that
//! stack: its root overlays list the commits' upper dirs above the image's layers.
//!
//! A commit dir is removed once no manifest and no sandbox binding lists it
//! ([`Commits::gc`]), so a
//! snapshot taken from a sandbox that was itself created from a snapshot keeps the older
//! commit alive as long as it is needed.
//!
//! A fork copies a sandbox's writable layer to a new sandbox: a writable btrfs snapshot (or an
//! archive round trip with plain directories) and the same binding.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use corral_core::RuntimeError;
use serde::{Deserialize, Serialize};

use crate::disk::Disk;
use crate::fsutil::{mkdirs, remove_dir_if_exists, remove_file_if_exists};
use crate::oci::images::{self as bound, BoundImage};

use corral_core::ports::{SANDBOX_SNAPSHOT_PREFIX as REFERENCE_PREFIX, sandbox_snapshot_reference};

/// The image reference of commit `id`.
pub fn reference(id: &str) -> String {
    sandbox_snapshot_reference(id)
}

/// The commit id of a committed snapshot's reference, when it is one and the id is valid.
pub fn id_of(reference: &str) -> Option<&str> {
    let id = reference.strip_prefix(REFERENCE_PREFIX)?;
    valid_id(id).then_some(id)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A committed snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// What a sandbox created from it is bound to.
    pub image: BoundImage,
    /// Bytes of the files in the image and every commit (directories and links count 0).
    pub size: u64,
}

fn commits_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("commits")
}

fn manifest_path(data_dir: &Path, id: &str) -> PathBuf {
    commits_dir(data_dir).join(format!("{id}.json"))
}

/// Where commit dirs live: in the btrfs pool, else under the data dir.
fn layers_root(data_dir: &Path, disk: &Disk) -> PathBuf {
    match disk {
        Disk::Pool(pool) => pool.path().join(".commits"),
        Disk::Plain(_) => plain_layers_root(data_dir),
    }
}

fn plain_layers_root(data_dir: &Path) -> PathBuf {
    commits_dir(data_dir).join("layers")
}

/// Both places commit dirs may be in (the disk mode may have changed between runs).
fn layer_roots(data_dir: &Path) -> [PathBuf; 2] {
    [
        data_dir.join("disk").join(".commits"),
        plain_layers_root(data_dir),
    ]
}

fn host(context: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |e| RuntimeError::host(context, e)
}

/// Reads commit `id`'s manifest; `None` when there is none.
pub fn read(data_dir: &Path, id: &str) -> io::Result<Option<Manifest>> {
    if !valid_id(id) {
        return Ok(None);
    }
    bound::read_json(&manifest_path(data_dir, id))
}

/// Diff ids of the OCI layers below every committed snapshot (image garbage collection
/// keeps them).
pub fn base_layers(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(commits_dir(data_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .flat_map(|m| m.image.diff_ids)
        .collect()
}

/// The commits under one data dir. Commits, their removal and garbage collection (all quick)
/// take its lock in turn, so a collection never removes a commit being made. The runtime owns
/// one per data dir and shares it with the `Images` port ([`crate::LinuxRuntime::images`]);
/// nothing is process-global, so two runtimes in one process share nothing.
#[derive(Debug)]
pub struct Commits {
    data_dir: PathBuf,
    lock: Mutex<()>,
}

impl Commits {
    /// The commits under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            lock: Mutex::new(()),
        }
    }

    /// The data dir the commits live under.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the writable layer of sandbox `sandbox` (running or stopped), whose root is
    /// `base` (its binding, or the host image's) with overlay layers `names`, as commit `id`.
    pub(crate) fn commit(
        &self,
        disk: &Disk,
        sandbox: &str,
        id: &str,
        base: BoundImage,
        names: &[String],
        base_size: u64,
    ) -> Result<Manifest, RuntimeError> {
        let data_dir = self.data_dir.as_path();
        if !valid_id(id) {
            return Err(RuntimeError::Invalid(format!("invalid snapshot id {id:?}")));
        }
        let src = disk.layer_dir(sandbox);
        if !src.is_dir() {
            return Err(RuntimeError::Invalid(format!(
                "sandbox {sandbox} has no files on disk (is it archived?)"
            )));
        }
        let _lock = self.lock();
        let root = layers_root(data_dir, disk);
        mkdirs(&root, 0o700).map_err(host("creating the commits dir"))?;
        mkdirs(&commits_dir(data_dir), 0o700).map_err(host("creating the commits dir"))?;
        let dest = root.join(id);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(RuntimeError::Invalid(format!(
                "snapshot {id} exists already"
            )));
        }
        match disk {
            Disk::Pool(pool) => {
                pool.snapshot(sandbox, &root, id, true)
                    .map_err(|e| RuntimeError::host("snapshotting the sandbox's subvolume", e))?;
            }
            Disk::Plain(_) => {
                let partial = root.join(format!("{id}.partial"));
                remove_dir_if_exists(&partial).map_err(host("clearing a partial commit"))?;
                copy_uppers(&src, names, &partial.join("upper"))?;
                fs::rename(&partial, &dest).map_err(host("installing the commit"))?;
            }
        }
        let upper_bytes = |c: &Path| -> u64 {
            names
                .iter()
                .map(|n| dir_bytes(&c.join("upper").join(n)))
                .sum()
        };
        let layer_bytes: u64 =
            base.commits.iter().map(|c| upper_bytes(c)).sum::<u64>() + upper_bytes(&dest);
        let mut image = base;
        image.commits.push(dest);
        let manifest = Manifest {
            image,
            size: base_size + layer_bytes,
        };
        bound::write_json(&manifest_path(data_dir, id), &manifest)
            .map_err(host("writing the snapshot manifest"))?;
        Ok(manifest)
    }

    /// Forgets commit `id` and removes every commit dir nothing needs any more.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        if valid_id(id) {
            let _lock = self.lock();
            remove_file_if_exists(&manifest_path(&self.data_dir, id))?;
        }
        self.gc().map(|_| ())
    }

    /// Removes commit dirs that no manifest and no sandbox binding lists (and partial ones left
    /// by a crash). Returns how many it removed.
    pub fn gc(&self) -> io::Result<usize> {
        let data_dir = self.data_dir.as_path();
        let _lock = self.lock();
        let mut used: Vec<PathBuf> = Vec::new();
        for dir in [bound::bound_dir(data_dir), commits_dir(data_dir)] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let body = fs::read(&p)?;
                if let Ok(m) = serde_json::from_slice::<Manifest>(&body) {
                    used.extend(m.image.commits);
                } else if let Ok(b) = serde_json::from_slice::<BoundImage>(&body) {
                    used.extend(b.commits);
                }
            }
        }
        let mut removed = 0;
        for root in layer_roots(data_dir) {
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if used.contains(&p) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                tracing::info!(commit = %p.display(), "removing a snapshot layer nothing uses");
                match crate::btrfs::delete_subvolume(&root, &name) {
                    Ok(()) => {}
                    Err(crate::btrfs::BtrfsError::NotSubvolume { .. }) => {
                        if p.is_dir() {
                            fs::remove_dir_all(&p)?;
                        } else {
                            remove_file_if_exists(&p)?;
                        }
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What the `Images` port says of a commit.
pub fn info(m: &Manifest) -> corral_core::ImageInfo {
    let id = m
        .image
        .commits
        .last()
        .and_then(|c| c.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    corral_core::ImageInfo {
        reference: reference(&id),
        size: m.size,
        user: m.image.config.user.clone(),
        layers: m.image.diff_ids.clone(),
        env: m.image.config.env.clone(),
        working_dir: m.image.config.working_dir.clone(),
        entrypoint: m.image.config.entrypoint.clone(),
        cmd: m.image.config.cmd.clone(),
    }
}

/// Copies `names`' upper dirs of the layer dir `src` to `dest/<name>` through the archive
/// format (which keeps whiteouts, opaque dirs, owners, modes and times).
fn copy_uppers(src: &Path, names: &[String], dest: &Path) -> Result<(), RuntimeError> {
    if let Some(parent) = dest.parent() {
        mkdirs(parent, 0o700).map_err(host("creating the copy's dir"))?;
    }
    let mut archive = dest.as_os_str().to_owned();
    archive.push(".tar.zst.partial");
    let archive = PathBuf::from(archive);
    let r = crate::layer::pack_uppers(src, names, &archive)
        .and_then(|_| crate::layer::unpack(&archive, dest))
        .map_err(|e| match e {
            // The sandbox's own doing (it swapped a directory for a link during the copy).
            crate::layer::LayerError::Changing(_) => {
                RuntimeError::Invalid(format!("copying the sandbox's files: {e}; try again"))
            }
            e => RuntimeError::host("copying the sandbox's files", e),
        });
    remove_file_if_exists(&archive).map_err(host("removing a temporary archive"))?;
    r
}

/// Copies sandbox `src`'s writable layer (running or stopped) to new sandbox `dest`, limited
/// to `limit` bytes, and gives it the same binding. Copy-on-write with the btrfs pool.
pub(crate) fn fork(
    data_dir: &Path,
    disk: &Disk,
    src: &str,
    dest: &str,
    limit: u64,
    names: &[String],
) -> Result<(), RuntimeError> {
    let from = disk.layer_dir(src);
    if !from.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "sandbox {src} has no files on disk (is it archived?)"
        )));
    }
    let to = disk.layer_dir(dest);
    if fs::symlink_metadata(&to).is_ok() {
        return Err(RuntimeError::Invalid(format!(
            "sandbox {dest} exists already"
        )));
    }
    let binding = bound::read_binding(data_dir, src).map_err(host("reading the binding"))?;
    match disk {
        Disk::Pool(pool) => {
            pool.snapshot(src, pool.path(), dest, false)
                .map_err(|e| RuntimeError::host("snapshotting the sandbox's subvolume", e))?;
            disk.set_limit(dest, limit)?;
            // Overlay work dirs (with the source's in-flight copy-ups and its `volatile`
            // marker) and the agent's log are the source's own.
            remove_dir_if_exists(&to.join("work")).map_err(host("clearing work dirs"))?;
            remove_file_if_exists(&to.join("agent.log")).map_err(host("clearing the log"))?;
        }
        Disk::Plain(_) => {
            let layer = disk.create(dest, limit)?;
            copy_uppers(&from, names, &layer.join("upper"))?;
        }
    }
    if let Some(b) = binding {
        bound::write_binding(data_dir, dest, &b).map_err(host("writing the binding"))?;
    }
    Ok(())
}

/// Bytes of the regular files under `dir`, walked by fd without following links.
fn dir_bytes(dir: &Path) -> u64 {
    fn walk(t: &crate::beneath::Tree) -> u64 {
        let Ok(names) = t.names() else { return 0 };
        names
            .iter()
            .map(|n| match t.lstat(Path::new(n)) {
                Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    t.open_dir(Path::new(n)).map_or(0, |d| walk(&d))
                }
                Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    u64::try_from(st.st_size).unwrap_or(0)
                }
                _ => 0,
            })
            .sum()
    }
    crate::beneath::Tree::open(dir).map_or(0, |t| walk(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_bad_ids_are_refused() {
        let id = "0b7c2f4e-1d2a-4c3b-9e8f-0123456789ab";
        assert_eq!(id_of(&reference(id)), Some(id));
        for bad in [
            "corral-snapshot:",
            "corral-snapshot:../x",
            "corral-snapshot:a/b",
            "corral-snapshot:a b",
            "docker.io/library/alpine:3",
        ] {
            assert_eq!(id_of(bad), None, "{bad}");
        }
        assert_eq!(id_of(&reference(&"a".repeat(65))), None);
    }

    #[test]
    fn plain_commits_copy_and_gc_keeps_what_is_listed() {
        let data = tempfile::tempdir().expect("tempdir");
        let disk = Disk::Plain(data.path().join("sandboxes"));
        let commits = Commits::new(data.path());
        let names = vec!["root".to_owned()];
        let layer = disk.create("sb", 1 << 30).expect("layer");
        mkdirs(&layer.join("upper/root/etc"), 0o755).expect("mkdir");
        fs::write(layer.join("upper/root/etc/greeting"), b"hello").expect("write");
        let m = commits
            .commit(&disk, "sb", "c1", BoundImage::host(), &names, 10)
            .expect("commit");
        assert_eq!(m.size, 15);
        assert_eq!(m.image.commits.len(), 1);
        let c1 = m.image.commits[0].clone();
        assert_eq!(
            fs::read(c1.join("upper/root/etc/greeting")).expect("read"),
            b"hello"
        );
        assert_eq!(read(data.path(), "c1").expect("read"), Some(m.clone()));
        assert!(
            commits
                .commit(&disk, "sb", "c1", BoundImage::host(), &names, 0)
                .is_err()
        );

        // A sandbox created from c1 and snapshotted again: c2 lists c1 below itself.
        fork(data.path(), &disk, "sb", "sb2", 1 << 30, &names).expect("fork");
        bound::write_binding(data.path(), "sb2", &m.image).expect("bind");
        let m2 = commits
            .commit(&disk, "sb2", "c2", m.image.clone(), &names, 0)
            .expect("commit c2");
        assert_eq!(m2.image.commits.len(), 2);

        // c1 forgotten: its dir stays (c2 and sb2's binding list it) ...
        commits.remove("c1").expect("remove c1");
        assert!(c1.is_dir());
        assert_eq!(read(data.path(), "c1").expect("read"), None);
        // ... until nothing lists it.
        bound::remove_binding(data.path(), "sb2").expect("unbind");
        commits.remove("c2").expect("remove c2");
        assert!(!c1.exists());
        assert!(!m2.image.commits[1].exists());
        assert_eq!(commits.gc().expect("gc"), 0);
    }

    #[test]
    fn two_data_dirs_do_not_share_a_lock() {
        use std::sync::{Arc, mpsc};
        use std::time::Duration;

        let (a, b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (commits_a, commits_b) = (
            Arc::new(Commits::new(a.path())),
            Arc::new(Commits::new(b.path())),
        );
        // A collection in a thread, reporting back when it ends.
        let collect = |commits: &Arc<Commits>| {
            let (tx, rx) = mpsc::channel();
            let commits = Arc::clone(commits);
            std::thread::spawn(move || {
                let _ = tx.send(commits.gc().map_err(|e| e.to_string()));
            });
            rx
        };
        let held = commits_a.lock();
        // Positive control: a collection under the held lock waits for it...
        let same = collect(&commits_a);
        assert!(
            same.recv_timeout(Duration::from_millis(200)).is_err(),
            "a collection under the same lock waits"
        );
        // ...while the commits of another data dir (another runtime in this process) are
        // not held up by it.
        let other = collect(&commits_b);
        let done = other.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            done.expect("not blocked by another data dir's lock")
                .expect("gc b"),
            0
        );
        drop(held);
        let done = same.recv_timeout(Duration::from_secs(30));
        assert_eq!(done.expect("the waiting collection ends").expect("gc a"), 0);
    }
}
