//! Wiring of the SSH gateway (`corral-ssh`): its listener on `--ssh-port`, its host key in the
//! data dir, and the [`Gate`] that asks the engine about tokens.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use corral_engine::Engine;
use corral_engine::ssh_access::{self, Refusal};
use corral_ssh::{Gate, Gateway, Refused, Settings};
use tokio::net::TcpListener;

/// The engine's answer for a token: the sandbox it opens now.
struct EngineGate(Engine);

#[async_trait]
impl Gate for EngineGate {
    async fn open(&self, token: &str) -> Result<String, Refused> {
        match ssh_access::authorize(&self.0, token, time::OffsetDateTime::now_utc()).await {
            Ok(granted) => Ok(granted.sandbox.id),
            Err(Refusal::Invalid) => Err(Refused::Invalid),
            Err(other) => Err(Refused::Unavailable(other.to_string())),
        }
    }
}

/// The gateway and its bound socket, unless `--ssh-port 0`.
pub async fn bind(
    listen: std::net::SocketAddr,
    port: u16,
    data_dir: &Path,
    engine: &Engine,
) -> anyhow::Result<Option<(Gateway, TcpListener)>> {
    if port == 0 {
        tracing::info!("the SSH gateway is off (--ssh-port 0)");
        return Ok(None);
    }
    let key = corral_ssh::host_key::load_or_create(&data_dir.join("ssh_host_ed25519_key"))?;
    let addr = std::net::SocketAddr::new(listen.ip(), port);
    let socket = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the SSH gateway to {addr} (--ssh-port; 0 turns it off)")
    })?;
    tracing::info!(%addr, "SSH gateway listening");
    let gateway = Gateway::new(
        Arc::new(EngineGate(engine.clone())),
        engine.runtime.clone(),
        key,
        Settings::default(),
    );
    Ok(Some((gateway, socket)))
}
