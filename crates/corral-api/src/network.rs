//! `POST /sandbox/{id}/network-settings`: a sandbox's egress policy, changed at runtime.

use axum::extract::{Path, State};
use axum::response::Response;

use crate::error::ApiError;
use crate::state::AppState;

/// `POST /sandbox/{id}/network-settings`.
pub async fn update_settings(
    State(_state): State<AppState>,
    Path(_id): Path<String>,
) -> Result<Response, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "network settings are not implemented yet",
    ))
}
