//! Minimal logging to stderr (the runtime points the agent's stderr at a host-side log file).

/// Installs a plain-text subscriber at INFO level writing to stderr; a second call is a no-op.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}
