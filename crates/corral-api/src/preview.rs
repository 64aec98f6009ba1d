//! Preview URLs: `{port}-{sandboxId}.{preview domain}` requests proxied to a port inside the
//! sandbox, public/private sandboxes and signed preview URLs.

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::AppState;

fn not_yet() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "previews are not implemented yet",
    )
}

/// Sends preview-host requests to the sandbox; everything else goes on to the API.
pub async fn dispatch(State(_state): State<AppState>, req: Request, next: Next) -> Response {
    next.run(req).await
}

/// `POST /sandbox/{id}/public/{isPublic}`.
pub async fn set_public(
    State(_state): State<AppState>,
    Path((_id, _public)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Err(not_yet())
}

/// `GET /sandbox/{id}/ports/{port}/preview-url`.
pub async fn preview_url(
    State(_state): State<AppState>,
    Path((_id, _port)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Err(not_yet())
}

/// `GET /sandbox/{id}/ports/{port}/signed-preview-url`.
pub async fn signed_preview_url(
    State(_state): State<AppState>,
    Path((_id, _port)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Err(not_yet())
}

/// `POST /sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire`.
pub async fn expire_signed_preview_url(
    State(_state): State<AppState>,
    Path((_id, _port, _token)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    Err(not_yet())
}
