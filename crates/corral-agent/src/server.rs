//! Startup sequence and the serving loop on a current-thread tokio runtime.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::api::{AppState, router};
use crate::error::AgentError;
use crate::launch::{Launch, Startup, acquire};
use crate::pyfork::ForkServer;
use crate::reaper::{Reaper, reap_forever};
use crate::{loopback, signals};

/// Runs the agent: config and listener, `lo` up, reaper, signal handling, then HTTP forever.
pub fn run(launch: Launch) -> Result<(), AgentError> {
    let startup = acquire(&launch)?;
    tracing::info!(
        "corral-agent {} starting for sandbox {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        startup.config.sandbox_id,
        std::process::id()
    );
    // Orphans of our children come back to us even when we are not PID 1 (dev mode, tests).
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("PR_SET_CHILD_SUBREAPER: {err}");
    }
    // Non-dumpable: sandbox processes, even the sandbox's root, cannot ptrace us or read
    // /proc/1/{mem,environ,maps,fd}.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("PR_SET_DUMPABLE: {err}");
    }
    // The runtime brings `lo` up before dropping CAP_NET_ADMIN; this is a fallback (a no-op
    // when it is already up).
    if let Err(err) = loopback::bring_up() {
        // Expected in dev mode: not root, not in a fresh network namespace.
        if launch.is_dev() {
            tracing::debug!("bringing up lo: {err}");
        } else {
            tracing::warn!("bringing up lo: {err}");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::io("build the tokio runtime", e))?;
    runtime.block_on(serve(startup, !launch.is_dev()))
}

async fn serve(startup: Startup, pid1: bool) -> Result<(), AgentError> {
    let reaper = Arc::new(Reaper::default());
    // Created before any child exists, so no SIGCHLD is missed.
    let sigchld = signal(SignalKind::child())
        .map_err(|e| AgentError::io("install the SIGCHLD handler", e))?;
    tokio::spawn(reap_forever(Arc::clone(&reaper), sigchld));
    if pid1 {
        signals::ignore_termination()
            .map_err(|e| AgentError::io("install the termination signal handlers", e))?;
    }
    startup
        .listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io("make the listener non-blocking", e))?;
    let listener = tokio::net::UnixListener::from_std(startup.listener)
        .map_err(|e| AgentError::io("register the listener", e))?;
    let env = Arc::new(std::sync::RwLock::new(startup.config.env.clone()));
    let state = AppState {
        config: Arc::new(startup.config),
        reaper,
        python: Arc::new(ForkServer::from_env()),
        env,
        sessions: Default::default(),
        ptys: Default::default(),
        interpreters: Default::default(),
        lsp: Default::default(),
        git_credentials: Default::default(),
    };
    let boot = state.clone();
    tokio::spawn(async move { crate::api::start_entrypoint(&boot).await });
    axum::serve(listener, router(state))
        .await
        .map_err(|e| AgentError::io("serve", e))
}
