//! `corral bench`: starts a real `corral serve` on a scratch data dir and measures, over
//! HTTP with keep-alive, sandbox create, exec of `true`, and delete. Prints p50/p90/p99.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Create/exec/delete cycles to measure.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Unmeasured cycles first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Port for the server under test.
    #[arg(long, default_value_t = 3917)]
    port: u16,
    /// Scratch data dir (removed afterwards).
    #[arg(long, default_value = "/tmp/corral-bench")]
    data_dir: PathBuf,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The bench server's own cgroup parent, removed afterwards.
const CGROUP_PARENT: &str = "corral-bench";

/// Removes what the bench server owns beyond its sandboxes: the disk pool mount (its loop
/// device is auto-cleared), its cgroup parents, and the data dir.
fn cleanup_server_traces(data_dir: &std::path::Path) {
    let pool = data_dir.join("disk");
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&pool)
        .status();
    for ctrl in ["memory", "cpu", "pids", ""] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(CGROUP_PARENT),
        );
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

struct Api {
    client: HttpClient,
    base: String,
    key: String,
}

impl Api {
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
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    cleanup_server_traces(&args.data_dir);
    let key = "bench-key";
    let listen = format!("127.0.0.1:{}", args.port);
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
        .arg(&args.data_dir)
        .env("CORRAL_API_KEY", key)
        .env("CORRAL_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting corral serve")?;
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{listen}"),
        key: key.into(),
    };
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = api.call("GET", "/ready", None).await {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = t0.elapsed();

    let (mut create, mut exec, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.warmup + args.iterations {
        let t = Instant::now();
        let (status, body) = api.call("POST", "/api/sandbox", Some("{}")).await?;
        let c = t.elapsed();
        if status != 200 {
            bail!(
                "create answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let id = v["id"].as_str().context("no id")?.to_owned();
        let t = Instant::now();
        let (status, body) = api
            .call(
                "POST",
                &format!("/toolbox/{id}/process/execute"),
                Some(r#"{"command":"true"}"#),
            )
            .await?;
        let e = t.elapsed();
        if status != 200 {
            bail!("exec answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let t = Instant::now();
        let (status, body) = api
            .call("DELETE", &format!("/api/sandbox/{id}"), None)
            .await?;
        let d = t.elapsed();
        if status != 200 {
            bail!(
                "delete answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        if i >= args.warmup {
            create.push(c);
            exec.push(e);
            delete.push(d);
        }
    }
    // Every sandbox is deleted; stop the server and take down what it owns itself.
    if let Some(pid) = server.id() {
        // SIGTERM for a graceful stop, as a user would.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    let _ = server.wait().await;
    cleanup_server_traces(&args.data_dir);

    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "corral bench: {} cycles (after {} warm-up), server ready in {} ms",
        args.iterations,
        args.warmup,
        ms(ready)
    )?;
    writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9}",
        "operation (ms)", "p50", "p90", "p99"
    )?;
    for (name, v) in [
        ("POST /api/sandbox", &mut create),
        ("POST .../process/execute", &mut exec),
        ("DELETE /api/sandbox/{id}", &mut delete),
    ] {
        v.sort();
        writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>9}",
            name,
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.9)),
            ms(percentile(v, 0.99))
        )?;
    }
    Ok(())
}
