//! Build logs over HTTP: `GET /api/snapshots/{id}/build-logs[-url]` and
//! `GET /api/sandbox/{id}/build-logs[-url]`, plain text, followed while the build runs.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use corral_core::Snapshot;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::state::AppState;

/// How often a followed log is read again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `GET /api/snapshots/{id}/build-logs-url` → `{url}`.
pub async fn snapshot_logs_url(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let s = snapshot(&state, &id_or_name).await?;
    Ok(axum::Json(json!({
        "url": format!("{}/api/snapshots/{}/build-logs", state.base_url(&headers), s.id)
    })))
}

/// `GET /api/sandbox/{id}/build-logs-url` → `{url}`.
pub async fn sandbox_logs_url(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let sb = corral_engine::sandboxes::find(&state, &id_or_name).await?;
    Ok(axum::Json(json!({
        "url": format!("{}/api/sandbox/{}/build-logs", state.base_url(&headers), sb.id)
    })))
}

async fn snapshot(state: &AppState, id_or_name: &str) -> Result<Snapshot, ApiError> {
    corral_engine::snapshots::find(state, id_or_name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("Snapshot {id_or_name} not found"))
                .with_code("SNAPSHOT_NOT_FOUND")
        })
}

/// `GET /api/snapshots/{id}/build-logs[?follow=true]`.
pub async fn snapshot_logs(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let s = snapshot(&state, &id_or_name).await?;
    logs(state, s.id, follow(&query)?).await
}

/// `GET /api/sandbox/{id}/build-logs[?follow=true]`: the log of the snapshot the sandbox
/// is built from.
pub async fn sandbox_logs(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let sb = corral_engine::sandboxes::find(&state, &id_or_name).await?;
    let s = snapshot(&state, &sb.snapshot)
        .await
        .map_err(|_| ApiError::not_found(format!("sandbox {} has no build logs", sb.id)))?;
    logs(state, s.id, follow(&query)?).await
}

fn follow(query: &QueryPairs) -> Result<bool, ApiError> {
    match query.get("follow") {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "follow must be true or false, got {other:?}"
        ))),
    }
}

async fn logs(state: AppState, id: String, follow: bool) -> Result<Response, ApiError> {
    let path = corral_engine::builds::log_path(&state, &id);
    let text_plain = |body: Body| {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .map_err(|e| ApiError::internal("answering build logs", &e))
    };
    if !follow {
        let bytes = tokio::fs::read(&path).await.unwrap_or_default();
        return text_plain(Body::from(bytes));
    }
    // (bytes sent so far, whether the build was over at the last read)
    let stream = futures_util::stream::unfold((0usize, false), move |(sent, done)| {
        let (state, id, path) = (state.clone(), id.clone(), path.clone());
        async move {
            if done {
                return None;
            }
            loop {
                // The state first: a build that is over has written its whole log.
                let over = corral_engine::builds::build_over(&state, &id).await;
                let bytes = tokio::fs::read(&path).await.unwrap_or_default();
                if bytes.len() > sent {
                    let chunk = bytes[sent..].to_vec();
                    return Some((Ok::<_, std::io::Error>(chunk), (bytes.len(), over)));
                }
                if over {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    });
    text_plain(Body::from_stream(stream))
}
