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

    pub(crate) fn list(&self) -> Vec<String> {
        match self {
            Disk::Plain(_) => Vec::new(),
            Disk::Pool(pool) => pool.list(),
        }
    }
}
