//! `POST /process/code-run`: run a snippet of python, javascript or typescript.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::json::JsonBody;
use super::outcome::finish;
use super::{ApiError, AppState};
use crate::coderun::{Language, prepare};
use crate::params;
use crate::runner::{RunOutcome, run};
use crate::spawn::ProcessSpec;

/// Daytona's `CodeRunRequest`.
#[derive(Debug, Deserialize)]
pub struct CodeRunRequest {
    pub code: String,
    pub language: String,
    pub argv: Option<Vec<String>>,
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds; absent or 0 means no limit.
    pub timeout: Option<i64>,
}

/// Daytona's `CodeRunResponse`.
#[derive(Debug, Serialize)]
pub struct CodeRunResponse {
    #[serde(rename = "exitCode")]
    pub exit_code: i32,
    pub result: String,
    pub artifacts: CodeRunArtifacts,
}

/// Daytona's `CodeRunArtifacts`; charts are never produced (no matplotlib capture).
#[derive(Debug, Serialize)]
pub struct CodeRunArtifacts {
    pub charts: Vec<serde_json::Value>,
}

pub async fn code_run(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CodeRunRequest>,
) -> Result<Json<CodeRunResponse>, ApiError> {
    let language = Language::parse(&request.language).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unsupported language {:?}: expected python, javascript or typescript",
            request.language
        ))
    })?;
    let config = &state.config;
    let env =
        params::merge_env(&config.env, request.envs.as_ref()).map_err(ApiError::bad_request)?;
    let cwd = params::resolve_cwd(&config.work_dir, &config.home, None);
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let timeout = params::timeout(request.timeout);
    let argv = request.argv.unwrap_or_default();
    let creds = state.credentials();
    let outcome = match prepare(language, &request.code, &argv, &env, creds) {
        Err(err) => RunOutcome::SpawnFailed(format!("failed to prepare the code: {err}")),
        Ok(prepared) => {
            let spec = ProcessSpec {
                program: prepared.program,
                args: prepared.args,
                cwd,
                env,
                stdin: prepared.stdin,
            };
            let outcome = run(&state.reaper, creds, spec, timeout).await;
            // Deletes the TypeScript script only now that the child is done with it.
            drop(prepared.script);
            outcome
        }
    };
    let (exit_code, result) = finish(outcome, request.timeout)?;
    Ok(Json(CodeRunResponse {
        exit_code,
        result,
        artifacts: CodeRunArtifacts { charts: Vec::new() },
    }))
}
