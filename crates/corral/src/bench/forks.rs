//! Snapshot and fork of a running sandbox holding new files (`--fork-mib`, 100 by default):
//! `POST /api/sandbox/{id}/snapshot`, a create from that snapshot, `POST /api/sandbox/{id}/fork`
//! (answered once the fork is started), and beside them the floor a fork without
//! copy-on-write cannot go below: copying the same files inside the sandbox
//! (`cp -a --reflink=never`, page cache to page cache, nothing synced).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::Api;
use super::stats::Stats;

/// What was measured.
#[derive(Debug)]
pub struct Figures {
    pub mib: u64,
    /// The first snapshot, which also writes the new files out (they were just written).
    pub first_snapshot: Duration,
    pub snapshot: Stats,
    pub create_from_snapshot: Stats,
    pub fork: Stats,
    pub copy: Stats,
}

impl Figures {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "new_files_mib": self.mib,
            "first_snapshot_ms": super::round3(self.first_snapshot.as_secs_f64() * 1000.0),
            "snapshot": self.snapshot.json(),
            "create_from_snapshot": self.create_from_snapshot.json(),
            "fork_until_started": self.fork.json(),
            "copy_in_sandbox": self.copy.json(),
        })
    }
}

async fn post(
    api: &Api,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let t = Instant::now();
    let (status, answer) = api.call("POST", path, Some(&body.to_string())).await?;
    let took = t.elapsed();
    if status != 200 {
        bail!(
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok((took, serde_json::from_slice(&answer)?))
}

fn track(api: &Api, v: &serde_json::Value) -> anyhow::Result<String> {
    let id = v["id"].as_str().context("no sandbox id")?.to_owned();
    api.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone());
    if v["state"].as_str() != Some("started") {
        bail!("sandbox {id} answered state {}, not started", v["state"]);
    }
    Ok(id)
}

async fn remove(api: &Api, id: &str) -> anyhow::Result<()> {
    api.delete(id).await?;
    api.wait_gone(id).await?;
    Ok(())
}

/// Measures `n` rounds on one sandbox holding `mib` MiB of new files.
pub async fn measure(api: &Api, mib: u64, n: usize) -> anyhow::Result<Figures> {
    let (src, _) = api.create().await?;
    let fill = format!(
        "mkdir -p /home/daytona/data && i=0; while [ $i -lt {mib} ]; do \
         head -c 1048576 /dev/urandom > /home/daytona/data/f$i; i=$((i+1)); done"
    );
    let long = json!({"command": format!("sh -c '{fill}'"), "timeout": 300}).to_string();
    api.toolbox(&src, "process/execute", &long).await?;
    let tag = hex::encode(rand::random::<[u8; 4]>());
    let (mut snaps, mut creates, mut forks, mut copies) = (vec![], vec![], vec![], vec![]);
    let mut first_snapshot = Duration::ZERO;
    for i in 0..=n {
        let name = format!("bench-{tag}-{i}");
        let (took, _) = post(
            api,
            &format!("/api/sandbox/{src}/snapshot"),
            json!({"name": name}),
        )
        .await?;
        if i == 0 {
            first_snapshot = took;
        } else {
            snaps.push(took);
        }
        let (took, v) = post(api, "/api/sandbox", json!({"snapshot": name})).await?;
        creates.push(took);
        remove(api, &track(api, &v)?).await?;
        let (status, body) = api
            .call("DELETE", &format!("/api/snapshots/{name}"), None)
            .await?;
        if status != 200 {
            bail!(
                "deleting snapshot {name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }

        let (took, v) = post(api, &format!("/api/sandbox/{src}/fork"), json!({})).await?;
        forks.push(took);
        remove(api, &track(api, &v)?).await?;

        // A real copy: coreutils' cp would otherwise clone the extents on btrfs.
        let cp = json!({"command": "cp -a --reflink=never /home/daytona/data /home/daytona/copy", "timeout": 300});
        copies.push(
            api.toolbox(&src, "process/execute", &cp.to_string())
                .await?,
        );
        let rm = json!({"command": "rm -rf /home/daytona/copy", "timeout": 300});
        api.toolbox(&src, "process/execute", &rm.to_string())
            .await?;
    }
    remove(api, &src).await?;
    Ok(Figures {
        mib,
        first_snapshot,
        snapshot: Stats::of(&snaps),
        create_from_snapshot: Stats::of(&creates),
        fork: Stats::of(&forks),
        copy: Stats::of(&copies),
    })
}
