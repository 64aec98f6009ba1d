//! Minimal logging to stderr (the runtime points the agent's stderr at a pipe the server
//! copies into a host-side log file).

/// Installs a plain-text subscriber at INFO level writing to stderr; a second call is a no-op.
///
/// A failed write is dropped silently: the log pipe has no reader while the server restarts
/// (EPIPE), and reporting that with `eprintln!` (the subscriber's default) panics whatever
/// logged: a request, the signal handlers or the reaper task, or the agent itself (PID 1,
/// and with it the sandbox) when it logs from its main thread.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .log_internal_errors(false)
        .try_init();
}
