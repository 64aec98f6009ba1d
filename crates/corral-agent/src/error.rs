//! Errors that stop the agent from starting or serving.

use std::io;

/// Why the agent could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The command line was not understood.
    #[error("usage: corral-agent [--socket PATH --config FILE]: {0}")]
    Usage(String),
    /// An inherited file descriptor the runtime should have passed is not open.
    #[error(
        "file descriptor {fd} ({what}) is not open; the agent must be started by the corral runtime (or use --socket/--config)"
    )]
    MissingFd { fd: i32, what: &'static str },
    /// The configuration is not valid JSON for `AgentConfig`.
    #[error("invalid agent config: {0}")]
    Config(#[from] serde_json::Error),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl AgentError {
    /// Wraps an I/O error with what the agent was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
