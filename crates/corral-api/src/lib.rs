//! corral's HTTP edge: the Daytona main API under `/api`, the toolbox reverse proxy under
//! `/toolbox`, health, readiness and metrics. Handlers talk to the core's ports only.

#![forbid(unsafe_code)]

pub mod auth;
pub mod build_logs;
pub mod compat;
pub mod error;
pub mod events;
pub mod extract;
pub mod forks;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod network;
pub mod object_storage;
pub mod preview;
pub mod request_log;
pub mod sandboxes;
pub mod signed_urls;
pub mod snapshots;
pub mod ssh_access;
pub mod state;
pub mod telemetry;
pub mod toolbox;
pub mod volumes;
pub mod warm_pools;
pub mod wire;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{any, get, patch, post, put};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use state::{ApiConfig, AppState, Keys, hash_key};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.runtime.is_ready() {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "starting"})),
        )
    }
}

/// Marks requests that came over TLS with `X-Forwarded-Proto: https` (and drops any the
/// client sent), so URLs the server hands out keep the scheme the client used.
async fn connection_scheme(mut req: Request, next: middleware::Next) -> axum::response::Response {
    let tls = req
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .is_some_and(|c| c.0.tls);
    let headers = req.headers_mut();
    headers.remove("x-forwarded-proto");
    if tls {
        headers.insert(
            "x-forwarded-proto",
            axum::http::HeaderValue::from_static("https"),
        );
    }
    next.run(req).await
}

/// `GET /api/socket.io/`: the Socket.IO event stream ([`events::socket`]).
async fn event_stream(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> axum::response::Response {
    events::socket(
        state.keys.clone(),
        state.events.clone(),
        state.toolbox_url(&headers),
        query,
        upgrade,
    )
}

async fn not_found(req: Request) -> ApiError {
    // The whole path, also under a nest (`/api`), which strips its prefix from the URI.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path(), |u| u.0.path());
    ApiError::not_found(format!("no route for {} {path}", req.method()))
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/sandbox", get(sandboxes::list).post(sandboxes::create))
        // Older SDKs (see `compat`); a static segment wins over `{id_or_name}`.
        .route("/sandbox/paginated", get(compat::paginated))
        .route("/users/me", get(compat::me))
        .route("/shared-regions", get(compat::regions))
        .route("/regions", get(compat::regions))
        .route("/workspace", any(compat::workspace))
        .route("/workspace/{*rest}", any(compat::workspace))
        .route("/secret", any(compat::secrets))
        .route("/secret/{*rest}", any(compat::secrets))
        .route("/sandbox/{id_or_name}/secrets", any(compat::secrets))
        .route(
            "/sandbox/{id_or_name}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route(
            "/sandbox/{id_or_name}/toolbox-proxy-url",
            get(sandboxes::toolbox_proxy_url),
        )
        .route("/sandbox/{id_or_name}/start", post(sandboxes::start))
        .route("/sandbox/{id_or_name}/stop", post(sandboxes::stop))
        .route("/sandbox/{id_or_name}/archive", post(sandboxes::archive))
        .route("/sandbox/{id_or_name}/pause", post(sandboxes::pause))
        .route("/sandbox/{id_or_name}/recover", post(sandboxes::recover))
        .route("/sandbox/{id_or_name}/resize", post(sandboxes::resize))
        .route("/sandbox/{id_or_name}/snapshot", post(forks::snapshot))
        .route("/sandbox/{id_or_name}/fork", post(forks::fork))
        .route(
            "/sandbox/{id_or_name}/signing-key",
            get(signed_urls::signing_key),
        )
        .route(
            "/sandbox/{id_or_name}/ssh-access",
            post(ssh_access::create).delete(ssh_access::revoke),
        )
        .route("/sandbox/ssh-access/validate", get(ssh_access::validate))
        .route(
            "/sandbox/{id_or_name}/signing-key/rotate",
            post(signed_urls::rotate),
        )
        .route(
            "/sandbox/{id_or_name}/build-logs-url",
            get(build_logs::sandbox_logs_url),
        )
        .route(
            "/sandbox/{id_or_name}/build-logs",
            get(build_logs::sandbox_logs),
        )
        .route(
            "/sandbox/{id_or_name}/labels",
            put(sandboxes::replace_labels),
        )
        .route(
            "/sandbox/{id_or_name}/last-activity",
            post(sandboxes::last_activity),
        )
        .route(
            "/sandbox/{id_or_name}/autostop/{minutes}",
            post(sandboxes::autostop),
        )
        .route(
            "/sandbox/{id_or_name}/autoarchive/{minutes}",
            post(sandboxes::autoarchive),
        )
        .route(
            "/sandbox/{id_or_name}/autopause/{minutes}",
            post(sandboxes::autopause),
        )
        .route("/sandbox/{id_or_name}/ttl/{minutes}", post(sandboxes::ttl))
        .route(
            "/sandbox/{id_or_name}/autodelete/{minutes}",
            post(sandboxes::autodelete),
        )
        .route(
            "/sandbox/{id_or_name}/network-settings",
            post(network::update_settings),
        )
        .route(
            "/sandbox/{id_or_name}/public/{is_public}",
            post(preview::set_public),
        )
        .route(
            "/sandbox/{id_or_name}/telemetry/metrics",
            get(telemetry::metrics),
        )
        .route(
            "/sandbox/{id_or_name}/telemetry/logs",
            get(telemetry::not_collected),
        )
        .route(
            "/sandbox/{id_or_name}/telemetry/traces",
            get(telemetry::not_collected),
        )
        .route(
            "/sandbox/{id_or_name}/telemetry/traces/{trace_id}",
            get(telemetry::not_collected),
        )
        .route(
            "/sandbox/{id_or_name}/ports/{port}/preview-url",
            get(preview::preview_url),
        )
        .route(
            "/sandbox/{id_or_name}/ports/{port}/signed-preview-url",
            get(preview::signed_preview_url),
        )
        .route(
            "/sandbox/{id_or_name}/ports/{port}/signed-preview-url/{token}/expire",
            post(preview::expire_signed_preview_url),
        )
        .route(
            "/warm-pools",
            get(warm_pools::list).post(warm_pools::create),
        )
        .route(
            "/warm-pools/{id}",
            patch(warm_pools::update).delete(warm_pools::delete),
        )
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route("/volumes/by-name/{name}", get(volumes::get_by_name))
        .route(
            "/volumes/{volume_id}",
            get(volumes::get).delete(volumes::delete),
        )
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route(
            "/snapshots/{id_or_name}/build-logs-url",
            get(build_logs::snapshot_logs_url),
        )
        .route(
            "/snapshots/{id_or_name}/build-logs",
            get(build_logs::snapshot_logs),
        )
        .route(
            "/snapshots/{id_or_name}",
            get(snapshots::get).delete(snapshots::delete),
        )
        .route(
            "/snapshots/{id_or_name}/activate",
            post(snapshots::activate),
        )
        .route(
            "/object-storage/push-access",
            get(object_storage::push_access),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                .with_code("METHOD_NOT_ALLOWED")
        });
    let toolbox = Router::new().route("/{id}/{*path}", any(toolbox::proxy));
    let protected = Router::new()
        .nest("/api", api)
        .nest("/toolbox", toolbox)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        // Outside `protected`: the Socket.IO client sends its key in the CONNECT packet. A
        // static path wins over the `/api` nest's catch-all whatever the order.
        .route("/api/socket.io/", get(event_stream))
        // Public, as Daytona's is: clients read it before they hold a key.
        .route("/api/config", get(telemetry::config))
        .route("/object-storage", any(object_storage::s3))
        .route("/object-storage/{bucket}", any(object_storage::s3))
        .route("/object-storage/{bucket}/", any(object_storage::s3))
        .route("/object-storage/{bucket}/{*key}", any(object_storage::s3))
        .merge(protected)
        .fallback(not_found)
        // Requests for `{port}-{sandbox}.{preview domain}` go to the sandbox, not the API.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            preview::dispatch,
        ))
        .layer(middleware::from_fn(metrics::track))
        .layer(middleware::from_fn(connection_scheme))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_log::log_4xx,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let path = request_log::redact_path(req.uri().path());
            tracing::info_span!("request", method = %req.method(), path = %path, request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
