//! Preview URLs: `{port}-{sandboxId}.{preview domain}` requests proxied to a port inside the
//! sandbox, public/private sandboxes and signed preview URLs.
//!
//! A preview request is recognised by its `Host` and never reaches the API's routes. It is
//! authorised (public sandbox, signed URL, `X-Daytona-Preview-Token` or an API key), then
//! carried to the port *through the sandbox's agent*: the server asks the agent for a tunnel
//! (`GET /port/{port}/tunnel`, upgraded), and speaks HTTP/1.1 over it to the app, streaming
//! both bodies; a WebSocket upgrade the app accepts is spliced through.
//!
//! Status codes: no credentials for a private sandbox → 401; a wrong preview token or API
//! key → 403; a signed URL that expired or was expired → 410; unknown host label → 404; a
//! sandbox that is not started → 409; nothing listening on the port → 502.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_agent_proto::AgentError;
use corral_core::ports::SignedPreviewToken;
use corral_core::{Sandbox, SandboxState};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::sandboxes::find;
use crate::state::AppState;
use crate::wire::SandboxDto;

/// The header carrying a private sandbox's preview token.
pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
/// A signed preview URL lives this long unless asked otherwise.
const DEFAULT_SIGNED_SECONDS: i64 = 60;
/// The longest a signed preview URL may live: 30 days.
const MAX_SIGNED_SECONDS: i64 = 30 * 24 * 3600;
/// Signed tokens expired this long ago are forgotten (until then they answer 410).
const SIGNED_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long opening a tunnel through the agent may take.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1), plus `Expect` (the
/// server answers `100 Continue` itself) and the preview token.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    PREVIEW_TOKEN_HEADER,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    crate::toolbox::strip_headers(headers, HOP_BY_HOP);
}

/// Splits a preview host `{port}-{label}.{domain}[:port]` (any case) into the port and the
/// lowercased label; `None` for any other host. `domain` must be lowercase.
pub fn parse_host(host: &str, domain: &str) -> Option<(u16, String)> {
    if domain.is_empty() || host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    // Case-insensitive suffix match without allocating for hosts that cannot match.
    let cut = name.len().checked_sub(domain.len() + 1)?;
    let (first, rest) = (name.get(..cut)?, name.get(cut..)?);
    if !rest.starts_with('.') || !rest[1..].eq_ignore_ascii_case(domain) {
        return None;
    }
    let (port, label) = first.split_once('-')?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let ok = !label.is_empty()
        && first.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| (port, label.to_ascii_lowercase()))
}

/// The host a request was sent to: `Host`, else the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Sends preview-host requests to the sandbox; everything else goes on to the API.
pub async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let target = request_host(&req).and_then(|h| parse_host(h, &state.config.preview_domain));
    let Some((port, label)) = target else {
        return next.run(req).await;
    };
    match forward(&state, port, &label, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The sandbox a preview label names, and whether it came through a signed token.
async fn resolve(state: &AppState, port: u16, label: &str) -> Result<(Sandbox, bool), ApiError> {
    if let Some(s) = state.store.get(label).await?
        && s.id == label
    {
        return Ok((s, false));
    }
    let Some(t) = state.previews.signed_token(label).await? else {
        return Err(ApiError::not_found(format!(
            "no sandbox or signed preview URL matches {port}-{label}"
        ))
        .with_code("SANDBOX_NOT_FOUND"));
    };
    if t.expires_at_ms <= now_ms() {
        return Err(
            ApiError::new(StatusCode::GONE, "this signed preview URL has expired")
                .with_code("PREVIEW_URL_EXPIRED"),
        );
    }
    if t.port != port {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this signed preview URL is for port {}", t.port),
        )
        .with_code("FORBIDDEN"));
    }
    let s = find(state, &t.sandbox_id).await?;
    Ok((s, true))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Compares without an early exit, so timing tells nothing of a token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer for a sandbox whose record went while a request was served.
fn gone_sandbox(id: &str) -> ApiError {
    ApiError::not_found(format!("Sandbox with ID or name {id} not found"))
        .with_code("SANDBOX_NOT_FOUND")
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message).with_code("FORBIDDEN")
}

/// Checks the request's right to reach the sandbox. An API key is never passed on into the
/// sandbox; the preview token header is stripped later with the hop-by-hop ones.
async fn authorize(
    state: &AppState,
    sandbox: &Sandbox,
    signed: bool,
    headers: &mut HeaderMap,
) -> Result<(), ApiError> {
    let key_ok = match bearer(headers) {
        Some(k) => Some(state.keys.check(k).await?),
        None => None,
    };
    if key_ok == Some(true) {
        headers.remove(header::AUTHORIZATION);
    }
    if signed || sandbox.public {
        return Ok(());
    }
    if let Some(given) = headers.get(PREVIEW_TOKEN_HEADER) {
        let token = state
            .previews
            .preview_token(&sandbox.id, &new_token())
            .await?
            .ok_or_else(|| gone_sandbox(&sandbox.id))?;
        return if same(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(forbidden("invalid preview token"))
        };
    }
    match key_ok {
        Some(true) => Ok(()),
        Some(false) => Err(forbidden("invalid API key")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "sandbox {} is private: send its preview token in X-Daytona-Preview-Token \
                 or an API key as Authorization: Bearer <key>",
                sandbox.id
            ),
        )
        .with_code("UNAUTHORIZED")),
    }
}

fn bad_gateway(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, message).with_code("BAD_GATEWAY")
}

/// Opens a byte tunnel to `port` inside sandbox `id` through its agent.
async fn open_tunnel(
    state: &AppState,
    id: &str,
    port: u16,
) -> Result<hyper::upgrade::Upgraded, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        bad_gateway(format!("the agent of sandbox {id} is unreachable: {e}"))
    };
    // A refusal (`AgentError::Status`) says why: nothing listens on the port, say.
    state.agents.tunnel(id, port).await.map_err(|e| match e {
        AgentError::Status { .. } => {
            bad_gateway(format!("cannot reach port {port} of sandbox {id}: {e}"))
        }
        e => unreachable(&e),
    })
}

/// `http` or `https`: how clients reach this server.
fn scheme(state: &AppState) -> &'static str {
    match &state.config.public_url {
        Some(u) if u.to_ascii_lowercase().starts_with("https://") => "https",
        _ => "http",
    }
}

/// Proxies one preview request to `port` of the sandbox `label` names.
async fn forward(
    state: &AppState,
    port: u16,
    label: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let (mut sandbox, signed) = resolve(state, port, label).await?;
    authorize(state, &sandbox, signed, req.headers_mut()).await?;
    // In flight from here: auto-pause leaves it alone until the answer is sent.
    let in_flight = state.activity.begin(&sandbox.id);
    // A paused sandbox is resumed; a stopped or archived one started unless the server
    // (`--wake-stopped never`) or its label says not to.
    if sandbox.state != SandboxState::Started || state.runtime.is_paused(&sandbox.id) {
        let wake_stopped = state.config.wake_stopped.wakes(&sandbox, true);
        sandbox = state.engine.wake(&sandbox.id, wake_stopped).await?;
    }
    let id = sandbox.id.as_str();
    if sandbox.state != SandboxState::Started || !state.runtime.is_running(id) {
        return Err(ApiError::conflict(format!(
            "sandbox {id} is {}, not started: start it to reach its previews",
            sandbox.state
        ))
        .with_code("SANDBOX_NOT_STARTED"));
    }

    let upgraded = tokio::time::timeout(TUNNEL_TIMEOUT, open_tunnel(state, id, port))
        .await
        .map_err(|_| bad_gateway(format!("the agent of sandbox {id} did not answer in time")))??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(upgraded)
        .await
        .map_err(|e| bad_gateway(format!("cannot talk HTTP to port {port}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "preview connection ended with an error");
        }
    });

    let peer = req
        .extensions()
        .get::<ConnectInfo<crate::listener::Peer>>()
        .map(|c| c.0);
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| ApiError::bad_request("invalid request target"))?;
    parts.version = axum::http::Version::HTTP_11;
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host.clone());
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if peer.is_some_and(|p| p.tls) {
            "https"
        } else {
            scheme(state)
        }),
    );
    if let Some(ip) = peer.map(|p| p.addr.ip()) {
        let prior = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| format!("{v}, "))
            .unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("{prior}{ip}")) {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }

    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(format!("the app on port {port} failed to answer: {e}")))?;
    crate::toolbox::relay_response(
        resp,
        client_upgrade,
        &format!("the app on port {port}"),
        HOP_BY_HOP,
        in_flight,
    )
}

/// A fresh token: 160 bits from the OS generator (through two v4 UUIDs and SHA-256), as 32
/// lowercase base32 characters, fit for a DNS label.
pub fn new_token() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut h = Sha256::new();
    h.update(uuid::Uuid::new_v4().as_bytes());
    h.update(uuid::Uuid::new_v4().as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in digest.iter().take(20) {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    out
}

/// The scheme and `:port` suffix preview URLs carry: from the public URL when set, else
/// from the request's `Host`.
fn origin_parts(base_url: &str) -> (&str, &str) {
    let (scheme, rest) = base_url.split_once("://").unwrap_or(("http", base_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let port = match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority[i..].contains(']') =>
        {
            &authority[i..]
        }
        _ => "",
    };
    (scheme, port)
}

/// `{scheme}://{port}-{label}.{domain}{:server port}`.
fn preview_link(state: &AppState, headers: &HeaderMap, port: u16, label: &str) -> String {
    let base = state.base_url(headers);
    let (scheme, server_port) = origin_parts(&base);
    format!(
        "{scheme}://{port}-{label}.{}{server_port}",
        state.config.preview_domain
    )
}

/// Daytona's `proxyTemplateUrl`: the preview link with `{{PORT}}` and `{{sandboxId}}` left
/// for the client to fill in.
pub(crate) fn preview_template(state: &AppState, headers: &HeaderMap) -> String {
    let base = state.base_url(headers);
    let (scheme, server_port) = origin_parts(&base);
    format!(
        "{scheme}://{{{{PORT}}}}-{{{{sandboxId}}}}.{}{server_port}",
        state.config.preview_domain
    )
}

fn parse_port(port: &str) -> Result<u16, ApiError> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid port {port:?}: use 1-65535")))
}

/// `POST /sandbox/{id}/public/{isPublic}`: the sandbox, with `public` changed.
pub async fn set_public(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id_or_name, public)): Path<(String, String)>,
) -> Result<Json<SandboxDto>, ApiError> {
    let public = match public.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "isPublic must be true or false, not {other:?}"
            )));
        }
    };
    let s = state
        .engine
        .apply(&id_or_name, corral_engine::Op::SetPublic(public))
        .await?;
    let mut dto = SandboxDto::from_sandbox(&s, &state.toolbox_url(&headers), true);
    dto.last_activity_at = crate::wire::timestamp(state.activity.last(&s));
    Ok(Json(dto))
}

/// `PortPreviewUrl`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewUrl {
    pub sandbox_id: String,
    pub url: String,
    pub token: String,
}

/// `SignedPortPreviewUrl`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPreviewUrl {
    pub sandbox_id: String,
    pub port: u16,
    pub token: String,
    pub url: String,
}

/// `GET /sandbox/{id}/ports/{port}/preview-url`.
pub async fn preview_url(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id_or_name, port)): Path<(String, String)>,
) -> Result<Json<PreviewUrl>, ApiError> {
    let port = parse_port(&port)?;
    let s = find(&state, &id_or_name).await?;
    let token = state
        .previews
        .preview_token(&s.id, &new_token())
        .await?
        .ok_or_else(|| gone_sandbox(&s.id))?;
    Ok(Json(PreviewUrl {
        url: preview_link(&state, &headers, port, &s.id),
        sandbox_id: s.id,
        token,
    }))
}

/// `GET /sandbox/{id}/ports/{port}/signed-preview-url?expiresInSeconds=`.
pub async fn signed_preview_url(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id_or_name, port)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Json<SignedPreviewUrl>, ApiError> {
    let port = parse_port(&port)?;
    let seconds = match query.get("expiresInSeconds") {
        None | Some("") => DEFAULT_SIGNED_SECONDS,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|s| (1..=MAX_SIGNED_SECONDS).contains(s))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "expiresInSeconds must be 1-{MAX_SIGNED_SECONDS}, not {v:?}"
                ))
            })?,
    };
    let s = find(&state, &id_or_name).await?;
    let now = now_ms();
    state
        .previews
        .purge_signed_tokens(now - SIGNED_RETENTION_MS)
        .await?;
    let token = SignedPreviewToken {
        token: new_token(),
        sandbox_id: s.id.clone(),
        port,
        expires_at_ms: now + seconds * 1000,
    };
    state.previews.add_signed_token(&token).await?;
    Ok(Json(SignedPreviewUrl {
        url: preview_link(&state, &headers, port, &token.token),
        sandbox_id: s.id,
        port,
        token: token.token,
    }))
}

/// `POST /sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire`: the URL answers 410
/// from now on.
pub async fn expire_signed_preview_url(
    State(state): State<AppState>,
    Path((id_or_name, port, token)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let port = parse_port(&port)?;
    let s = find(&state, &id_or_name).await?;
    let token = token.to_ascii_lowercase();
    if !state
        .previews
        .expire_signed_token(&s.id, port, &token, now_ms())
        .await?
    {
        return Err(ApiError::not_found(format!(
            "no signed preview URL {token} for port {port} of sandbox {}",
            s.id
        )));
    }
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6f1f8e-94a3-4c57-a2a5-2f1e6e1f2c3d";

    #[test]
    fn preview_hosts_are_recognised() {
        let d = "localhost";
        assert_eq!(
            parse_host(&format!("3000-{ID}.localhost:8080"), d),
            Some((3000, ID.to_owned()))
        );
        assert_eq!(
            parse_host(&format!("3000-{}.LocalHost", ID.to_uppercase()), d),
            Some((3000, ID.to_owned()))
        );
        assert_eq!(
            parse_host("8080-abc234.localhost.", d),
            Some((8080, "abc234".to_owned()))
        );
        assert_eq!(
            parse_host("1-x.preview.example.com:443", "preview.example.com"),
            Some((1, "x".to_owned()))
        );
    }

    #[test]
    fn other_hosts_are_not_previews() {
        let d = "localhost";
        for host in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "localhost",
            "api.localhost",
            "3000.localhost",
            "3000-.localhost",
            "-abc.localhost",
            "abc-def.localhost",
            "0-abc.localhost",
            "70000-abc.localhost",
            "123456-abc.localhost",
            "3000-a.b.localhost",
            "3000-a_b.localhost",
            "3000-abc.localhost:x",
            "3000-abc.otherlocalhost",
            "3000-abc.example.com",
            "",
        ] {
            assert_eq!(parse_host(host, d), None, "{host}");
        }
        let long = format!("3000-{}.localhost", "a".repeat(59));
        assert_eq!(parse_host(&long, d), None);
        assert_eq!(parse_host("3000-abc.localhost", ""), None);
    }

    #[test]
    fn tokens_are_dns_safe_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
        assert_eq!(
            parse_host(&format!("65535-{a}.localhost"), "localhost"),
            Some((65535, a))
        );
    }

    #[test]
    fn origins_give_scheme_and_port() {
        assert_eq!(origin_parts("http://127.0.0.1:3000"), ("http", ":3000"));
        assert_eq!(origin_parts("https://corral.example.com"), ("https", ""));
        assert_eq!(
            origin_parts("https://c.example.com:8443/x"),
            ("https", ":8443")
        );
        assert_eq!(origin_parts("http://[::1]:3000"), ("http", ":3000"));
        assert_eq!(origin_parts("http://[::1]"), ("http", ""));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
