//! The sandbox record, its lifecycle states and resources.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The label the SDK writes on every sandbox to choose the `code_run` language.
pub const CODE_LANGUAGE_LABEL: &str = "code-toolbox-language";

/// A sandbox's observed state, with Daytona's wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Started,
    Stopping,
    Stopped,
    Starting,
    Destroying,
    Destroyed,
    Archiving,
    Archived,
    Restoring,
    Resizing,
    Error,
    Unknown,
    /// The sandbox's image is being pulled before it is created.
    PullingSnapshot,
    /// The sandbox's image is waiting to be built from a Dockerfile.
    PendingBuild,
    /// The sandbox's image is being built from a Dockerfile.
    BuildingSnapshot,
    /// Building the sandbox's image failed (see `errorReason` and the build logs).
    BuildFailed,
    /// The sandbox's files are being committed as a snapshot (it keeps running).
    Snapshotting,
    /// The sandbox's files are being copied to a fork (it keeps running).
    Forking,
    /// Its processes are being frozen.
    Pausing,
    /// Its processes are frozen (cgroup freezer): no CPU, memory kept; `start` resumes them.
    Paused,
    /// Its frozen processes are being thawed.
    Resuming,
}

impl SandboxState {
    /// The wire name, e.g. `started`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
            Self::Archiving => "archiving",
            Self::Archived => "archived",
            Self::Restoring => "restoring",
            Self::Resizing => "resizing",
            Self::Error => "error",
            Self::Unknown => "unknown",
            Self::PullingSnapshot => "pulling_snapshot",
            Self::PendingBuild => "pending_build",
            Self::BuildingSnapshot => "building_snapshot",
            Self::BuildFailed => "build_failed",
            Self::Snapshotting => "snapshotting",
            Self::Forking => "forking",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a state name corral does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown sandbox state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for SandboxState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| UnknownState(s.to_owned()))
    }
}

/// The state the control plane drives a sandbox towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Started,
    Stopped,
    Archived,
    Destroyed,
    Paused,
}

impl DesiredState {
    /// The wire name, e.g. `started`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Stopped => "stopped",
            Self::Archived => "archived",
            Self::Destroyed => "destroyed",
            Self::Paused => "paused",
        }
    }
}

impl FromStr for DesiredState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| UnknownState(s.to_owned()))
    }
}

/// CPU, memory and disk of a sandbox, in Daytona's units (vCPUs, GiB, GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: u32,
    pub gpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
}

impl Default for Resources {
    /// The open-source Daytona defaults: 1 vCPU, 1 GiB memory, 3 GiB disk.
    fn default() -> Self {
        Self {
            cpu: 1,
            gpu: 0,
            memory_gib: 1,
            disk_gib: 3,
        }
    }
}

/// The language `code_run` uses, chosen by the [`CODE_LANGUAGE_LABEL`] label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeLanguage {
    Python,
    JavaScript,
    TypeScript,
}

impl CodeLanguage {
    /// Parses a label value; `None` for values the SDK would reject.
    pub fn from_label(value: &str) -> Option<Self> {
        match value {
            "python" => Some(Self::Python),
            "javascript" => Some(Self::JavaScript),
            "typescript" => Some(Self::TypeScript),
            _ => None,
        }
    }
}

/// The most CIDRs an allow list may hold.
pub const MAX_ALLOW_LIST: usize = 64;

/// Where a sandbox may send traffic. Whatever the policy, a sandbox never reaches the host,
/// another sandbox, or link-local (metadata) addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Egress {
    /// Any routed destination.
    #[default]
    Open,
    /// Nothing leaves the sandbox (its loopback still works).
    BlockAll,
    /// Only these IPv4 networks (and the configured DNS resolvers).
    Allow(Vec<ipnet::Ipv4Net>),
}

/// A network policy that cannot be applied as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("networkAllowList entry {0:?} is not an IPv4 CIDR such as 10.0.0.0/8 or 1.2.3.4/32")]
    BadCidr(String),
    #[error("networkAllowList may hold at most {MAX_ALLOW_LIST} CIDRs")]
    TooMany,
}

impl Egress {
    /// The policy of Daytona's two settings: block-all wins; else a non-empty allow list
    /// (comma-separated IPv4 CIDRs) limits egress to it; else egress is open.
    pub fn from_settings(block_all: bool, allow_list: Option<&str>) -> Result<Self, EgressError> {
        if block_all {
            return Ok(Self::BlockAll);
        }
        let Some(list) = allow_list.map(str::trim).filter(|l| !l.is_empty()) else {
            return Ok(Self::Open);
        };
        let nets = Self::parse_allow_list(list)?;
        Ok(Self::Allow(nets))
    }

    /// Parses comma-separated IPv4 CIDRs (a bare address means /32).
    pub fn parse_allow_list(list: &str) -> Result<Vec<ipnet::Ipv4Net>, EgressError> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<ipnet::Ipv4Net>()
                .or_else(|_| {
                    entry
                        .parse::<std::net::Ipv4Addr>()
                        .map(ipnet::Ipv4Net::from)
                })
                .map_err(|_| EgressError::BadCidr(entry.to_owned()))?;
            nets.push(net.trunc());
        }
        if nets.len() > MAX_ALLOW_LIST {
            return Err(EgressError::TooMany);
        }
        nets.sort();
        nets.dedup();
        Ok(nets)
    }
}

/// A sandbox as the control plane records it. The store is the source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    /// The image or snapshot the sandbox runs (`host` for the host image).
    pub snapshot: String,
    /// The OS user processes run as.
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub resources: Resources,
    pub state: SandboxState,
    pub desired_state: DesiredState,
    pub error_reason: Option<String>,
    /// Minutes of inactivity before auto-stop; 0 = never.
    pub auto_stop_interval: i64,
    /// Minutes stopped before auto-archive.
    pub auto_archive_interval: i64,
    /// Minutes stopped before auto-delete; negative = never, 0 = on stop.
    pub auto_delete_interval: i64,
    /// Minutes of inactivity before auto-pause; 0 = never.
    #[serde(default)]
    pub auto_pause_interval: i64,
    /// When the sandbox is deleted whatever its state (its TTL; `None` = no TTL).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub auto_destroy_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity_at: OffsetDateTime,
    /// When the sandbox last stopped (for auto-archive and auto-delete).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub stopped_at: Option<OffsetDateTime>,
    /// Volumes mounted into the sandbox, in mount order.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// The key its pre-signed file URLs are signed with (made on first request).
    #[serde(default)]
    pub signing_key: Option<String>,
}

/// A volume mounted into a sandbox: the whole volume, or one directory of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's id (names are resolved to ids when the sandbox is created).
    pub volume_id: String,
    /// An absolute, normalised path inside the sandbox.
    pub mount_path: String,
    /// A normalised relative path inside the volume (no `..`); `None` mounts the whole volume.
    #[serde(default)]
    pub subpath: Option<String>,
}

impl Sandbox {
    /// Whether a label filter (all pairs must match) selects this sandbox.
    pub fn matches_labels(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_wire_names() {
        for s in [
            SandboxState::Creating,
            SandboxState::Started,
            SandboxState::Stopped,
            SandboxState::Destroyed,
            SandboxState::Error,
        ] {
            assert_eq!(s.as_str().parse::<SandboxState>().ok(), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        assert!("bogus".parse::<SandboxState>().is_err());
    }

    #[test]
    fn languages_from_label() {
        assert_eq!(
            CodeLanguage::from_label("python"),
            Some(CodeLanguage::Python)
        );
        assert_eq!(
            CodeLanguage::from_label("typescript"),
            Some(CodeLanguage::TypeScript)
        );
        assert_eq!(CodeLanguage::from_label("ruby"), None);
    }

    #[test]
    fn defaults_match_open_source_daytona() {
        let r = Resources::default();
        assert_eq!((r.cpu, r.memory_gib, r.disk_gib), (1, 1, 3));
    }
}

impl Sandbox {
    /// The sandbox's egress policy. A stored allow list that no longer parses blocks
    /// everything (fail closed); the API validates lists before storing them.
    pub fn egress(&self) -> Egress {
        Egress::from_settings(self.network_block_all, self.network_allow_list.as_deref())
            .unwrap_or(Egress::BlockAll)
    }
}

#[cfg(test)]
mod egress_tests {
    use super::*;

    #[test]
    fn block_all_wins_and_empty_list_is_open() {
        assert_eq!(
            Egress::from_settings(true, Some("10.0.0.0/8")),
            Ok(Egress::BlockAll)
        );
        assert_eq!(Egress::from_settings(false, Some(" ")), Ok(Egress::Open));
        assert_eq!(Egress::from_settings(false, None), Ok(Egress::Open));
    }

    #[test]
    fn allow_list_is_parsed_normalised_and_checked() {
        let e = Egress::from_settings(false, Some("10.1.2.3/8, 192.168.1.7,10.0.0.0/8"))
            .expect("valid");
        assert_eq!(
            e,
            Egress::Allow(vec![
                "10.0.0.0/8".parse().expect("valid"),
                "192.168.1.7/32".parse().expect("valid")
            ])
        );
        assert_eq!(
            Egress::from_settings(false, Some("10.0.0.0/33")),
            Err(EgressError::BadCidr("10.0.0.0/33".into()))
        );
        assert!(matches!(
            Egress::from_settings(false, Some("example.com")),
            Err(EgressError::BadCidr(_))
        ));
        assert!(matches!(
            Egress::from_settings(false, Some("::1/128")),
            Err(EgressError::BadCidr(_))
        ));
        let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(
            Egress::from_settings(false, Some(&many.join(","))),
            Err(EgressError::TooMany)
        );
    }
}
