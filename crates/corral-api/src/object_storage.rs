//! The HTTP edge of object storage for uploaded build context: `GET
//! /api/object-storage/push-access` and the S3 endpoint under `/object-storage`. The store, its
//! credentials and the S3 protocol are the `corral-s3` crate; each server's
//! [`corral_s3::ObjectStorage`] lives in [`AppState::object_storage`].

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use time::OffsetDateTime;

pub use corral_s3::{CONTEXT_BUCKET, REGION, mark_used};

use crate::error::ApiError;
use crate::state::{ApiConfig, AppState};

/// Removes unused uploads at start and then every hour.
pub async fn collect_unused_forever(state: AppState) {
    state.object_storage.clone().collect_unused_forever().await;
}

/// `GET /api/object-storage/push-access`: credentials for uploading build context.
pub async fn push_access(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let storage_url = storage_url(&state.config, &headers)?;
    let creds = state.object_storage.issue(OffsetDateTime::now_utc());
    Ok(Json(serde_json::json!({
        "accessKey": creds.access_key_id,
        "secret": creds.secret_access_key,
        "sessionToken": creds.session_token,
        "storageUrl": storage_url,
        "organizationId": state.config.organization_id,
        "bucket": CONTEXT_BUCKET,
        "region": REGION,
    })))
}

/// The S3 endpoint SDKs are sent to: the configured one, else this server's own
/// `/object-storage`: over TLS when the server speaks it; over plain HTTP for clients whose S3
/// client accepts that (the TypeScript SDK's AWS client does). The Python SDK's client
/// (obstore) refuses plain HTTP, so for it, without TLS, the answer is an error telling what
/// to configure rather than a URL that fails later with a TLS-less "builder error".
pub fn storage_url(config: &ApiConfig, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &config.storage_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "the request has no Host header, so the object storage URL cannot be told; \
                 send one or start the server with --storage-url",
            )
        })?;
    if config.tls {
        return Ok(format!("https://{host}/object-storage"));
    }
    let python_sdk = headers
        .get("x-daytona-source")
        .is_some_and(|v| v.as_bytes().starts_with(b"sdk-python"));
    if !python_sdk {
        return Ok(format!("http://{host}/object-storage"));
    }
    Err(ApiError::bad_request(
        "uploading local files for an image build needs object storage over HTTPS, because the \
         Python SDK's S3 client refuses plain HTTP: start the server with `corral serve \
         --tls-cert FILE --tls-key FILE` (a certificate this machine trusts; the same port keeps \
         serving plain HTTP too), or with `--storage-url https://...` pointing at a TLS proxy in \
         front of this server's /object-storage",
    )
    .with_code("OBJECT_STORAGE_NEEDS_TLS"))
}

/// `/object-storage/{bucket}/{*key}` (and the bucket and root paths): the S3 endpoint.
pub async fn s3(State(state): State<AppState>, req: Request) -> Response {
    let base_url = storage_url(&state.config, req.headers()).ok();
    state
        .object_storage
        .handle(req, base_url, OffsetDateTime::now_utc())
        .await
}

#[cfg(test)]
mod tests {

    use axum::http::{HeaderValue, StatusCode};
    use std::path::PathBuf;

    use super::*;

    fn config(storage_url: Option<&str>, tls: bool) -> ApiConfig {
        ApiConfig {
            organization_id: "corral".into(),
            public_url: None,
            preview_domain: "localhost".into(),
            object_storage_dir: PathBuf::from("/nonexistent"),
            storage_url: storage_url.map(str::to_owned),
            tls,
            wake_stopped: Default::default(),
            ssh: None,
        }
    }

    #[test]
    fn storage_url_is_configured_tls_or_plain_for_clients_that_accept_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("corral.example:3000"),
        );
        assert_eq!(
            storage_url(
                &config(Some("https://s3.example/object-storage/"), false),
                &headers
            )
            .expect("url"),
            "https://s3.example/object-storage"
        );
        assert_eq!(
            storage_url(&config(None, true), &headers).expect("url"),
            "https://corral.example:3000/object-storage"
        );
        // Plain HTTP: fine for the TypeScript SDK's S3 client, not for the Python SDK's.
        headers.insert(
            "x-daytona-source",
            HeaderValue::from_static("sdk-typescript-legacy"),
        );
        assert_eq!(
            storage_url(&config(None, false), &headers).expect("url"),
            "http://corral.example:3000/object-storage"
        );
        headers.insert("x-daytona-source", HeaderValue::from_static("sdk-python"));
        let e = storage_url(&config(None, false), &headers).expect_err("plain http");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("OBJECT_STORAGE_NEEDS_TLS"));
        assert!(e.message.contains("--tls-cert") && e.message.contains("--storage-url"));
        assert!(storage_url(&config(None, true), &HeaderMap::new()).is_err());
    }
}
