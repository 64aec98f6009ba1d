//! Garbage collection of uploads: objects unused for a week go (an SDK that finds one missing
//! uploads it again); unfinished multipart uploads have their own cleanup in
//! [`Objects::remove_stale_uploads`](crate::Objects::remove_stale_uploads).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sidecar::{etag_sidecar, used_sidecar};
use crate::{UNUSED_OBJECT_AGE, UPLOADS_DIR};

/// Records that an object was just used (found by a HEAD, or read by a build), so
/// [`remove_unused`] keeps it. Best effort.
pub fn mark_used(object: &Path) {
    if object.is_file()
        && let Err(e) = std::fs::File::create(used_sidecar(object))
    {
        tracing::debug!(object = %object.display(), error = %e, "cannot record an object's use");
    }
}

/// Removes the objects under `root` (every bucket; unfinished uploads have their own
/// cleanup) last written or used more than `max_age` ago, with their records, and the
/// directories that leaves empty. Returns how many objects went.
pub fn remove_unused(root: &Path, max_age: Duration) -> std::io::Result<usize> {
    let age = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or(Duration::ZERO))
            .ok()
    };
    if !root.is_dir() {
        return Ok(0);
    }
    let mut removed = 0;
    let mut dirs = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.depth() > 1 || e.file_name() != UPLOADS_DIR);
    for entry in walk {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        if entry.file_type().is_dir() {
            if entry.depth() > 1 {
                dirs.push(path.to_path_buf());
            }
            continue;
        }
        if !entry.file_type().is_file() || entry.file_name().to_string_lossy().contains('~') {
            continue;
        }
        let last = [age(path), age(&used_sidecar(path))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::ZERO);
        if last < max_age {
            continue;
        }
        for p in [etag_sidecar(path), used_sidecar(path), path.to_path_buf()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(object = %path.display(), unused_days = last.as_secs() / 86_400, "removed an unused upload");
        removed += 1;
    }
    // Deepest first; a directory still holding something stays.
    for dir in dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(removed)
}

/// Removes unused uploads at start and then every hour.
pub(crate) async fn collect_unused_forever(root: PathBuf) {
    loop {
        let dir = root.clone();
        match tokio::task::spawn_blocking(move || remove_unused(&dir, UNUSED_OBJECT_AGE)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove unused uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot remove unused uploads"),
        }
        tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    }
}
