//! PID 1 keeps running on SIGTERM/SIGINT/SIGHUP; the server ends a sandbox with SIGKILL.
//!
//! The signals get a logging handler rather than `SIG_IGN`: an ignored disposition would be
//! inherited across `exec` by every process the agent starts, a caught one is reset to default.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// Installs handlers that log the signal and carry on. Must run inside the tokio runtime.
pub fn ignore_termination() -> io::Result<()> {
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut stream = signal(kind)?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::info!("received {name}; ignored (the agent is PID 1)");
            }
        });
    }
    Ok(())
}
