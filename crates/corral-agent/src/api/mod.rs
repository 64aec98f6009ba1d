//! The toolbox HTTP API: routes, shared state, and the Daytona error shape.

mod code_run;
mod error;
mod execute;
mod info;
mod json;
mod outcome;

use std::sync::Arc;

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
}

impl AppState {
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
        .route("/process/code-run", post(code_run::code_run))
        .fallback(info::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(error::render_errors))
        .with_state(state)
}
