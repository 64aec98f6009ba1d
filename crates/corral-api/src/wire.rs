//! The Daytona main-API wire types corral reads and writes (camelCase, strict types), as the
//! SDK 0.226.1's generated models define them.

use std::collections::BTreeMap;

use corral_core::Sandbox;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `POST /sandbox` body: every field of the SDK's `CreateSandbox` model. Each is either
/// honoured or refused with a 400 naming it (`sandboxes::new_sandbox`); a key that is not in
/// the model is refused too, so nothing a client sends is silently dropped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandbox {
    pub name: Option<String>,
    pub snapshot: Option<String>,
    pub user: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub public: Option<bool>,
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub outbound_proxy_url: Option<String>,
    pub otel_endpoint_override: Option<String>,
    pub target: Option<String>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub gpu_type: Option<serde_json::Value>,
    pub spot: Option<bool>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub auto_stop_interval: Option<i64>,
    pub auto_pause_interval: Option<i64>,
    pub auto_archive_interval: Option<i64>,
    pub auto_delete_interval: Option<i64>,
    pub ttl_minutes: Option<i64>,
    pub queue_timeout: Option<i64>,
    pub volumes: Option<Vec<serde_json::Value>>,
    pub build_info: Option<serde_json::Value>,
    pub linked_sandbox: Option<String>,
    pub secrets: Option<serde_json::Value>,
    pub kvm: Option<bool>,
}

/// The `Sandbox` JSON (also used, without `env`, as `SandboxListItem`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDto {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub snapshot: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_allow_list: Option<String>,
    pub kvm: bool,
    pub target: String,
    pub cpu: u32,
    pub gpu: u32,
    pub memory: u32,
    pub disk: u32,
    pub state: String,
    pub desired_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    pub recoverable: bool,
    pub backup_state: String,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub auto_pause_interval: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_destroy_at: Option<String>,
    pub volumes: Vec<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    pub daemon_version: String,
    pub runner_id: String,
    pub toolbox_proxy_url: String,
}

/// The region/target name corral reports.
pub const TARGET: &str = "local";

/// Formats a timestamp as the SDK expects (RFC 3339, UTC).
pub fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl SandboxDto {
    /// The wire form of a sandbox; `with_env` is false for list items.
    pub fn from_sandbox(s: &Sandbox, toolbox_proxy_url: &str, with_env: bool) -> Self {
        Self {
            id: s.id.clone(),
            organization_id: s.organization_id.clone(),
            name: s.name.clone(),
            snapshot: s.snapshot.clone(),
            user: s.user.clone(),
            env: with_env.then(|| s.env.clone()),
            labels: s.labels.clone(),
            public: s.public,
            network_block_all: s.network_block_all,
            network_allow_list: s.network_allow_list.clone(),
            kvm: false,
            target: TARGET.into(),
            cpu: s.resources.cpu,
            gpu: s.resources.gpu,
            memory: s.resources.memory_gib,
            disk: s.resources.disk_gib,
            state: s.state.as_str().into(),
            desired_state: s.desired_state.as_str().into(),
            error_reason: s.error_reason.clone(),
            recoverable: false,
            backup_state: "None".into(),
            auto_stop_interval: s.auto_stop_interval,
            auto_archive_interval: s.auto_archive_interval,
            auto_delete_interval: s.auto_delete_interval,
            auto_pause_interval: s.auto_pause_interval,
            auto_destroy_at: s.auto_destroy_at.map(timestamp),
            volumes: s
                .volumes
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "volumeId": m.volume_id,
                        "mountPath": m.mount_path,
                        "subpath": m.subpath,
                    })
                })
                .collect(),
            created_at: timestamp(s.created_at),
            updated_at: timestamp(s.updated_at),
            last_activity_at: timestamp(s.last_activity_at),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            runner_id: "local".into(),
            toolbox_proxy_url: toolbox_proxy_url.into(),
        }
    }
}

/// `GET /sandbox` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub items: Vec<SandboxDto>,
    /// Always present; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /sandbox/{id}/toolbox-proxy-url` answer.
#[derive(Debug, Serialize)]
pub struct UrlResponse {
    pub url: String,
}
