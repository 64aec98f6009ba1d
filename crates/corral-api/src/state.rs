//! Shared state of the HTTP handlers: the ports and settings.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use corral_core::{ApiKeyStore, Runtime, SandboxStore, StoreError};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};

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
    /// How long a "minute" of the lifecycle intervals lasts (60 s; shorter only in tests).
    pub lifecycle_minute: std::time::Duration,
    /// The domain preview hosts live under: `{port}-{sandboxId}.{preview_domain}`.
    pub preview_domain: String,
    /// Where image build logs are written (`<dir>/<snapshot id>.log`).
    pub build_log_dir: std::path::PathBuf,
    /// Where uploaded objects (build context) live: `<dir>/<bucket>/<key>`.
    pub object_storage_dir: std::path::PathBuf,
    /// The S3 endpoint handed to SDKs by `GET /api/object-storage/push-access`; when unset it
    /// is `https://<request host>/object-storage` if this server speaks TLS.
    pub storage_url: Option<String>,
    /// Whether the listener also speaks TLS (on the same port as plain HTTP).
    pub tls: bool,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn SandboxStore>,
    pub keys: Arc<Keys>,
    pub runtime: Arc<dyn Runtime>,
    pub config: Arc<ApiConfig>,
    pub metrics: PrometheusHandle,
    pub locks: Arc<crate::lifecycle::Locks>,
    /// Sandboxes started ahead of demand.
    pub pool: Arc<crate::pool::WarmPool>,
    /// The client of sandbox agents (pooled connections, typed agent routes).
    pub agents: Agents,
    pub activity: Arc<crate::lifecycle::Activity>,
    /// Deletes finishing in the background.
    pub teardowns: Arc<crate::lifecycle::Teardowns>,
    /// Preview tokens and signed preview URLs.
    pub previews: Arc<dyn corral_core::ports::PreviewTokenStore>,
    /// Volumes sandboxes mount.
    pub volumes: Arc<dyn corral_core::ports::VolumeStore>,
    /// Snapshots (named images).
    pub snapshots: Arc<dyn corral_core::SnapshotStore>,
    /// The images sandboxes run.
    pub images: Arc<dyn corral_core::Images>,
    /// Sandbox events (fed by `events::PublishingStore`), streamed to SDKs over Socket.IO.
    pub events: crate::events::Events,
    /// Uploaded build context and the issuer of the credentials that upload it (this
    /// server's own: another server, even in the same process, refuses them).
    pub object_storage: Arc<corral_s3::ObjectStorage>,
    /// Snapshots this server is building, pulling or committing.
    pub building: Arc<crate::builds::Building>,
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

/// API keys: hashes in the store, with a cache of the valid ones.
pub struct Keys {
    store: Arc<dyn ApiKeyStore>,
    valid: RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// The stored form of a key: its SHA-256, hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Keys {
    pub fn new(store: Arc<dyn ApiKeyStore>) -> Self {
        Self {
            store,
            valid: RwLock::new(HashSet::new()),
        }
    }

    /// Accepts a key hash that is not stored (e.g. `CORRAL_API_KEY`, valid while it is set).
    pub fn allow(&self, hash: &str) {
        self.valid
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_owned());
    }

    /// Whether `key` is a valid API key.
    pub async fn check(&self, key: &str) -> Result<bool, StoreError> {
        let h = hash_key(key);
        if self
            .valid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&h)
        {
            return Ok(true);
        }
        let ok = self.store.has_key(&h).await?;
        if ok {
            self.valid
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h);
        }
        Ok(ok)
    }
}
