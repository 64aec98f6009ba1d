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
}

impl DesiredState {
    /// The wire name, e.g. `started`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Stopped => "stopped",
            Self::Archived => "archived",
            Self::Destroyed => "destroyed",
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
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity_at: OffsetDateTime,
    /// When the sandbox last stopped (for auto-archive and auto-delete).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub stopped_at: Option<OffsetDateTime>,
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
