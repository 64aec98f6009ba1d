//! Routes the older Daytona SDKs still call, which integrations pin (`@daytonaio/sdk` 0.143 in
//! `@mastra/daytona` and `@langchain/daytona`, `daytona` 0.194 in `daytona-adk`): offset pages
//! of sandboxes (`GET /api/sandbox/paginated`), the caller (`GET /api/users/me`) and the
//! regions (`GET /api/shared-regions`, `GET /api/regions`). Also the answers for what no SDK
//! from 0.143 on can get here: the pre-sandbox `/api/workspace` API and computer use.

use std::cmp::Ordering;
use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use corral_core::{ListQuery, Sandbox};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::sandboxes::{DEFAULT_PAGE, MAX_PAGE, Selection, selection};
use crate::state::AppState;
use crate::wire::{SandboxDto, TARGET, timestamp};

/// The oldest SDK release whose main-API routes this server answers.
pub const OLDEST_SDK: &str = "0.143";

/// Parameters of `GET /api/sandbox/paginated` (the 0.143 SDK's `listSandboxesPaginated`).
const PAGINATED_PARAMS: &[&str] = &[
    "page",
    "limit",
    "id",
    "name",
    "labels",
    "includeErroredDeleted",
    "states",
    "snapshots",
    "regions",
    "minCpu",
    "maxCpu",
    "minMemoryGiB",
    "maxMemoryGiB",
    "minDiskGiB",
    "maxDiskGiB",
    "lastEventAfter",
    "lastEventBefore",
    "sort",
    "order",
];

/// What `paginated` sorts by (the 0.143 SDK's `ListSandboxesPaginatedSortEnum`).
const SORT_FIELDS: &[&str] = &[
    "id",
    "name",
    "state",
    "snapshot",
    "region",
    "updatedAt",
    "createdAt",
];

/// `GET /api/sandbox/paginated` answer (Daytona's `PaginatedSandboxes`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaginatedSandboxes {
    pub items: Vec<SandboxDto>,
    pub total: u64,
    pub page: u32,
    pub total_pages: u64,
}

/// A whole number of `key` at least 1 and at most `max`, or `default` when absent.
fn positive(query: &QueryPairs, key: &str, default: u32, max: u32) -> Result<u32, ApiError> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{key} must be a whole number from 1 to {max}, got {v:?}"
            ))),
        },
    }
}

/// Compares two sandboxes by one of [`SORT_FIELDS`] (every sandbox is in the one region).
fn compare(field: &str, a: &Sandbox, b: &Sandbox) -> Ordering {
    match field {
        "id" => a.id.cmp(&b.id),
        "name" => a.name.cmp(&b.name),
        "state" => a.state.as_str().cmp(b.state.as_str()),
        "snapshot" => a.snapshot.cmp(&b.snapshot),
        "updatedAt" => a.updated_at.cmp(&b.updated_at),
        _ => a.created_at.cmp(&b.created_at),
    }
}

/// `GET /api/sandbox/paginated?page=&limit=&...`: offset pages over the same filters as
/// `GET /api/sandbox` (see [`selection`]), `{items, total, page, totalPages}`. Sorted by
/// `sort` (default `createdAt`) and `order` (default `desc`, as Daytona's), ties by id. The
/// matching sandboxes are read in full to count them, so a page costs one pass over them.
pub async fn paginated(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Json<PaginatedSandboxes>, ApiError> {
    for (raw, _) in &query.0 {
        let key = raw.strip_suffix("[]").unwrap_or(raw);
        if !PAGINATED_PARAMS.contains(&key) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {key:?} of sandbox/paginated; the parameters are {}",
                PAGINATED_PARAMS.join(", ")
            )));
        }
    }
    let page = positive(&query, "page", 1, u32::MAX)?;
    let limit = positive(&query, "limit", DEFAULT_PAGE, MAX_PAGE)?;
    let field = match query.get("sort").filter(|s| !s.is_empty()) {
        None => "createdAt",
        Some(s) if SORT_FIELDS.contains(&s) => s,
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "sort must be one of {}, got {s:?}",
                SORT_FIELDS.join(", ")
            )));
        }
    };
    let descending = crate::sandboxes::descending(&query, true)?;
    let Selection {
        labels,
        states,
        id_prefix,
        name_prefix,
        filters,
        none_match,
    } = selection(&query, "regions")?;
    let mut all = Vec::new();
    let mut cursor = None;
    if !none_match {
        loop {
            let batch = state
                .store
                .list(&ListQuery {
                    labels: labels.clone(),
                    states: states.clone(),
                    limit: MAX_PAGE,
                    cursor: cursor.take(),
                    id_prefix: id_prefix.clone(),
                    name_prefix: name_prefix.clone(),
                    filters: filters.clone(),
                    sort: None,
                })
                .await?;
            all.extend(batch.items);
            match batch.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    all.sort_by(|a, b| {
        let o = compare(field, a, b).then_with(|| a.id.cmp(&b.id));
        if descending { o.reverse() } else { o }
    });
    let total = all.len() as u64;
    let skip = usize::try_from(u64::from(page - 1) * u64::from(limit)).unwrap_or(usize::MAX);
    let items = all
        .iter()
        .skip(skip)
        .take(limit as usize)
        .map(|s| crate::sandboxes::dto(&state, &headers, s, true))
        .collect();
    Ok(Json(PaginatedSandboxes {
        items,
        total,
        page,
        total_pages: total.div_ceil(u64::from(limit)),
    }))
}

/// When this server first answered one of these routes: the creation time it reports for
/// the user and the region, which have no record of their own.
static FIRST_SEEN: LazyLock<String> = LazyLock::new(|| timestamp(OffsetDateTime::now_utc()));

/// `GET /api/users/me`: the one user of this server (Daytona's `User`; every field the SDK's
/// model requires is present).
pub async fn me(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": state.config.organization_id,
        "name": "corral",
        "email": "",
        "publicKeys": [],
        "createdAt": *FIRST_SEEN,
    }))
}

/// `GET /api/shared-regions` and `GET /api/regions`: the one region, `local` (the `target`
/// every sandbox reports), as Daytona's `Region` list.
pub async fn regions() -> Json<serde_json::Value> {
    Json(serde_json::json!([{
        "id": TARGET,
        "name": TARGET,
        "organizationId": null,
        "regionType": "shared",
        "createdAt": *FIRST_SEEN,
        "updatedAt": *FIRST_SEEN,
        "proxyUrl": null,
        "sshGatewayUrl": null,
        "snapshotManagerUrl": null,
    }]))
}

/// `/api/workspace...`: the API of the SDKs from before sandboxes replaced workspaces. It is
/// not served; the answer says which SDKs are.
pub async fn workspace() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        format!(
            "the /workspace API of early Daytona SDKs is not served: this server speaks the \
             sandbox API of the Daytona SDKs {OLDEST_SDK} and later (Python daytona, TypeScript \
             @daytonaio/sdk); upgrade the SDK"
        ),
    )
    .with_code("SDK_VERSION_UNSUPPORTED")
}

/// `/api/secret...` and `/api/sandbox/{id}/secrets`: organization secrets (values injected into
/// a sandbox's outbound requests) are not served yet; the answer says so instead of a bare 404.
pub async fn secrets() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "secrets are not supported by corral yet: pass values in env (they are then visible \
         inside the sandbox)",
    )
    .with_code("SECRETS_NOT_SUPPORTED")
}

/// The answer to a toolbox route that no sandbox here serves, or `None` for the agent's
/// routes. Computer use (a desktop, mouse, keyboard, screenshots, recordings) is answered
/// here without asking the agent: a 501 the SDKs turn into an error saying so.
pub fn unserved_toolbox_route(path: &str) -> Option<ApiError> {
    let path = path.trim_start_matches('/');
    let first = path.split('/').next().unwrap_or_default();
    (first == "computeruse").then(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "computer use is not supported by corral: sandboxes have no desktop, so \
                 /{path} (mouse, keyboard, screenshots, recordings, accessibility) is not \
                 available; use process and file operations instead"
            ),
        )
        .with_code("COMPUTER_USE_NOT_SUPPORTED")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computer_use_is_refused_and_nothing_else() {
        let e = unserved_toolbox_route("computeruse/mouse/click").expect("refused");
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        assert!(
            e.message
                .starts_with("computer use is not supported by corral")
        );
        assert!(e.message.contains("/computeruse/mouse/click"));
        assert!(unserved_toolbox_route("/computeruse").is_some());
        assert!(unserved_toolbox_route("process/execute").is_none());
        assert!(unserved_toolbox_route("files/computeruse").is_none());
    }

    #[test]
    fn page_numbers_are_checked() {
        let q = |s: &str| QueryPairs(serde_urlencoded::from_str(s).expect("query"));
        assert_eq!(positive(&q(""), "page", 1, 9).ok(), Some(1));
        assert_eq!(positive(&q("page=3"), "page", 1, 9).ok(), Some(3));
        for bad in ["page=0", "page=-1", "page=x", "page=10", "page=1.5"] {
            let e = positive(&q(bad), "page", 1, 9).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with("page must be"), "{}", e.message);
        }
    }
}
