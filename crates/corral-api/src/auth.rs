//! Bearer-key authentication for `/api` and `/toolbox`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Rejects requests without a valid `Authorization: Bearer <key>` with a Daytona-shaped 401.
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        // A pre-signed file URL carries its authorisation in the query.
        if crate::signed_urls::is_signed(&req) {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            return match crate::signed_urls::check(&state, &method, &uri).await {
                Ok(()) => next.run(req).await,
                Err(e) => e.into_response(),
            };
        }
        return ApiError::unauthorized().into_response();
    };
    match state.keys.check(key).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::unauthorized().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
