//! The handshake between the runtime and the in-sandbox agent.
//!
//! The runtime hands the agent two inherited file descriptors: [`LISTENER_FD`], a bound and
//! listening unix socket whose path lives outside the sandbox's mount namespace, and
//! [`CONFIG_FD`], a readable file holding one [`AgentConfig`] as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The listening unix socket the agent serves the toolbox API on.
pub const LISTENER_FD: i32 = 3;
/// A readable file with the agent's JSON configuration; the agent closes it after reading.
pub const CONFIG_FD: i32 = 4;
/// Where the agent binary is mounted (read-only) inside every sandbox.
pub const AGENT_PATH_IN_SANDBOX: &str = "/.corral/agent";

/// Everything the agent needs to know about its sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentConfig {
    /// The sandbox id, for logs and `/version`.
    pub sandbox_id: String,
    /// The OS user processes run as.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The user's home directory (also `/user-home-dir`).
    pub home: String,
    /// The default working directory of processes (also `/work-dir`).
    pub work_dir: String,
    /// The base environment of every process started in the sandbox: defaults (PATH, HOME,
    /// USER, ...) overlaid with the environment given at create time.
    pub env: BTreeMap<String, String>,
    /// The image's entrypoint and command, run at boot as the `entrypoint` session (empty:
    /// nothing runs).
    #[serde(default)]
    pub entrypoint: Vec<String>,
}
