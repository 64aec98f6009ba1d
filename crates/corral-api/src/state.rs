//! Shared state of the HTTP handlers: the engine, and what only the edge needs (keys,
//! settings, metrics, the toolbox's agent client, preview tokens, events).

use std::sync::Arc;

use axum::http::HeaderMap;
use corral_engine::Engine;

pub use crate::keys::{Keys, hash_key};
use metrics_exporter_prometheus::PrometheusHandle;

/// The client of sandbox agents (`corral_agent_proto`), with axum's body type so proxied
/// bodies pass as they are.
pub type Agents = corral_agent_proto::AgentClient<axum::body::Body>;

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The organization every sandbox belongs to (one tenant per server for now).
    pub organization_id: String,
    /// The externally visible base URL (`http://host:port`); when unset it is derived from the
    /// request's `Host` header.
    pub public_url: Option<String>,
    /// The domain preview hosts live under: `{port}-{sandboxId}.{preview_domain}`.
    pub preview_domain: String,
    /// Where uploaded objects (build context) live: `<dir>/<bucket>/<key>`.
    pub object_storage_dir: std::path::PathBuf,
    /// The S3 endpoint handed to SDKs by `GET /api/object-storage/push-access`; when unset it
    /// is `https://<request host>/object-storage` if this server speaks TLS.
    pub storage_url: Option<String>,
    /// Whether the listener also speaks TLS (on the same port as plain HTTP).
    pub tls: bool,
    /// Which requests start a stopped (or archived) sandbox; a paused one is always
    /// resumed. A sandbox's [`WAKE_LABEL`] label overrides it.
    pub wake_stopped: WakeStopped,
    /// The SSH gateway the `sshCommand` of SSH access points at; `None` when it is off.
    pub ssh: Option<SshEndpoint>,
}

/// Where clients reach the SSH gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    /// The host in `sshCommand`; when unset, the host of the API's base URL.
    pub host: Option<String>,
    pub port: u16,
}

/// The label with which a sandbox opts in (`"true"`) or out (`"false"`) of being started by
/// any request (toolbox call or preview) while stopped, whatever the server's default.
pub const WAKE_LABEL: &str = "corral.dev/wake-on-request";

/// Which requests start a stopped sandbox (`--wake-stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WakeStopped {
    /// None: a request to a stopped sandbox is refused (`SANDBOX_NOT_STARTED`).
    Never,
    /// Preview requests (a visitor's browser cannot start a sandbox); toolbox calls are
    /// refused.
    #[default]
    Previews,
    /// Previews and toolbox calls.
    All,
}

impl WakeStopped {
    /// Whether a request to stopped sandbox `s` starts it: its label, else this default.
    pub fn wakes(self, s: &corral_core::Sandbox, preview: bool) -> bool {
        match s.labels.get(WAKE_LABEL).map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => match self {
                Self::Never => false,
                Self::Previews => preview,
                Self::All => true,
            },
        }
    }
}

/// Everything a handler needs. Dereferences to the [`Engine`], whose ports and state the
/// handlers read; every change to a sandbox goes through the engine's operations.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub keys: Arc<Keys>,
    pub config: Arc<ApiConfig>,
    pub metrics: PrometheusHandle,
    /// The client of sandbox agents (pooled connections, typed agent routes) for the toolbox
    /// proxy and previews.
    pub agents: Agents,
    /// Preview tokens and signed preview URLs.
    pub previews: Arc<dyn corral_core::ports::PreviewTokenStore>,
    /// Sandbox events (fed by `events::PublishingStore`), streamed to SDKs over Socket.IO.
    pub events: crate::events::Events,
}

impl std::ops::Deref for AppState {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The base URL clients reach this server at.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.config.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        // Set by `crate::connection_scheme` from the connection itself, never by the client.
        let scheme = match headers.get("x-forwarded-proto") {
            Some(v) if v == "https" => "https",
            _ => "http",
        };
        format!("{scheme}://{host}")
    }

    /// The `toolboxProxyUrl` of every sandbox.
    pub fn toolbox_url(&self, headers: &HeaderMap) -> String {
        format!("{}/toolbox", self.base_url(headers))
    }
}
