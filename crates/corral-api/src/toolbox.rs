//! `/toolbox/{id}/...`: a streaming reverse proxy to the sandbox's agent over its unix
//! socket, WebSocket upgrades included. The API key is not forwarded into the sandbox.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use corral_core::SandboxState;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    for h in named {
        headers.remove(h);
    }
}

fn bad_gateway(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("the sandbox agent is unreachable: {what}"),
    )
    .with_code("BAD_GATEWAY")
}

/// Resolves the sandbox a toolbox request is for. A running sandbox addressed by id is
/// answered from the runtime's memory (no database read on the exec path); anything else
/// goes through the store for a precise error.
async fn resolve(state: &AppState, id_or_name: &str) -> Result<String, ApiError> {
    if state.runtime.is_running(id_or_name) {
        return Ok(id_or_name.to_owned());
    }
    let sandbox = find(state, id_or_name).await?;
    if sandbox.state != SandboxState::Started || !state.runtime.is_running(&sandbox.id) {
        return Err(ApiError::conflict(format!(
            "sandbox {} is {}, not started",
            sandbox.id, sandbox.state
        ))
        .with_code("SANDBOX_NOT_STARTED"));
    }
    Ok(sandbox.id)
}

/// Proxies one request to the agent of sandbox `id`.
pub async fn proxy(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = resolve(&state, &id).await?;
    state.activity.touch(&id);

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
        let resp = state
            .agents
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| bad_gateway(&e.to_string()))?;
        if path == "process/execute" {
            metrics::histogram!("corral_sandbox_exec_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
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
    let stream = UnixStream::connect(state.runtime.agent_socket(&id))
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended with an error");
        }
    });
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(&e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let Some(client_upgrade) = client_upgrade else {
        return Err(bad_gateway("the agent switched protocols unasked"));
    };
    let agent_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, agent_upgrade) {
            Ok((client, agent)) => {
                let mut client = TokioIo::new(client);
                let mut agent = TokioIo::new(agent);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                    tracing::debug!(error = %e, "upgraded toolbox connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "toolbox upgrade failed"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    let up = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
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
}
