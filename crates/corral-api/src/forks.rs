//! `POST /api/sandbox/{id}/snapshot` and `POST /api/sandbox/{id}/fork`: parsed here, done by
//! the engine ([`corral_engine::Op::Snapshot`], [`corral_engine::Op::Fork`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_engine::Op;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::sandboxes::apply;
use crate::state::AppState;
use crate::wire::SandboxDto;

/// `CreateSandboxSnapshot` as the SDK sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxSnapshot {
    name: String,
    include_memory: Option<bool>,
}

/// `ForkSandbox` as the SDK sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkSandbox {
    name: Option<String>,
}

/// `POST /api/sandbox/{idOrName}/snapshot` `{name}`: commits the sandbox's files as snapshot
/// `name` (an `active` snapshot when this answers) and answers the sandbox, back in the
/// state it was in.
pub async fn snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    JsonBody(req): JsonBody<CreateSandboxSnapshot>,
) -> Result<Json<SandboxDto>, ApiError> {
    // The request is checked before the sandbox is looked up (the engine checks the name
    // again).
    corral_engine::snapshots::validate_name(&req.name)?;
    if req.name == crate::sandboxes::DEFAULT_SNAPSHOT {
        return Err(
            ApiError::conflict("the snapshot name \"host\" is built in").with_code("NAME_TAKEN")
        );
    }
    if req.include_memory == Some(true) {
        return Err(ApiError::bad_request(
            "memory snapshots are not supported: a snapshot holds the sandbox's files, and \
             sandboxes created from it start fresh processes",
        ));
    }
    apply(
        &state,
        &headers,
        &id_or_name,
        Op::Snapshot { name: req.name },
    )
    .await
}

/// `POST /api/sandbox/{idOrName}/fork` `{name?}`: a new sandbox with a copy-on-write copy of
/// this one's files (same image, resources, user, env, labels, network and volumes), started.
pub async fn fork(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    JsonBody(req): JsonBody<ForkSandbox>,
) -> Result<Json<SandboxDto>, ApiError> {
    apply(&state, &headers, &id_or_name, Op::Fork { name: req.name }).await
}
