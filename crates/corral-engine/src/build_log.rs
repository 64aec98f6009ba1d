//! The log of a snapshot's build or pull, written as it happens (the SDK streams it while a
//! sandbox waits): `<build log dir>/<snapshot id>.log`.

use std::io::Write as _;
use std::path::PathBuf;

use crate::Engine;

/// Where a snapshot's build log is.
pub fn log_path(state: &Engine, snapshot_id: &str) -> PathBuf {
    state
        .config
        .build_log_dir
        .join(format!("{snapshot_id}.log"))
}

/// A snapshot's build (or pull) log being written; clones share it.
#[derive(Debug, Clone)]
pub struct Log(std::sync::Arc<std::sync::Mutex<LogFile>>);

#[derive(Debug)]
struct LogFile {
    file: Option<std::fs::File>,
    /// Whether the last text written did not end its line.
    open_line: bool,
}

impl Log {
    /// Starts the log of snapshot `snapshot_id` afresh.
    pub fn create(state: &Engine, snapshot_id: &str) -> Self {
        let path = log_path(state, snapshot_id);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::File::create(&path)
            .map_err(
                |e| tracing::warn!(log = %path.display(), error = %e, "cannot write a build log"),
            )
            .ok();
        Self(std::sync::Arc::new(std::sync::Mutex::new(LogFile {
            file,
            open_line: false,
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut LogFile) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Appends a whole line.
    pub fn line(&self, text: &str) {
        self.write(text);
        self.end_line();
    }

    /// Appends text as it comes (no newline added).
    pub fn write(&self, text: &str) {
        self.with(|l| {
            if let Some(f) = &mut l.file
                && !text.is_empty()
            {
                let _ = f.write_all(text.as_bytes());
                l.open_line = !text.ends_with('\n');
            }
        });
    }

    /// Ends the current line, if text left it open.
    pub fn end_line(&self) {
        self.with(|l| {
            if let Some(f) = &mut l.file
                && l.open_line
            {
                let _ = f.write_all(b"\n");
                l.open_line = false;
            }
        });
    }
}
