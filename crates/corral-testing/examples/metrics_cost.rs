//! What the metrics sampler costs the control plane for N started sandboxes (default 1000),
//! with the history in files as `corral serve` keeps it: CPU time per pass (list, usage,
//! two slot writes per sandbox), the resident memory it adds, and the bytes on disk per
//! sandbox. The runtime is the fake one, so the cost of reading real cgroup, btrfs and sysfs
//! figures is not in it (measure that against a real server). Prints figures; asserts none.
//!
//! `cargo run --release -p corral-testing --example metrics_cost [-- N [passes]]`

// A measurement program: its output is the point.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use corral_core::ports::{NetCounters, Usage};
use corral_testing::TestApp;
use serde_json::json;

/// This process's user+system CPU time and resident set, from /proc/self/stat.
fn cpu_and_rss() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command: state is 0, utime 11, stime 12, rss (pages) 21.
    let ticks = num(11) + num(12);
    (Duration::from_millis(ticks * 10), num(21) * 4096)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let passes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let app = TestApp::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let s = app.create_sandbox(&json!({"name": format!("m{i}")})).await;
        ids.push(s["id"].as_str().expect("id").to_owned());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let interval = Duration::from_secs(10);
    let engine = app.state().engine.clone().with_telemetry(
        corral_engine::telemetry::Telemetry::in_dir(dir.path().join("metrics"), interval)
            .expect("metrics dir"),
    );
    let t0 = 1_900_000_000_000u64;
    let (cpu0, rss0) = cpu_and_rss();
    let wall = Instant::now();
    for p in 0..passes {
        for id in &ids {
            app.runtime.set_usage(
                id,
                Usage {
                    cpu_limit_cores: 1.0,
                    cpu_time_ns: p * 1_000_000,
                    memory_limit_bytes: 1 << 30,
                    memory_used_bytes: 10 << 20,
                    memory_cache_bytes: 1 << 20,
                    disk_used_bytes: Some(5 << 20),
                    network: Some(NetCounters {
                        rx_bytes: p,
                        tx_bytes: p,
                    }),
                },
            );
        }
        let sampled = corral_engine::telemetry::sample_at(&engine, t0 + p * 10_000)
            .await
            .expect("pass");
        assert_eq!(sampled, n);
    }
    let took = wall.elapsed();
    let (cpu1, rss1) = cpu_and_rss();
    let per_pass = (cpu1 - cpu0) / passes as u32;
    let file = std::fs::metadata(dir.path().join("metrics").join(format!("{}.bin", ids[0])))
        .expect("history file")
        .len();
    println!("sandboxes: {n}, passes: {passes} (wall {took:.2?})");
    println!(
        "CPU per pass: {per_pass:.2?} (includes setting the fake figures) = {:.3}% of one core at a {}s interval",
        per_pass.as_secs_f64() / interval.as_secs_f64() * 100.0,
        interval.as_secs()
    );
    println!(
        "RSS: {} MiB before the passes, {} MiB after ({} bytes per sandbox)",
        rss0 >> 20,
        rss1 >> 20,
        rss1.saturating_sub(rss0) / n as u64
    );
    println!(
        "history file per sandbox: {file} bytes ({} KiB for {n})",
        (file * n as u64) >> 10
    );
}
