//! Small informational routes and the 404 fallback.

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// `GET /version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /user-home-dir`.
pub async fn user_home_dir(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "dir": state.config.home }))
}

/// `GET /work-dir`.
pub async fn work_dir(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "dir": state.config.work_dir }))
}

/// Every unknown path.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
