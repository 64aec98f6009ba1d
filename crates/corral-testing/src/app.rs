//! [`TestApp`]: the real router of `corral-api` over the fakes, served in process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_api::{ApiConfig, AppState, Keys, hash_key};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::ServiceExt;

use crate::{FakeImages, FakeRuntime, MemoryStore};

/// The key every request of a [`TestApp`] carries unless told otherwise.
pub const TEST_KEY: &str = "corral-test-key";

/// Options of a [`TestApp`].
#[derive(Debug, Clone)]
pub struct TestAppBuilder {
    api_key: String,
    pool_size: usize,
    lifecycle_minute: Duration,
    public_url: Option<String>,
    storage_url: Option<String>,
    runtime: FakeRuntime,
    store: MemoryStore,
    images: FakeImages,
    ssh: Option<corral_api::state::SshEndpoint>,
}

impl Default for TestAppBuilder {
    fn default() -> Self {
        Self {
            api_key: TEST_KEY.into(),
            pool_size: 0,
            lifecycle_minute: Duration::from_secs(60),
            public_url: None,
            storage_url: None,
            runtime: FakeRuntime::new(),
            store: MemoryStore::new(),
            images: FakeImages::new(),
            ssh: Some(corral_api::state::SshEndpoint {
                host: None,
                port: 2222,
            }),
        }
    }
}

impl TestAppBuilder {
    /// The API key the server accepts (as `--api-key` sets it).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = key.into();
        self
    }
    /// The warm pool's size (its filler is not started; see [`TestApp::fill_pool`]).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }
    /// How long a "minute" of the lifecycle timers lasts.
    pub fn lifecycle_minute(mut self, d: Duration) -> Self {
        self.lifecycle_minute = d;
        self
    }
    /// The externally visible base URL.
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.into());
        self
    }
    /// The S3 endpoint handed out by `push-access`.
    pub fn storage_url(mut self, url: &str) -> Self {
        self.storage_url = Some(url.into());
        self
    }
    /// Uses this runtime (e.g. one already scripted, or shared with another app).
    pub fn runtime(mut self, runtime: FakeRuntime) -> Self {
        self.runtime = runtime;
        self
    }
    /// Uses this store (e.g. one already holding records, as after a restart).
    pub fn store(mut self, store: MemoryStore) -> Self {
        self.store = store;
        self
    }
    /// Uses these images.
    pub fn images(mut self, images: FakeImages) -> Self {
        self.images = images;
        self
    }

    /// The SSH gateway `sshCommand` points at (`None`: the gateway is off).
    pub fn ssh(mut self, ssh: Option<corral_api::state::SshEndpoint>) -> Self {
        self.ssh = ssh;
        self
    }

    /// Builds the app state the way `corral serve` does (crates/corral/src/main.rs), over
    /// the fakes. THE one place that constructs `AppState` in this crate.
    pub fn build(self) -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary data dir");
        let data_dir = dir.path().to_owned();
        self.runtime.attach_images(self.images.clone());
        let runtime: Arc<dyn corral_core::Runtime> = Arc::new(self.runtime.clone());
        let store = Arc::new(self.store.clone());
        let keys = Keys::new(store.clone());
        keys.allow(&hash_key(&self.api_key));
        let events = corral_api::events::Events::default();
        let sandboxes = Arc::new(corral_api::events::PublishingStore::new(
            store.clone(),
            events.clone(),
        ));
        // A recorder of its own, not installed globally: apps in one test binary coexist.
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let engine = corral_engine::Engine::new(
            corral_engine::EngineConfig {
                organization_id: "corral".into(),
                lifecycle_minute: self.lifecycle_minute,
                build_log_dir: data_dir.join("builds"),
            },
            corral_engine::Ports {
                store: sandboxes,
                runtime: runtime.clone(),
                snapshots: store.clone(),
                volumes: store.clone(),
                ssh_access: store.clone(),
                warm_pools: store.clone(),
                images: Arc::new(self.images.clone()),
                object_storage: Arc::new(corral_s3::ObjectStorage::new(
                    data_dir.join("object-storage"),
                )),
            },
            self.pool_size,
        );
        let state = AppState {
            engine,
            keys: Arc::new(keys),
            config: Arc::new(ApiConfig {
                organization_id: "corral".into(),
                public_url: self.public_url,
                preview_domain: "localhost".into(),
                object_storage_dir: data_dir.join("object-storage"),
                storage_url: self.storage_url,
                tls: false,
                wake_stopped: Default::default(),
                ssh: self.ssh,
            }),
            metrics,
            agents: corral_api::state::Agents::new(runtime),
            previews: store,
            events,
        };
        TestApp {
            state,
            runtime: self.runtime,
            store: self.store,
            images: self.images,
            key: self.api_key,
            _dir: dir,
        }
    }
}

/// The real router over a [`FakeRuntime`], a [`MemoryStore`] and [`FakeImages`], answering
/// requests in process (no socket, no root, no kernel features).
#[derive(Debug)]
pub struct TestApp {
    state: AppState,
    pub runtime: FakeRuntime,
    pub store: MemoryStore,
    pub images: FakeImages,
    key: String,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, the raw body and, when it parses, its JSON.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// `Value::Null` when the body is not JSON.
    pub json: Value,
}

impl TestResponse {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        &self.json
    }

    /// Asserts a Daytona-shaped error: `{statusCode, message, error, code?}`, with `status`.
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> &Value {
        let v = self.expect(status);
        assert_eq!(v["statusCode"], status, "error body {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body without a message: {v}"
        );
        assert!(v["error"].is_string(), "error body without error: {v}");
        v
    }
}

/// A request being built; see [`TestApp::request`].
#[derive(Debug)]
pub struct TestRequest<'a> {
    app: &'a TestApp,
    method: Method,
    path: String,
    key: Option<String>,
    body: Bytes,
    headers: Vec<(String, String)>,
}

impl TestRequest<'_> {
    /// Sends no `Authorization` header.
    pub fn no_key(mut self) -> Self {
        self.key = None;
        self
    }
    /// Sends this key as the bearer token.
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.into());
        self
    }
    /// A JSON body.
    pub fn json(mut self, v: &Value) -> Self {
        self.body = Bytes::from(v.to_string());
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self
    }
    /// A body as is (e.g. malformed JSON), sent as `application/json`.
    pub fn raw(mut self, body: &str) -> Self {
        self.body = Bytes::from(body.to_owned());
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self
    }
    /// An extra header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends it through the router.
    pub async fn send(self) -> TestResponse {
        let mut req = Request::builder().method(self.method).uri(&self.path);
        if let Some(k) = &self.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        let req = req.body(Full::new(self.body)).expect("a valid request");
        // The router is built per request (cheap) so this crate need not name axum's types.
        let resp = corral_api::router(self.app.state.clone())
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("a readable body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }
}

impl TestApp {
    /// An app with the defaults (key [`TEST_KEY`], no warm pool, 60 s lifecycle minutes).
    pub fn new() -> Self {
        Self::builder().build()
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// The state the router serves (for calling `lifecycle`/`reconciler` directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A request with the app's key.
    pub fn request(&self, method: Method, path: &str) -> TestRequest<'_> {
        TestRequest {
            app: self,
            method,
            path: path.into(),
            key: Some(self.key.clone()),
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path).send().await
    }
    pub async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.request(Method::POST, path).json(body).send().await
    }
    pub async fn post_empty(&self, path: &str) -> TestResponse {
        self.request(Method::POST, path).send().await
    }
    pub async fn put(&self, path: &str, body: &Value) -> TestResponse {
        self.request(Method::PUT, path).json(body).send().await
    }
    pub async fn delete(&self, path: &str) -> TestResponse {
        self.request(Method::DELETE, path).send().await
    }

    /// Creates a sandbox (`POST /api/sandbox`) and returns its JSON; panics unless 200.
    pub async fn create_sandbox(&self, body: &Value) -> Value {
        self.post("/api/sandbox", body).await.expect(200).clone()
    }

    /// Polls `GET /api/sandbox/{id}` until its state is `state` (`"gone"`: a 404).
    pub async fn wait_for_state(&self, id: &str, state: &str) -> TestResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(&format!("/api/sandbox/{id}")).await;
            let now = if r.status == StatusCode::NOT_FOUND {
                "gone"
            } else {
                r.json["state"].as_str().unwrap_or("")
            };
            if now == state {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sandbox {id} never reached {state}; last answer {} {}",
                r.status,
                r.text
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls `GET /api/snapshots/{id}` until its state is `state`.
    pub async fn wait_for_snapshot(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(&format!("/api/snapshots/{id}")).await;
            if r.json["state"] == state {
                return r.json;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "snapshot {id} never reached {state}; last answer {} {}",
                r.status,
                r.text
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Default for TestApp {
    fn default() -> Self {
        Self::new()
    }
}
