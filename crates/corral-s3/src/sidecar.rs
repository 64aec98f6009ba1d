//! The files kept beside an object: its ETag, `.<name>~etag`, and its last use,
//! `.<name>~used` (`~` cannot occur in a key, so no key addresses them).

use std::path::{Path, PathBuf};

pub(crate) fn etag_sidecar(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object.with_file_name(format!(".{name}~etag"))
}

/// Where an object's last use is recorded (its modification time).
pub(crate) fn used_sidecar(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object.with_file_name(format!(".{name}~used"))
}
