//! S3 error answers: `<Error><Code>..</Code><Message>..</Message></Error>` with a status.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An S3 error answer: `<Error><Code>..</Code><Message>..</Message></Error>` with its status.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct S3Error {
    pub status: StatusCode,
    /// S3's error code, e.g. `NoSuchKey`.
    pub code: &'static str,
    pub message: String,
}

impl S3Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub(crate) fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }
    pub(crate) fn malformed_auth(message: impl Into<String>) -> Self {
        Self::bad_request("AuthorizationHeaderMalformed", message)
    }
    pub(crate) fn no_such_upload(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            format!(
                "no multipart upload {:?} for this key (it was completed, aborted, never \
                 started, or left unfinished for more than a day)",
                truncate(id)
            ),
        )
    }
    /// A server-side failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(context: &str, cause: &dyn std::error::Error) -> Self {
        let chain = crate::error::error_chain(cause);
        tracing::error!(error = %chain, "object storage: {context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{context}; see the server log"),
        )
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        (
            self.status,
            [(header::CONTENT_TYPE, "application/xml")],
            body,
        )
            .into_response()
    }
}

pub(crate) fn xml_escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// At most 200 characters of client-supplied text, for error messages.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

pub(crate) fn io_error(context: &str, e: &std::io::Error) -> S3Error {
    S3Error::internal(context, e)
}

/// A cause and its sources, `: `-joined, for the log.
fn error_chain(cause: &dyn std::error::Error) -> String {
    let mut chain = cause.to_string();
    let mut src = cause.source();
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    chain
}

pub(crate) fn too_large(limit: u64) -> S3Error {
    S3Error::bad_request(
        "EntityTooLarge",
        format!("the upload is larger than the {limit} bytes allowed"),
    )
}
