//! `corral`: the server binary. Config, logging and wiring of store, runtime and API.

#![forbid(unsafe_code)]

mod agent_binary;
mod bench;
mod host_locks;
mod image_cmd;
mod ssh_gate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use corral_api::{ApiConfig, AppState, Keys, hash_key};
use corral_core::ApiKeyStore;
use corral_runtime::{DiskConfig, LinuxRuntime, LinuxRuntimeConfig};
use corral_store::SqliteStore;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "A self-hosted sandbox server that speaks Daytona's API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Start a server and measure create, exec and delete latencies over HTTP.
    Bench(bench::BenchArgs),
    /// Pull, import, list and remove OCI images.
    Image(image_cmd::ImageArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiskQuota {
    /// btrfs when it can be set up, else no disk limits (with a warning).
    Auto,
    /// btrfs, or refuse to start.
    Btrfs,
    /// No disk limits.
    Off,
}

/// `--wake-stopped`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WakeStopped {
    Never,
    Previews,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetworkMode {
    /// Each sandbox gets its own address behind NAT, with egress policies.
    Nat,
    /// Loopback only: sandboxes reach nothing outside themselves.
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CORRAL_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Directory for the database, images and sandboxes.
    #[arg(long, env = "CORRAL_DATA_DIR", default_value = "./corral-data")]
    data_dir: PathBuf,
    /// An API key accepted as admin while set (never stored).
    #[arg(long, env = "CORRAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Externally visible base URL (e.g. https://corral.example.com); default: the request's Host.
    #[arg(long, env = "CORRAL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Domain of preview URLs (`{port}-{sandboxId}.{domain}`); the server routes on the
    /// request's Host header. `localhost` works on one box: browsers and curl resolve
    /// `*.localhost` to loopback.
    #[arg(long, env = "CORRAL_PREVIEW_DOMAIN", default_value = "localhost")]
    preview_domain: String,
    /// Which requests start a *stopped* sandbox (a paused one is always resumed by any
    /// request): `previews` (a visitor opening a preview URL), `all` (toolbox calls too) or
    /// `never`. A sandbox's label `corral.dev/wake-on-request` ("true"/"false") overrides it.
    #[arg(
        long,
        env = "CORRAL_WAKE_STOPPED",
        value_enum,
        default_value = "previews"
    )]
    wake_stopped: WakeStopped,
    /// Sandbox networking.
    #[arg(long, env = "CORRAL_NETWORK", value_enum, default_value = "nat")]
    network: NetworkMode,
    /// Addresses for sandboxes (a /30 each); must not overlap the host's networks.
    #[arg(long, env = "CORRAL_NET_CIDR", default_value = "10.117.0.0/16")]
    net_cidr: ipnet::Ipv4Net,
    /// Prefix of sandboxes' host-side interfaces; corral's nftables table is
    /// `corral_<prefix>`. Give each server on one host its own prefix and CIDR (a server
    /// refuses to start on another's, or on one that overlaps it).
    #[arg(long, env = "CORRAL_NET_PREFIX", default_value = "crv")]
    net_prefix: String,
    /// DNS resolvers for sandboxes (comma-separated IPv4); default: the host's non-loopback
    /// resolvers.
    #[arg(long, env = "CORRAL_DNS", value_delimiter = ',')]
    dns: Vec<std::net::Ipv4Addr>,
    /// Log format.
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Maximum processes per sandbox.
    #[arg(long, env = "CORRAL_PIDS_LIMIT", default_value_t = 4096)]
    pids_limit: u64,
    /// Where cgroup hierarchies are mounted.
    #[arg(long, env = "CORRAL_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Name of corral's parent cgroup (one per server).
    #[arg(long, env = "CORRAL_CGROUP_PARENT", default_value = "corral")]
    cgroup_parent: String,
    /// Seconds between reconciler passes (lifecycle timers, dead sandboxes).
    #[arg(long, env = "CORRAL_RECONCILE_SECONDS", default_value_t = 10.0)]
    reconcile_seconds: f64,
    /// Seconds between samples of every running sandbox's CPU, memory, disk and network
    /// figures (the metrics history, kept 24 h under <data>/metrics); 0 disables sampling.
    #[arg(long, env = "CORRAL_METRICS_INTERVAL_SECONDS", default_value_t = 10)]
    metrics_interval_seconds: u64,
    /// Length of a lifecycle "minute" in milliseconds. Only for tests of auto-stop/archive/delete.
    #[arg(
        long,
        env = "CORRAL_LIFECYCLE_MINUTE_MS",
        default_value_t = 60_000,
        hide = true
    )]
    lifecycle_minute_ms: u64,
    /// Per-sandbox disk limits: a btrfs subvolume with a quota per sandbox.
    #[arg(long, env = "CORRAL_DISK_QUOTA", value_enum, default_value = "auto")]
    disk_quota: DiskQuota,
    /// Size of the btrfs pool image in GiB (default: 90% of the free space, sparse).
    #[arg(long, env = "CORRAL_DISK_POOL_GIB")]
    disk_pool_gib: Option<u64>,
    /// Sandboxes kept started ahead of demand with the default shape: the warm pool `default`
    /// (more pools: `/api/warm-pools`); 0 disables it.
    #[arg(long, env = "CORRAL_POOL_SIZE", default_value_t = 4)]
    pool_size: usize,
    /// Use this agent binary instead of the embedded one (must be static).
    #[arg(long, env = "CORRAL_AGENT_BINARY")]
    agent_binary: Option<PathBuf>,
    /// Registries that may fall back to plain HTTP when HTTPS fails, besides loopback ones
    /// (comma-separated `host[:port]`).
    #[arg(
        long = "insecure-registry",
        env = "CORRAL_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Docker-style config.json with registry credentials (default ~/.docker/config.json).
    #[arg(long, env = "CORRAL_REGISTRY_AUTH_FILE")]
    registry_auth_file: Option<PathBuf>,
    /// Size limit of each new volume in MiB, enforced with the btrfs disk pool (0: none).
    #[arg(long, env = "CORRAL_VOLUME_SIZE_MIB", default_value_t = 10240)]
    volume_size_mib: u64,
    /// PEM certificate chain: the listener then also speaks TLS, on the same port as plain
    /// HTTP. Needed to upload local files for image builds (the SDK's S3 client insists on
    /// HTTPS); the certificate must be one the SDK's machine trusts.
    #[arg(long, env = "CORRAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CORRAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has, from connecting (TLS handshake included) or from a later
    /// request's first byte, to send a complete request head; then the connection is closed.
    #[arg(long, env = "CORRAL_HEADER_TIMEOUT_SECONDS", default_value_t = 15.0)]
    header_timeout_seconds: f64,
    /// Seconds a keep-alive connection may sit idle between a response and the next request.
    /// Neither timeout applies while a request is served or to WebSockets.
    #[arg(long, env = "CORRAL_IDLE_TIMEOUT_SECONDS", default_value_t = 75.0)]
    idle_timeout_seconds: f64,
    /// Open client connections at most (WebSockets included); newer ones are closed at once
    /// (default: half the open-files limit).
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open client connections at most per source address, IPv6 per /64 (default: a quarter
    /// of --max-connections). Behind a reverse proxy every client shares its address: raise
    /// it to --max-connections there.
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS_PER_ADDRESS")]
    max_connections_per_address: Option<usize>,
    /// Seconds a Socket.IO event-stream client has to authenticate (its CONNECT packet with
    /// the API key) before it is closed.
    #[arg(
        long,
        env = "CORRAL_EVENTS_AUTH_TIMEOUT_SECONDS",
        default_value_t = 10.0
    )]
    events_auth_timeout_seconds: f64,
    /// Event-stream WebSockets not yet authenticated, at most; more are refused with 503.
    #[arg(
        long,
        env = "CORRAL_MAX_UNAUTHENTICATED_EVENT_STREAMS",
        default_value_t = 256
    )]
    max_unauthenticated_event_streams: usize,
    /// The https:// URL SDKs upload build context to (this server's `/object-storage`, e.g.
    /// behind a TLS proxy); default: `https://<host>/object-storage` when --tls-cert is given.
    #[arg(long, env = "CORRAL_STORAGE_URL")]
    storage_url: Option<String>,
    /// Port of the SSH gateway (`sandbox.create_ssh_access`), on the --listen address;
    /// 0 turns it off. Its host key is kept in <data-dir>/ssh_host_ed25519_key.
    #[arg(long, env = "CORRAL_SSH_PORT", default_value_t = 2222)]
    ssh_port: u16,
    /// The host name in the `sshCommand` handed out; default: the host clients reach the API
    /// at (--public-url, else the request's Host).
    #[arg(long, env = "CORRAL_SSH_HOST")]
    ssh_host: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Image(args) => runtime.block_on(image_cmd::run(args)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// The first start with no key configured makes one, prints it once, and stores its hash.
async fn ensure_api_key(store: &SqliteStore, env_key: Option<&str>) -> anyhow::Result<()> {
    if env_key.is_some() || store.count_keys().await? > 0 {
        return Ok(());
    }
    let key = format!("corral_{}", hex::encode(rand::random::<[u8; 24]>()));
    store.add_key("generated", &hash_key(&key)).await?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Generated an API key (shown once; only its hash is stored):\n\n    {key}\n"
    )?;
    writeln!(
        out,
        "Use it with the Daytona SDK:\n    export DAYTONA_API_KEY={key}"
    )?;
    out.flush()?;
    Ok(())
}

/// The data dir's canonical path (created if missing; its mode is set once it is ours).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating data dir {}", path.display()))?;
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// Locks the host resources this server uses (see `host_locks`), before anything else
/// touches them: a server that shares one with another refuses to start.
fn lock_host_resources(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<host_locks::HostLocks> {
    use host_locks::Resource;
    let mut wanted = vec![
        Resource::DataDir(data_dir.to_owned()),
        Resource::cgroup_parent(&args.cgroup_root, &args.cgroup_parent)?,
    ];
    if args.network == NetworkMode::Nat {
        wanted.push(Resource::NetPrefix(args.net_prefix.clone()));
        wanted.push(Resource::NetCidr(args.net_cidr.trunc()));
    }
    let me = host_locks::Owner {
        pid: std::process::id(),
        data_dir: data_dir.to_string_lossy().into_owned(),
        listen: args.listen.to_string(),
    };
    let dir = Path::new(host_locks::LOCK_DIR);
    host_locks::acquire(dir, &wanted, &me, &host_locks::Probe::host())
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    init_logging(args.log_format);
    // Flags checked before anything is set up.
    let timeouts = (
        seconds("--header-timeout-seconds", args.header_timeout_seconds)?,
        seconds("--idle-timeout-seconds", args.idle_timeout_seconds)?,
    );
    let events_auth_timeout = seconds(
        "--events-auth-timeout-seconds",
        args.events_auth_timeout_seconds,
    )?;
    let data_dir = absolute(&args.data_dir)?;
    // Held until `serve` returns; the kernel releases them however the process ends.
    let host_locks = lock_host_resources(&args, &data_dir)?;
    tracing::debug!(files = ?host_locks.files().collect::<Vec<_>>(), "host resources locked");
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            corral_api::listener::tls_config(cert, key).context("loading the TLS certificate")?,
        ),
        _ => None,
    };
    let store = SqliteStore::open(&data_dir.join("corral.db")).await?;
    ensure_api_key(&store, args.api_key.as_deref()).await?;
    let metrics = corral_api::metrics::install().context("installing the metrics recorder")?;

    let agent_binary = match args.agent_binary {
        Some(p) => p,
        None => agent_binary::install(&data_dir)?,
    };
    let pool_bytes = args
        .disk_pool_gib
        .map(|g| g << 30)
        .unwrap_or_else(|| corral_runtime::default_pool_bytes(&data_dir));
    let mut runtime_cfg = LinuxRuntimeConfig {
        data_dir: data_dir.clone(),
        agent_binary,
        host_root: PathBuf::from("/"),
        cgroup_root: args.cgroup_root,
        cgroup_parent: args.cgroup_parent,
        pids_limit: args.pids_limit,
        disk: match args.disk_quota {
            DiskQuota::Off => DiskConfig::Plain,
            DiskQuota::Auto | DiskQuota::Btrfs => DiskConfig::Btrfs { pool_bytes },
        },
        network: match args.network {
            NetworkMode::None => None,
            NetworkMode::Nat => {
                let dns = if args.dns.is_empty() {
                    corral_runtime::net::host_resolvers()
                } else {
                    args.dns.clone()
                };
                if dns.is_empty() {
                    tracing::warn!(
                        "no DNS resolver that sandboxes can reach was found (the host's are \
                         loopback only); sandboxes keep the host's resolv.conf; pass --dns"
                    );
                }
                Some(corral_runtime::net::NetConfig {
                    cidr: args.net_cidr,
                    prefix: args.net_prefix.clone(),
                    dns,
                    spare: 8,
                    max_free: 64,
                })
            }
        },
        registry: corral_runtime::oci::RegistryOptions {
            insecure: args.insecure_registries,
            auth_file: args.registry_auth_file,
        },
        volume_size_bytes: (args.volume_size_mib > 0).then_some(args.volume_size_mib << 20),
    };
    let runtime = match LinuxRuntime::new(runtime_cfg.clone()) {
        Err(e)
            if args.disk_quota == DiskQuota::Auto
                && matches!(runtime_cfg.disk, DiskConfig::Btrfs { .. }) =>
        {
            tracing::warn!(
                error = %e,
                "per-sandbox disk limits are OFF: the btrfs disk pool could not be set up \
                 (install btrfs-progs, or pass --disk-quota off to silence this)"
            );
            runtime_cfg.disk = DiskConfig::Plain;
            LinuxRuntime::new(runtime_cfg)
        }
        other => other,
    }
    .context("starting the Linux runtime")?;
    // One image store per data dir: the runtime's, shared with the API's `Images` port.
    let images = Arc::new(runtime.images());
    let runtime: Arc<dyn corral_core::Runtime> = Arc::new(runtime);

    let store = Arc::new(store);
    let keys = Keys::new(store.clone());
    if let Some(k) = &args.api_key {
        keys.allow(&hash_key(k));
    }
    let events = corral_api::events::Events::default()
        .with_timing(corral_api::events::Timing {
            connect_timeout: events_auth_timeout,
            ..Default::default()
        })
        .with_max_unauthenticated(args.max_unauthenticated_event_streams);
    let sandboxes = Arc::new(corral_api::events::PublishingStore::new(
        store.clone(),
        events.clone(),
    ));
    let engine = corral_engine::Engine::new(
        corral_engine::EngineConfig {
            organization_id: "corral".into(),
            lifecycle_minute: std::time::Duration::from_millis(args.lifecycle_minute_ms.max(1)),
            build_log_dir: data_dir.join("builds"),
        },
        corral_engine::Ports {
            store: sandboxes,
            runtime: runtime.clone(),
            snapshots: store.clone(),
            volumes: store.clone(),
            ssh_access: store.clone(),
            warm_pools: store.clone(),
            images,
            object_storage: Arc::new(corral_s3::ObjectStorage::new(
                data_dir.join("object-storage"),
            )),
        },
        args.pool_size,
    )
    .with_telemetry(
        corral_engine::telemetry::Telemetry::in_dir(
            data_dir.join("metrics"),
            std::time::Duration::from_secs(args.metrics_interval_seconds.max(1)),
        )
        .context("creating the metrics history dir")?,
    );
    let state = AppState {
        engine,
        keys: Arc::new(keys),
        config: Arc::new(ApiConfig {
            organization_id: "corral".into(),
            public_url: args.public_url,
            preview_domain: args.preview_domain.trim_matches('.').to_ascii_lowercase(),
            object_storage_dir: data_dir.join("object-storage"),
            storage_url: args.storage_url,
            tls: tls.is_some(),
            wake_stopped: match args.wake_stopped {
                WakeStopped::Never => corral_api::state::WakeStopped::Never,
                WakeStopped::Previews => corral_api::state::WakeStopped::Previews,
                WakeStopped::All => corral_api::state::WakeStopped::All,
            },
            ssh: (args.ssh_port != 0).then(|| corral_api::state::SshEndpoint {
                host: args.ssh_host.clone(),
                port: args.ssh_port,
            }),
        }),
        metrics,
        agents: corral_api::state::Agents::new(runtime.clone()),
        previews: store.clone(),
        events,
    };
    corral_engine::reconciler::on_start(&state)
        .await
        .map_err(|e| anyhow::anyhow!("reconciling recorded sandboxes: {}", e.message))?;
    corral_engine::warm_pools::load(&state.engine)
        .await
        .map_err(|e| anyhow::anyhow!("loading warm pools: {}", e.message))?;
    let with_tls = tls.is_some();
    let limits = listener_limits(
        timeouts,
        args.max_connections,
        args.max_connections_per_address,
    )?;
    let listener = corral_api::listener::Listener::bind(args.listen, tls, limits)
        .await?
        // Closed bursts of connections (idle WebSockets, slow-loris floods) leave freed
        // blocks between live ones, which glibc keeps resident until trimmed.
        .release_memory_after_bursts(corral_runtime::memory::release_free_memory);
    let ssh = ssh_gate::bind(args.listen, args.ssh_port, &data_dir, &state.engine).await?;
    // Background work starts only once the port is ours, so a failed start leaves nothing.
    let tick = std::time::Duration::from_secs_f64(args.reconcile_seconds.clamp(0.05, 3600.0));
    tokio::spawn(corral_engine::reconciler::run(state.engine.clone(), tick));
    if args.metrics_interval_seconds > 0 {
        tokio::spawn(corral_engine::telemetry::run(state.engine.clone()));
    }
    let filler = tokio::spawn(corral_engine::pool::WarmPool::fill_forever(
        state.engine.clone(),
    ));
    tokio::spawn(corral_api::object_storage::collect_unused_forever(
        state.clone(),
    ));

    tracing::info!(
        listen = %args.listen,
        tls = with_tls,
        data_dir = %data_dir.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        max_connections = limits.max_connections,
        max_connections_per_address = limits.max_connections_per_address,
        "corral is ready"
    );
    let (stop_ssh, ssh_stopped) = tokio::sync::oneshot::channel::<()>();
    let ssh = ssh.map(|(gateway, socket)| {
        tokio::spawn(gateway.serve(socket, async {
            let _ = ssh_stopped.await;
        }))
    });
    // Requests carry the peer (`ConnectInfo<Peer>`): it feeds the X-Forwarded-For of previews.
    listener
        .serve(corral_api::router(state.clone()), shutdown_signal())
        .await;
    let _ = stop_ssh.send(());
    if let Some(ssh) = ssh {
        let _ = ssh.await;
    }
    // Deletes already answered finish before the server exits.
    state.teardowns.wait().await;
    // Whatever ended serving, unclaimed pooled sandboxes must not outlive the server.
    corral_engine::pool::WarmPool::drain(&state, filler).await;
    runtime.shutdown();
    store.close().await;
    tracing::info!("corral stopped; sandboxes keep running");
    drop(host_locks);
    Ok(())
}

/// A duration flag given in seconds: positive and finite.
fn seconds(flag: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    if !(value.is_finite() && value > 0.0) {
        anyhow::bail!("{flag} must be a positive number of seconds, not {value}");
    }
    Ok(std::time::Duration::from_secs_f64(value.min(1e9)))
}

/// The listener's limits: the flags, and by default caps sized from the open-files limit
/// (which the runtime has raised to its hard limit by now).
fn listener_limits(
    (header_timeout, idle_timeout): (std::time::Duration, std::time::Duration),
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
) -> anyhow::Result<corral_api::listener::Limits> {
    let open_files =
        corral_runtime::memory::open_files_limit().context("reading the open-files limit")?;
    let mut limits = corral_api::listener::Limits::for_open_files(open_files);
    limits.header_timeout = header_timeout;
    limits.idle_timeout = idle_timeout;
    if let Some(n) = max_connections {
        limits.max_connections = n;
        limits.max_connections_per_address = (n / 4).max(8).min(n);
    }
    if let Some(n) = max_connections_per_address {
        limits.max_connections_per_address = n;
    }
    if limits.max_connections == 0 || limits.max_connections_per_address == 0 {
        anyhow::bail!("--max-connections and --max-connections-per-address must be at least 1");
    }
    Ok(limits)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
