//! `GET /port/{port}/tunnel` with `Upgrade: corral-tunnel`: a raw byte tunnel to a TCP port
//! inside the sandbox, for preview URLs. The server reaches the sandbox's loopback through
//! it, so previews work for apps bound to 127.0.0.1 and with egress blocked.
//!
//! The agent connects first (127.0.0.1, then ::1) and only then answers `101`, so a closed
//! port is a quick `502` in the error shape instead of a tunnel that dies at once.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ApiError;

/// The protocol name of the `Upgrade` header (the server's client sends the same).
const PROTOCOL: &str = corral_agent_proto::TUNNEL_PROTOCOL;
/// How long a connect to a loopback port may take (a refusal is immediate).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(port: u16) -> Result<TcpStream, ApiError> {
    let mut last = None;
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("connect timed out".to_owned()),
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "nothing accepts connections on port {port} in the sandbox ({})",
            last.unwrap_or_default()
        ),
    ))
}

/// Opens the tunnel to `port`.
pub async fn tunnel(Path(port): Path<String>, mut req: Request) -> Result<Response, ApiError> {
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid port {port:?}")))?;
    let wanted = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wanted {
        return Err(ApiError::bad_request(format!(
            "a tunnel needs Connection: upgrade and Upgrade: {PROTOCOL}"
        )));
    }
    let stream = connect(port).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let mut stream = stream;
        match upgrade.await {
            Ok(upgraded) => {
                let mut upgraded = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await {
                    tracing::debug!(port, error = %e, "tunnel ended");
                }
            }
            Err(e) => tracing::debug!(port, error = %e, "tunnel upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(PROTOCOL)),
        ],
    )
        .into_response())
}
