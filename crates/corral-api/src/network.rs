//! `POST /sandbox/{id}/network-settings`: a sandbox's egress policy, changed at runtime.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
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

pub use corral_engine::ops::checked_allow_list;

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
