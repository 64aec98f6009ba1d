//! Where sandboxes' writable layers live: plain directories, or btrfs subvolumes with a
//! size limit each.

use std::path::PathBuf;

use corral_core::RuntimeError;

use crate::fsutil::{mkdirs, remove_dir_if_exists};

/// The writable-layer store in use.
#[derive(Debug, Clone)]
pub(crate) enum Disk {
    Plain(PathBuf),
    Pool(crate::btrfs::Pool),
}

impl Disk {
    /// The directory holding a sandbox's `upper/` and `work/` dirs.
    pub(crate) fn layer_dir(&self, id: &str) -> PathBuf {
        match self {
            Disk::Plain(root) => root.join(id),
            Disk::Pool(pool) => pool.volume_path(id),
        }
    }

    /// Creates (or keeps) a sandbox's layer dir with its size limit.
    pub(crate) fn create(&self, id: &str, limit: u64) -> Result<PathBuf, RuntimeError> {
        match self {
            Disk::Plain(root) => {
                let d = root.join(id);
                mkdirs(&d, 0o755).map_err(|e| RuntimeError::host("creating layer dir", e))?;
                Ok(d)
            }
            Disk::Pool(pool) => pool
                .create_volume(id, Some(limit))
                .map_err(|e| RuntimeError::host("creating disk volume", e)),
        }
    }

    pub(crate) fn set_limit(&self, id: &str, limit: u64) -> Result<(), RuntimeError> {
        match self {
            Disk::Pool(pool) if pool.volume_path(id).exists() => pool
                .set_limit(id, Some(limit))
                .map_err(|e| RuntimeError::host("changing disk limit", e)),
            _ => Ok(()),
        }
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            Disk::Plain(root) => remove_dir_if_exists(&root.join(id))
                .map_err(|e| RuntimeError::host("removing layer dir", e)),
            Disk::Pool(pool) => pool
                .delete_volume(id)
                .map_err(|e| RuntimeError::host("removing disk volume", e)),
        }
    }

    /// Bytes a sandbox's layer takes: the btrfs volume's referenced bytes (as of the last
    /// transaction commit), or the allocated blocks of a plain layer dir's files, counted
    /// while there are at most [`WALK_LIMIT`] entries (`None` beyond: too costly to sample).
    pub(crate) fn used(&self, id: &str) -> Option<u64> {
        match self {
            Disk::Pool(pool) => pool.usage(id).ok(),
            Disk::Plain(root) => allocated_bytes(&root.join(id), WALK_LIMIT),
        }
    }

    pub(crate) fn list(&self) -> Vec<String> {
        match self {
            Disk::Plain(_) => Vec::new(),
            Disk::Pool(pool) => pool.list(),
        }
    }
}

/// The most entries [`Disk::used`] walks in a plain layer dir.
const WALK_LIMIT: usize = 20_000;

/// Allocated bytes of the files under `dir` (symlinks not followed); `None` when it cannot
/// be read or holds more than `limit` entries.
fn allocated_bytes(dir: &std::path::Path, limit: usize) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = std::fs::symlink_metadata(dir).ok()?.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > limit {
                return None;
            }
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_layer_usage_counts_allocated_blocks_and_gives_up_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = allocated_bytes(dir.path(), 10).expect("readable");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 64 << 10]).expect("write");
        let full = allocated_bytes(dir.path(), 10).expect("readable");
        assert!(full >= empty + (64 << 10), "{empty} -> {full}");
        assert_eq!(allocated_bytes(dir.path(), 1), None);
        assert_eq!(allocated_bytes(&dir.path().join("missing"), 10), None);
    }
}
