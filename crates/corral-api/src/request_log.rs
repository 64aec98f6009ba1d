//! One info line per 4xx answer, so a refused request can be diagnosed from the server's log:
//! `client error` with method, path, status, the error's code and message (`error`), inside
//! the request's span (which carries the `x-request-id` the client got back). Nothing secret is written: never a
//! header, a query string (signed URLs and SSH tokens travel there) or a preview host (a
//! signed preview URL's host is its token), and path segments that are tokens are redacted.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Logged;
use crate::state::AppState;

const REDACTED: &str = "<redacted>";

/// `path` with every segment that is a token replaced: the one after `signed-preview-url/`
/// (`POST .../signed-preview-url/{token}/expire`).
pub fn redact_path(path: &str) -> String {
    let mut out = Vec::new();
    let mut secret_next = false;
    for segment in path.split('/') {
        if secret_next && !segment.is_empty() {
            out.push(REDACTED);
        } else {
            out.push(segment);
        }
        secret_next = segment == "signed-preview-url";
    }
    out.join("/")
}

/// The preview label of a request to a preview host, if it is one.
fn preview_label(state: &AppState, req: &Request) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    crate::preview::parse_host(host, &state.config.preview_domain).map(|(_, label)| label)
}

/// Logs every 4xx answer at info level (see the module's doc). A sandbox app's own 4xx
/// answers to preview requests are its business and are not logged; corral's are.
pub async fn log_4xx(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let label = preview_label(&state, &req);
    let response = next.run(req).await;
    let status = response.status();
    if !status.is_client_error() {
        return response;
    }
    let logged = response.extensions().get::<Logged>();
    if label.is_some() && logged.is_none() {
        return response;
    }
    let path = redact_path(&raw_path);
    let mut message = logged.map_or_else(|| "-".to_owned(), |l| l.message.clone());
    if path != raw_path {
        message = message.replace(&raw_path, &path);
    }
    if let Some(label) = &label {
        message = message.replace(label.as_str(), REDACTED);
    }
    let code = logged.and_then(|l| l.code).unwrap_or("-");
    tracing::info!(
        target: "corral_api::request",
        %method,
        path = %path,
        status = status.as_u16(),
        code,
        error = %message,
        preview = label.is_some(),
        "client error"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_paths_are_redacted() {
        assert_eq!(
            redact_path("/api/sandbox/s1/ports/3000/signed-preview-url/abc123/expire"),
            "/api/sandbox/s1/ports/3000/signed-preview-url/<redacted>/expire"
        );
        assert_eq!(
            redact_path("/api/sandbox/s1/ports/3000/signed-preview-url"),
            "/api/sandbox/s1/ports/3000/signed-preview-url"
        );
        assert_eq!(redact_path("/api/nothing/here"), "/api/nothing/here");
    }
}
