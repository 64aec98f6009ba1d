//! `/toolbox/{id}/...`: a streaming reverse proxy to the sandbox's agent over its unix
//! socket, WebSocket upgrades included. The API key is not forwarded into the sandbox.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use corral_core::SandboxState;
use corral_core::ports::Usage;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::error::ApiError;
use crate::sandboxes::find;
use crate::state::AppState;

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1), plus our credentials.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
];

/// Removes the `listed` headers and those the Connection header names (hop-by-hop too).
pub(crate) fn strip_headers(headers: &mut HeaderMap, listed: &[&str]) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in listed {
        headers.remove(*h);
    }
    for h in named {
        headers.remove(h);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_headers(headers, HOP_BY_HOP);
}

fn bad_gateway(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("the sandbox agent is unreachable: {what}"),
    )
    .with_code("BAD_GATEWAY")
}

/// The shortest span CPU time is sampled over for `cpuUsedPct`.
const CPU_SAMPLE: Duration = Duration::from_millis(100);
/// The largest metrics answer from an agent that gets rewritten.
const METRICS_BODY_LIMIT: usize = 64 << 10;

/// Overwrites the CPU and memory figures of an agent's `SystemMetrics` JSON with the
/// sandbox's cgroup figures: `before` and `after` sampled `wall` apart. The agent cannot see
/// its cgroups, so its figures are the host's; disk figures and timestamps stay its own.
/// `None` when the body is not a JSON object.
fn rewrite_metrics(body: &[u8], before: &Usage, after: &Usage, wall: Duration) -> Option<Vec<u8>> {
    let mut m: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let cores = after.cpu_limit_cores.max(0.01);
    let wall_ns = wall.as_nanos() as f64;
    let used_ns = after.cpu_time_ns.saturating_sub(before.cpu_time_ns) as f64;
    let pct = if wall_ns > 0.0 {
        (used_ns / (wall_ns * cores) * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    // The SDK's model wants an integer CPU count: a fractional quota counts as a whole CPU.
    let cpu_count = (cores.ceil() as u64).max(1);
    m.insert("cpuCount".into(), cpu_count.into());
    m.insert("cpuUsedPct".into(), pct.into());
    m.insert("memTotal".into(), after.memory_limit_bytes.into());
    m.insert("memUsed".into(), after.memory_used_bytes.into());
    m.insert("memCache".into(), after.memory_cache_bytes.into());
    serde_json::to_vec(&m).ok()
}

/// `GET system/metrics`: the agent's answer with CPU and memory figures from the sandbox's
/// cgroups, sampled over the agent's own request (at least [`CPU_SAMPLE`]). When the runtime
/// has no figures, or the agent answers anything but a small JSON object, its answer passes
/// unchanged.
async fn metrics(state: &AppState, id: &str, req: Request) -> Result<Response, ApiError> {
    let before = state.runtime.usage(id).await;
    let started = Instant::now();
    let resp = state
        .agents
        .request(req)
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let Some(before) = before.filter(|_| parts.status == StatusCode::OK) else {
        return Ok(Response::from_parts(parts, Body::new(body)));
    };
    let body = http_body_util::Limited::new(body, METRICS_BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?
        .to_bytes();
    if let Some(rest) = CPU_SAMPLE.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let wall = started.elapsed();
    let rewritten = match state.runtime.usage(id).await {
        Some(after) => rewrite_metrics(&body, &before, &after, wall),
        None => None,
    };
    let body = match rewritten {
        Some(b) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            axum::body::Bytes::from(b)
        }
        None => body,
    };
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Resolves the sandbox a toolbox request is for, waking it when it sleeps: a paused one is
/// resumed; a stopped or archived one is started when the server (`--wake-stopped all`) or
/// the sandbox's label says so. A running sandbox addressed by id is answered from the
/// runtime's memory (no database read on the exec path); anything else goes through the
/// store for a precise error. The request counts as in flight from here (`in_flight`), so
/// auto-pause never freezes a sandbox between this check and the agent's answer.
async fn resolve(
    state: &AppState,
    id_or_name: &str,
) -> Result<(String, corral_engine::lifecycle::InFlight), ApiError> {
    if state.runtime.is_running(id_or_name) {
        let in_flight = state.activity.begin(id_or_name);
        if !state.runtime.is_paused(id_or_name) {
            return Ok((id_or_name.to_owned(), in_flight));
        }
    }
    let mut sandbox = find(state, id_or_name).await?;
    let in_flight = state.activity.begin(&sandbox.id);
    let wake_stopped = state.config.wake_stopped.wakes(&sandbox, false);
    if sandbox.state != SandboxState::Started || state.runtime.is_paused(&sandbox.id) {
        sandbox = state.engine.wake(&sandbox.id, wake_stopped).await?;
    }
    if sandbox.state != SandboxState::Started || !state.runtime.is_running(&sandbox.id) {
        let hint = if matches!(
            sandbox.state,
            SandboxState::Stopped | SandboxState::Archived
        ) {
            "; start it, or let requests start it (label corral.dev/wake-on-request=true, or \
             the server's --wake-stopped all)"
        } else {
            ""
        };
        return Err(ApiError::conflict(format!(
            "sandbox {} is {}, not started{hint}",
            sandbox.id, sandbox.state
        ))
        .with_code("SANDBOX_NOT_STARTED"));
    }
    Ok((sandbox.id, in_flight))
}

/// Proxies one request to the agent of sandbox `id`.
pub async fn proxy(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = crate::compat::unserved_toolbox_route(&path) {
        return Err(refused);
    }
    let started = Instant::now();
    let (id, in_flight) = resolve(&state, &id).await?;

    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("agent"));
    parts.version = axum::http::Version::HTTP_11;

    let Some(u) = upgrade else {
        // Plain requests share pooled keep-alive connections to the agent.
        parts.uri = format!("http://{id}/{path}{query}")
            .parse()
            .map_err(|_| ApiError::bad_request("invalid toolbox path"))?;
        if path.trim_end_matches('/') == "system/metrics" && parts.method == Method::GET {
            return metrics(&state, &id, Request::from_parts(parts, body)).await;
        }
        let resp = state
            .agents
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| bad_gateway(&crate::error::error_chain(&e)))?;
        if path == "process/execute" {
            metrics::histogram!("corral_sandbox_exec_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // In flight until the answer's body is sent (or dropped).
        let body = body.map_frame(move |f| {
            let _ = &in_flight;
            f
        });
        return Ok(Response::from_parts(parts, Body::new(body)));
    };

    // Upgrades (WebSockets) get a connection of their own, spliced after the 101.
    parts.uri = format!("/{path}{query}")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid toolbox path"))?;
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, u);
    let resp = state
        .agents
        .upgrade(&id, Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?;
    relay_response(resp, client_upgrade, "the agent", HOP_BY_HOP, in_flight)
}

/// Passes an upstream answer back to the client. A `101 Switching Protocols` is joined to
/// the client's own upgrade (`client_upgrade`, taken from its request), and bytes are copied
/// both ways until either side closes; any other answer streams back as is. `upstream`
/// names the other end in errors and logs; `strip` lists the headers not passed back.
/// `hold` (the request's in-flight mark) lives as long as the answer's body or the upgraded
/// connection.
pub(crate) fn relay_response<H: Send + Sync + 'static>(
    mut resp: Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upstream: &str,
    strip: &[&str],
    hold: H,
) -> Result<Response, ApiError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_headers(&mut parts.headers, strip);
        let body = body.map_frame(move |f| {
            let _ = &hold;
            f
        });
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let Some(client_upgrade) = client_upgrade else {
        return Err(bad_gateway(&format!(
            "{upstream} switched protocols unasked"
        )));
    };
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let what = upstream.to_owned();
    tokio::spawn(async move {
        let _hold = hold;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, other)) => {
                let mut client = TokioIo::new(client);
                let mut other = TokioIo::new(other);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut other).await {
                    tracing::debug!(error = %e, upstream = %what, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, upstream = %what, "upgrade failed"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    let up = parts.headers.get(header::UPGRADE).cloned();
    strip_headers(&mut parts.headers, strip);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(up) = up {
        parts.headers.insert(header::UPGRADE, up);
    }
    Ok(Response::from_parts(parts, Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn metrics_take_cgroup_figures_and_keep_the_rest() {
        let agent = br#"{"cpuCount":8,"cpuUsedPct":3.5,"memTotal":25000000000,"memUsed":9,
            "memCache":1,"diskTotal":100,"diskUsed":40,"diskFree":60,
            "timestamp":"2025-01-01T00:00:00Z","timestampUnix":1735689600}"#;
        let before = Usage {
            cpu_limit_cores: 2.0,
            cpu_time_ns: 1_000_000_000,
            memory_limit_bytes: 2 << 30,
            memory_used_bytes: 100,
            memory_cache_bytes: 10,
            disk_used_bytes: None,
            network: None,
        };
        let after = Usage {
            cpu_time_ns: 1_100_000_000,
            memory_used_bytes: 300 << 20,
            memory_cache_bytes: 5 << 20,
            ..before
        };
        let out =
            rewrite_metrics(agent, &before, &after, Duration::from_millis(100)).expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["cpuCount"], 2);
        assert!((v["cpuUsedPct"].as_f64().expect("f64") - 50.0).abs() < 1e-9);
        assert_eq!(v["memTotal"], 2u64 << 30);
        assert_eq!(v["memUsed"], 300u64 << 20);
        assert_eq!(v["memCache"], 5u64 << 20);
        assert_eq!(v["diskFree"], 60);
        assert_eq!(v["timestampUnix"], 1735689600);
        assert_eq!(v["timestamp"], "2025-01-01T00:00:00Z");
        // A fractional quota is a whole CPU; use never exceeds 100%.
        let half = Usage {
            cpu_limit_cores: 0.5,
            ..after
        };
        let out =
            rewrite_metrics(agent, &before, &half, Duration::from_millis(100)).expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["cpuCount"], 1);
        assert_eq!(v["cpuUsedPct"].as_f64(), Some(100.0));
        assert!(rewrite_metrics(b"not json", &before, &after, Duration::from_millis(1)).is_none());
    }
}
