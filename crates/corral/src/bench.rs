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

mod forks;
mod peers;
mod procfs;
mod stats;

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
use peers::{Peer, Peers};
use procfs::mib;
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
            quick: q,
            json: a.json,
            port: a.port,
            data_dir: a.data_dir,
        })
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

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
    for ctrl in ["memory", "cpu", "cpuacct", "pids", ""] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join(CGROUP_PARENT));
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

/// One HTTP client (one keep-alive connection when used sequentially) and the set of
/// sandboxes the bench has created and not yet deleted, shared by all clients.
struct Api {
    client: HttpClient,
    base: String,
    key: String,
    live: Arc<Mutex<HashSet<String>>>,
}

impl Api {
    fn new(base: String, key: String) -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
            key,
            live: Arc::default(),
        }
    }

    /// Another client (its own connection) sharing the set of live sandboxes.
    fn another(&self) -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: self.base.clone(),
            key: self.key.clone(),
            live: self.live.clone(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
        let resp = self.client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `POST /api/sandbox {}`; the new id and the time the call took.
    async fn create(&self) -> anyhow::Result<(String, Duration)> {
        let t = Instant::now();
        let (status, body) = self.call("POST", "/api/sandbox", Some("{}")).await?;
        let took = t.elapsed();
        if status != 200 {
            bail!(
                "create answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let id = v["id"].as_str().context("create: no id")?.to_owned();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if v["state"].as_str() != Some("started") {
            bail!("create answered state {}, not started", v["state"]);
        }
        Ok((id, took))
    }

    /// Runs `true` in a sandbox; the time the call took.
    async fn exec_true(&self, id: &str) -> anyhow::Result<Duration> {
        self.toolbox(id, "process/execute", r#"{"command":"true"}"#)
            .await
    }

    /// A toolbox call that must answer exit code 0; the time it took.
    async fn toolbox(&self, id: &str, path: &str, body: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (status, body) = self
            .call("POST", &format!("/toolbox/{id}/{path}"), Some(body))
            .await?;
        let took = t.elapsed();
        if status != 200 {
            bail!("exec answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if v["exitCode"].as_i64() != Some(0) {
            bail!("{path} answered {}", String::from_utf8_lossy(&body));
        }
        Ok(took)
    }

    /// `DELETE /api/sandbox/{id}`; the time the call took.
    async fn delete(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (status, body) = self
            .call("DELETE", &format!("/api/sandbox/{id}"), None)
            .await?;
        let took = t.elapsed();
        if status != 200 && status != 404 {
            bail!(
                "delete answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if status == 404 {
            bail!("delete answered 404: {}", String::from_utf8_lossy(&body));
        }
        Ok(took)
    }

    /// Polls `GET /api/sandbox/{id}` until it answers 404: a delete answers `destroying` and
    /// finishes in the background. The time that took.
    async fn wait_gone(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let (status, body) = self
                .call("GET", &format!("/api/sandbox/{id}"), None)
                .await?;
            match status {
                404 => return Ok(t.elapsed()),
                200 if t.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                _ => bail!(
                    "sandbox {id} not gone after delete: {status} {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    /// Deletes every sandbox the bench still tracks, then every one the server lists (the
    /// data dir is the bench's own, so all of them are). Best effort.
    async fn delete_everything(&self) {
        let tracked: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for id in tracked {
            let _ = self.delete(&id).await;
        }
        for _ in 0..20 {
            let Ok((200, body)) = self.call("GET", "/api/sandbox?limit=200", None).await else {
                return;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return;
            };
            let ids: Vec<String> = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() {
                return;
            }
            for id in ids {
                let _ = self.delete(&id).await;
            }
        }
    }
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

/// Sequential create → exec `true` → delete cycles on one keep-alive connection.
async fn latency(cfg: &Config, api: &Api, res: &mut Results) -> anyhow::Result<()> {
    let (mut create, mut exec, mut delete, mut gone, mut cycle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.warmup + cfg.iterations {
        let (id, c) = api.create().await?;
        let e = api.exec_true(&id).await?;
        let d = api.delete(&id).await?;
        let g = d + api.wait_gone(&id).await?;
        if i >= cfg.warmup {
            create.push(c);
            exec.push(e);
            delete.push(d);
            gone.push(g);
            cycle.push(c + e + g);
        }
    }
    res.create = Some(Stats::of(&create));
    res.exec = Some(Stats::of(&exec));
    res.delete = Some(Stats::of(&delete));
    res.delete_gone = Some(Stats::of(&gone));
    res.cycle = Some(Stats::of(&cycle));

    // The steady state of one sandbox: exec, and python by code_run vs a fresh python3.
    let (id, _) = api.create().await?;
    let (mut warm, mut code, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let code_run = r#"{"code":"print(1)","language":"python"}"#;
    let fresh = r#"{"command":"python3 -u -c 'print(1)'"}"#;
    for i in 0..cfg.warmup.max(1) + cfg.iterations {
        let w = api.exec_true(&id).await?;
        let c = api.toolbox(&id, "process/code-run", code_run).await?;
        let f = api.toolbox(&id, "process/execute", fresh).await?;
        if i >= cfg.warmup.max(1) {
            warm.push(w);
            code.push(c);
            cold.push(f);
        }
    }
    api.delete(&id).await?;
    res.exec_warm = Some(Stats::of(&warm));
    res.code_run_warm = Some(Stats::of(&code));
    res.python_cold = Some(Stats::of(&cold));
    Ok(())
}

/// `clients` concurrent loops of create + delete for the configured time. Deletes finish in
/// the background, so the clock stops only once every sandbox deleted is gone: a backlog of
/// teardowns counts against the rate.
async fn rate(cfg: &Config, api: &Api) -> Rate {
    let deadline = Instant::now() + cfg.rate;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cfg.rate_clients {
        let client = api.another();
        tasks.push(tokio::spawn(async move {
            let (mut cycles, mut failures, mut first) = (0usize, 0usize, None);
            let mut deleted = Vec::new();
            while Instant::now() < deadline {
                let r = async {
                    let (id, _) = client.create().await?;
                    client.delete(&id).await?;
                    deleted.push(id);
                    anyhow::Ok(())
                }
                .await;
                match r {
                    Ok(()) => cycles += 1,
                    Err(e) => {
                        failures += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                        // Do not spin on a broken server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            for id in &deleted {
                if let Err(e) = client.wait_gone(id).await {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            (cycles, failures, first)
        }));
    }
    let mut out = Rate {
        clients: cfg.rate_clients,
        cycles: 0,
        failures: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((c, f, first)) => {
                out.cycles += c;
                out.failures += f;
                if out.first_failure.is_none() {
                    out.first_failure = first;
                }
            }
            Err(e) => {
                out.failures += 1;
                out.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.elapsed = t.elapsed();
    out
}

/// Runs `op` for items 0..n from `clients` concurrent clients; (failures, first failure).
async fn fan_out<F, Fut>(api: &Api, clients: usize, n: usize, op: F) -> (usize, Option<String>)
where
    F: Fn(Arc<Api>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = Arc::new(api.another());
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let (mut failures, mut first) = (0usize, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failures > 10 {
                    break;
                }
                if let Err(e) = op(client.clone(), i).await {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            (failures, first)
        }));
    }
    let (mut failures, mut first) = (0, None);
    for task in tasks {
        match task.await {
            Ok((f, fst)) => {
                failures += f;
                if first.is_none() {
                    first = fst;
                }
            }
            Err(e) => {
                failures += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (failures, first)
}

/// Creates `n` idle sandboxes, measures the memory they hold, deletes them, and checks the
/// memory comes back and nothing is left.
async fn density(cfg: &Config, api: &Api, server_pid: u32) -> Density {
    let n = cfg.density;
    let clients = cfg.rate_clients.min(n).max(1);
    settle().await;
    let mem_before = procfs::MemInfo::read();
    let cgroup_before_kib = procfs::cgroup_charged_kib(CGROUP_PARENT);
    // The server may keep sandboxes of its own (a warm pool): count only what the created
    // sandboxes add to that baseline.
    let agents_before = procfs::server_children_memory(server_pid);
    let cgroups_before = procfs::child_cgroups(CGROUP_PARENT).len();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let t = Instant::now();
    let ids2 = ids.clone();
    let (mut failures, mut first_failure) = fan_out(api, clients, n, move |c, _| {
        let ids = ids2.clone();
        async move {
            let (id, _) = c.create().await?;
            ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            Ok(())
        }
    })
    .await;
    let create_time = t.elapsed();
    settle().await;
    let mem_held = procfs::MemInfo::read();
    let cgroup_held_kib = procfs::cgroup_charged_kib(CGROUP_PARENT);
    let held = procfs::server_children_memory(server_pid);
    let agents = procfs::TreeMemory {
        inits: held.inits.saturating_sub(agents_before.inits),
        processes: held.processes.saturating_sub(agents_before.processes),
        rss_kib: held.rss_kib.saturating_sub(agents_before.rss_kib),
        pss_kib: held.pss_kib.saturating_sub(agents_before.pss_kib),
    };

    let ids: Vec<String> = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    let created = ids.len();
    let ids = Arc::new(ids);
    let t = Instant::now();
    let (f, first) = fan_out(api, clients, created, move |c, i| {
        let ids = ids.clone();
        async move {
            c.delete(&ids[i]).await?;
            c.wait_gone(&ids[i]).await?;
            Ok(())
        }
    })
    .await;
    let delete_time = t.elapsed();
    failures += f;
    if first_failure.is_none() {
        first_failure = first;
    }
    // The kernel frees part of a sandbox asynchronously (network namespaces, RCU): wait
    // up to 5 s for the pinned memory to come back.
    settle().await;
    let t = Instant::now();
    let mut mem_after = procfs::MemInfo::read();
    if let (Some(b), Some(h)) = (mem_before, mem_held) {
        let limit = b.pinned() + pinned_tolerance_kib(&b, &h);
        while t.elapsed() < Duration::from_secs(5) && mem_after.is_some_and(|a| a.pinned() > limit)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            mem_after = procfs::MemInfo::read();
        }
    }
    let returned_after = t.elapsed() + Duration::from_millis(500);
    Density {
        n,
        created,
        failures,
        first_failure,
        create_time,
        delete_time,
        mem_before,
        mem_held,
        mem_after,
        returned_after,
        cgroup_before_kib,
        cgroup_held_kib,
        agents,
        leftover_processes: procfs::server_children_memory(server_pid)
            .processes
            .saturating_sub(agents_before.processes),
        leftover_cgroups: procfs::child_cgroups(CGROUP_PARENT)
            .len()
            .saturating_sub(cgroups_before),
    }
}

fn write_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The ratios of the summary, from p50s: (label, value).
fn ratios(res: &Results) -> Vec<(&'static str, f64)> {
    let cycle = res.cycle.map(|s| s.p50);
    let create = res.create.map(|s| s.p50);
    let (floor, bwrap, podman) = match &res.peers {
        Some(p) => (p.floor.p50(), p.bwrap.p50(), p.podman.p50()),
        None => (None, None, None),
    };
    [
        (
            "podman run / corral create+exec+delete",
            ratio(podman, cycle),
        ),
        ("corral create+exec+delete / bwrap", ratio(cycle, bwrap)),
        ("corral create / bwrap", ratio(create, bwrap)),
        ("podman run / bwrap", ratio(podman, bwrap)),
        (
            "fresh python3 / warm code_run (print(1))",
            ratio(
                res.python_cold.map(|s| s.p50),
                res.code_run_warm.map(|s| s.p50),
            ),
        ),
        ("bwrap / plain true", ratio(bwrap, floor)),
        (
            "corral create+exec+delete / plain true",
            ratio(cycle, floor),
        ),
    ]
    .into_iter()
    .filter_map(|(l, r)| r.map(|r| (l, r)))
    .collect()
}

fn render(cfg: &Config, res: &Results) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "corral bench{}: {} corral cycles after {} warm-up; peers: {}; sustained: {}; density: {}",
        if cfg.quick { " --quick" } else { "" },
        cfg.iterations,
        cfg.warmup,
        if cfg.peers {
            format!(
                "true {}, bwrap {}, podman {}",
                cfg.floor_n, cfg.bwrap_n, cfg.podman_n
            )
        } else {
            "off".into()
        },
        if cfg.rate.is_zero() {
            "off".to_owned()
        } else {
            format!(
                "{:.1} s x {} clients",
                cfg.rate.as_secs_f64(),
                cfg.rate_clients
            )
        },
        if cfg.density > 0 {
            cfg.density.to_string()
        } else {
            "off".into()
        }
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<44} {:>8} {:>8} {:>8} {:>5}  target",
        "latency (ms)", "p50", "p90", "p99", "n"
    );
    let row = |w: &mut String, name: &str, st: Option<Stats>, target: &str| match st {
        Some(st) => {
            let _ = writeln!(
                w,
                "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>5}  {target}",
                st.p50, st.p90, st.p99, st.n
            );
        }
        None => {
            let _ = writeln!(w, "{name:<44} {:>8}", "n/a");
        }
    };
    row(
        w,
        "corral POST /api/sandbox (create)",
        res.create,
        "p50<=5 p99<=25",
    );
    row(w, "corral exec true, first in a new sandbox", res.exec, "");
    row(
        w,
        "corral exec true, running sandbox",
        res.exec_warm,
        "p50<=2",
    );
    row(
        w,
        "corral code_run print(1) (warm python)",
        res.code_run_warm,
        ">=3x faster",
    );
    row(
        w,
        "corral exec python3 -c print(1) (cold)",
        res.python_cold,
        "",
    );
    row(w, "corral DELETE /api/sandbox/{id}", res.delete, "p50<=5");
    row(w, "corral delete until gone (404)", res.delete_gone, "");
    if let Some(f) = &res.forks {
        let _ = writeln!(
            w,
            "{:<44} {:>8.2}",
            format!("corral snapshot, {} MiB new (first: flushes)", f.mib),
            f.first_snapshot.as_secs_f64() * 1000.0
        );
        row(
            w,
            &format!("corral snapshot, {} MiB new, running", f.mib),
            Some(f.snapshot),
            "",
        );
        row(
            w,
            "corral create from that snapshot",
            Some(f.create_from_snapshot),
            "",
        );
        row(
            w,
            &format!("corral fork, {} MiB new, until started", f.mib),
            Some(f.fork),
            "",
        );
        row(
            w,
            &format!("  (cp -a --reflink=never of the {} MiB)", f.mib),
            Some(f.copy),
            "",
        );
    }
    row(w, "corral create+exec+delete until gone", res.cycle, "");
    if let Some(p) = &res.peers {
        for (name, peer) in [
            ("plain true (fork+exec+wait, floor)", &p.floor),
            ("bwrap create+exec+exit", &p.bwrap),
            ("podman run --rm true", &p.podman),
        ] {
            match peer {
                Peer::Measured { stats, .. } => row(w, name, Some(*stats), ""),
                Peer::Skipped(reason) => {
                    let _ = writeln!(w, "{name:<44} skipped: {reason}");
                }
            }
        }
        for (name, peer) in [("bwrap", &p.bwrap), ("podman", &p.podman)] {
            if let Peer::Measured { command, note, .. } = peer {
                let _ = writeln!(w, "  {name}: {command}");
                if let Some(n) = note {
                    let _ = writeln!(w, "  {name}: {n}");
                }
            }
        }
    }

    let _ = writeln!(w);
    let _ = writeln!(w, "{:<44} {:>26}  target", "throughput and server", "");
    if let Some(r) = &res.rate {
        let _ = writeln!(
            w,
            "{:<44} {:>16.1} cycles/s  >=300/s   ({} cycles in {:.2} s until all gone, {} failures)",
            format!("sustained create+delete, {} clients", r.clients),
            r.per_second(),
            r.cycles,
            r.elapsed.as_secs_f64(),
            r.failures
        );
    }
    let _ = writeln!(
        w,
        "{:<44} {:>16.1} ms        <=200 ms",
        "server cold start to /ready",
        res.ready.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16} MiB       <=30 MiB",
        "server RSS after startup",
        opt(res.rss_startup_kib.map(mib), 1)
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16} MiB",
        "server RSS after the runs (all deleted)",
        opt(res.rss_after_kib.map(mib), 1)
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16}",
        "left after deletes + stop (procs, cgroups, net)",
        format!(
            "{}, {}, {}",
            res.leftover_processes, res.leftover_cgroups, res.leftover_net
        )
    );

    if let Some(d) = &res.density {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "density: {} idle sandboxes held at once ({} created, {} failures)",
            d.n, d.created, d.failures
        );
        let secs = d.create_time.as_secs_f64();
        let _ = writeln!(
            w,
            "{:<44} {:>16.2} s         ({:.0}/s)",
            "time to create them",
            secs,
            d.created as f64 / secs.max(1e-9)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB each  <=1.5 MiB",
            "host MemAvailable drop (noisy: shared host)",
            opt(d.host_mib_each(), 3)
        );
        match d.pinned_mib_each() {
            Some((total, anon, slab, other)) => {
                let _ = writeln!(
                    w,
                    "{:<44} {:>16.3} MiB each  (anon+shmem {anon:.3}, unreclaimable slab {slab:.3}, stacks+page tables {other:.3})",
                    "host non-reclaimable memory rise", total
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "{:<44} {:>16}",
                    "host non-reclaimable memory rise", "n/a"
                );
            }
        }
        let per = |kib: u64| mib(kib) / d.created.max(1) as f64;
        let _ = writeln!(
            w,
            "{:<44} {:>16.3} MiB each  ({} inits, {} processes added)",
            "agents RSS",
            per(d.agents.rss_kib),
            d.agents.inits,
            d.agents.processes
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16.3} MiB each",
            "agents PSS",
            per(d.agents.pss_kib)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB each",
            "memory charged to the sandboxes' cgroups",
            opt(d.cgroup_mib_each(), 3)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16.2} s",
            "time to delete them (until gone)",
            d.delete_time.as_secs_f64()
        );
        let held_total = d
            .mem_before
            .zip(d.mem_held)
            .map(|(b, h)| mib_signed(h.pinned(), b.pinned()));
        let still = d.mem_before.zip(d.mem_after).map(|(b, a)| {
            format!(
                "slab {:.1}, anon+shmem {:.1}",
                mib_signed(a.slab_unreclaimable, b.slab_unreclaimable),
                mib_signed(a.anon + a.shmem, b.anon + b.shmem)
            )
        });
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB total (of {} MiB; {}; {} after {:.1} s)",
            "non-reclaimable memory still held after",
            opt(d.not_returned_mib().map(|r| r.0), 1),
            opt(held_total, 1),
            still.unwrap_or_default(),
            match d.returned() {
                Some(true) => "returned",
                Some(false) => "NOT returned",
                None => "unknown",
            },
            d.returned_after.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB total",
            "MemAvailable still missing after",
            opt(d.not_returned_mib().map(|r| r.1), 1),
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16}",
            "left after the deletes (processes, cgroups)",
            format!("{}, {}", d.leftover_processes, d.leftover_cgroups)
        );
    }

    let _ = writeln!(w);
    let _ = writeln!(w, "summary (ratios of p50):");
    let rs = ratios(res);
    if rs.is_empty() {
        let _ = writeln!(w, "  no peer measured");
    }
    for (label, r) in rs {
        let _ = writeln!(w, "  {label:<42} = {r:.1}x");
    }
    if let Some(r) = &res.rate {
        let _ = writeln!(
            w,
            "  {:<42} = {:.0}/s ({} failures)",
            "sustained create+delete cycles",
            r.per_second(),
            r.failures
        );
    }
    if let Some(d) = &res.density {
        let _ = writeln!(
            w,
            "  {:<42} = {} MiB non-reclaimable, {} MiB MemAvailable, {:.2} MiB agent PSS",
            "memory per idle sandbox",
            opt(d.pinned_mib_each().map(|p| p.0), 2),
            opt(d.host_mib_each(), 2),
            mib(d.agents.pss_kib) / d.created.max(1) as f64
        );
    }
    s
}

fn to_json(cfg: &Config, res: &Results) -> serde_json::Value {
    let st = |s: Option<Stats>| s.map(|s| s.json());
    let peers = res.peers.as_ref().map(|p| {
        json!({
            "true": p.floor.json(),
            "bwrap": p.bwrap.json(),
            "podman": p.podman.json(),
        })
    });
    let rate = res.rate.as_ref().map(|r| {
        json!({
            "clients": r.clients,
            "cycles": r.cycles,
            "seconds": round3(r.elapsed.as_secs_f64()),
            "cycles_per_second": round3(r.per_second()),
            "failures": r.failures,
            "first_failure": r.first_failure,
        })
    });
    let density = res.density.as_ref().map(|d| {
        let meminfo: serde_json::Map<String, serde_json::Value> =
            ["before", "held", "after_delete"]
                .iter()
                .zip([d.mem_before, d.mem_held, d.mem_after])
                .map(|(k, m)| {
                    let v = m.map(|m| {
                        json!({
                            "available": m.available,
                            "anon": m.anon,
                            "shmem": m.shmem,
                            "slab_unreclaimable": m.slab_unreclaimable,
                            "stacks_page_tables_percpu": m.kernel_other,
                        })
                    });
                    ((*k).to_owned(), v.unwrap_or_default())
                })
                .collect();
        let per = |kib: u64| round3(mib(kib) / d.created.max(1) as f64);
        json!({
            "sandboxes": d.n,
            "created": d.created,
            "failures": d.failures,
            "first_failure": d.first_failure,
            "create_seconds": round3(d.create_time.as_secs_f64()),
            "delete_seconds": round3(d.delete_time.as_secs_f64()),
            "host_mib_per_sandbox": d.host_mib_each().map(round3),
            "agent_rss_mib_per_sandbox": per(d.agents.rss_kib),
            "agent_pss_mib_per_sandbox": per(d.agents.pss_kib),
            "agent_inits": d.agents.inits,
            "agent_processes": d.agents.processes,
            "cgroup_mib_per_sandbox": d.cgroup_mib_each().map(round3),
            "pinned_mib_per_sandbox": d.pinned_mib_each().map(|(t, a, s, o)| json!({
                "total": round3(t),
                "anon_shmem": round3(a),
                "slab_unreclaimable": round3(s),
                "stacks_page_tables_percpu": round3(o),
            })),
            "meminfo_kib": meminfo,
            "after_delete_mib": d.not_returned_mib().map(|(p, a)| json!({
                "pinned_still_held": round3(p),
                "available_still_missing": round3(a),
            })),
            "memory_returned": d.returned(),
            "returned_after_seconds": round3(d.returned_after.as_secs_f64()),
            "leftover_processes": d.leftover_processes,
            "leftover_cgroups": d.leftover_cgroups,
        })
    });
    let ratios: serde_json::Map<String, serde_json::Value> = ratios(res)
        .into_iter()
        .map(|(l, r)| (l.to_owned(), round3(r).into()))
        .collect();
    json!({
        "config": {
            "quick": cfg.quick,
            "iterations": cfg.iterations,
            "warmup": cfg.warmup,
            "peer_iterations": {"true": cfg.floor_n, "bwrap": cfg.bwrap_n, "podman": cfg.podman_n},
            "peers": cfg.peers,
            "rate_seconds": cfg.rate.as_secs_f64(),
            "rate_clients": cfg.rate_clients,
            "density": cfg.density,
        },
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        },
        "server": {
            "ready_ms": round3(res.ready.as_secs_f64() * 1000.0),
            "rss_startup_mib": res.rss_startup_kib.map(|k| round3(mib(k))),
            "rss_after_runs_mib": res.rss_after_kib.map(|k| round3(mib(k))),
            "leftover_processes": res.leftover_processes,
            "leftover_cgroups": res.leftover_cgroups,
            "leftover_net": res.leftover_net,
        },
        "corral": {
            "create": st(res.create),
            "exec_true": st(res.exec),
            "exec_true_running_sandbox": st(res.exec_warm),
            "code_run_python_warm": st(res.code_run_warm),
            "exec_python3_cold": st(res.python_cold),
            "delete": st(res.delete),
            "delete_until_gone": st(res.delete_gone),
            "snapshot_and_fork": res.forks.as_ref().map(forks::Figures::json),
            "create_exec_delete": st(res.cycle),
        },
        "rate": rate,
        "density": density,
        "peers": peers,
        "ratios_p50": ratios,
    })
}
