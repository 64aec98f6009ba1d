//! What the server does with recorded sandboxes when it starts.
//!
//! Sandboxes outlive the server process. On start, every recorded sandbox that should run
//! is checked through its agent's socket: reachable ones stay `started` (the runtime can
//! still destroy them through their cgroup); unreachable ones become `error`. Sandboxes
//! caught mid-create or mid-delete are finished off.

use std::time::Duration;

use corral_core::{ListQuery, Runtime, SandboxState, SandboxStore};
use time::OffsetDateTime;

/// Brings recorded state in line with what is actually running.
pub async fn on_start(store: &dyn SandboxStore, runtime: &dyn Runtime) -> anyhow::Result<()> {
    let mut query = ListQuery {
        limit: 200,
        ..Default::default()
    };
    let mut all = Vec::new();
    loop {
        let page = store.list(&query).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    for mut s in all {
        match s.state {
            SandboxState::Destroying => {
                runtime.destroy(&s.id).await?;
                store.remove(&s.id).await?;
                tracing::info!(sandbox = %s.id, "finished an interrupted delete");
            }
            SandboxState::Started | SandboxState::Creating => {
                let alive = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::UnixStream::connect(runtime.agent_socket(&s.id)),
                )
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
                if alive && s.state == SandboxState::Started {
                    continue;
                }
                s.state = SandboxState::Error;
                s.error_reason = Some(if alive {
                    "the server stopped while this sandbox was being created".into()
                } else {
                    "the sandbox was not running when the server started".into()
                });
                s.updated_at = OffsetDateTime::now_utc();
                store.update(&s).await?;
                tracing::warn!(sandbox = %s.id, reason = ?s.error_reason, "sandbox marked as error");
            }
            _ => {}
        }
    }
    Ok(())
}
