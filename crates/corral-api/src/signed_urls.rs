//! Pre-signed file URLs (`sandbox.download_url(path)` / `upload_url(path)` in the SDKs): the
//! SDK fetches the sandbox's signing key (`GET /api/sandbox/{id}/signing-key`) and signs
//! `v1:files:{METHOD}:{path}:{expires}` with HMAC-SHA256 itself; the URL,
//! `{toolboxProxyUrl}/{id}/files/download?path=..&expires=..&signature=v1_<base64url>` (or
//! `/files/upload-v2` for a multipart POST), then works without the API key until it expires
//! (`expires` 0: never) or the key is rotated (`POST .../signing-key/rotate`).
//!
//! The key is random per sandbox, kept in its record (so URLs survive restarts) and made on
//! first use.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, Uri};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::state::AppState;

const PREFIX: &str = "v1_";

/// `GET /api/sandbox/{id}/signing-key` → the key, a JSON string.
pub async fn signing_key(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<String>, ApiError> {
    signing_key_of(&state, &id_or_name, false).await
}

/// `POST /api/sandbox/{id}/signing-key/rotate` → a new key; URLs signed with the old one stop
/// working.
pub async fn rotate(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<String>, ApiError> {
    signing_key_of(&state, &id_or_name, true).await
}

/// The sandbox's signing key: a new one when it has none, or when `rotate`.
async fn signing_key_of(
    state: &AppState,
    id_or_name: &str,
    rotate: bool,
) -> Result<Json<String>, ApiError> {
    let op = corral_engine::Op::SigningKey {
        key: new_key(),
        rotate,
    };
    let s = state.engine.apply(id_or_name, op).await?;
    s.signing_key
        .map(Json)
        .ok_or_else(|| ApiError::conflict("the sandbox has no signing key"))
}

fn new_key() -> String {
    // 320 bits from the OS generator.
    format!(
        "{}{}",
        crate::preview::new_token(),
        crate::preview::new_token()
    )
}

/// The file operation a signed URL may name: `(sandbox id, method)` for
/// `/toolbox/{id}/files/download` (GET) and `/toolbox/{id}/files/upload-v2` (POST).
fn signed_operation<'a>(method: &Method, uri: &'a Uri) -> Option<(&'a str, &'static str)> {
    let rest = uri.path().strip_prefix("/toolbox/")?;
    let (id, op) = rest.split_once('/')?;
    let method = match (op, method.as_str()) {
        ("files/download", "GET") => "GET",
        ("files/upload-v2", "POST") => "POST",
        _ => return None,
    };
    Some((id, method))
}

/// Whether `req` is a toolbox file request carrying a signature (it is then authorised by
/// [`check`] instead of an API key).
pub fn is_signed(req: &Request) -> bool {
    signed_operation(req.method(), req.uri()).is_some()
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("signature=")))
}

/// Checks a signed file URL: the signature over method, path and expiry with the sandbox's
/// key, and the expiry. A bad one is a 403 saying why.
pub async fn check(state: &AppState, method: &Method, uri: &Uri) -> Result<(), ApiError> {
    let denied = |why: &str| {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!("signed URL refused: {why}"),
        )
        .with_code("FORBIDDEN")
    };
    let Some((id, method)) = signed_operation(method, uri) else {
        return Err(denied("not a signed file operation"));
    };
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|_| ApiError::bad_request("the signed URL's query is malformed"))?;
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(path), Some(expires), Some(signature)) =
        (get("path"), get("expires"), get("signature"))
    else {
        return Err(ApiError::bad_request(
            "a signed file URL needs path, expires and signature",
        ));
    };
    let expires: i64 = expires
        .parse()
        .map_err(|_| ApiError::bad_request("expires must be a number of seconds"))?;
    if expires != 0 && expires < OffsetDateTime::now_utc().unix_timestamp() {
        return Err(denied("it has expired"));
    }
    let key = match state.store.get(id).await? {
        Some(s) if s.id == id => s.signing_key,
        _ => None,
    };
    let Some(key) = key else {
        // No such sandbox, or no key was ever handed out: nothing can be signed for it.
        return Err(denied("the signature does not match"));
    };
    if !verify(&key, method, path, expires, signature) {
        return Err(denied("the signature does not match"));
    }
    Ok(())
}

/// Whether `signature` is `v1_` + base64url(HMAC-SHA256(key, `v1:files:{method}:{path}:{expires}`)).
pub fn verify(key: &str, method: &str, path: &str, expires: i64, signature: &str) -> bool {
    let Some(encoded) = signature.strip_prefix(PREFIX) else {
        return false;
    };
    let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return false;
    };
    mac.update(format!("v1:files:{method}:{path}:{expires}").as_bytes());
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, method: &str, path: &str, expires: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(format!("v1:files:{method}:{path}:{expires}").as_bytes());
        format!(
            "v1_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn signatures_bind_key_method_path_and_expiry() {
        let good = sign("k1", "GET", "/home/a b.txt", 1_900_000_000);
        assert!(verify("k1", "GET", "/home/a b.txt", 1_900_000_000, &good));
        assert!(!verify("k2", "GET", "/home/a b.txt", 1_900_000_000, &good));
        assert!(!verify("k1", "POST", "/home/a b.txt", 1_900_000_000, &good));
        assert!(!verify("k1", "GET", "/home/other", 1_900_000_000, &good));
        assert!(!verify("k1", "GET", "/home/a b.txt", 1_900_000_001, &good));
        assert!(!verify(
            "k1",
            "GET",
            "/home/a b.txt",
            1_900_000_000,
            &good[3..]
        ));
        assert!(!verify(
            "k1",
            "GET",
            "/home/a b.txt",
            1_900_000_000,
            "v1_!!"
        ));
    }

    #[test]
    fn an_independently_computed_signature_verifies() {
        // Python: "v1_" + urlsafe_b64encode(hmac.new(b"secret", b"v1:files:GET:/tmp/x:0",
        // sha256).digest()) without padding, as the SDKs compute it.
        let sdk = "v1_I4XTVYqF4T1wyQn-5TL6GrAokkHuyLytLgh9S8xzowM";
        assert!(verify("secret", "GET", "/tmp/x", 0, sdk));
        assert_eq!(sign("secret", "GET", "/tmp/x", 0), sdk);
    }
}
