//! The bench's HTTP client of the Daytona API: create, exec, delete, and the set of
//! sandboxes it has created and not yet deleted.

use super::*;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One HTTP client (one keep-alive connection when used sequentially) and the set of
/// sandboxes the bench has created and not yet deleted, shared by all clients.
pub(super) struct Api {
    client: HttpClient,
    base: String,
    key: String,
    pub(super) live: Arc<Mutex<HashSet<String>>>,
}

impl Api {
    pub(super) fn new(base: String, key: String) -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
            key,
            live: Arc::default(),
        }
    }

    /// Another client (its own connection) sharing the set of live sandboxes.
    pub(super) fn another(&self) -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: self.base.clone(),
            key: self.key.clone(),
            live: self.live.clone(),
        }
    }

    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
        let resp = self.client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `POST /api/sandbox {}`; the new id and the time the call took.
    pub(super) async fn create(&self) -> anyhow::Result<(String, Duration)> {
        let t = Instant::now();
        let (status, body) = self.call("POST", "/api/sandbox", Some("{}")).await?;
        let took = t.elapsed();
        if status != 200 {
            bail!(
                "create answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let id = v["id"].as_str().context("create: no id")?.to_owned();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if v["state"].as_str() != Some("started") {
            bail!("create answered state {}, not started", v["state"]);
        }
        Ok((id, took))
    }

    /// Runs `true` in a sandbox; the time the call took.
    pub(super) async fn exec_true(&self, id: &str) -> anyhow::Result<Duration> {
        self.toolbox(id, "process/execute", r#"{"command":"true"}"#)
            .await
    }

    /// A toolbox call that must answer exit code 0; the time it took.
    pub(super) async fn toolbox(
        &self,
        id: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (status, body) = self
            .call("POST", &format!("/toolbox/{id}/{path}"), Some(body))
            .await?;
        let took = t.elapsed();
        if status != 200 {
            bail!("exec answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if v["exitCode"].as_i64() != Some(0) {
            bail!("{path} answered {}", String::from_utf8_lossy(&body));
        }
        Ok(took)
    }

    /// `DELETE /api/sandbox/{id}`; the time the call took.
    pub(super) async fn delete(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (status, body) = self
            .call("DELETE", &format!("/api/sandbox/{id}"), None)
            .await?;
        let took = t.elapsed();
        if status != 200 && status != 404 {
            bail!(
                "delete answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if status == 404 {
            bail!("delete answered 404: {}", String::from_utf8_lossy(&body));
        }
        Ok(took)
    }

    /// Polls `GET /api/sandbox/{id}` until it answers 404: a delete answers `destroying` and
    /// finishes in the background. The time that took.
    pub(super) async fn wait_gone(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let (status, body) = self
                .call("GET", &format!("/api/sandbox/{id}"), None)
                .await?;
            match status {
                404 => return Ok(t.elapsed()),
                200 if t.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                _ => bail!(
                    "sandbox {id} not gone after delete: {status} {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    /// Deletes every sandbox the bench still tracks, then every one the server lists (the
    /// data dir is the bench's own, so all of them are). Best effort.
    pub(super) async fn delete_everything(&self) {
        let tracked: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for id in tracked {
            let _ = self.delete(&id).await;
        }
        for _ in 0..20 {
            let Ok((200, body)) = self.call("GET", "/api/sandbox?limit=200", None).await else {
                return;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return;
            };
            let ids: Vec<String> = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() {
                return;
            }
            for id in ids {
                let _ = self.delete(&id).await;
            }
        }
    }
}
