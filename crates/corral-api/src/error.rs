//! Errors as Daytona shapes them: `{statusCode, message, error, code?}` with the exact status
//! codes the SDK maps to its exception classes. A 500 logs the cause and says nothing of it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_core::{RuntimeError, StoreError};
use serde::Serialize;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A stable machine-readable code, e.g. `SANDBOX_NOT_FOUND`.
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    status_code: u16,
    message: &'a str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
        }
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).with_code("BAD_REQUEST")
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message).with_code("NOT_FOUND")
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message).with_code("CONFLICT")
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid API key (send Authorization: Bearer <key>)",
        )
        .with_code("UNAUTHORIZED")
    }
    /// A server-side failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(context: &str, cause: &dyn std::error::Error) -> Self {
        let chain = error_chain(cause);
        tracing::error!(error = %chain, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context}; see the server log"),
        )
        .with_code("INTERNAL_ERROR")
    }
}

/// What an [`ApiError`] answer said, kept on the response for the 4xx log
/// (`request_log`).
#[derive(Debug, Clone)]
pub struct Logged {
    pub code: Option<&'static str>,
    pub message: String,
}

impl From<&ApiError> for Logged {
    fn from(e: &ApiError) -> Self {
        Self {
            code: e.code,
            message: e.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            status_code: self.status.as_u16(),
            message: &self.message,
            error: self.status.canonical_reason().unwrap_or("Error"),
            code: self.code,
        };
        let mut response = (self.status, Json(body)).into_response();
        // For the 4xx log (`request_log`).
        response.extensions_mut().insert(Logged::from(&self));
        response
    }
}

impl From<corral_engine::EngineError> for ApiError {
    fn from(e: corral_engine::EngineError) -> Self {
        use corral_engine::ErrorKind;
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.message,
            code: e.code,
        }
    }
}

// Store and runtime errors mean what the engine says they mean (one mapping, in
// `corral_engine::error`).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        corral_engine::EngineError::from(e).into()
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        corral_engine::EngineError::from(e).into()
    }
}

pub use corral_engine::error::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_has_daytona_shape() {
        let r = ApiError::not_found("Sandbox x not found").into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["statusCode"], 404);
        assert_eq!(v["message"], "Sandbox x not found");
        assert_eq!(v["error"], "Not Found");
        assert_eq!(v["code"], "NOT_FOUND");
    }

    #[test]
    fn internal_hides_the_cause() {
        let e = ApiError::internal(
            "storage failed",
            &std::io::Error::other("disk /secret/path broke"),
        );
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("/secret/path"));
    }
}
