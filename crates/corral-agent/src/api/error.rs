//! Daytona's daemon error shape, used for every error response.
//!
//! Handlers return [`ApiError`], which only carries status, code and message; the
//! [`render_errors`] middleware adds path, method and timestamp and writes the body. Error
//! responses produced by axum itself (e.g. 405) are rewritten into the same shape.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
pub use corral_agent_proto::ErrorBody;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An error answer: HTTP status, Daytona error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// An error with the code derived from the status (`BAD_REQUEST`, `NOT_FOUND`, ...).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code_for(status),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The 408 answered when a process outlives its timeout, worded as Daytona's daemon
    /// words it (integrations match on "timed out").
    pub fn timeout(secs: i64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "PROCESS_EXECUTION_TIMEOUT".to_owned(),
            message: format!(
                "Command execution timed out after {secs} seconds. The timeout can be increased \
                 by adjusting the timeout parameter in the request."
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// The JSON body of the error response to `method path` (the contract's [`ErrorBody`], which
/// the server reads).
pub fn error_body(error: &ApiError, path: &str, method: &str, now: OffsetDateTime) -> ErrorBody {
    ErrorBody {
        status_code: error.status.as_u16(),
        message: error.message.clone(),
        code: error.code.clone(),
        source: ErrorBody::SOURCE.to_owned(),
        timestamp: now.format(&Rfc3339).unwrap_or_default(),
        path: path.to_owned(),
        method: method.to_owned(),
    }
}

/// `Not Found` → `NOT_FOUND`.
fn code_for(status: StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("ERROR");
    reason
        .chars()
        .filter_map(|c| match c {
            ' ' | '-' => Some('_'),
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_uppercase()),
            _ => None,
        })
        .collect()
}

/// Middleware writing every error response in the Daytona shape.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let error = match response.extensions().get::<ApiError>() {
        Some(error) => error.clone(),
        None if (status.is_client_error() || status.is_server_error()) && !is_json(&response) => {
            ApiError::new(status, status.canonical_reason().unwrap_or("error"))
        }
        None => return response,
    };
    let body = error_body(&error, &path, &method, OffsetDateTime::now_utc());
    let (mut parts, _) = response.into_parts();
    let rendered = Json(body).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.extensions.remove::<ApiError>();
    Response::from_parts(parts, rendered.into_body())
}

fn is_json(response: &Response<Body>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn codes_derive_from_the_status() {
        assert_eq!(ApiError::bad_request("x").code, "BAD_REQUEST");
        assert_eq!(ApiError::not_found("x").code, "NOT_FOUND");
        assert_eq!(
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "x").code,
            "METHOD_NOT_ALLOWED"
        );
        assert_eq!(ApiError::timeout(5).code, "PROCESS_EXECUTION_TIMEOUT");
        assert_eq!(ApiError::timeout(5).status, StatusCode::REQUEST_TIMEOUT);
        assert!(
            ApiError::timeout(5)
                .message
                .starts_with("Command execution timed out after 5 seconds. ")
        );
    }

    #[test]
    fn body_shape() {
        let body = error_body(
            &ApiError::bad_request("bad"),
            "/process/execute",
            "POST",
            datetime!(2026-01-02 03:04:05 UTC),
        );
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({
                "statusCode": 400,
                "message": "bad",
                "code": "BAD_REQUEST",
                "source": "DAYTONA_DAEMON",
                "timestamp": "2026-01-02T03:04:05Z",
                "path": "/process/execute",
                "method": "POST",
            })
        );
    }
}
