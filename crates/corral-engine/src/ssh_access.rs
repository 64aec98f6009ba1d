//! SSH access grants (Daytona's `create_ssh_access` / `revoke_ssh_access` /
//! `validate_ssh_access`): a random token that opens a shell in one sandbox through the SSH
//! gateway until it expires or is revoked.
//!
//! The token is 32 characters of `[A-Za-z0-9]` (about 190 bits from a CSPRNG; no `-` or `_`,
//! as Daytona's, so it is a plain SSH user name) and is shown once: the store keeps only its
//! SHA-256. As Daytona does, a new grant revokes the sandbox's earlier ones.

use corral_core::Sandbox;
use corral_core::SandboxState;
use corral_core::ports::SshAccess;
use rand::Rng;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{Engine, EngineError, lifecycle};

/// The expiry when the request gives none, in minutes (Daytona's default).
pub const DEFAULT_EXPIRY_MINUTES: f64 = 60.0;
/// The longest expiry accepted, in minutes (one day).
pub const MAX_EXPIRY_MINUTES: f64 = 24.0 * 60.0;
/// The shortest expiry accepted, in minutes.
pub const MIN_EXPIRY_MINUTES: f64 = 1.0;
/// Characters of a token.
pub const TOKEN_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new grant and its token (the only time the token exists outside the client).
#[derive(Debug, Clone)]
pub struct Issued {
    pub access: SshAccess,
    pub token: String,
}

/// What a token opens: the sandbox, as recorded now.
#[derive(Debug, Clone)]
pub struct Granted {
    pub access: SshAccess,
    pub sandbox: Sandbox,
}

/// Why the gateway refuses a token or a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Unknown, revoked or expired (one answer for all three: no oracle).
    #[error("invalid or expired SSH access token")]
    Invalid,
    /// The sandbox exists but is not started.
    #[error("sandbox {id} is {state}; start it first")]
    NotStarted { id: String, state: String },
    /// The store failed; the cause is in the log.
    #[error("the server cannot check the token now; see the server log")]
    Internal,
}

/// A fresh random token.
pub fn new_token() -> String {
    let mut rng = rand::rng();
    (0..TOKEN_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` could be one of ours (checked before any lookup; never a 500 on junk).
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The expiry of a new grant in milliseconds, from the request's `expiresInMinutes`.
pub fn expiry_ms(minutes: Option<f64>) -> Result<i64, EngineError> {
    let minutes = minutes.unwrap_or(DEFAULT_EXPIRY_MINUTES);
    if !minutes.is_finite() || !(MIN_EXPIRY_MINUTES..=MAX_EXPIRY_MINUTES).contains(&minutes) {
        return Err(EngineError::bad_request(format!(
            "expiresInMinutes must be a number of minutes from {MIN_EXPIRY_MINUTES} to \
             {MAX_EXPIRY_MINUTES}, got {minutes}"
        )));
    }
    // In range: at most 86_400_000, exact in an i64.
    Ok((minutes * 60_000.0).round() as i64)
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Grants SSH access to sandbox `id_or_name` for `minutes` (default 60) from `now`, revoking
/// its earlier grants.
pub async fn create(
    engine: &Engine,
    id_or_name: &str,
    minutes: Option<f64>,
    now: OffsetDateTime,
) -> Result<Issued, EngineError> {
    let ttl = expiry_ms(minutes)?;
    let sandbox = lifecycle::find(engine, id_or_name).await?;
    let now_ms = unix_ms(now);
    // Keep the table small: expired grants are of no use to anyone.
    engine.ssh_access.purge_ssh_access(now_ms).await?;
    engine
        .ssh_access
        .revoke_ssh_access(&sandbox.id, None)
        .await?;
    let token = new_token();
    let access = SshAccess {
        id: uuid::Uuid::new_v4().to_string(),
        sandbox_id: sandbox.id.clone(),
        token_hash: token_hash(&token),
        created_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(ttl),
    };
    if !engine.ssh_access.add_ssh_access(&access).await? {
        // Deleted between the lookup and the insert.
        return Err(lifecycle::not_found(id_or_name));
    }
    Ok(Issued { access, token })
}

/// Revokes `token` of sandbox `id_or_name`, or all of its grants when `None`; a token that is
/// not the sandbox's changes nothing (as Daytona). Returns the sandbox.
pub async fn revoke(
    engine: &Engine,
    id_or_name: &str,
    token: Option<&str>,
) -> Result<Sandbox, EngineError> {
    let sandbox = lifecycle::find(engine, id_or_name).await?;
    let hash = token.map(token_hash);
    engine
        .ssh_access
        .revoke_ssh_access(&sandbox.id, hash.as_deref())
        .await?;
    Ok(sandbox)
}

/// The live grant of `token` at `now`, if any: known, not revoked, not expired, and its sandbox
/// still recorded.
pub async fn validate(
    engine: &Engine,
    token: &str,
    now: OffsetDateTime,
) -> Result<Option<SshAccess>, EngineError> {
    if !well_formed(token) {
        return Ok(None);
    }
    let Some(access) = engine.ssh_access.ssh_access(&token_hash(token)).await? else {
        return Ok(None);
    };
    if access.expires_at_ms <= unix_ms(now) {
        return Ok(None);
    }
    Ok(Some(access))
}

/// What the SSH gateway asks for every new session or channel: the sandbox `token` opens now,
/// started. Counts as activity on it (auto-stop).
pub async fn authorize(
    engine: &Engine,
    token: &str,
    now: OffsetDateTime,
) -> Result<Granted, Refusal> {
    let internal = |e: EngineError| {
        tracing::warn!(error = %e, "ssh access check failed");
        Refusal::Internal
    };
    let access = validate(engine, token, now)
        .await
        .map_err(internal)?
        .ok_or(Refusal::Invalid)?;
    let mut sandbox = match engine.store.get(&access.sandbox_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Refusal::Invalid),
        Err(e) => return Err(internal(e.into())),
    };
    // A paused sandbox is resumed for the session, as for any request; a stopped one is not
    // started.
    if sandbox.state == SandboxState::Paused || engine.runtime.is_paused(&sandbox.id) {
        sandbox = match engine.wake(&sandbox.id, false).await {
            Ok(s) => s,
            Err(e) if e.kind == crate::ErrorKind::NotFound => return Err(Refusal::Invalid),
            Err(e) => return Err(internal(e)),
        };
    }
    if sandbox.state != SandboxState::Started {
        return Err(Refusal::NotStarted {
            id: sandbox.id.clone(),
            state: sandbox.state.as_str().to_owned(),
        });
    }
    engine.activity.touch(&sandbox.id);
    Ok(Granted { access, sandbox })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_user_name_safe() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(well_formed(&a) && well_formed(&b));
        // >= 128 bits: 32 characters of 62.
        assert!((TOKEN_LEN as f64) * (ALPHABET.len() as f64).log2() >= 128.0);
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}-", &a[..31])));
        assert!(!well_formed(&format!("{a}x")));
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn expiry_bounds() {
        assert_eq!(expiry_ms(None).ok(), Some(3_600_000));
        assert_eq!(expiry_ms(Some(1.0)).ok(), Some(60_000));
        assert_eq!(expiry_ms(Some(1.5)).ok(), Some(90_000));
        assert_eq!(expiry_ms(Some(1440.0)).ok(), Some(86_400_000));
        for bad in [0.0, 0.5, -1.0, 1440.5, f64::NAN, f64::INFINITY] {
            let e = expiry_ms(Some(bad)).expect_err("refused");
            assert!(e.message.contains("expiresInMinutes"), "{}", e.message);
        }
    }
}
