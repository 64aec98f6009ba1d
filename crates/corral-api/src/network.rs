//! `POST /sandbox/{id}/network-settings`: a sandbox's egress policy, changed at runtime.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_core::Egress;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::wire::SandboxDto;

/// `UpdateSandboxNetworkSettings`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
}

/// Validates Daytona's network fields and returns the allow list to store (normalised:
/// sorted, deduplicated CIDRs; `None` when empty). Domain allow lists are refused: corral
/// filters by address, and a silently ignored domain list would leave egress open.
pub fn checked_allow_list(
    allow_list: Option<String>,
    domain_allow_list: Option<&str>,
) -> Result<Option<String>, ApiError> {
    if domain_allow_list.is_some_and(|d| !d.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "domainAllowList is not supported by this server; use networkAllowList with IPv4 CIDRs",
        ));
    }
    let Some(list) = allow_list.filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let nets = Egress::parse_allow_list(&list).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Some(
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// `POST /sandbox/{id}/network-settings`: `networkBlockAll: true` blocks all egress;
/// `false` opens it again and clears the allow list; `networkAllowList` limits egress to
/// those CIDRs (and implies not blocking all). Applied at once to a running sandbox, outside
/// it, where its processes cannot undo it.
pub async fn update_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    JsonBody(req): JsonBody<NetworkSettings>,
) -> Result<Json<SandboxDto>, ApiError> {
    if req.network_block_all.is_none()
        && req.network_allow_list.is_none()
        && req.domain_allow_list.is_none()
    {
        return Err(ApiError::bad_request(
            "set at least one of networkBlockAll, networkAllowList or domainAllowList",
        ));
    }
    let given = req.network_allow_list.is_some();
    let list = checked_allow_list(
        req.network_allow_list.clone(),
        req.domain_allow_list.as_deref(),
    )?;
    let allow_list = given.then_some(list);
    let change = corral_engine::NetworkChange {
        block_all: req.network_block_all,
        allow_list,
    };
    let s = state
        .engine
        .apply(&id_or_name, corral_engine::Op::SetNetwork(change))
        .await?;
    Ok(Json(crate::sandboxes::dto(&state, &headers, &s, true)))
}
