//! The engine's error: what went wrong, in words a client can act on, and which kind of
//! failure it is. The HTTP edge maps the kind to a status (one `From<EngineError>`); the
//! engine knows nothing of HTTP.

use corral_core::{RuntimeError, StoreError};

/// Which kind of failure an [`EngineError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request cannot be served as asked (bad input, an unsupported option).
    Invalid,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. a taken name, a sandbox that is
    /// not stopped).
    Conflict,
    /// A failure of the server itself; the cause is in the log.
    Internal,
}

/// An error of an engine operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
    /// A stable machine-readable code, e.g. `SANDBOX_NOT_FOUND`.
    pub code: Option<&'static str>,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
        }
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message).with_code("BAD_REQUEST")
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message).with_code("NOT_FOUND")
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message).with_code("CONFLICT")
    }
    /// A server-side failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(context: &str, cause: &dyn std::error::Error) -> Self {
        let chain = error_chain(cause);
        tracing::error!(error = %chain, "{context}");
        Self::new(
            ErrorKind::Internal,
            format!("{context}; see the server log"),
        )
        .with_code("INTERNAL_ERROR")
    }
    /// Whether the request was at fault (not the server).
    pub fn is_client_error(&self) -> bool {
        self.kind != ErrorKind::Internal
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => {
                Self::conflict(format!("a sandbox named {name:?} already exists"))
                    .with_code("NAME_TAKEN")
            }
            other => Self::internal("storage failed", &other),
        }
    }
}

impl From<RuntimeError> for EngineError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Invalid(msg) => Self::bad_request(msg),
            RuntimeError::NotRunning(id) => Self::conflict(format!("sandbox {id} is not running"))
                .with_code("SANDBOX_NOT_RUNNING"),
            other => Self::internal("the sandbox runtime failed", &other),
        }
    }
}

/// An error and its sources, joined with `: `.
pub fn error_chain(cause: &dyn std::error::Error) -> String {
    let mut chain = cause.to_string();
    let mut src = cause.source();
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hides_the_cause() {
        let e = EngineError::internal(
            "storage failed",
            &std::io::Error::other("disk /secret/path broke"),
        );
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.message.contains("/secret/path"));
        assert!(!e.is_client_error());
    }

    #[test]
    fn store_and_runtime_errors_keep_their_meaning() {
        let taken = EngineError::from(StoreError::NameTaken("a".into()));
        assert_eq!(
            (taken.kind, taken.code),
            (ErrorKind::Conflict, Some("NAME_TAKEN"))
        );
        let invalid = EngineError::from(RuntimeError::Invalid("no such user".into()));
        assert_eq!(invalid.kind, ErrorKind::Invalid);
        assert_eq!(invalid.message, "no such user");
        let stopped = EngineError::from(RuntimeError::NotRunning("x".into()));
        assert_eq!(stopped.code, Some("SANDBOX_NOT_RUNNING"));
    }
}
