//! `GET /api/config` and the sandbox telemetry routes: the metrics history sampled over the
//! fake runtime's figures, queried as the SDKs query it.

use super::*;
use corral_core::ports::{NetCounters, Usage};

fn usage(cpu_ns: u64, mem: u64) -> Usage {
    Usage {
        cpu_limit_cores: 2.0,
        cpu_time_ns: cpu_ns,
        memory_limit_bytes: 1 << 30,
        memory_used_bytes: mem,
        memory_cache_bytes: 4096,
        disk_used_bytes: Some(20 << 20),
        network: Some(NetCounters {
            rx_bytes: 1000,
            tx_bytes: 500,
        }),
    }
}

fn iso(ms: u64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// The SDK's `%Y-%m-%dT%H:%M:%S.%f%z` form of `ms`.
fn sdk_form(ms: u64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn series<'a>(v: &'a Value, name: &str) -> &'a Vec<Value> {
    v["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|s| s["metricName"] == name)
        .unwrap_or_else(|| panic!("no series {name}: {v}"))["dataPoints"]
        .as_array()
        .expect("points")
}

#[tokio::test]
async fn config_is_public_and_complete() {
    let app = TestApp::new();
    let v = app
        .request(Method::GET, "/api/config")
        .no_key()
        .send()
        .await;
    let v = v.expect(200);
    for key in [
        "version",
        "oidc",
        "linkedAccountsEnabled",
        "announcements",
        "proxyTemplateUrl",
        "proxyToolboxUrl",
        "defaultSnapshot",
        "dashboardUrl",
        "maxAutoArchiveInterval",
        "maintananceMode",
        "environment",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    for key in ["issuer", "clientId", "audience", "provider"] {
        assert!(v["oidc"][key].is_string(), "oidc.{key}: {v}");
    }
    // No analytics URL: the SDKs fall back to /sandbox/{id}/telemetry/metrics.
    assert!(v.get("analyticsApiUrl").is_none(), "{v}");
    assert_eq!(v["defaultSnapshot"], "host");
    assert_eq!(v["proxyToolboxUrl"], "http://127.0.0.1/toolbox");
    assert!(
        v["proxyTemplateUrl"]
            .as_str()
            .is_some_and(|u| u.contains("{{PORT}}-{{sandboxId}}.")),
        "{v}"
    );
}

#[tokio::test]
async fn metrics_history_answers_a_window() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "m", "disk": 3})).await;
    let id = s["id"].as_str().expect("id").to_owned();
    let t0 = 1_900_000_000_000u64 - 1_900_000_000_000u64 % 60_000;
    // Three samples 10 s apart: 1 s then 2 s of CPU on 2 cores (5%, 10%).
    for (i, (cpu, mem)) in [
        (0, 100 << 20),
        (1_000_000_000, 200 << 20),
        (3_000_000_000, 300 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        app.runtime.set_usage(&id, usage(cpu, mem));
        let n = corral_engine::telemetry::sample_at(app.state(), t0 + i as u64 * 10_000)
            .await
            .expect("sampled");
        assert_eq!(n, 1);
    }
    // What the Python SDK sends: repeated metricNames, the %z form.
    let names = [
        "daytona.sandbox.cpu.utilization",
        "daytona.sandbox.memory.usage",
        "daytona.sandbox.filesystem.total",
        "daytona.sandbox.filesystem.usage",
        "corral.sandbox.network.receive",
    ];
    let q: String = names.iter().map(|n| format!("&metricNames={n}")).collect();
    let path = format!(
        "/api/sandbox/m/telemetry/metrics?from={}&to={}{q}",
        sdk_form(t0).replace('+', "%2B"),
        sdk_form(t0 + 3_600_000).replace('+', "%2B"),
    );
    let r = app.get(&path).await;
    let v = r.expect(200);
    assert_eq!(v["series"].as_array().expect("series").len(), names.len());
    let cpu = series(v, "daytona.sandbox.cpu.utilization");
    // The first sample has no CPU rate (nothing before it).
    assert_eq!(cpu.len(), 2, "{v}");
    assert_eq!(cpu[0]["value"].as_f64(), Some(5.0));
    assert_eq!(cpu[1]["value"].as_f64(), Some(10.0));
    assert_eq!(cpu[0]["timestamp"], iso(t0 + 10_000));
    let mem = series(v, "daytona.sandbox.memory.usage");
    assert_eq!(mem.len(), 3);
    assert_eq!(mem[2]["value"], 300u64 << 20);
    assert_eq!(
        series(v, "daytona.sandbox.filesystem.total")[0]["value"],
        3u64 << 30
    );
    assert_eq!(
        series(v, "daytona.sandbox.filesystem.usage")[0]["value"],
        20u64 << 20
    );
    assert_eq!(
        series(v, "corral.sandbox.network.receive")[0]["value"],
        1000
    );
    // RFC 3339 and comma-separated names; a narrower window answers less.
    let path = format!(
        "/api/sandbox/{id}/telemetry/metrics?from={}&to={}&metricNames=daytona.sandbox.memory.usage,daytona.sandbox.cpu.limit",
        iso(t0 + 5_000),
        iso(t0 + 15_000)
    );
    let r = app.get(&path).await;
    let v = r.expect(200);
    assert_eq!(series(v, "daytona.sandbox.memory.usage").len(), 1);
    assert_eq!(series(v, "daytona.sandbox.cpu.limit")[0]["value"], 2);
    // A window beyond what was sampled answers what exists: nothing.
    let path = format!(
        "/api/sandbox/{id}/telemetry/metrics?from={}&to={}",
        iso(t0 + 7_200_000),
        iso(t0 + 9_000_000)
    );
    let r = app.get(&path).await;
    let v = r.expect(200);
    assert!(
        v["series"]
            .as_array()
            .expect("series")
            .iter()
            .all(|s| s["dataPoints"].as_array().is_some_and(Vec::is_empty)),
        "{v}"
    );
    // A stopped sandbox is not sampled; its history stays.
    app.post_empty("/api/sandbox/m/stop").await.expect(200);
    let n = corral_engine::telemetry::sample_at(app.state(), t0 + 40_000)
        .await
        .expect("sampled");
    assert_eq!(n, 0);
    let all = format!(
        "/api/sandbox/{id}/telemetry/metrics?from={}&to={}",
        iso(t0),
        iso(t0 + 3_600_000)
    );
    let r = app.get(&all).await;
    assert_eq!(
        series(r.expect(200), "daytona.sandbox.memory.usage").len(),
        3
    );
    // Deleted: the history goes with it.
    app.delete("/api/sandbox/m").await.expect(200);
    app.wait_for_state(&id, "gone").await;
    let before = app.state().telemetry.clone();
    assert!(
        before
            .series(
                &id,
                &[corral_engine::telemetry::Metric::MemoryUsage],
                0,
                u64::MAX,
                t0
            )
            .iter()
            .all(|s| s.points.is_empty())
    );
}

#[tokio::test]
async fn metrics_query_bad_input() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "q"})).await;
    let ok_window = "from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z";
    for (query, names) in [
        ("to=2026-01-01T00:00:00Z".to_owned(), "from"),
        ("from=2026-01-01T00:00:00Z".to_owned(), "to"),
        ("from=yesterday&to=2026-01-01T00:00:00Z".to_owned(), "from"),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
            "after",
        ),
        (
            format!("{ok_window}&metricNames=daytona.sandbox.gpu.usage"),
            "daytona.sandbox.gpu.usage",
        ),
        (format!("{ok_window}&step=60"), "step"),
    ] {
        let r = app
            .get(&format!("/api/sandbox/q/telemetry/metrics?{query}"))
            .await;
        let v = r.expect_error(400);
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(names)),
            "{query}: {v}"
        );
    }
    // A sandbox never sampled answers empty series, not an error.
    let r = app
        .get(&format!("/api/sandbox/q/telemetry/metrics?{ok_window}"))
        .await;
    assert_eq!(
        r.expect(200)["series"].as_array().map(Vec::len),
        Some(corral_engine::telemetry::Metric::ALL.len())
    );
}

#[tokio::test]
async fn telemetry_logs_and_traces_are_refused() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "t"})).await;
    for p in ["logs", "traces", "traces/abc"] {
        let r = app.get(&format!("/api/sandbox/t/telemetry/{p}")).await;
        let v = r.expect_error(400);
        assert_eq!(v["code"], "TELEMETRY_NOT_SUPPORTED", "{p}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("metrics")),
            "{v}"
        );
    }
}
