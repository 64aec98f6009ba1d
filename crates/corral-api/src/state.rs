//! Shared state of the HTTP handlers: the engine, and what only the edge needs (keys,
//! settings, metrics, the toolbox's agent client, preview tokens, events).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use corral_core::{ApiKeyStore, StoreError};
use corral_engine::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};

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
}

/// Everything a handler needs. Dereferences to the [`Engine`], whose ports and state the
/// handlers read; every change to a sandbox goes through the engine's operations.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub keys: Arc<Keys>,
    pub config: Arc<ApiConfig>,
    pub metrics: PrometheusHandle,
    /// Pooled connections to sandbox agents for the toolbox proxy and previews.
    pub agents: AgentClient,
    /// Preview tokens and signed preview URLs.
    pub previews: Arc<dyn corral_core::ports::PreviewTokenStore>,
    /// Sandbox events (fed by `events::PublishingStore`), streamed to SDKs over Socket.IO.
    pub events: crate::events::Events,
}

/// The edge's client to sandbox agents (request bodies straight from axum).
pub type AgentClient = hyper_util::client::legacy::Client<
    corral_engine::agent_client::AgentConnector,
    axum::body::Body,
>;

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
