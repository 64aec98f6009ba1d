//! Pause and wake (`--wake-rounds`, 50 by default): on one running sandbox, each round
//! pauses it (`POST /api/sandbox/{id}/pause`), then execs `true` through the toolbox, which
//! resumes it first (wake on request), beside an exec of `true` in the same sandbox while it
//! runs. The difference of the medians is what a wake adds to a call.

use std::time::Instant;

use anyhow::bail;
use serde_json::json;

use super::Api;
use super::stats::Stats;

/// What was measured.
#[derive(Debug)]
pub struct Figures {
    pub pause: Stats,
    /// An exec of `true` in the paused sandbox: resume, then the exec.
    pub wake_exec: Stats,
    /// An exec of `true` in the same sandbox while it runs.
    pub exec: Stats,
}

impl Figures {
    /// What a wake adds to a call, from the medians (ms).
    pub fn added_ms(&self) -> f64 {
        (self.wake_exec.p50 - self.exec.p50).max(0.0)
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "pause": self.pause.json(),
            "exec_true_paused_wake": self.wake_exec.json(),
            "exec_true_running": self.exec.json(),
            "wake_added_p50_ms": super::round3(self.added_ms()),
        })
    }
}

/// Measures `n` rounds of pause, wake by an exec, and a plain exec.
pub async fn measure(api: &Api, n: usize) -> anyhow::Result<Figures> {
    let (id, _) = api.create().await?;
    let exec = json!({"command": "true"}).to_string();
    // The steady state first: the agent's connection pooled, the shell path warm.
    for _ in 0..3 {
        api.toolbox(&id, "process/execute", &exec).await?;
    }
    let (mut pauses, mut wakes, mut execs) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = api
            .call("POST", &format!("/api/sandbox/{id}/pause"), None)
            .await?;
        pauses.push(t.elapsed());
        if status != 200 {
            bail!(
                "pause answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        wakes.push(api.toolbox(&id, "process/execute", &exec).await?);
        execs.push(api.toolbox(&id, "process/execute", &exec).await?);
    }
    api.delete(&id).await?;
    api.wait_gone(&id).await?;
    Ok(Figures {
        pause: Stats::of(&pauses),
        wake_exec: Stats::of(&wakes),
        exec: Stats::of(&execs),
    })
}
