//! The toolbox HTTP API: routes, shared state, and the Daytona error shape.

mod code_run;
mod error;
mod execute;
mod files;
mod git;
mod info;
mod interpreter;
mod json;
mod lsp;
mod misc;
mod outcome;
mod pty;
mod session;
mod ssh;
mod stream_run;
pub use session::start_entrypoint;
mod tunnel;
mod untar;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use corral_core::agent::AgentConfig;

pub use error::ApiError;

use crate::pyfork::ForkServer;
use crate::reaper::Reaper;
use crate::spawn::Credentials;

/// Request bodies (code, commands) may be this large.
const BODY_LIMIT: usize = 64 << 20;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<AgentConfig>,
    pub reaper: Arc<Reaper>,
    /// Warm python for code-run, started on first use.
    pub python: Arc<ForkServer>,
    /// The environment new processes start with: the sandbox's, as changed by `POST /env`.
    pub env: Arc<RwLock<BTreeMap<String, String>>>,
    /// Shell sessions (`/process/session`).
    pub sessions: Arc<session::Sessions>,
    /// Terminals (`/process/pty`).
    pub ptys: Arc<pty::Ptys>,
    /// Stateful interpreter contexts (`/process/interpreter`).
    pub interpreters: Arc<interpreter::Interpreters>,
    /// Language servers (`/lsp`).
    pub lsp: Arc<lsp::LanguageServers>,
    /// Credentials given to `POST /git/credentials` (`/git`).
    pub git_credentials: Arc<git::StoredCredentials>,
}

impl AppState {
    /// A snapshot of the environment new processes start with.
    pub fn base_env(&self) -> BTreeMap<String, String> {
        self.env.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The user processes run as.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }
}

/// All routes; anything else is a 404 in the error shape.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/version", get(info::version))
        .route("/user-home-dir", get(info::user_home_dir))
        .route("/work-dir", get(info::work_dir))
        .route("/process/execute", post(execute::execute))
        .route("/corral/run", post(stream_run::run))
        .route(
            "/corral/untar",
            post(untar::untar).layer(DefaultBodyLimit::disable()),
        )
        .route("/process/code-run", post(code_run::code_run))
        .route("/port/{port}/tunnel", get(tunnel::tunnel))
        .route(corral_agent_proto::ssh::SSH_PATH, get(ssh::ssh))
        .merge(files::routes())
        .merge(session::routes())
        .merge(git::routes())
        .merge(misc::routes())
        .merge(pty::routes())
        .merge(interpreter::routes())
        .merge(lsp::routes())
        .fallback(info::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(error::render_errors))
        .with_state(state)
}
