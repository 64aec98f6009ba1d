//! `/api/volumes` routes (create, list, get, get by name, delete) and the checks of a
//! sandbox's volume mounts.
//!
//! A volume is a directory on the host that the runtime owns; creating one is instant, so a
//! new volume is answered `ready`. Deleting one that a sandbox (not yet destroyed) mounts is
//! refused; otherwise its files go and its record stays, `deleted`, freeing its name.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use corral_core::VolumeMount;
use corral_core::ports::Volume;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::state::AppState;
use crate::wire::timestamp;

/// The most volumes one sandbox may mount.
pub const MAX_MOUNTS: usize = 16;

/// Where the agent binary lives in every sandbox; a volume may not hide it.
const AGENT_PATH: &str = corral_core::agent::AGENT_PATH_IN_SANDBOX;

/// `POST /volumes` body.
#[derive(Debug, Deserialize)]
pub struct CreateVolume {
    pub name: String,
}

/// The `VolumeDto` JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDto {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub state: &'static str,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Always present (the SDK requires the key), `null` when there is no error.
    pub error_reason: Option<String>,
}

impl From<&Volume> for VolumeDto {
    fn from(v: &Volume) -> Self {
        Self {
            id: v.id.clone(),
            name: v.name.clone(),
            organization_id: v.organization_id.clone(),
            state: v.state.as_str(),
            created_at: timestamp(v.created_at),
            updated_at: timestamp(v.updated_at),
            last_used_at: v.last_used_at.map(timestamp),
            error_reason: v.error_reason.clone(),
        }
    }
}

fn not_found(what: &str) -> ApiError {
    corral_engine::volumes::not_found(what).into()
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid volume name {name:?}: use 1-255 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

/// `GET /volumes?includeDeleted=`.
pub async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Vec<VolumeDto>>, ApiError> {
    let include_deleted = match query.get("includeDeleted") {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeDeleted must be true or false, got {other:?}"
            )));
        }
    };
    let items = state
        .volumes
        .list_volumes(&state.config.organization_id, include_deleted)
        .await?;
    Ok(Json(items.iter().map(VolumeDto::from).collect()))
}

/// `POST /volumes`: creates the volume's storage and answers it `ready`.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateVolume>,
) -> Result<Json<VolumeDto>, ApiError> {
    validate_name(&req.name)?;
    let v = corral_engine::volumes::create(&state, req.name).await?;
    Ok(Json(VolumeDto::from(&v)))
}

/// `DELETE /volumes/{volumeId}`: refused (409) while a sandbox that is not destroyed mounts
/// the volume; otherwise removes its files and records it `deleted`. Idempotent.
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<(), ApiError> {
    Ok(corral_engine::volumes::delete(&state, &id).await?)
}

/// `GET /volumes/{volumeId}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VolumeDto>, ApiError> {
    Ok(Json(VolumeDto::from(
        &corral_engine::volumes::find(&state, &id).await?,
    )))
}

/// `GET /volumes/by-name/{name}`: the live volume of that name (404 lets the SDK's
/// `get(name, create=True)` create it).
pub async fn get_by_name(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeDto>, ApiError> {
    let v = state
        .volumes
        .volume_by_name(&state.config.organization_id, &name)
        .await?
        .ok_or_else(|| not_found(&format!("with name {name}")))?;
    Ok(Json(VolumeDto::from(&v)))
}

/// A mount path made absolute and normalised (`/a/b`), or a clear 400.
fn mount_path(raw: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid volume mountPath {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("it must be an absolute path"));
    }
    if raw.contains('\0') || raw.len() > 4096 {
        return Err(bad("it must be at most 4096 bytes without NUL"));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("'..' is not allowed")),
            c if c.len() > 255 => return Err(bad("a path component is longer than 255 bytes")),
            c => parts.push(c),
        }
    }
    let Some(first) = parts.first() else {
        return Err(bad("a volume cannot be mounted on /"));
    };
    if matches!(*first, "proc" | "sys" | "dev") {
        return Err(bad("/proc, /sys and /dev are reserved"));
    }
    let path = format!("/{}", parts.join("/"));
    if AGENT_PATH == path || AGENT_PATH.starts_with(&format!("{path}/")) {
        return Err(bad(&format!(
            "it would hide the sandbox agent at {AGENT_PATH}"
        )));
    }
    Ok(path)
}

/// A subpath made relative and normalised (`a/b`; `None` for the whole volume), or a 400.
fn subpath(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let bad = |why: &str| ApiError::bad_request(format!("invalid volume subpath {raw:?}: {why}"));
    if raw.starts_with('/') {
        return Err(bad("it must be relative to the volume's root"));
    }
    if raw.contains('\0') || raw.len() > 4096 {
        return Err(bad("it must be at most 4096 bytes without NUL"));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(bad(
                    "'..' is not allowed: a subpath stays inside the volume",
                ));
            }
            c if c.len() > 255 => return Err(bad("a path component is longer than 255 bytes")),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// One mount as the create-sandbox body gives it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestedMount {
    volume_id: String,
    mount_path: String,
    #[serde(default)]
    subpath: Option<String>,
}

/// Checks a create request's `volumes` without the store: shapes, paths, duplicates.
pub fn parse_mounts(raw: &[serde_json::Value]) -> Result<Vec<VolumeMount>, ApiError> {
    if raw.len() > MAX_MOUNTS {
        return Err(ApiError::bad_request(format!(
            "a sandbox may mount at most {MAX_MOUNTS} volumes"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut mounts = Vec::with_capacity(raw.len());
    for m in raw {
        let m: RequestedMount = serde_json::from_value(m.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid volume mount (expected {{volumeId, mountPath, subpath?}}): {e}"
            ))
        })?;
        let path = mount_path(&m.mount_path)?;
        if !seen.insert(path.clone()) {
            return Err(ApiError::bad_request(format!(
                "two volumes are mounted on {path}"
            )));
        }
        mounts.push(VolumeMount {
            volume_id: m.volume_id,
            mount_path: path,
            subpath: subpath(m.subpath.as_deref())?,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_normalised_and_checked() {
        assert_eq!(
            mount_path("/home//daytona/./data/").ok(),
            Some("/home/daytona/data".into())
        );
        for bad in [
            "data", "/", "//", "/proc", "/proc/x", "/sys", "/dev/shm", "/a/../b",
        ] {
            assert!(mount_path(bad).is_err(), "{bad}");
        }
        assert!(mount_path(AGENT_PATH).is_err());
        assert!(mount_path("/.corral").is_err());
        assert!(mount_path("/usr/lib").is_ok());
    }

    #[test]
    fn subpaths_stay_inside() {
        assert_eq!(subpath(None).ok(), Some(None));
        assert_eq!(subpath(Some("")).ok(), Some(None));
        assert_eq!(subpath(Some("./a//b/")).ok(), Some(Some("a/b".into())));
        for bad in ["/etc", "../..", "a/../../b", ".."] {
            assert!(subpath(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicate_and_too_many_mounts_are_refused() {
        let m = |p: &str| serde_json::json!({"volumeId": "v", "mountPath": p});
        assert!(parse_mounts(&[m("/a"), m("/a/")]).is_err());
        assert!(parse_mounts(&[m("/a"), m("/b")]).is_ok());
        let many: Vec<_> = (0..=MAX_MOUNTS).map(|i| m(&format!("/m{i}"))).collect();
        assert!(parse_mounts(&many).is_err());
        assert!(parse_mounts(&[serde_json::json!({"mountPath": "/a"})]).is_err());
    }
}
