//! `POST /process/execute`: one shell command, output merged, exit code returned.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::json::JsonBody;
use super::outcome::finish;
use super::{ApiError, AppState};
use crate::runner::{RunOutcome, run};
use crate::spawn::ProcessSpec;
use crate::{params, shell};

/// Daytona's `ExecuteRequest`.
#[derive(Debug, Deserialize)]
pub struct ExecuteRequest {
    pub command: String,
    pub cwd: Option<String>,
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds; absent or 0 means no limit.
    pub timeout: Option<i64>,
}

/// Daytona's `ExecuteResponse`.
#[derive(Debug, Serialize)]
pub struct ExecuteResponse {
    #[serde(rename = "exitCode")]
    pub exit_code: i32,
    pub result: String,
}

pub async fn execute(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let config = &state.config;
    let env =
        params::merge_env(&config.env, request.envs.as_ref()).map_err(ApiError::bad_request)?;
    let cwd = params::resolve_cwd(&config.work_dir, &config.home, request.cwd.as_deref());
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let timeout = params::timeout(request.timeout);
    let outcome = match shell::choose() {
        None => RunOutcome::SpawnFailed(format!(
            "no shell found (tried {})",
            shell::SHELLS.join(", ")
        )),
        Some(shell) => {
            let spec = ProcessSpec {
                program: shell.to_owned(),
                args: shell::args(request.command),
                cwd,
                env,
                stdin: None,
            };
            run(&state.reaper, state.credentials(), spec, timeout).await
        }
    };
    let (exit_code, result) = finish(outcome, request.timeout)?;
    Ok(Json(ExecuteResponse { exit_code, result }))
}
