//! corral's SSH gateway: `ssh -p <port> <token>@<host>` opens a shell, runs a command or
//! serves SFTP inside the sandbox that an SSH access token (Daytona's `create_ssh_access`)
//! was granted for.
//!
//! - Authentication: the user name is the token; the `none` method carries it (as Daytona's
//!   gateway does), so a plain `ssh` works non-interactively. Passwords, keys and
//!   keyboard-interactive are refused. Whether a token is good is the [`Gate`]'s decision
//!   (the binary asks the engine: known, unrevoked, unexpired), asked again for every new
//!   channel, so a revoked or expired token opens nothing more.
//! - Channels: `session` only, with `pty-req`, `env` (`LANG`, `LC_*`), `shell`, `exec`,
//!   `window-change`, `signal` and the `sftp` subsystem (others are refused); each runs inside
//!   the sandbox through its agent's `/corral/ssh` route (`corral_agent_proto::ssh`). Forwarding, X11 and agent
//!   forwarding are refused.
//! - Bounds: at most [`Settings::max_connections`] connections (more are closed at once),
//!   [`Settings::max_channels`] channels per connection, authentication within
//!   [`Settings::auth_timeout`], idle connections closed after [`Settings::idle_timeout`].
//! - The host key: ed25519, made once and kept in the data dir ([`host_key::load_or_create`]).

#![forbid(unsafe_code)]

mod channel;
mod handler;
pub mod host_key;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use corral_agent_proto::{AgentClient, RequestBody};
use corral_core::Runtime;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Why a token opens nothing now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Unknown, revoked or expired: authentication fails.
    #[error("invalid or expired SSH access token")]
    Invalid,
    /// The token is good but no session can start (e.g. the sandbox is stopped); shown to
    /// the client.
    #[error("{0}")]
    Unavailable(String),
}

/// Decides what a token opens.
#[async_trait]
pub trait Gate: Send + Sync + 'static {
    /// The id of the sandbox `token` opens now.
    async fn open(&self, token: &str) -> Result<String, Refused>;
}

/// Limits of the gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub max_channels: usize,
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_channels: 16,
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60 * 60),
        }
    }
}

/// The gateway: accepts connections and serves them until shut down.
#[derive(Clone)]
pub struct Gateway {
    gate: Arc<dyn Gate>,
    agents: AgentClient<RequestBody>,
    config: Arc<Config>,
    settings: Settings,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway asking `gate` about tokens and reaching agents through `runtime`.
    pub fn new(
        gate: Arc<dyn Gate>,
        runtime: Arc<dyn Runtime>,
        host_key: PrivateKey,
        settings: Settings,
    ) -> Self {
        let config = Config {
            server_id: russh::SshId::Standard("SSH-2.0-corral".into()),
            methods: MethodSet::from(&[MethodKind::None][..]),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::from_millis(300)),
            keys: vec![host_key],
            max_auth_attempts: 3,
            inactivity_timeout: Some(settings.idle_timeout),
            keepalive_interval: Some(Duration::from_secs(60)),
            nodelay: true,
            ..Default::default()
        };
        Self {
            gate,
            agents: AgentClient::new(runtime),
            config: Arc::new(config),
            settings,
        }
    }

    /// Serves `listener` until `shutdown` resolves; live connections are dropped then.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            let (socket, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "ssh accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::info!(%peer, "ssh connection refused: too many connections");
                drop(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let this = self.clone();
            let mut stop = stop.subscribe();
            tokio::spawn(async move {
                let _slot = slot;
                tokio::select! {
                    () = handler::connection(this, socket, peer) => {}
                    _ = stop.recv() => {}
                }
            });
        }
        let _ = stop.send(());
    }
}
