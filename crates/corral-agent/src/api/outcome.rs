//! Turns a [`RunOutcome`] into the process routes' answer (shared by execute and code-run).

use crate::runner::RunOutcome;

use super::ApiError;

/// Exit code and output: a start failure is `-1` with the error as output (200, like Daytona);
/// a timeout is the 408 error.
pub fn finish(outcome: RunOutcome, timeout_secs: Option<i64>) -> Result<(i32, String), ApiError> {
    match outcome {
        RunOutcome::Exited { exit_code, output } => Ok((exit_code, output)),
        RunOutcome::SpawnFailed(message) => Ok((-1, message)),
        RunOutcome::TimedOut => Err(ApiError::timeout(timeout_secs.unwrap_or_default())),
    }
}
