//! SSH access routes (Daytona's): `POST /sandbox/{id}/ssh-access?expiresInMinutes=` grants a
//! token and the `ssh` command that uses it, `DELETE /sandbox/{id}/ssh-access?token=` revokes
//! one token (or all of the sandbox's without `token`) and answers the sandbox,
//! `GET /sandbox/ssh-access/validate?token=` says whether a token works now. The gateway that
//! honours the tokens is `corral-ssh`; the grants are `corral_engine::ssh_access`'s.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::state::AppState;
use crate::wire::{SandboxDto, timestamp};

/// Daytona's `SshAccessDto`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessDto {
    pub id: String,
    pub sandbox_id: String,
    pub token: String,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub ssh_command: String,
}

/// Daytona's `SshAccessValidationDto`. `sandboxId` is `""` for an invalid token (Daytona
/// sends `null`, which the Python SDK's model refuses).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessValidationDto {
    pub valid: bool,
    pub sandbox_id: String,
}

fn no_gateway() -> ApiError {
    ApiError::bad_request(
        "SSH access is disabled on this server (corral serve --ssh-port 0): open a terminal \
         through the API instead (sandbox.process.create_pty_session)",
    )
    .with_code("SSH_NOT_SUPPORTED")
}

/// Only the listed query parameters; anything else is a 400 naming it.
fn only(query: &QueryPairs, allowed: &[&str]) -> Result<(), ApiError> {
    match query.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?} (accepted: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn time_of(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    timestamp(t)
}

/// The host part of the `ssh` command: the configured one, else the host clients reach the
/// API at (IPv6 without brackets, as `ssh user@host` wants it).
fn ssh_host(state: &AppState, headers: &HeaderMap, configured: Option<&str>) -> String {
    if let Some(h) = configured {
        return h.to_owned();
    }
    let base = state.base_url(headers);
    let host = base
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// `ssh -p <port> <token>@<host>` (without `-p` on port 22, as Daytona's).
pub fn ssh_command(token: &str, host: &str, port: u16) -> String {
    if port == 22 {
        format!("ssh {token}@{host}")
    } else {
        format!("ssh -p {port} {token}@{host}")
    }
}

/// `POST /sandbox/{id_or_name}/ssh-access?expiresInMinutes=N`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Json<SshAccessDto>, ApiError> {
    only(&query, &["expiresInMinutes"])?;
    let Some(gateway) = state.config.ssh.clone() else {
        return Err(no_gateway());
    };
    let minutes = match query.get("expiresInMinutes") {
        None | Some("") => None,
        Some(v) => Some(
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|m| m.is_finite())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "expiresInMinutes must be a number of minutes, not {v:?}"
                    ))
                })?,
        ),
    };
    let issued =
        corral_engine::ssh_access::create(&state, &id_or_name, minutes, OffsetDateTime::now_utc())
            .await?;
    let host = ssh_host(&state, &headers, gateway.host.as_deref());
    let a = issued.access;
    Ok(Json(SshAccessDto {
        ssh_command: ssh_command(&issued.token, &host, gateway.port),
        id: a.id,
        sandbox_id: a.sandbox_id,
        token: issued.token,
        expires_at: time_of(a.expires_at_ms),
        created_at: time_of(a.created_at_ms),
        updated_at: time_of(a.created_at_ms),
    }))
}

/// `DELETE /sandbox/{id_or_name}/ssh-access?token=`: answers the sandbox, as Daytona.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Json<SandboxDto>, ApiError> {
    only(&query, &["token"])?;
    let token = match query.get("token") {
        None => None,
        Some("") => return Err(ApiError::bad_request("token must not be empty")),
        Some(t) => Some(t),
    };
    let s = corral_engine::ssh_access::revoke(&state, &id_or_name, token).await?;
    Ok(Json(SandboxDto::from_sandbox(
        &s,
        &state.toolbox_url(&headers),
        true,
    )))
}

/// `GET /sandbox/ssh-access/validate?token=`.
pub async fn validate(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<SshAccessValidationDto>, ApiError> {
    only(&query, &["token"])?;
    let token = match query.get("token") {
        None | Some("") => return Err(ApiError::bad_request("token is required")),
        Some(t) => t,
    };
    let access =
        corral_engine::ssh_access::validate(&state, token, OffsetDateTime::now_utc()).await?;
    Ok(Json(match access {
        Some(a) => SshAccessValidationDto {
            valid: true,
            sandbox_id: a.sandbox_id,
        },
        None => SshAccessValidationDto {
            valid: false,
            sandbox_id: String::new(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_names_the_port_unless_22() {
        assert_eq!(ssh_command("t", "h", 2222), "ssh -p 2222 t@h");
        assert_eq!(ssh_command("t", "h", 22), "ssh t@h");
    }
}
