//! `POST /process/code-run`: run a snippet of python, javascript or typescript.
//!
//! Python runs on the sandbox's fork server when it can ([`crate::pyfork`]), else like the
//! other languages: a fresh interpreter per call.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::json::JsonBody;
use super::outcome::finish;
use super::{ApiError, AppState};
use crate::coderun::{CHART_MARKER, Language, prepare};
use crate::params;
use crate::pyfork::{self, Job};
use crate::runner::{self, RunOutcome};
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

/// Daytona's `CodeRunArtifacts`: one chart per matplotlib figure a python run showed or left
/// open (built by `charts.py`; Daytona's `Chart` JSON, snake_case keys).
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
    let env = params::merge_env(&state.base_env(), request.envs.as_ref())
        .map_err(ApiError::bad_request)?;
    let cwd = params::resolve_cwd(&config.work_dir, &config.home, None);
    params::require_dir(&cwd).map_err(ApiError::bad_request)?;
    let deadline = runner::deadline(params::timeout(request.timeout));
    let argv = request.argv.unwrap_or_default();
    let warm = match (language, pyfork::warm_env(&config.env, &env)) {
        (Language::Python, Some(changed)) => {
            let job = Job {
                code: &request.code,
                argv: &argv,
                env: changed,
                cwd: &cwd,
            };
            let creds = state.credentials();
            state
                .python
                .run(&state.reaper, creds, &state.config, &job, deadline)
                .await
        }
        _ => None,
    };
    let outcome = match warm {
        Some(outcome) => outcome,
        None => run_per_call(&state, language, &request.code, &argv, env, cwd, deadline).await,
    };
    let (exit_code, mut result) = finish(outcome, request.timeout)?;
    let charts = match language {
        Language::Python => take_charts(&mut result),
        _ => Vec::new(),
    };
    Ok(Json(CodeRunResponse {
        exit_code,
        result,
        artifacts: CodeRunArtifacts { charts },
    }))
}

/// Starts the language's interpreter for this one run.
async fn run_per_call(
    state: &AppState,
    language: Language,
    code: &str,
    argv: &[String],
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    deadline: Option<Instant>,
) -> RunOutcome {
    let creds = state.credentials();
    match prepare(language, code, argv, &env, creds) {
        Err(err) => RunOutcome::SpawnFailed(format!("failed to prepare the code: {err}")),
        Ok(prepared) => {
            let spec = ProcessSpec {
                program: prepared.program,
                arg0: None,
                args: prepared.args,
                cwd,
                env,
                stdin: prepared.stdin,
            };
            let outcome = runner::run_until(&state.reaper, creds, spec, deadline).await;
            // Deletes the TypeScript script only now that the child is done with it.
            drop(prepared.script);
            outcome
        }
    }
}

/// Removes the chart lines `charts.py` wrote from `output` and returns their charts. A chart
/// line runs from [`CHART_MARKER`] to the end of its line, newline included: text printed
/// before it without a newline joins what follows, as if the chart had never been written.
/// A line that is not a chart (cut short by the output cap, say) is dropped all the same.
fn take_charts(output: &mut String) -> Vec<serde_json::Value> {
    if !output.contains(CHART_MARKER) {
        return Vec::new();
    }
    let mut charts = Vec::new();
    let mut kept = String::with_capacity(output.len());
    let mut rest = output.as_str();
    while let Some(start) = rest.find(CHART_MARKER) {
        kept.push_str(&rest[..start]);
        let line = &rest[start + CHART_MARKER.len()..];
        let (payload, after) = match line.find('\n') {
            Some(end) => (&line[..end], &line[end + 1..]),
            None => (line, ""),
        };
        if let Ok(serde_json::Value::Object(mut artifact)) = serde_json::from_str(payload) {
            let chart = artifact.remove("value");
            if artifact.get("type").and_then(serde_json::Value::as_str) == Some("chart")
                && let Some(chart @ serde_json::Value::Object(_)) = chart
            {
                charts.push(chart);
            }
        }
        rest = after;
    }
    kept.push_str(rest);
    *output = kept;
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart_line(title: &str) -> String {
        format!(
            "{CHART_MARKER}{}\n",
            serde_json::json!({"type": "chart", "value": {"type": "line", "title": title}})
        )
    }

    #[test]
    fn output_without_charts_is_untouched() {
        let mut output = "a\nb\n".to_owned();
        assert!(take_charts(&mut output).is_empty());
        assert_eq!(output, "a\nb\n");
    }

    #[test]
    fn chart_lines_become_charts() {
        let mut output = format!("one\n{}two\n{}", chart_line("A"), chart_line("B"));
        let charts = take_charts(&mut output);
        assert_eq!(output, "one\ntwo\n");
        let titles: Vec<_> = charts.iter().map(|c| c["title"].clone()).collect();
        assert_eq!(titles, ["A", "B"]);
    }

    #[test]
    fn a_chart_after_an_unfinished_line_leaves_the_line_whole() {
        let mut output = format!("no newline{}yet\n", chart_line("A"));
        assert_eq!(take_charts(&mut output).len(), 1);
        assert_eq!(output, "no newlineyet\n");
    }

    #[test]
    fn broken_chart_lines_are_dropped() {
        let mut output = format!(
            "x\n{CHART_MARKER}{{\"type\": \"chart\"\ny\n{CHART_MARKER}[1]\n{CHART_MARKER}{{\"type\""
        );
        assert!(take_charts(&mut output).is_empty());
        assert_eq!(output, "x\ny\n");
    }
}
