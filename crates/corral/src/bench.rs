//! `corral bench`: starts a real `corral serve` on a scratch data dir and a free port and
//! measures it over HTTP with keep-alive:
//!
//! - latency of sandbox create, exec of `true`, and delete (p50/p90/p99);
//! - sustained create+delete cycles per second from concurrent clients;
//! - optionally (`--density N`) host memory per idle sandbox;
//! - the server's cold start to `/ready` and its idle RSS;
//!
//! and, side by side in the same run, the peers of `bench/peers.rs`: a plain `true` spawn
//! (the floor), `bwrap` and `podman run`, with ratios. Peers are optional; only the corral
//! part decides the exit status. Targets: docs/performance.md in the shared docs.
//!
//! Nothing is left behind: every sandbox is deleted (tracked, then listed and deleted again
//! as a safety net), the server is stopped with SIGTERM, and its disk pool mount, cgroups and
//! data dir are removed, also when a phase fails. podman containers are `--rm` and labelled
//! so that leftovers are removed; the small podman image is kept cached.

mod api;
mod forks;
mod measure;
mod peers;
mod procfs;
mod report;
mod stats;
mod wake;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::host_locks::{self, HostLocks, Resource};
use api::Api;
use measure::{density, latency, rate};
use peers::{Peer, Peers};
use procfs::mib;
use report::{render, to_json};
use stats::{Stats, round3};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Create/exec/delete cycles to measure [default: 200; --quick: 20].
    #[arg(long)]
    iterations: Option<usize>,
    /// Unmeasured cycles first [default: 10; --quick: 3].
    #[arg(long)]
    warmup: Option<usize>,
    /// Runs of each peer (plain `true`, bwrap, podman) [default: 50 for `true` and bwrap and
    /// 20 for podman; --quick: 5 and 3].
    #[arg(long)]
    peer_iterations: Option<usize>,
    /// Skip the peers (bwrap, podman, plain `true`).
    #[arg(long)]
    no_peers: bool,
    /// Seconds of the sustained create+delete test (0 skips it) [default: 5; --quick: 1].
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// Concurrent clients of the sustained create+delete test.
    #[arg(long, default_value_t = 2)]
    rate_clients: usize,
    /// Idle sandboxes to hold at once for the memory-per-sandbox figures (0 skips it).
    #[arg(long, default_value_t = 0)]
    density: usize,
    /// MiB of new files in the sandbox that is snapshotted and forked (0 skips it)
    /// [default: 100; --quick: 20].
    #[arg(long)]
    fork_mib: Option<u64>,
    /// Rounds of pause, then an exec that wakes the sandbox (0 skips it)
    /// [default: 50; --quick: 5].
    #[arg(long)]
    wake_rounds: Option<usize>,
    /// A short smoke run (for CI): few iterations, everything printed.
    #[arg(long)]
    quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Port for the server under test (0: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Scratch data dir (removed afterwards).
    #[arg(long, default_value = "/tmp/corral-bench")]
    data_dir: PathBuf,
}

/// The arguments with the defaults that depend on `--quick` filled in.
#[derive(Debug)]
struct Config {
    iterations: usize,
    warmup: usize,
    floor_n: usize,
    bwrap_n: usize,
    podman_n: usize,
    peers: bool,
    rate: Duration,
    rate_clients: usize,
    density: usize,
    fork_mib: u64,
    fork_rounds: usize,
    wake_rounds: usize,
    quick: bool,
    json: Option<PathBuf>,
    port: u16,
    data_dir: PathBuf,
}

impl Config {
    fn new(a: BenchArgs) -> anyhow::Result<Self> {
        let q = a.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let rate = a.rate_seconds.unwrap_or(if q { 1.0 } else { 5.0 });
        if !rate.is_finite() || rate < 0.0 {
            bail!("--rate-seconds must be >= 0");
        }
        Ok(Config {
            iterations: pick(a.iterations, 200, 20).max(1),
            warmup: pick(a.warmup, 10, 3),
            floor_n: pick(a.peer_iterations, 50, 5).max(1),
            bwrap_n: pick(a.peer_iterations, 50, 5).max(1),
            podman_n: pick(a.peer_iterations, 20, 3).max(1),
            peers: !a.no_peers,
            rate: Duration::from_secs_f64(rate),
            rate_clients: a.rate_clients.max(1),
            density: a.density,
            fork_mib: a.fork_mib.unwrap_or(if q { 20 } else { 100 }),
            fork_rounds: if q { 2 } else { 5 },
            wake_rounds: pick(a.wake_rounds, 50, 5),
            quick: q,
            json: a.json,
            port: a.port,
            data_dir: a.data_dir,
        })
    }
}

/// The bench server's own cgroup parent, removed afterwards.
const CGROUP_PARENT: &str = "corral-bench";
/// The bench server's network: its own interface prefix, nftables table and addresses, so
/// it never meets another server's.
const NET_PREFIX: &str = "crbench";
const NET_CIDR: &str = "10.118.0.0/16";

/// Removes what the bench server owns beyond its sandboxes: the disk pool mount (its loop
/// device is auto-cleared), its cgroup parents, and the data dir.
fn cleanup_server_traces(data_dir: &Path) {
    let pool = data_dir.join("disk");
    if is_mountpoint(&pool) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&pool)
            .status();
    }
    for dir in procfs::cgroup_parent_dirs(CGROUP_PARENT) {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(abs) = path.canonicalize() else {
        return false;
    };
    let want = abs.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// Everything measured, for the table and the JSON.
#[derive(Debug, Default)]
struct Results {
    ready: Duration,
    rss_startup_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    create: Option<Stats>,
    exec: Option<Stats>,
    /// `true` in a sandbox that has already run commands (the steady state).
    exec_warm: Option<Stats>,
    /// `print(1)` by code_run (warm interpreter) and by exec of a fresh `python3 -c`.
    code_run_warm: Option<Stats>,
    python_cold: Option<Stats>,
    delete: Option<Stats>,
    /// From the DELETE request until the sandbox is gone (GET answers 404).
    delete_gone: Option<Stats>,
    cycle: Option<Stats>,
    rate: Option<Rate>,
    density: Option<Density>,
    forks: Option<forks::Figures>,
    wake: Option<wake::Figures>,
    /// Sandbox processes and cgroups found (and removed) after the server stopped: any is a
    /// sandbox the deletes or the server's graceful stop left behind.
    leftover_processes: usize,
    leftover_cgroups: usize,
    /// Network slot interfaces and nftables tables left after the server stopped.
    leftover_net: usize,
    peers: Option<Peers>,
}

#[derive(Debug)]
struct Rate {
    clients: usize,
    cycles: usize,
    failures: usize,
    first_failure: Option<String>,
    elapsed: Duration,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.cycles as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug)]
struct Density {
    n: usize,
    created: usize,
    failures: usize,
    first_failure: Option<String>,
    create_time: Duration,
    delete_time: Duration,
    mem_before: Option<procfs::MemInfo>,
    mem_held: Option<procfs::MemInfo>,
    mem_after: Option<procfs::MemInfo>,
    /// How long after the deletes the pinned memory took to come back (or the time waited).
    returned_after: Duration,
    cgroup_before_kib: Option<u64>,
    cgroup_held_kib: Option<u64>,
    agents: procfs::TreeMemory,
    leftover_processes: usize,
    leftover_cgroups: usize,
}

impl Density {
    fn each(&self, mib: f64) -> f64 {
        mib / self.created.max(1) as f64
    }
    /// (MemAvailable before − while held) / created, in MiB.
    fn host_mib_each(&self) -> Option<f64> {
        let (b, h) = (self.mem_before?, self.mem_held?);
        Some(self.each(mib_signed(b.available, h.available)))
    }
    /// Rise of the pinned memory (see [`procfs::MemInfo::pinned`]) / created, in MiB, as
    /// (total, anon + shmem, unreclaimable slab, stacks + page tables + per-cpu).
    fn pinned_mib_each(&self) -> Option<(f64, f64, f64, f64)> {
        let (b, h) = (self.mem_before?, self.mem_held?);
        Some((
            self.each(mib_signed(h.pinned(), b.pinned())),
            self.each(mib_signed(h.anon + h.shmem, b.anon + b.shmem)),
            self.each(mib_signed(h.slab_unreclaimable, b.slab_unreclaimable)),
            self.each(mib_signed(h.kernel_other, b.kernel_other)),
        ))
    }
    fn cgroup_mib_each(&self) -> Option<f64> {
        let (b, h) = (self.cgroup_before_kib?, self.cgroup_held_kib?);
        Some(self.each(mib_signed(h, b)))
    }
    /// After the deletes, compared with before, in MiB: (pinned memory still held,
    /// MemAvailable still missing); negative: less than before.
    fn not_returned_mib(&self) -> Option<(f64, f64)> {
        let (b, a) = (self.mem_before?, self.mem_after?);
        Some((
            mib_signed(a.pinned(), b.pinned()),
            mib_signed(b.available, a.available),
        ))
    }
    /// Whether the pinned memory came back (see [`pinned_tolerance_kib`]).
    fn returned(&self) -> Option<bool> {
        let (b, h, a) = (self.mem_before?, self.mem_held?, self.mem_after?);
        Some(a.pinned() <= b.pinned() + pinned_tolerance_kib(&b, &h))
    }
}

/// How far above its level before the density test the pinned memory may stay after the
/// deletes: 10% of the rise, at least 8 MiB. The kernel's slab caches keep part of the pages
/// of freed objects (measured: ≈6–9% of the rise stays in unreclaimable slab while the server
/// runs; it does not add up over repeated runs), and the host is shared with other work.
fn pinned_tolerance_kib(before: &procfs::MemInfo, held: &procfs::MemInfo) -> u64 {
    (held.pinned().saturating_sub(before.pinned()) / 10).max(8 * 1024)
}

/// (a − b) in MiB.
fn mib_signed(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64) / 1024.0
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `sync`, then a short pause so that asynchronous kernel work settles.
async fn settle() {
    let _ = tokio::process::Command::new("sync").status().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cfg = Config::new(args)?;
    let mut res = Results::default();
    let corral = corral_part(&cfg, &mut res).await;
    if let Err(e) = &corral {
        // Still say what was measured before the failure.
        let _ = write_out(&render(&cfg, &res));
        return Err(anyhow::anyhow!("the corral part failed: {e:#}"));
    }
    if cfg.peers {
        let (f, b, p) = (cfg.floor_n, cfg.bwrap_n, cfg.podman_n);
        let peers = tokio::task::spawn_blocking(move || peers::measure(f, b, p))
            .await
            .context("peer thread")?;
        res.peers = Some(peers);
    }
    write_out(&render(&cfg, &res))?;
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&to_json(&cfg, &res))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let mut problems = Vec::new();
    if let Some(r) = &res.rate
        && r.failures > 0
    {
        problems.push(format!(
            "{} failed create/delete cycles in the sustained test (first: {})",
            r.failures,
            r.first_failure.as_deref().unwrap_or("?")
        ));
    }
    if let Some(d) = &res.density {
        if d.failures > 0 {
            problems.push(format!(
                "{} failures in the density test (first: {})",
                d.failures,
                d.first_failure.as_deref().unwrap_or("?")
            ));
        }
        if d.leftover_processes + d.leftover_cgroups > 0 {
            problems.push(format!(
                "after deleting the density sandboxes: {} processes and {} cgroups left",
                d.leftover_processes, d.leftover_cgroups
            ));
        }
    }
    if res.leftover_processes + res.leftover_cgroups + res.leftover_net > 0 {
        problems.push(format!(
            "after deleting every sandbox: {} sandbox processes, {} cgroups and {} network \
             interfaces or tables were left",
            res.leftover_processes, res.leftover_cgroups, res.leftover_net
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Starts the server, runs the corral phases, and always deletes every sandbox, stops the
/// server and removes its traces.
/// The bench server's slot interfaces and nftables table still present after it stopped.
/// Dropped namespaces are removed by the kernel in the background: allowed 3 s.
async fn network_leftovers() -> usize {
    let count = || {
        let links = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(NET_PREFIX))
                    .count()
            })
            .unwrap_or(0);
        let table = std::process::Command::new("nft")
            .args(["list", "table", "inet", &format!("corral_{NET_PREFIX}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        links + usize::from(table)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = count();
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Locks what the bench server will use while the bench cleans it up, so the cleanup never
/// removes what another server (or bench) runs with; the server takes them over.
fn lock_bench_resources(data_dir: &Path, listen: &str) -> anyhow::Result<HostLocks> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let wanted = [
        Resource::DataDir(data_dir.clone()),
        Resource::cgroup_parent(Path::new("/sys/fs/cgroup"), CGROUP_PARENT)?,
        Resource::NetPrefix(NET_PREFIX.into()),
        Resource::NetCidr(NET_CIDR.parse()?),
    ];
    let me = host_locks::Owner {
        pid: std::process::id(),
        data_dir: data_dir.to_string_lossy().into_owned(),
        listen: format!("{listen} (corral bench)"),
    };
    host_locks::acquire(
        Path::new(host_locks::LOCK_DIR),
        &wanted,
        &me,
        &host_locks::Probe::host(),
    )
    .map_err(|e| anyhow::anyhow!("the bench cannot run its server: {e}"))
}

async fn corral_part(cfg: &Config, res: &mut Results) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let key = format!("bench-{}", hex::encode(rand::random::<[u8; 12]>()));
    let port = if cfg.port == 0 {
        free_port()?
    } else {
        cfg.port
    };
    let listen = format!("127.0.0.1:{port}");
    let locks = lock_bench_resources(&cfg.data_dir, &listen)?;
    cleanup_server_traces(&cfg.data_dir);
    // Leftovers of an earlier run that died hard.
    let _ = procfs::kill_and_remove_child_cgroups(CGROUP_PARENT);
    drop(locks);
    let t0 = Instant::now();
    let mut server = tokio::process::Command::new(exe)
        .args([
            "serve",
            "--listen",
            &listen,
            "--log-format",
            "text",
            "--cgroup-parent",
            CGROUP_PARENT,
        ])
        .arg("--data-dir")
        .arg(&cfg.data_dir)
        .env("CORRAL_API_KEY", &key)
        .env("CORRAL_LOG", "warn")
        .env("CORRAL_NET_PREFIX", NET_PREFIX)
        .env("CORRAL_NET_CIDR", NET_CIDR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting corral serve")?;
    let server_pid = server.id().context("server pid")?;
    let api = Api::new(format!("http://{listen}"), key);

    let measured = async {
        loop {
            if let Ok((200, _)) = api.call("GET", "/ready", None).await {
                break;
            }
            if let Ok(Some(status)) = server.try_wait() {
                bail!("the server exited during startup: {status}");
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("server did not become ready in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        res.ready = t0.elapsed();
        res.rss_startup_kib = procfs::vm_rss_kib(server_pid);
        latency(cfg, &api, res).await?;
        if !cfg.rate.is_zero() {
            res.rate = Some(rate(cfg, &api).await);
        }
        if cfg.density > 0 {
            res.density = Some(density(cfg, &api, server_pid).await);
        }
        if cfg.fork_mib > 0 {
            res.forks = Some(forks::measure(&api, cfg.fork_mib, cfg.fork_rounds).await?);
        }
        if cfg.wake_rounds > 0 {
            res.wake = Some(wake::measure(&api, cfg.wake_rounds).await?);
        }
        anyhow::Ok(())
    }
    .await;

    // Whatever happened: delete every sandbox, check nothing is left, stop the server.
    api.delete_everything().await;
    res.rss_after_kib = procfs::vm_rss_kib(server_pid);
    // SIGTERM for a graceful stop, as a user would; SIGKILL if it hangs.
    let _ = std::process::Command::new("kill")
        .arg(server_pid.to_string())
        .status();
    if tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .is_err()
    {
        let _ = server.kill().await;
    }
    // The server destroys its warm pool when it stops, and sandboxes outlive it: any
    // sandbox cgroup left now was not deleted. Cleaned up only while no other server has
    // taken the values since.
    match lock_bench_resources(&cfg.data_dir, &listen) {
        Ok(locks) => {
            (res.leftover_processes, res.leftover_cgroups) =
                procfs::kill_and_remove_child_cgroups(CGROUP_PARENT);
            res.leftover_net = network_leftovers().await;
            cleanup_server_traces(&cfg.data_dir);
            drop(locks);
        }
        Err(e) => eprintln!("not cleaning up after the bench server: {e:#}"),
    }
    measured
}

fn write_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}
