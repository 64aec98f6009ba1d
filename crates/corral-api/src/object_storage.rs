//! Object storage for uploaded build context: the SDK's `Image.add_local_file`,
//! `add_local_dir` and `from_dockerfile` tar each local source and upload it to
//! `<bucket>/<organization>/<md5 hash>/context.tar` over S3 before asking for the build, which
//! names the uploads by hash in `buildInfo.contextHashes`.
//!
//! Two pieces:
//! - `GET /api/object-storage/push-access` hands out short-lived S3 credentials (see
//!   [`CredentialIssuer`]) and the endpoint URL;
//! - `/object-storage/{bucket}/{key}` is a small S3-compatible endpoint (path-style requests,
//!   AWS Signature V4 in the `Authorization` header) with just what uploads need: HEAD, GET,
//!   PUT and DELETE of an object and multipart uploads. Everything else answers 501, and GET
//!   ignores `Range` (it always answers the whole object).
//!
//! The signature covers the request's path and `Host`, so a TLS proxy named by `--storage-url`
//! must pass both through unchanged: `--storage-url https://proxy.example/object-storage` with
//! the proxy forwarding `/object-storage/...` here as it is.
//!
//! Objects live in files, `<object_storage_dir>/<bucket>/<key>`, and appear only complete: they
//! are written to a temporary file in the same directory, synced and renamed into place. Each
//! object's ETag is kept beside it in `.<name>~etag` (`~` cannot occur in a key, so no key
//! addresses it, nor a temporary file).

use std::fmt::Display;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use md5::Md5;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::state::{ApiConfig, AppState};

/// The bucket build context is uploaded to.
pub const CONTEXT_BUCKET: &str = "corral-build-context";

/// Where the context archive with this hash (as the SDK computes it: 32 hex digits) is kept,
/// or `None` for a malformed hash. The file may not exist.
pub fn context_archive(state: &AppState, hash: &str) -> Option<PathBuf> {
    let valid = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| {
        state
            .config
            .object_storage_dir
            .join(CONTEXT_BUCKET)
            .join(&state.config.organization_id)
            .join(hash)
            .join("context.tar")
    })
}

/// The region handed out with the credentials (any region in a signature is accepted).
pub const REGION: &str = "us-east-1";
/// The largest object accepted, whether put whole or assembled from parts.
pub const MAX_OBJECT_SIZE: u64 = 10 * 1024 * 1024 * 1024;
/// The largest part of a multipart upload (S3's own limit).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Part numbers run from 1 to this (S3's own limit).
pub const MAX_PART_NUMBER: u32 = 10_000;
/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// How long push credentials stay valid, in seconds.
pub const CREDENTIAL_LIFETIME_SECS: i64 = 60 * 60;
/// How far a request's `x-amz-date` may be from the server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Multipart uploads untouched for this long are removed.
pub const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Objects neither written, found by a HEAD, nor used by a build for this long are removed
/// (an SDK that finds one missing uploads it again).
pub const UNUSED_OBJECT_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The largest body of a `POST` (the part list of `CompleteMultipartUpload`).
const MAX_XML_BODY: usize = 2 * 1024 * 1024;
/// Unfinished multipart uploads: `<root>/.uploads/<upload id>/`.
const UPLOADS_DIR: &str = ".uploads";
const S3_XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const OCTET_STREAM: &str = "application/octet-stream";

// ---------------------------------------------------------------------------------------------
// Errors

/// An S3 error answer: `<Error><Code>..</Code><Message>..</Message></Error>` with its status.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct S3Error {
    pub status: StatusCode,
    /// S3's error code, e.g. `NoSuchKey`.
    pub code: &'static str,
    pub message: String,
}

impl S3Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }
    fn malformed_auth(message: impl Into<String>) -> Self {
        Self::bad_request("AuthorizationHeaderMalformed", message)
    }
    fn no_such_key(key: &ObjectKey) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("no object with key {:?}", key.as_str()),
        )
    }
    fn no_such_upload(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            format!(
                "no multipart upload {:?} for this key (it was completed, aborted, never \
                 started, or left unfinished for more than a day)",
                truncate(id)
            ),
        )
    }
    fn key_conflict(key: &ObjectKey) -> Self {
        Self::bad_request(
            "InvalidArgument",
            format!(
                "key {:?} clashes with another object: here a key cannot be both an object \
                 and the prefix of other keys",
                key.as_str()
            ),
        )
    }
    /// A server-side failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(context: &str, cause: &dyn std::error::Error) -> Self {
        let chain = crate::error::error_chain(cause);
        tracing::error!(error = %chain, "object storage: {context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{context}; see the server log"),
        )
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        (
            self.status,
            [(header::CONTENT_TYPE, "application/xml")],
            body,
        )
            .into_response()
    }
}

fn xml_escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// At most 200 characters of client-supplied text, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn io_error(context: &str, e: &std::io::Error) -> S3Error {
    S3Error::internal(context, e)
}

// ---------------------------------------------------------------------------------------------
// Credentials

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Short-lived, stateless push credentials. The session token is `<expiry unix secs>.<random>`;
/// the access key id and the secret are HMAC-SHA256s of the token under a key that is random
/// per process, so nothing needs storing: a request proves it knows the secret of its token by
/// its signature, and a token with a changed expiry no longer matches its access key.
///
/// Credentials last [`CREDENTIAL_LIFETIME_SECS`]. Because the key lives only in memory,
/// credentials handed out before a server restart are refused afterwards (403
/// `InvalidAccessKeyId`); the SDK asks for new ones with each image build, so only an upload
/// running across a restart fails.
pub struct CredentialIssuer {
    key: [u8; 32],
}

impl std::fmt::Debug for CredentialIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialIssuer").finish_non_exhaustive()
    }
}

/// What `GET /api/object-storage/push-access` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Unix seconds after which the credentials are refused.
    pub expires_at: i64,
}

impl CredentialIssuer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// An issuer with a fresh random key (from the OS's generator, via two v4 UUIDs: 244
    /// random bits).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self { key }
    }

    /// New credentials valid for [`CREDENTIAL_LIFETIME_SECS`] from `now`.
    pub fn issue(&self, now: OffsetDateTime) -> PushCredentials {
        let expires_at = now
            .unix_timestamp()
            .saturating_add(CREDENTIAL_LIFETIME_SECS);
        let session_token = format!("{expires_at}.{}", uuid::Uuid::new_v4().simple());
        PushCredentials {
            access_key_id: self.access_key_for(&session_token),
            secret_access_key: self.secret_of(&session_token),
            session_token,
            expires_at,
        }
    }

    fn access_key_for(&self, token: &str) -> String {
        let mac = hmac_sha256(&self.key, format!("access-key:{token}").as_bytes());
        format!("CORRAL{}", hex::encode_upper(&mac[..7]))
    }

    fn secret_of(&self, token: &str) -> String {
        hex::encode(hmac_sha256(&self.key, token.as_bytes()))
    }

    /// The secret belonging to `access_key` and `token`, when the token is well-formed and
    /// unexpired and the access key is the one issued with it.
    pub fn secret_for(
        &self,
        access_key: &str,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<String, S3Error> {
        let invalid = || {
            S3Error::forbidden(
                "InvalidToken",
                "the security token was not issued by this server; ask GET \
                 /api/object-storage/push-access for credentials",
            )
        };
        let (expiry, random) = token.split_once('.').ok_or_else(invalid)?;
        let well_formed = !expiry.is_empty()
            && expiry.len() <= 12
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 32
            && random
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(invalid());
        }
        let expiry: i64 = expiry.parse().map_err(|_| invalid())?;
        // Later than any token issued so far could expire (a minute's leeway for clock steps).
        if expiry
            > now
                .unix_timestamp()
                .saturating_add(CREDENTIAL_LIFETIME_SECS + 60)
        {
            return Err(invalid());
        }
        if access_key != self.access_key_for(token) {
            return Err(S3Error::forbidden(
                "InvalidAccessKeyId",
                "the access key does not belong to this security token (credentials do not \
                 survive a server restart); ask GET /api/object-storage/push-access for new ones",
            ));
        }
        if expiry <= now.unix_timestamp() {
            return Err(S3Error::forbidden(
                "ExpiredToken",
                "the credentials have expired; ask GET /api/object-storage/push-access for new \
                 ones",
            ));
        }
        Ok(self.secret_of(token))
    }
}

/// The issuer of this process.
pub fn issuer() -> &'static CredentialIssuer {
    static ISSUER: LazyLock<CredentialIssuer> = LazyLock::new(CredentialIssuer::random);
    &ISSUER
}

/// `GET /api/object-storage/push-access`: credentials for uploading build context.
pub async fn push_access(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let storage_url = storage_url(&state.config, &headers)?;
    let creds = issuer().issue(OffsetDateTime::now_utc());
    Ok(Json(serde_json::json!({
        "accessKey": creds.access_key_id,
        "secret": creds.secret_access_key,
        "sessionToken": creds.session_token,
        "storageUrl": storage_url,
        "organizationId": state.config.organization_id,
        "bucket": CONTEXT_BUCKET,
        "region": REGION,
    })))
}

/// The S3 endpoint SDKs are sent to: the configured one, else this server's own
/// `/object-storage`: over TLS when the server speaks it; over plain HTTP for clients whose S3
/// client accepts that (the TypeScript SDK's AWS client does). The Python SDK's client
/// (obstore) refuses plain HTTP, so for it, without TLS, the answer is an error telling what
/// to configure rather than a URL that fails later with a TLS-less "builder error".
pub fn storage_url(config: &ApiConfig, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &config.storage_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "the request has no Host header, so the object storage URL cannot be told; \
                 send one or start the server with --storage-url",
            )
        })?;
    if config.tls {
        return Ok(format!("https://{host}/object-storage"));
    }
    let python_sdk = headers
        .get("x-daytona-source")
        .is_some_and(|v| v.as_bytes().starts_with(b"sdk-python"));
    if !python_sdk {
        return Ok(format!("http://{host}/object-storage"));
    }
    Err(ApiError::bad_request(
        "uploading local files for an image build needs object storage over HTTPS, because the \
         Python SDK's S3 client refuses plain HTTP: start the server with `corral serve \
         --tls-cert FILE --tls-key FILE` (a certificate this machine trusts; the same port keeps \
         serving plain HTTP too), or with `--storage-url https://...` pointing at a TLS proxy in \
         front of this server's /object-storage",
    )
    .with_code("OBJECT_STORAGE_NEEDS_TLS"))
}

// ---------------------------------------------------------------------------------------------
// AWS Signature V4
//
// Verified by hand: no well-kept crate checks SigV4 on the server side without bringing a whole
// S3 server along, and the check is short. Only the header form is accepted (no presigned URLs,
// no aws-chunked streaming signatures).

/// Characters S3 leaves unencoded in canonical URIs and query strings.
const AWS_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SigV4Auth {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: Vec<u8>,
}

fn parse_authorization(value: &str) -> Result<SigV4Auth, S3Error> {
    let Some(rest) = value.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(S3Error::forbidden(
            "AccessDenied",
            "only AWS Signature Version 4 (AWS4-HMAC-SHA256) is supported",
        ));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for item in rest.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, value) = item.split_once('=').ok_or_else(|| {
            S3Error::malformed_auth(format!(
                "the Authorization header has an item without '=': {:?}",
                truncate(item)
            ))
        })?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(S3Error::malformed_auth(
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope[..] else {
        return Err(S3Error::malformed_auth(
            "the credential must be <access key>/<yyyymmdd>/<region>/s3/aws4_request",
        ));
    };
    if access_key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
        || service != "s3"
        || terminator != "aws4_request"
    {
        return Err(S3Error::malformed_auth(
            "the credential must be <access key>/<yyyymmdd>/<region>/s3/aws4_request",
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    let valid_name = |h: &String| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !signed_headers.iter().all(valid_name) {
        return Err(S3Error::malformed_auth(
            "SignedHeaders must be ';'-separated lowercase header names",
        ));
    }
    let signature = hex::decode(signature)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| S3Error::malformed_auth("the signature must be 64 hex digits"))?;
    Ok(SigV4Auth {
        access_key: access_key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature,
    })
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// `%`-decodes and re-encodes each segment, the way S3 canonicalises a path: no `.`/`..`
/// normalisation, no double encoding.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|seg| {
            let raw: Vec<u8> = percent_decode_str(seg).collect();
            percent_encode(&raw, AWS_UNRESERVED).to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let raw: Vec<u8> = percent_decode_str(s).collect();
                percent_encode(&raw, AWS_UNRESERVED).to_string()
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn canonical_request(
    parts: &Parts,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, S3Error> {
    let mut out = String::new();
    out.push_str(parts.method.as_str());
    out.push('\n');
    out.push_str(&canonical_uri(parts.uri.path()));
    out.push('\n');
    out.push_str(&canonical_query(parts.uri.query()));
    out.push('\n');
    for name in signed_headers {
        let mut values: Vec<String> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() && name == "host" {
            // HTTP/2 carries the host as :authority.
            values.extend(parts.uri.authority().map(|a| a.as_str().to_owned()));
        }
        if values.is_empty() {
            return Err(S3Error::forbidden(
                "SignatureDoesNotMatch",
                format!("the signed header {name:?} is not in the request"),
            ));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Checks the request's signature against `secret` and its date against `now`.
fn verify_sigv4(
    parts: &Parts,
    auth: &SigV4Auth,
    secret: &str,
    now: OffsetDateTime,
) -> Result<(), S3Error> {
    let amz_date = header_str(&parts.headers, "x-amz-date").ok_or_else(|| {
        S3Error::forbidden("AccessDenied", "the request needs an x-amz-date header")
    })?;
    let when = parse_amz_date(amz_date).ok_or_else(|| {
        S3Error::forbidden("AccessDenied", "x-amz-date must look like 20240131T235959Z")
    })?;
    let skew = time::Duration::try_from(MAX_CLOCK_SKEW).unwrap_or(time::Duration::minutes(15));
    if (now - when).abs() > skew {
        return Err(S3Error::forbidden(
            "RequestTimeTooSkewed",
            format!(
                "the request's time {amz_date} is more than 15 minutes from the server's clock"
            ),
        ));
    }
    if amz_date.get(..8) != Some(auth.date.as_str()) {
        return Err(S3Error::malformed_auth(
            "the credential's date is not the date of x-amz-date",
        ));
    }
    let payload_hash = header_str(&parts.headers, "x-amz-content-sha256").ok_or_else(|| {
        S3Error::bad_request(
            "InvalidRequest",
            "the request needs an x-amz-content-sha256 header",
        )
    })?;
    let creq = canonical_request(parts, &auth.signed_headers, payload_hash)?;
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    for part in [auth.region.as_str(), auth.service.as_str(), "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&auth.signature).map_err(|_| {
        S3Error::forbidden(
            "SignatureDoesNotMatch",
            "the request signature does not match the one computed with the secret of this \
             access key",
        )
    })
}

/// Authenticates a request signed with push credentials from `issuer`.
pub fn authenticate(
    issuer: &CredentialIssuer,
    parts: &Parts,
    now: OffsetDateTime,
) -> Result<(), S3Error> {
    let presigned = parts.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("X-Amz-Signature=") || p.starts_with("X-Amz-Credential="))
    });
    if presigned {
        return Err(S3Error::forbidden(
            "AccessDenied",
            "presigned URLs are not supported; sign the Authorization header",
        ));
    }
    let value = header_str(&parts.headers, "authorization").ok_or_else(|| {
        S3Error::forbidden(
            "AccessDenied",
            "requests must be signed with AWS Signature Version 4 using the credentials from \
             GET /api/object-storage/push-access",
        )
    })?;
    let auth = parse_authorization(value)?;
    for required in ["host", "x-amz-date", "x-amz-security-token"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(S3Error::forbidden(
                "AccessDenied",
                format!("the {required} header must be signed"),
            ));
        }
    }
    let token = header_str(&parts.headers, "x-amz-security-token").ok_or_else(|| {
        S3Error::forbidden("AccessDenied", "the request needs x-amz-security-token")
    })?;
    let secret = issuer.secret_for(&auth.access_key, token, now)?;
    verify_sigv4(parts, &auth, &secret, now)
}

/// How the request body is vouched for (`x-amz-content-sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `UNSIGNED-PAYLOAD`: not checked.
    Unsigned,
    /// The body's SHA-256, checked before anything is stored.
    Sha256([u8; 32]),
}

fn payload_mode(headers: &HeaderMap) -> Result<Payload, S3Error> {
    let value = header_str(headers, "x-amz-content-sha256").unwrap_or("");
    if value == "UNSIGNED-PAYLOAD" {
        return Ok(Payload::Unsigned);
    }
    if value.starts_with("STREAMING-") {
        return Err(S3Error::not_implemented(
            "aws-chunked uploads (x-amz-content-sha256: STREAMING-...) are not supported; send \
             the body's SHA-256 or UNSIGNED-PAYLOAD",
        ));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(value, &mut hash).map_err(|_| {
        S3Error::bad_request(
            "InvalidArgument",
            "x-amz-content-sha256 must be the body's SHA-256 (64 hex digits) or UNSIGNED-PAYLOAD",
        )
    })?;
    Ok(Payload::Sha256(hash))
}

fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, S3Error> {
    use base64::Engine as _;
    let Some(value) = headers.get("content-md5") else {
        return Ok(None);
    };
    let bytes = value
        .to_str()
        .ok()
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| {
            S3Error::bad_request("InvalidDigest", "Content-MD5 must be a base64 MD5 digest")
        })?;
    Ok(Some(bytes))
}

// ---------------------------------------------------------------------------------------------
// Keys and ids

/// A validated object key: `/`-separated segments of `[A-Za-z0-9._-]`, none `.` or `..`, at
/// most [`MAX_KEY_LEN`] bytes. Safe to join to a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(key: &str) -> Result<Self, S3Error> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.split('/').all(segment_ok) {
            return Err(S3Error::bad_request(
                "InvalidArgument",
                format!(
                    "invalid object key {:?}: keys are at most {MAX_KEY_LEN} bytes of \
                     '/'-separated segments of letters, digits, '.', '_' and '-' (a segment \
                     cannot be empty, '.' or '..')",
                    truncate(key)
                ),
            ));
        }
        Ok(Self(key.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A multipart upload id: 32 lowercase hex digits (random).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadId(String);

impl UploadId {
    fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
    /// `None` for anything that is not an id this server could have made.
    pub fn parse(id: &str) -> Option<Self> {
        (id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(id.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// ---------------------------------------------------------------------------------------------
// CompleteMultipartUpload body

/// One `<Part>` of a `CompleteMultipartUpload` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    /// The ETag the client was given for the part, without quotes.
    pub etag: Option<String>,
}

#[derive(Deserialize)]
struct CompleteXml {
    #[serde(rename = "Part", default)]
    parts: Vec<PartXml>,
}

#[derive(Deserialize)]
struct PartXml {
    #[serde(rename = "PartNumber")]
    number: u32,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// Parses a `CompleteMultipartUpload` body (with or without the S3 namespace).
pub fn parse_complete(body: &[u8]) -> Result<Vec<CompletedPart>, S3Error> {
    let malformed = |detail: String| {
        S3Error::bad_request(
            "MalformedXML",
            format!("the CompleteMultipartUpload body is not valid: {detail}"),
        )
    };
    let text = std::str::from_utf8(body).map_err(|e| malformed(e.to_string()))?;
    let root = root_element(text).map_err(malformed)?;
    if root != "CompleteMultipartUpload" {
        return Err(malformed(format!(
            "the root element is {:?}, not CompleteMultipartUpload",
            truncate(&root)
        )));
    }
    let parsed: CompleteXml =
        quick_xml::de::from_str(text).map_err(|e| malformed(e.to_string()))?;
    if parsed.parts.is_empty() {
        return Err(malformed("it lists no <Part>".into()));
    }
    Ok(parsed
        .parts
        .into_iter()
        .map(|p| CompletedPart {
            number: p.number,
            etag: p.etag.map(|e| unquote(&e)),
        })
        .collect())
}

/// The local name of the first element of an XML document.
fn root_element(text: &str) -> Result<String, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) => {
                return Ok(e.local_name().into_inner().to_owned());
            }
            Event::Eof => return Err("it has no element".into()),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Storage

/// What HEAD and GET tell of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Without quotes: the MD5 hex of the content, or for a multipart upload S3's
    /// `<md5 of the parts' md5s>-<number of parts>`.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// The objects on disk: `<root>/<bucket>/<key>`, unfinished multipart uploads in
/// `<root>/.uploads/<id>/` (a `key` file naming `<bucket>/<key>`, parts `part-<N>`).
#[derive(Debug, Clone)]
pub struct Objects {
    root: PathBuf,
}

/// A temporary file that is removed unless it was renamed into place (also when the request
/// is dropped half-way). Its name holds `~`, which no key can, so it is never visible.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(format!(".~tmp-{}", uuid::Uuid::new_v4().simple())),
            armed: true,
        }
    }
    /// A new temporary file in `dir`, open for writing.
    async fn create(dir: &Path) -> std::io::Result<(Self, tokio::fs::File)> {
        let tmp = Self::new(dir);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)
            .await?;
        Ok((tmp, file))
    }
    fn persist(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a temporary upload file");
        }
    }
}

struct Received {
    size: u64,
    md5: [u8; 16],
}

fn too_large(limit: u64) -> S3Error {
    S3Error::bad_request(
        "EntityTooLarge",
        format!("the upload is larger than the {limit} bytes allowed"),
    )
}

/// Streams `body` into `file` (a new temporary file), checking size and digests; the file is
/// synced. On error the caller drops the file's [`TempFile`], which removes it.
async fn receive<S, E>(
    mut body: S,
    file: tokio::fs::File,
    limit: u64,
    payload: Payload,
    content_md5: Option<[u8; 16]>,
) -> Result<Received, S3Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut md5 = Md5::new();
    let mut sha = matches!(payload, Payload::Sha256(_)).then(Sha256::new);
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            S3Error::bad_request(
                "IncompleteBody",
                format!("the request body could not be read: {e}"),
            )
        })?;
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            return Err(too_large(limit));
        }
        md5.update(&chunk);
        if let Some(sha) = sha.as_mut() {
            sha.update(&chunk);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| io_error("cannot write an upload", &e))?;
    }
    out.flush()
        .await
        .map_err(|e| io_error("cannot write an upload", &e))?;
    out.into_inner()
        .sync_all()
        .await
        .map_err(|e| io_error("cannot sync an upload", &e))?;
    if let (Payload::Sha256(expected), Some(sha)) = (payload, sha) {
        let got: [u8; 32] = sha.finalize().into();
        if got != expected {
            return Err(S3Error::bad_request(
                "XAmzContentSHA256Mismatch",
                format!(
                    "the body's SHA-256 is {}, not the {} given in x-amz-content-sha256",
                    hex::encode(got),
                    hex::encode(expected)
                ),
            ));
        }
    }
    let md5: [u8; 16] = md5.finalize().into();
    if let Some(expected) = content_md5
        && expected != md5
    {
        return Err(S3Error::bad_request(
            "BadDigest",
            "the body's MD5 does not match Content-MD5",
        ));
    }
    Ok(Received { size, md5 })
}

fn is_not_found(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn is_conflict(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::AlreadyExists
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::DirectoryNotEmpty
    )
}

/// Where an object's last use is recorded (its modification time).
fn used_sidecar(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object.with_file_name(format!(".{name}~used"))
}

/// Records that an object was just used (found by a HEAD, or read by a build), so
/// [`remove_unused`] keeps it. Best effort.
pub fn mark_used(object: &Path) {
    if object.is_file()
        && let Err(e) = std::fs::File::create(used_sidecar(object))
    {
        tracing::debug!(object = %object.display(), error = %e, "cannot record an object's use");
    }
}

/// Removes the objects under `root` (every bucket; unfinished uploads have their own
/// cleanup) last written or used more than `max_age` ago, with their records, and the
/// directories that leaves empty. Returns how many objects went.
pub fn remove_unused(root: &Path, max_age: Duration) -> std::io::Result<usize> {
    let age = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or(Duration::ZERO))
            .ok()
    };
    if !root.is_dir() {
        return Ok(0);
    }
    let mut removed = 0;
    let mut dirs = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.depth() > 1 || e.file_name() != UPLOADS_DIR);
    for entry in walk {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        if entry.file_type().is_dir() {
            if entry.depth() > 1 {
                dirs.push(path.to_path_buf());
            }
            continue;
        }
        if !entry.file_type().is_file() || entry.file_name().to_string_lossy().contains('~') {
            continue;
        }
        let last = [age(path), age(&used_sidecar(path))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::ZERO);
        if last < max_age {
            continue;
        }
        for p in [etag_sidecar(path), used_sidecar(path), path.to_path_buf()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(object = %path.display(), unused_days = last.as_secs() / 86_400, "removed an unused upload");
        removed += 1;
    }
    // Deepest first; a directory still holding something stays.
    for dir in dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(removed)
}

/// Removes unused uploads at start and then every hour.
pub async fn collect_unused_forever(state: AppState) {
    let root = state.config.object_storage_dir.clone();
    loop {
        let dir = root.clone();
        match tokio::task::spawn_blocking(move || remove_unused(&dir, UNUSED_OBJECT_AGE)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove unused uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot remove unused uploads"),
        }
        tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    }
}

fn etag_sidecar(object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object.with_file_name(format!(".{name}~etag"))
}

/// What identifies a version of an object file: inode, size and modification time.
fn file_identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{} {} {}.{}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Records the ETag of the object file now at `object` (best effort: without it the ETag is
/// computed again when asked for).
fn write_etag(object: &Path, etag: &str) {
    let result = (|| -> std::io::Result<()> {
        let meta = std::fs::metadata(object)?;
        let dir = object.parent().unwrap_or(Path::new("."));
        let tmp = TempFile::new(dir);
        std::fs::write(&tmp.path, format!("{} {etag}", file_identity(&meta)))?;
        tmp.persist(&etag_sidecar(object))
    })();
    if let Err(e) = result {
        tracing::warn!(path = %object.display(), error = %e, "cannot record an object's ETag");
    }
}

fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot sync a directory");
    }
}

/// Renames the synced temporary file to `object` and records its ETag.
fn commit_blocking(
    tmp: TempFile,
    object: &Path,
    key: &ObjectKey,
    etag: &str,
) -> Result<(), S3Error> {
    tmp.persist(object).map_err(|e| {
        if is_conflict(&e) {
            S3Error::key_conflict(key)
        } else {
            io_error("cannot move an upload into place", &e)
        }
    })?;
    write_etag(object, etag);
    if let Some(dir) = object.parent() {
        sync_dir(dir);
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, S3Error> + Send + 'static,
) -> Result<T, S3Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| S3Error::internal("a storage task failed", &e))?
}

fn md5_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
    }
    Ok(hex::encode(md5.finalize()))
}

impl Objects {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn object_path(&self, bucket: &str, key: &ObjectKey) -> PathBuf {
        self.root.join(bucket).join(key.as_str())
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join(UPLOADS_DIR).join(id.as_str())
    }

    /// Creates the directory an object goes into.
    async fn object_dir(&self, bucket: &str, key: &ObjectKey) -> Result<PathBuf, S3Error> {
        let path = self.object_path(bucket, key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            if is_conflict(&e) {
                S3Error::key_conflict(key)
            } else {
                io_error("cannot create an object directory", &e)
            }
        })?;
        Ok(path)
    }

    /// The ETag of the object file with metadata `meta`.
    async fn etag_of(&self, path: &Path, meta: &std::fs::Metadata) -> Result<String, S3Error> {
        let identity = file_identity(meta);
        if let Ok(recorded) = tokio::fs::read_to_string(etag_sidecar(path)).await
            && let Some(etag) = recorded.strip_prefix(&identity)
            && let Some(etag) = etag.strip_prefix(' ')
        {
            return Ok(etag.trim().to_owned());
        }
        let path = path.to_path_buf();
        blocking(move || {
            let etag = md5_of_file(&path).map_err(|e| io_error("cannot read an object", &e))?;
            write_etag(&path, &etag);
            Ok(etag)
        })
        .await
    }

    fn meta_from(
        &self,
        key: &ObjectKey,
        meta: &std::fs::Metadata,
    ) -> Result<(u64, SystemTime), S3Error> {
        if !meta.is_file() {
            return Err(S3Error::no_such_key(key));
        }
        Ok((
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        ))
    }

    /// The objects of `bucket` whose keys start with `prefix` and sort after `after`, in key
    /// order, at most `max`; and whether more remain.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        max: usize,
    ) -> Result<(Vec<(String, ObjectMeta)>, bool), S3Error> {
        // Walk only the deepest directory the prefix names in full; its segments must be
        // plain names, so the walk never leaves the bucket.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        if dir_part
            .split('/')
            .any(|seg| matches!(seg, "." | "..") || seg.contains('\0'))
        {
            return Err(S3Error::bad_request(
                "InvalidArgument",
                "the prefix may not hold '.' or '..' segments",
            ));
        }
        let bucket_dir = self.root.join(bucket);
        let start = bucket_dir.join(dir_part);
        let (prefix_owned, after_owned) = (prefix.to_owned(), after.to_owned());
        let keys = tokio::task::spawn_blocking(move || {
            let mut keys: Vec<String> = walkdir::WalkDir::new(&start)
                .follow_links(false)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .filter_map(|e| {
                    let rel = e
                        .path()
                        .strip_prefix(&bucket_dir)
                        .ok()?
                        .to_str()?
                        .to_owned();
                    // Temporary files and ETag records carry a `~`, which keys never do.
                    (!rel.contains('~')
                        && rel.starts_with(&prefix_owned)
                        && rel.as_str() > after_owned.as_str())
                    .then_some(rel)
                })
                .collect();
            keys.sort();
            keys
        })
        .await
        .map_err(|e| io_error("cannot list objects", &std::io::Error::other(e)))?;
        let truncated = keys.len() > max;
        let mut found = Vec::with_capacity(keys.len().min(max));
        for k in keys.into_iter().take(max) {
            let Ok(key) = ObjectKey::parse(&k) else {
                continue;
            };
            match self.head(bucket, &key).await {
                Ok(meta) => {
                    // The TypeScript SDK lists to find its upload, then builds from it.
                    let path = self.object_path(bucket, &key);
                    let _ = tokio::task::spawn_blocking(move || mark_used(&path)).await;
                    found.push((k, meta));
                }
                // Removed meanwhile.
                Err(e) if e.status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok((found, truncated))
    }

    /// What HEAD tells of an object.
    pub async fn head(&self, bucket: &str, key: &ObjectKey) -> Result<ObjectMeta, S3Error> {
        let path = self.object_path(bucket, key);
        let meta = match tokio::fs::symlink_metadata(&path).await {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Err(S3Error::no_such_key(key)),
            Err(e) => return Err(io_error("cannot read an object", &e)),
        };
        let (size, last_modified) = self.meta_from(key, &meta)?;
        let etag = self.etag_of(&path, &meta).await?;
        Ok(ObjectMeta {
            size,
            etag,
            last_modified,
        })
    }

    /// Opens an object for reading; the metadata is of the opened file.
    pub async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<(ObjectMeta, tokio::fs::File), S3Error> {
        let path = self.object_path(bucket, key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Err(S3Error::no_such_key(key)),
            Err(e) => return Err(io_error("cannot open an object", &e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| io_error("cannot read an object", &e))?;
        let (size, last_modified) = self.meta_from(key, &meta)?;
        let etag = self.etag_of(&path, &meta).await?;
        Ok((
            ObjectMeta {
                size,
                etag,
                last_modified,
            },
            file,
        ))
    }

    /// Stores a whole object; answers its ETag. Nothing is stored unless the whole body
    /// arrived and matched its digests.
    pub async fn put<S, E>(
        &self,
        bucket: &str,
        key: &ObjectKey,
        body: S,
        payload: Payload,
        content_md5: Option<[u8; 16]>,
    ) -> Result<String, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let path = self.object_dir(bucket, key).await?;
        let (tmp, file) = TempFile::create(path.parent().unwrap_or(&self.root))
            .await
            .map_err(|e| io_error("cannot create a temporary upload file", &e))?;
        let got = receive(body, file, MAX_OBJECT_SIZE, payload, content_md5).await?;
        let etag = hex::encode(got.md5);
        tracing::debug!(key = key.as_str(), size = got.size, "object stored");
        let key = key.clone();
        let tag = etag.clone();
        blocking(move || commit_blocking(tmp, &path, &key, &tag)).await?;
        Ok(etag)
    }

    /// Deletes an object; deleting one that does not exist is no error (as in S3).
    pub async fn delete(&self, bucket: &str, key: &ObjectKey) -> Result<(), S3Error> {
        let path = self.object_path(bucket, key);
        for p in [etag_sidecar(&path), used_sidecar(&path), path] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) || e.kind() == std::io::ErrorKind::IsADirectory => {}
                Err(e) => return Err(io_error("cannot delete an object", &e)),
            }
        }
        Ok(())
    }

    /// Starts a multipart upload (and removes uploads left unfinished for a day).
    pub async fn create_upload(&self, bucket: &str, key: &ObjectKey) -> Result<UploadId, S3Error> {
        self.remove_stale_uploads(STALE_UPLOAD_AGE).await;
        let id = UploadId::random();
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error("cannot create an upload directory", &e))?;
        tokio::fs::write(dir.join("key"), format!("{bucket}/{}", key.as_str()))
            .await
            .map_err(|e| io_error("cannot create an upload", &e))?;
        Ok(id)
    }

    /// The directory of upload `id`, when it exists and is for this key.
    async fn upload_of(
        &self,
        bucket: &str,
        key: &ObjectKey,
        id: &UploadId,
    ) -> Result<PathBuf, S3Error> {
        let dir = self.upload_dir(id);
        match tokio::fs::read_to_string(dir.join("key")).await {
            Ok(owner) if owner == format!("{bucket}/{}", key.as_str()) => Ok(dir),
            Ok(_) => Err(S3Error::no_such_upload(id.as_str())),
            Err(e) if is_not_found(&e) => Err(S3Error::no_such_upload(id.as_str())),
            Err(e) => Err(io_error("cannot read an upload", &e)),
        }
    }

    /// Stores part `number` of upload `id`; answers its ETag.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_part<S, E>(
        &self,
        bucket: &str,
        key: &ObjectKey,
        id: &UploadId,
        number: u32,
        body: S,
        payload: Payload,
        content_md5: Option<[u8; 16]>,
    ) -> Result<String, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(S3Error::bad_request(
                "InvalidArgument",
                format!("part numbers run from 1 to {MAX_PART_NUMBER}"),
            ));
        }
        let dir = self.upload_of(bucket, key, id).await?;
        let (tmp, file) = match TempFile::create(&dir).await {
            Ok(created) => created,
            // Aborted meanwhile.
            Err(e) if is_not_found(&e) => return Err(S3Error::no_such_upload(id.as_str())),
            Err(e) => return Err(io_error("cannot create a temporary upload file", &e)),
        };
        let got = receive(body, file, MAX_PART_SIZE, payload, content_md5).await?;
        let part = dir.join(format!("part-{number}"));
        let upload = id.as_str().to_owned();
        blocking(move || {
            tmp.persist(&part).map_err(|e| {
                if is_not_found(&e) {
                    S3Error::no_such_upload(&upload)
                } else {
                    io_error("cannot store a part", &e)
                }
            })
        })
        .await?;
        Ok(hex::encode(got.md5))
    }

    /// Concatenates the listed parts (in ascending order) into the object and ends the upload;
    /// answers the object's ETag.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &ObjectKey,
        id: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<String, S3Error> {
        if parts.is_empty() {
            return Err(S3Error::bad_request(
                "MalformedXML",
                "CompleteMultipartUpload must list at least one part",
            ));
        }
        if parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(S3Error::bad_request(
                "InvalidPartOrder",
                "the parts must be listed in ascending order of part number, each once",
            ));
        }
        let dir = self.upload_of(bucket, key, id).await?;
        let path = self.object_dir(bucket, key).await?;
        let key = key.clone();
        blocking(move || {
            let invalid_part = |n: u32, why: &str| {
                S3Error::bad_request("InvalidPart", format!("part {n} {why}"))
            };
            let mut files = Vec::with_capacity(parts.len());
            let mut total: u64 = 0;
            for part in &parts {
                let file_path = dir.join(format!("part-{}", part.number));
                let file = match std::fs::File::open(&file_path) {
                    Ok(f) => f,
                    Err(e) if is_not_found(&e) => {
                        return Err(invalid_part(part.number, "was not uploaded"));
                    }
                    Err(e) => return Err(io_error("cannot read a part", &e)),
                };
                let len = file
                    .metadata()
                    .map_err(|e| io_error("cannot read a part", &e))?
                    .len();
                total = total.saturating_add(len);
                files.push(file);
            }
            if total > MAX_OBJECT_SIZE {
                return Err(too_large(MAX_OBJECT_SIZE));
            }
            let tmp = TempFile::new(path.parent().unwrap_or(Path::new(".")));
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp.path)
                .map_err(|e| io_error("cannot create a temporary upload file", &e))?;
            let mut all = Md5::new();
            let mut buf = vec![0u8; 1 << 20];
            for (part, mut file) in parts.iter().zip(files) {
                let mut md5 = Md5::new();
                loop {
                    let n = file
                        .read(&mut buf)
                        .map_err(|e| io_error("cannot read a part", &e))?;
                    if n == 0 {
                        break;
                    }
                    md5.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .map_err(|e| io_error("cannot write an object", &e))?;
                }
                let md5 = md5.finalize();
                if let Some(etag) = &part.etag
                    && *etag != hex::encode(md5)
                {
                    return Err(invalid_part(
                        part.number,
                        "has another ETag than the one listed",
                    ));
                }
                all.update(md5);
            }
            out.sync_all()
                .map_err(|e| io_error("cannot sync an object", &e))?;
            drop(out);
            let etag = format!("{}-{}", hex::encode(all.finalize()), parts.len());
            commit_blocking(tmp, &path, &key, &etag)?;
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a completed upload");
            }
            Ok(etag)
        })
        .await
    }

    /// Abandons upload `id` and its parts.
    pub async fn abort_upload(
        &self,
        bucket: &str,
        key: &ObjectKey,
        id: &UploadId,
    ) -> Result<(), S3Error> {
        let dir = self.upload_of(bucket, key, id).await?;
        let mut removed = tokio::fs::remove_dir_all(&dir).await;
        if matches!(&removed, Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty) {
            // A part arrived while the directory was being emptied.
            removed = tokio::fs::remove_dir_all(&dir).await;
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(S3Error::no_such_upload(id.as_str())),
            Err(e) => Err(io_error("cannot remove an upload", &e)),
        }
    }

    /// Removes uploads whose directory has not changed for `max_age` (failures are logged).
    pub async fn remove_stale_uploads(&self, max_age: Duration) {
        let uploads = self.root.join(UPLOADS_DIR);
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let entries = match std::fs::read_dir(&uploads) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or(Duration::ZERO))?;
                if age >= max_age {
                    tracing::info!(upload = %entry.file_name().to_string_lossy(), "removing an unfinished multipart upload");
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove stale multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot remove stale multipart uploads"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The S3 endpoint

/// The operations this endpoint knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    Head,
    Get,
    Put,
    Delete,
    Initiate,
    UploadPart { id: UploadId, number: u32 },
    Complete { id: UploadId },
    Abort { id: UploadId },
}

/// The decoded `name=value` pairs of a request's query.
fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

fn operation(parts: &Parts) -> Result<Operation, S3Error> {
    let pairs = query_pairs(parts);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    for (name, _) in &pairs {
        if !matches!(
            name.as_str(),
            "uploads" | "uploadId" | "partNumber" | "x-id"
        ) {
            return Err(S3Error::not_implemented(format!(
                "the query parameter {:?} (a sub-resource or option this server does not \
                 implement) is not supported",
                truncate(name)
            )));
        }
    }
    let uploads = get("uploads").is_some();
    let upload_id = match get("uploadId") {
        Some(raw) => Some(UploadId::parse(raw).ok_or_else(|| S3Error::no_such_upload(raw))?),
        None => None,
    };
    let part_number = match get("partNumber") {
        Some(raw) => Some(raw.parse::<u32>().map_err(|_| {
            S3Error::bad_request(
                "InvalidArgument",
                format!("partNumber must be a number from 1 to {MAX_PART_NUMBER}"),
            )
        })?),
        None => None,
    };
    let plain = !uploads && upload_id.is_none() && part_number.is_none();
    let method = &parts.method;
    if *method == Method::HEAD || *method == Method::GET {
        return if plain {
            Ok(if *method == Method::HEAD {
                Operation::Head
            } else {
                Operation::Get
            })
        } else {
            Err(S3Error::not_implemented(
                "listing parts or uploads and reading single parts are not supported",
            ))
        };
    }
    if *method == Method::PUT {
        if parts.headers.contains_key("x-amz-copy-source") {
            return Err(S3Error::not_implemented(
                "copying objects (x-amz-copy-source) is not supported",
            ));
        }
        return match (upload_id, part_number, uploads) {
            (None, None, false) => Ok(Operation::Put),
            (Some(id), Some(number), false) => Ok(Operation::UploadPart { id, number }),
            _ => Err(S3Error::bad_request(
                "InvalidArgument",
                "a part upload needs both partNumber and uploadId (and no uploads)",
            )),
        };
    }
    if *method == Method::POST {
        return match (uploads, upload_id, part_number) {
            (true, None, None) => Ok(Operation::Initiate),
            (false, Some(id), None) => Ok(Operation::Complete { id }),
            (false, None, None) => Err(S3Error::not_implemented(
                "POST uploads (browser forms) are not supported; use PUT",
            )),
            _ => Err(S3Error::bad_request(
                "InvalidArgument",
                "POST takes either ?uploads (start a multipart upload) or ?uploadId=... \
                 (complete it)",
            )),
        };
    }
    if *method == Method::DELETE {
        return match (upload_id, uploads, part_number) {
            (None, false, None) => Ok(Operation::Delete),
            (Some(id), false, None) => Ok(Operation::Abort { id }),
            _ => Err(S3Error::bad_request(
                "InvalidArgument",
                "DELETE takes no query or ?uploadId=... (abort a multipart upload)",
            )),
        };
    }
    Err(S3Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not allowed on an object"),
    ))
}

/// Splits `/object-storage[/bucket[/key]]` (as received) into bucket and key.
fn split_path(path: &str) -> (Option<&str>, Option<&str>) {
    let rest = path.strip_prefix("/object-storage").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return (None, None);
    }
    match rest.split_once('/') {
        None => (Some(rest), None),
        Some((bucket, "")) => (Some(bucket), None),
        Some((bucket, key)) => (Some(bucket), Some(key)),
    }
}

fn iso8601(t: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

fn http_date(t: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 GMT".to_owned())
}

fn quoted(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn xml_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
    )
        .into_response()
}

fn object_headers(meta: &ObjectMeta) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    h.insert(header::ETAG, quoted(&meta.etag));
    if let Ok(v) = HeaderValue::from_str(&http_date(meta.last_modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    h
}

async fn read_small_body(body: Body, payload: Payload) -> Result<Bytes, S3Error> {
    let bytes = axum::body::to_bytes(body, MAX_XML_BODY)
        .await
        .map_err(|e| {
            S3Error::bad_request(
                "InvalidRequest",
                format!("the request body could not be read or is over {MAX_XML_BODY} bytes: {e}"),
            )
        })?;
    if let Payload::Sha256(expected) = payload
        && <[u8; 32]>::from(Sha256::digest(&bytes)) != expected
    {
        return Err(S3Error::bad_request(
            "XAmzContentSHA256Mismatch",
            "the body's SHA-256 does not match x-amz-content-sha256",
        ));
    }
    Ok(bytes)
}

/// The S3 endpoint over some [`Objects`], authenticating with `issuer`'s credentials.
#[derive(Debug)]
pub struct S3Endpoint<'a> {
    pub objects: Objects,
    pub issuer: &'a CredentialIssuer,
    /// The endpoint URL clients use (for `Location`); `http://<host>/object-storage` if unset.
    pub base_url: Option<String>,
}

impl S3Endpoint<'_> {
    /// `GET /{bucket}?list-type=2[&prefix=..][&max-keys=..][&continuation-token=..]
    /// [&start-after=..]` (ListObjectsV2; the TypeScript SDK asks whether a context was
    /// uploaded by listing its prefix). Without `delimiter`: keys only, no common prefixes.
    async fn list(&self, bucket: &str, parts: &Parts) -> Result<Response, S3Error> {
        let pairs = query_pairs(parts);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        for (name, _) in &pairs {
            if !matches!(
                name.as_str(),
                "list-type"
                    | "prefix"
                    | "max-keys"
                    | "continuation-token"
                    | "start-after"
                    | "encoding-type"
                    | "fetch-owner"
                    | "x-id"
            ) {
                return Err(S3Error::not_implemented(format!(
                    "listing with {:?} is not supported (only ListObjectsV2 with prefix, \
                     max-keys, continuation-token and start-after)",
                    truncate(name)
                )));
            }
        }
        if get("list-type") != Some("2") {
            return Err(S3Error::not_implemented(
                "only ListObjectsV2 (list-type=2) is supported",
            ));
        }
        let prefix = get("prefix").unwrap_or("");
        let max_keys = match get("max-keys") {
            None => 1000,
            Some(raw) => raw.parse::<usize>().map_err(|_| {
                S3Error::bad_request("InvalidArgument", "max-keys must be a number")
            })?,
        }
        .min(1000);
        let after = get("continuation-token")
            .or_else(|| get("start-after"))
            .unwrap_or("");
        let (found, truncated) = self.objects.list(bucket, prefix, after, max_keys).await?;
        let mut xml = format!(
            "<ListBucketResult xmlns=\"{S3_XMLNS}\"><Name>{}</Name><Prefix>{}</Prefix>\
             <KeyCount>{}</KeyCount><MaxKeys>{max_keys}</MaxKeys>\
             <IsTruncated>{truncated}</IsTruncated>",
            xml_escape(bucket),
            xml_escape(prefix),
            found.len()
        );
        for (key, meta) in &found {
            xml.push_str(&format!(
                "<Contents><Key>{}</Key><LastModified>{}</LastModified>\
                 <ETag>&quot;{}&quot;</ETag><Size>{}</Size>\
                 <StorageClass>STANDARD</StorageClass></Contents>",
                xml_escape(key),
                iso8601(meta.last_modified),
                xml_escape(&meta.etag),
                meta.size
            ));
        }
        if truncated && let Some((last, _)) = found.last() {
            xml.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                xml_escape(last)
            ));
        }
        xml.push_str("</ListBucketResult>");
        Ok(xml_response(xml))
    }

    /// Answers one S3 request; every failure is an S3 error document (no body for HEAD).
    pub async fn handle(&self, req: Request, now: OffsetDateTime) -> Response {
        let is_head = req.method() == Method::HEAD;
        let (parts, body) = req.into_parts();
        let mut response = match self.route(&parts, body, now).await {
            Ok(r) => r,
            Err(e) => {
                if e.status.is_client_error() {
                    tracing::debug!(code = e.code, message = %e.message, "S3 request refused");
                }
                e.into_response()
            }
        };
        if is_head {
            *response.body_mut() = Body::empty();
        }
        response
    }

    async fn route(
        &self,
        parts: &Parts,
        body: Body,
        now: OffsetDateTime,
    ) -> Result<Response, S3Error> {
        authenticate(self.issuer, parts, now)?;
        let payload = payload_mode(&parts.headers)?;
        let (bucket, key) = split_path(parts.uri.path());
        let Some(bucket) = bucket else {
            return Err(S3Error::not_implemented(
                "listing buckets is not supported: this endpoint only stores build context",
            ));
        };
        if bucket != CONTEXT_BUCKET {
            return Err(S3Error::new(
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
                format!(
                    "there is no bucket {:?}; the only one is {CONTEXT_BUCKET}",
                    truncate(bucket)
                ),
            ));
        }
        let Some(key) = key else {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                return self.list(bucket, parts).await;
            }
            return Err(S3Error::not_implemented(
                "bucket operations other than listing objects are not supported: this \
                 endpoint only stores build context",
            ));
        };
        let key = ObjectKey::parse(key)?;
        let op = operation(parts)?;
        let objects = &self.objects;
        match op {
            Operation::Head => {
                let meta = objects.head(bucket, &key).await?;
                // An SDK that finds its upload here builds from it next.
                let path = objects.object_path(bucket, &key);
                let _ = tokio::task::spawn_blocking(move || mark_used(&path)).await;
                Ok((StatusCode::OK, object_headers(&meta)).into_response())
            }
            Operation::Get => {
                let (meta, file) = objects.open(bucket, &key).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                Ok((
                    StatusCode::OK,
                    object_headers(&meta),
                    Body::from_stream(stream),
                )
                    .into_response())
            }
            Operation::Put => {
                check_length(&parts.headers, MAX_OBJECT_SIZE)?;
                let etag = objects
                    .put(
                        bucket,
                        &key,
                        body.into_data_stream(),
                        payload,
                        content_md5(&parts.headers)?,
                    )
                    .await?;
                Ok((StatusCode::OK, [(header::ETAG, quoted(&etag))]).into_response())
            }
            Operation::Delete => {
                objects.delete(bucket, &key).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Operation::Initiate => {
                read_small_body(body, payload).await?;
                let id = objects.create_upload(bucket, &key).await?;
                Ok(xml_response(format!(
                    "<InitiateMultipartUploadResult xmlns=\"{S3_XMLNS}\"><Bucket>{}</Bucket>\
                     <Key>{}</Key><UploadId>{}</UploadId></InitiateMultipartUploadResult>",
                    xml_escape(bucket),
                    xml_escape(key.as_str()),
                    id.as_str()
                )))
            }
            Operation::UploadPart { id, number } => {
                check_length(&parts.headers, MAX_PART_SIZE)?;
                let etag = objects
                    .put_part(
                        bucket,
                        &key,
                        &id,
                        number,
                        body.into_data_stream(),
                        payload,
                        content_md5(&parts.headers)?,
                    )
                    .await?;
                Ok((StatusCode::OK, [(header::ETAG, quoted(&etag))]).into_response())
            }
            Operation::Complete { id } => {
                let xml = read_small_body(body, payload).await?;
                let list = parse_complete(&xml)?;
                let etag = objects.complete_upload(bucket, &key, &id, list).await?;
                let base = self.base_url.clone().unwrap_or_else(|| {
                    let host = header_str(&parts.headers, "host").unwrap_or("localhost");
                    format!("http://{host}/object-storage")
                });
                Ok(xml_response(format!(
                    "<CompleteMultipartUploadResult xmlns=\"{S3_XMLNS}\"><Location>{}</Location>\
                     <Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag>\
                     </CompleteMultipartUploadResult>",
                    xml_escape(&format!("{base}/{bucket}/{}", key.as_str())),
                    xml_escape(bucket),
                    xml_escape(key.as_str()),
                    xml_escape(&format!("\"{etag}\""))
                )))
            }
            Operation::Abort { id } => {
                objects.abort_upload(bucket, &key, &id).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
        }
    }
}

/// Refuses early a body whose declared length is over `limit`.
fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), S3Error> {
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// `/object-storage/{bucket}/{*key}` (and the bucket and root paths): the S3 endpoint.
pub async fn s3(State(state): State<AppState>, req: Request) -> Response {
    let endpoint = S3Endpoint {
        objects: Objects::new(state.config.object_storage_dir.clone()),
        issuer: issuer(),
        base_url: storage_url(&state.config, req.headers()).ok(),
    };
    endpoint.handle(req, OffsetDateTime::now_utc()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
    }

    /// 2013-05-24T00:00:00Z, the date of the AWS documentation's examples.
    const AWS_EXAMPLE_TIME: i64 = 1_369_353_600;

    fn parts_of(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    // The three examples of the AWS documentation ("Signature Calculations for the
    // Authorization Header: Transferring Payload in a Single Chunk"), whose signatures were
    // computed by AWS, not by this code.

    fn aws_get_object(range: &str) -> Parts {
        parts_of(
            Request::builder()
                .method("GET")
                .uri("/test.txt")
                .header("host", "examplebucket.s3.amazonaws.com")
                .header("range", range)
                .header("x-amz-content-sha256", EMPTY_SHA)
                .header("x-amz-date", "20130524T000000Z")
                .body(())
                .expect("request"),
        )
    }

    #[test]
    fn aws_example_get_object_verifies() {
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        )
        .expect("parses");
        assert_eq!(auth.access_key, "AKIAIOSFODNN7EXAMPLE");
        let now = at(AWS_EXAMPLE_TIME + 60);
        verify_sigv4(&aws_get_object("bytes=0-9"), &auth, AWS_SECRET, now).expect("valid");
        // A tampered signed header, another secret, a date too far away: refused.
        let e = verify_sigv4(&aws_get_object("bytes=0-10"), &auth, AWS_SECRET, now)
            .expect_err("tampered range");
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = verify_sigv4(&aws_get_object("bytes=0-9"), &auth, "other", now)
            .expect_err("wrong secret");
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let late = at(AWS_EXAMPLE_TIME + 16 * 60);
        let e = verify_sigv4(&aws_get_object("bytes=0-9"), &auth, AWS_SECRET, late)
            .expect_err("skewed");
        assert_eq!(e.code, "RequestTimeTooSkewed");
        let early = at(AWS_EXAMPLE_TIME - 16 * 60);
        assert!(verify_sigv4(&aws_get_object("bytes=0-9"), &auth, AWS_SECRET, early).is_err());
    }

    #[test]
    fn aws_example_put_object_with_unencoded_path_verifies() {
        let parts = parts_of(
            Request::builder()
                .method("PUT")
                .uri("/test$file.text")
                .header("host", "examplebucket.s3.amazonaws.com")
                .header("date", "Fri, 24 May 2013 00:00:00 GMT")
                .header(
                    "x-amz-content-sha256",
                    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
                )
                .header("x-amz-date", "20130524T000000Z")
                .header("x-amz-storage-class", "REDUCED_REDUNDANCY")
                .body(())
                .expect("request"),
        );
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,\
             Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        )
        .expect("parses");
        let now = at(AWS_EXAMPLE_TIME);
        verify_sigv4(&parts, &auth, AWS_SECRET, now).expect("valid");
        assert_eq!(canonical_uri("/test$file.text"), "/test%24file.text");
        assert_eq!(canonical_uri("/test%24file.text"), "/test%24file.text");
    }

    fn aws_list_objects(query: &str) -> Parts {
        parts_of(
            Request::builder()
                .method("GET")
                .uri(format!("/?{query}"))
                .header("host", "examplebucket.s3.amazonaws.com")
                .header("x-amz-content-sha256", EMPTY_SHA)
                .header("x-amz-date", "20130524T000000Z")
                .body(())
                .expect("request"),
        )
    }

    #[test]
    fn aws_example_query_is_canonicalised() {
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;x-amz-content-sha256;x-amz-date,\
             Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        )
        .expect("parses");
        let now = at(AWS_EXAMPLE_TIME);
        verify_sigv4(
            &aws_list_objects("max-keys=2&prefix=J"),
            &auth,
            AWS_SECRET,
            now,
        )
        .expect("valid");
        verify_sigv4(
            &aws_list_objects("prefix=J&max-keys=2"),
            &auth,
            AWS_SECRET,
            now,
        )
        .expect("order does not matter");
        let e = verify_sigv4(
            &aws_list_objects("max-keys=3&prefix=J"),
            &auth,
            AWS_SECRET,
            now,
        )
        .expect_err("tampered query");
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(canonical_query(Some("uploads")), "uploads=");
        assert_eq!(canonical_query(Some("b=x%2fy&a=1 2")), "a=1%202&b=x%2Fy");
    }

    #[test]
    fn malformed_authorization_is_a_clear_error() {
        for bad in [
            "AWS AKIA:sig",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request",
            "AWS4-HMAC-SHA256 Credential=a/2013/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, SignedHeaders=Host, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 garbage",
        ] {
            let e = parse_authorization(bad).expect_err(bad);
            assert!(e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::FORBIDDEN);
            assert!(!e.message.is_empty());
        }
    }

    // Credentials.

    const TEST_KEY: [u8; 32] = [7; 32];
    const TEST_TOKEN: &str = "1700003600.0123456789abcdef0123456789abcdef";

    #[test]
    fn credentials_are_derived_from_the_token() {
        let issuer = CredentialIssuer::new(TEST_KEY);
        // Values computed independently (Python's hmac) from the documented derivation.
        assert_eq!(issuer.access_key_for(TEST_TOKEN), "CORRAL15662F4B168EFD");
        assert_eq!(
            issuer
                .secret_for("CORRAL15662F4B168EFD", TEST_TOKEN, at(1_700_000_000))
                .expect("valid"),
            "047790cfd1bb55bbff4fd456795c50ca00c6eea7b8180d0a16a6e402c5cfbe94"
        );
    }

    #[test]
    fn issued_credentials_work_until_they_expire() {
        let issuer = CredentialIssuer::random();
        let now = at(1_700_000_000);
        let c = issuer.issue(now);
        assert_eq!(c.expires_at, 1_700_003_600);
        assert!(c.session_token.starts_with("1700003600."));
        assert_eq!(
            issuer
                .secret_for(&c.access_key_id, &c.session_token, now)
                .expect("valid"),
            c.secret_access_key
        );
        let e = issuer
            .secret_for(&c.access_key_id, &c.session_token, at(1_700_003_600))
            .expect_err("expired");
        assert_eq!(e.code, "ExpiredToken");
        // A later expiry written into the token does not match the access key any more.
        let (_, random) = c.session_token.split_once('.').expect("token");
        let forged = format!("1700003000.{random}");
        let e = issuer
            .secret_for(&c.access_key_id, &forged, now)
            .expect_err("forged");
        assert_eq!(e.code, "InvalidAccessKeyId");
        // Another process (a restart) does not know them.
        let e = CredentialIssuer::random()
            .secret_for(&c.access_key_id, &c.session_token, now)
            .expect_err("restart");
        assert_eq!(e.code, "InvalidAccessKeyId");
        for bad in [
            "",
            "x",
            "1.2",
            "abc.0123456789abcdef0123456789abcdef",
            "99999999999.0123456789abcdef0123456789abcdef",
        ] {
            let e = issuer
                .secret_for(&c.access_key_id, bad, now)
                .expect_err(bad);
            assert_eq!(e.code, "InvalidToken");
            assert_eq!(e.status, StatusCode::FORBIDDEN);
        }
    }

    /// A request for the credentials of `TEST_KEY`/`TEST_TOKEN`, signed independently
    /// (Python's hmac and hashlib) at 2023-11-14T22:13:20Z.
    fn independently_signed_put() -> Request<()> {
        Request::builder()
            .method("PUT")
            .uri("/object-storage/corral-build-context/corral/0123456789abcdef0123456789abcdef/context.tar")
            .header("host", "127.0.0.1:3917")
            .header("x-amz-content-sha256", hex::encode(Sha256::digest(b"hello")))
            .header("x-amz-date", "20231114T221320Z")
            .header("x-amz-security-token", TEST_TOKEN)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=CORRAL15662F4B168EFD/20231114/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, \
                 Signature=b61b1b9a897d590861c3dad99d0d3f49f14a19cf23cfd5f5eda984952488b998",
            )
            .body(())
            .expect("request")
    }

    #[test]
    fn authenticate_accepts_an_independently_signed_request() {
        let issuer = CredentialIssuer::new(TEST_KEY);
        let now = at(1_700_000_000);
        authenticate(&issuer, &parts_of(independently_signed_put()), now).expect("valid");
        // After the token's expiry (and within the clock skew of the request) it is refused.
        let mut parts = parts_of(independently_signed_put());
        parts
            .headers
            .insert("x-amz-date", HeaderValue::from_static("20231114T231320Z"));
        assert!(authenticate(&issuer, &parts, at(1_700_003_600)).is_err());
    }

    #[test]
    fn authenticate_refuses_tampering() {
        let issuer = CredentialIssuer::new(TEST_KEY);
        let now = at(1_700_000_000);
        let tamper = |f: &dyn Fn(&mut Parts)| {
            let mut parts = parts_of(independently_signed_put());
            f(&mut parts);
            authenticate(&issuer, &parts, now).expect_err("tampered")
        };
        let e = tamper(&|p| {
            p.uri = "/object-storage/corral-build-context/corral/0123456789abcdef0123456789abcdef/other.tar"
                .parse()
                .expect("uri");
        });
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| {
            p.uri = "/object-storage/corral-build-context/corral/0123456789abcdef0123456789abcdef/context.tar?uploads"
                .parse()
                .expect("uri");
        });
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| {
            p.headers
                .insert("host", HeaderValue::from_static("evil:3917"));
        });
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| {
            p.headers
                .insert("x-amz-date", HeaderValue::from_static("20231114T221321Z"));
        });
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| {
            p.headers
                .insert("x-amz-content-sha256", HeaderValue::from_static(EMPTY_SHA));
        });
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| p.method = Method::POST);
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = tamper(&|p| {
            p.headers.remove("authorization");
        });
        assert_eq!(e.code, "AccessDenied");
        let e = tamper(&|p| {
            p.headers.insert(
                "authorization",
                HeaderValue::from_static(
                    "AWS4-HMAC-SHA256 Credential=CORRAL15662F4B168EFD/20231114/us-east-1/s3/aws4_request, \
                     SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
                     Signature=b61b1b9a897d590861c3dad99d0d3f49f14a19cf23cfd5f5eda984952488b998",
                ),
            );
        });
        assert_eq!(e.code, "AccessDenied", "the token must be signed");
        let e = tamper(&|p| {
            p.uri = "/object-storage/x?X-Amz-Signature=abc"
                .parse()
                .expect("uri");
        });
        assert_eq!(e.code, "AccessDenied");
    }

    // Keys, ids and the part list.

    #[test]
    fn keys_are_validated() {
        for good in ["a", "corral/0123/context.tar", "A-b_c.d/e", "..x/.y"] {
            assert_eq!(ObjectKey::parse(good).expect(good).as_str(), good);
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a/./b",
            "a b",
            "a%2Fb",
            "a~b",
            "ä",
            "a\\b",
            long.as_str(),
        ] {
            let e = ObjectKey::parse(bad).expect_err(bad);
            assert_eq!(e.code, "InvalidArgument");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        assert!(ObjectKey::parse(&"a".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn upload_ids_are_validated() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        for bad in ["", "../../etc", "0123456789ABCDEF0123456789abcdef", "0123"] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn complete_body_parses_with_and_without_namespace() {
        let with_ns = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><ETag>"AAAA"</ETag><PartNumber>1</PartNumber></Part>
  <Part><PartNumber>2</PartNumber><ETag>&quot;bbbb&quot;</ETag><ChecksumCRC32>x</ChecksumCRC32></Part>
</CompleteMultipartUpload>"#;
        let parts = parse_complete(with_ns).expect("parses");
        assert_eq!(
            parts,
            vec![
                CompletedPart {
                    number: 1,
                    etag: Some("aaaa".into())
                },
                CompletedPart {
                    number: 2,
                    etag: Some("bbbb".into())
                },
            ]
        );
        let without = b"<CompleteMultipartUpload><Part><PartNumber>3</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(
            parse_complete(without).expect("parses"),
            vec![CompletedPart {
                number: 3,
                etag: None
            }]
        );
        let prefixed = br#"<s3:CompleteMultipartUpload xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Part><s3:PartNumber>4</s3:PartNumber><s3:ETag>"dd"</s3:ETag></s3:Part></s3:CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(prefixed).expect("parses"),
            vec![CompletedPart {
                number: 4,
                etag: Some("dd".into())
            }]
        );
        let single = b"<CompleteMultipartUpload><Part><PartNumber>7</PartNumber><ETag>cc</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(single).expect("parses").len(), 1);
    }

    #[test]
    fn bad_complete_bodies_are_malformed_xml() {
        for bad in [
            &b""[..],
            b"not xml",
            b"<CompleteMultipartUpload></CompleteMultipartUpload>",
            b"<Other><Part><PartNumber>1</PartNumber></Part></Other>",
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>",
            b"\xff\xfe",
        ] {
            let e = parse_complete(bad).expect_err("malformed");
            assert_eq!(e.code, "MalformedXML", "{:?}", String::from_utf8_lossy(bad));
        }
    }

    // Storage.

    fn key(k: &str) -> ObjectKey {
        ObjectKey::parse(k).expect("key")
    }

    fn body(chunks: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    fn sha(data: &[u8]) -> Payload {
        Payload::Sha256(Sha256::digest(data).into())
    }

    fn md5_hex(data: &[u8]) -> String {
        hex::encode(Md5::digest(data))
    }

    /// Every file under `dir`, relative.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).expect("prefix").display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    const B: &str = CONTEXT_BUCKET;

    #[tokio::test]
    async fn put_then_head_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("corral/abc/context.tar");
        let etag = objects
            .put(
                B,
                &k,
                body(&[b"hello ", b"world"]),
                sha(b"hello world"),
                None,
            )
            .await
            .expect("put");
        assert_eq!(etag, md5_hex(b"hello world"));
        let meta = objects.head(B, &k).await.expect("head");
        assert_eq!(meta.size, 11);
        assert_eq!(meta.etag, etag);
        let stored = dir.path().join(B).join("corral/abc/context.tar");
        assert_eq!(std::fs::read(&stored).expect("file"), b"hello world");
        // Overwrite, unsigned; the recorded ETag follows.
        let etag2 = objects
            .put(B, &k, body(&[b"bye"]), Payload::Unsigned, None)
            .await
            .expect("put");
        assert_eq!(objects.head(B, &k).await.expect("head").etag, etag2);
        let (meta, mut file) = objects.open(B, &k).await.expect("open");
        assert_eq!(meta.size, 3);
        let mut content = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut file, &mut content)
            .await
            .expect("read");
        assert_eq!(content, b"bye");
        // No temporary files are left: the object and its ETag only.
        assert_eq!(
            files(dir.path()),
            vec![
                format!("{B}/corral/abc/.context.tar~etag"),
                format!("{B}/corral/abc/context.tar"),
            ]
        );
        let e = objects
            .head(B, &key("corral/abc"))
            .await
            .expect_err("a directory");
        assert_eq!(e.code, "NoSuchKey");
        let e = objects.head(B, &key("nope")).await.expect_err("absent");
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "NoSuchKey"));
        let e = objects
            .head(B, &key("corral/abc/context.tar/x"))
            .await
            .expect_err("under a file");
        assert_eq!(e.code, "NoSuchKey");
    }

    /// Stores `data` under each key.
    async fn put_all(objects: &Objects, keys: &[&str]) {
        for k in keys {
            objects
                .put(B, &key(k), body(&[b"data"]), Payload::Unsigned, None)
                .await
                .expect("put");
        }
    }

    #[tokio::test]
    async fn list_finds_keys_under_a_prefix_in_order_and_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        put_all(
            &objects,
            &[
                "org/b/context.tar",
                "org/a/context.tar",
                "org/a/x",
                "other/a",
            ],
        )
        .await;
        let names = |found: &[(String, ObjectMeta)]| -> Vec<String> {
            found.iter().map(|(k, _)| k.clone()).collect()
        };
        let (found, more) = objects.list(B, "org/a/", "", 1000).await.expect("list");
        assert_eq!(names(&found), ["org/a/context.tar", "org/a/x"]);
        assert!(!more);
        assert_eq!(found[0].1.etag, md5_hex(b"data"));
        assert_eq!(found[0].1.size, 4);
        // A prefix that is not a whole directory, paging by the last key.
        let (found, more) = objects.list(B, "org/", "", 2).await.expect("list");
        assert_eq!(names(&found), ["org/a/context.tar", "org/a/x"]);
        assert!(more);
        let (found, more) = objects.list(B, "org/", "org/a/x", 2).await.expect("list");
        assert_eq!(names(&found), ["org/b/context.tar"]);
        assert!(!more);
        // Nothing there, and no way out of the bucket.
        let (found, _) = objects.list(B, "none/", "", 10).await.expect("list");
        assert!(found.is_empty());
        assert!(objects.list(B, "../x/", "", 10).await.is_err());
    }

    #[tokio::test]
    async fn unused_objects_go_and_used_or_fresh_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        put_all(
            &objects,
            &[
                "org/old/context.tar",
                "org/used/context.tar",
                "org/new/context.tar",
            ],
        )
        .await;
        let path = |k: &str| dir.path().join(B).join(k);
        let age = |p: &Path, days: u64| {
            let t = SystemTime::now() - Duration::from_secs(days * 86_400);
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        };
        age(&path("org/old/context.tar"), 8);
        age(&path("org/used/context.tar"), 8);
        mark_used(&path("org/used/context.tar"));
        // An unfinished upload is not an object (it has its own cleanup).
        std::fs::create_dir_all(dir.path().join(UPLOADS_DIR).join("u1")).expect("mkdir");
        assert_eq!(remove_unused(dir.path(), UNUSED_OBJECT_AGE).expect("gc"), 1);
        assert!(
            !path("org/old").exists(),
            "its records and empty dir go too"
        );
        assert!(path("org/used/context.tar").is_file());
        assert!(path("org/new/context.tar").is_file());
        assert!(dir.path().join(UPLOADS_DIR).join("u1").is_dir());
        // Once the use is old too, it goes.
        age(&used_sidecar(&path("org/used/context.tar")), 8);
        assert_eq!(remove_unused(dir.path(), UNUSED_OBJECT_AGE).expect("gc"), 1);
        assert!(!path("org/used").exists());
        assert!(dir.path().join(B).is_dir(), "the bucket stays");
    }

    #[tokio::test]
    async fn etag_is_recomputed_when_its_record_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("a");
        objects
            .put(B, &k, body(&[b"one"]), Payload::Unsigned, None)
            .await
            .expect("put");
        // Replaced behind the store's back: the recorded ETag is for another file.
        let path = dir.path().join(B).join("a");
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"other content").expect("write");
        assert_eq!(
            objects.head(B, &k).await.expect("head").etag,
            md5_hex(b"other content")
        );
    }

    #[tokio::test]
    async fn a_bad_body_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("corral/abc/context.tar");
        let e = objects
            .put(B, &k, body(&[b"hello"]), sha(b"HELLO"), None)
            .await
            .expect_err("mismatch");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "XAmzContentSHA256Mismatch")
        );
        let e = objects
            .put(
                B,
                &k,
                body(&[b"hello"]),
                Payload::Unsigned,
                Some(Md5::digest(b"x").into()),
            )
            .await
            .expect_err("md5 mismatch");
        assert_eq!(e.code, "BadDigest");
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"half")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let e = objects
            .put(B, &k, broken, Payload::Unsigned, None)
            .await
            .expect_err("broken body");
        assert_eq!(e.code, "IncompleteBody");
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
        assert_eq!(
            objects.head(B, &k).await.expect_err("absent").code,
            "NoSuchKey"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tmp, file) = TempFile::create(dir.path()).await.expect("temp file");
        assert_eq!(files(dir.path()).len(), 1);
        let e = match receive(body(&[b"12345", b"678"]), file, 6, Payload::Unsigned, None).await {
            Ok(_) => panic!("accepted 8 bytes with a limit of 6"),
            Err(e) => e,
        };
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "EntityTooLarge")
        );
        drop(tmp);
        assert!(files(dir.path()).is_empty());
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from(MAX_OBJECT_SIZE + 1));
        assert_eq!(
            check_length(&headers, MAX_OBJECT_SIZE)
                .expect_err("too large")
                .code,
            "EntityTooLarge"
        );
        headers.insert("content-length", HeaderValue::from(MAX_OBJECT_SIZE));
        assert!(check_length(&headers, MAX_OBJECT_SIZE).is_ok());
    }

    #[tokio::test]
    async fn a_key_cannot_be_object_and_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        objects
            .put(B, &key("a/b"), body(&[b"x"]), Payload::Unsigned, None)
            .await
            .expect("put");
        let e = objects
            .put(B, &key("a/b/c"), body(&[b"y"]), Payload::Unsigned, None)
            .await
            .expect_err("under an object");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "InvalidArgument")
        );
        let e = objects
            .put(B, &key("a"), body(&[b"y"]), Payload::Unsigned, None)
            .await
            .expect_err("over a prefix");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "InvalidArgument")
        );
        assert_eq!(
            files(dir.path()),
            vec![format!("{B}/a/.b~etag"), format!("{B}/a/b")]
        );
        objects.delete(B, &key("a/b")).await.expect("delete");
        objects.delete(B, &key("a/b")).await.expect("delete again");
        assert!(files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn multipart_concatenates_the_listed_parts_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("corral/abc/context.tar");
        let id = objects.create_upload(B, &k).await.expect("create");
        let mut etags = std::collections::BTreeMap::new();
        for (n, data) in [
            (3u32, &b"three"[..]),
            (1, b"one-"),
            (2, b"two-"),
            (5, b"unused"),
        ] {
            let etag = objects
                .put_part(B, &k, &id, n, body(&[data]), sha(data), None)
                .await
                .expect("part");
            assert_eq!(etag, md5_hex(data));
            etags.insert(n, etag);
        }
        // Uploading a part again replaces it.
        let etag = objects
            .put_part(B, &k, &id, 2, body(&[b"TWO-"]), Payload::Unsigned, None)
            .await
            .expect("part again");
        etags.insert(2, etag);
        let list: Vec<CompletedPart> = [1u32, 2, 3]
            .iter()
            .map(|n| CompletedPart {
                number: *n,
                etag: etags.get(n).cloned(),
            })
            .collect();
        let etag = objects
            .complete_upload(B, &k, &id, list)
            .await
            .expect("complete");
        let mut all = Md5::new();
        for data in [&b"one-"[..], b"TWO-", b"three"] {
            all.update(Md5::digest(data));
        }
        assert_eq!(etag, format!("{}-3", hex::encode(all.finalize())));
        let meta = objects.head(B, &k).await.expect("head");
        assert_eq!((meta.size, meta.etag), (13, etag));
        assert_eq!(
            std::fs::read(dir.path().join(B).join(k.as_str())).expect("object"),
            b"one-TWO-three"
        );
        // The upload is gone, with its unused part.
        assert!(!dir.path().join(UPLOADS_DIR).join(id.as_str()).exists());
        let e = objects
            .complete_upload(
                B,
                &k,
                &id,
                vec![CompletedPart {
                    number: 1,
                    etag: None,
                }],
            )
            .await
            .expect_err("completed");
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "NoSuchUpload"));
    }

    #[tokio::test]
    async fn multipart_refuses_bad_part_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("obj");
        let id = objects.create_upload(B, &k).await.expect("create");
        for n in [1u32, 2] {
            objects
                .put_part(B, &k, &id, n, body(&[b"data"]), Payload::Unsigned, None)
                .await
                .expect("part");
        }
        let part = |number, etag: Option<&str>| CompletedPart {
            number,
            etag: etag.map(str::to_owned),
        };
        let cases = [
            (vec![part(1, None), part(4, None)], "InvalidPart"),
            (vec![part(1, Some("00"))], "InvalidPart"),
            (vec![part(2, None), part(1, None)], "InvalidPartOrder"),
            (vec![part(1, None), part(1, None)], "InvalidPartOrder"),
            (vec![], "MalformedXML"),
        ];
        for (list, code) in cases {
            let e = objects
                .complete_upload(B, &k, &id, list)
                .await
                .expect_err(code);
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, code));
        }
        // Nothing was stored and the upload is still there.
        assert_eq!(
            objects.head(B, &k).await.expect_err("absent").code,
            "NoSuchKey"
        );
        assert!(!dir.path().join(B).join("obj").exists());
        let tmp_left = files(dir.path()).into_iter().any(|f| f.contains('~'));
        assert!(!tmp_left);
        for n in [0u32, MAX_PART_NUMBER + 1] {
            let e = objects
                .put_part(B, &k, &id, n, body(&[b"x"]), Payload::Unsigned, None)
                .await
                .expect_err("part number");
            assert_eq!(e.code, "InvalidArgument");
        }
        // Another key cannot use this upload.
        let e = objects
            .put_part(
                B,
                &key("other"),
                &id,
                1,
                body(&[b"x"]),
                Payload::Unsigned,
                None,
            )
            .await
            .expect_err("other key");
        assert_eq!(e.code, "NoSuchUpload");
        let e = objects
            .put_part(B, &k, &id, 3, body(&[b"x"]), sha(b"y"), None)
            .await
            .expect_err("sha");
        assert_eq!(e.code, "XAmzContentSHA256Mismatch");
        assert!(
            !dir.path()
                .join(UPLOADS_DIR)
                .join(id.as_str())
                .join("part-3")
                .exists()
        );
    }

    #[tokio::test]
    async fn abort_removes_the_upload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let k = key("obj");
        let id = objects.create_upload(B, &k).await.expect("create");
        objects
            .put_part(B, &k, &id, 1, body(&[b"data"]), Payload::Unsigned, None)
            .await
            .expect("part");
        objects.abort_upload(B, &k, &id).await.expect("abort");
        assert!(files(dir.path()).is_empty());
        let e = objects.abort_upload(B, &k, &id).await.expect_err("again");
        assert_eq!(e.code, "NoSuchUpload");
        let e = objects
            .put_part(B, &k, &id, 1, body(&[b"data"]), Payload::Unsigned, None)
            .await
            .expect_err("aborted");
        assert_eq!(e.code, "NoSuchUpload");
        let e = objects
            .complete_upload(
                B,
                &k,
                &id,
                vec![CompletedPart {
                    number: 1,
                    etag: None,
                }],
            )
            .await
            .expect_err("aborted");
        assert_eq!(e.code, "NoSuchUpload");
    }

    #[tokio::test]
    async fn stale_uploads_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Objects::new(dir.path());
        let old = objects.create_upload(B, &key("a")).await.expect("create");
        let old_dir = dir.path().join(UPLOADS_DIR).join(old.as_str());
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
        std::fs::File::open(&old_dir)
            .and_then(|d| d.set_modified(two_days_ago))
            .expect("set mtime");
        let fresh = objects.create_upload(B, &key("b")).await.expect("create");
        assert!(!old_dir.exists());
        assert!(dir.path().join(UPLOADS_DIR).join(fresh.as_str()).exists());
    }

    // The endpoint.

    fn signed(
        issuer: &CredentialIssuer,
        now: OffsetDateTime,
        method: &str,
        uri: &str,
        data: &[u8],
    ) -> Request {
        let creds = issuer.issue(now);
        let amz_date = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let (mut parts, ()) = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:3917")
            .header("x-amz-date", &amz_date)
            .header("x-amz-security-token", &creds.session_token)
            .header("x-amz-content-sha256", hex::encode(Sha256::digest(data)))
            .body(())
            .expect("request")
            .into_parts();
        let signed: Vec<String> = [
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-security-token",
        ]
        .map(str::to_owned)
        .to_vec();
        let creq = canonical_request(&parts, &signed, &hex::encode(Sha256::digest(data)))
            .expect("canonical");
        let date = &amz_date[..8];
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{REGION}/s3/aws4_request\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let mut k = hmac_sha256(
            format!("AWS4{}", creds.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        for p in [REGION, "s3", "aws4_request"] {
            k = hmac_sha256(&k, p.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&k, sts.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{date}/{REGION}/s3/aws4_request, SignedHeaders={}, Signature={signature}",
            creds.access_key_id,
            signed.join(";")
        );
        parts.headers.insert(
            "authorization",
            HeaderValue::from_str(&auth).expect("header"),
        );
        Request::from_parts(parts, Body::from(data.to_vec()))
    }

    async fn text(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn endpoint_serves_signed_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = CredentialIssuer::random();
        let s3 = S3Endpoint {
            objects: Objects::new(dir.path()),
            issuer: &issuer,
            base_url: None,
        };
        let now = OffsetDateTime::now_utc();
        let url = format!("/object-storage/{B}/corral/abc/context.tar");

        let r = s3
            .handle(signed(&issuer, now, "HEAD", &url, b""), now)
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(text(r).await.is_empty(), "HEAD answers have no body");

        let r = s3
            .handle(signed(&issuer, now, "PUT", &url, b"tar bytes"), now)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let etag = format!("\"{}\"", md5_hex(b"tar bytes"));
        assert_eq!(r.headers()[header::ETAG], etag.as_str());

        let r = s3
            .handle(signed(&issuer, now, "HEAD", &url, b""), now)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "9");
        assert_eq!(r.headers()[header::ETAG], etag.as_str());
        assert_eq!(r.headers()[header::CONTENT_TYPE], OCTET_STREAM);
        assert!(
            r.headers()[header::LAST_MODIFIED]
                .to_str()
                .expect("date")
                .ends_with(" GMT")
        );

        let r = s3.handle(signed(&issuer, now, "GET", &url, b""), now).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, "tar bytes");

        // Multipart through the endpoint.
        let r = s3
            .handle(
                signed(&issuer, now, "POST", &format!("{url}?uploads"), b""),
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let xml = text(r).await;
        let id = xml
            .split("<UploadId>")
            .nth(1)
            .and_then(|s| s.split("</UploadId>").next())
            .expect("upload id")
            .to_owned();
        assert!(xml.contains("<InitiateMultipartUploadResult"), "{xml}");
        let r = s3
            .handle(
                signed(
                    &issuer,
                    now,
                    "PUT",
                    &format!("{url}?partNumber=1&uploadId={id}"),
                    b"p1",
                ),
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let complete = format!(
            "<CompleteMultipartUpload xmlns=\"{S3_XMLNS}\"><Part><PartNumber>1</PartNumber><ETag>\"{}\"</ETag></Part></CompleteMultipartUpload>",
            md5_hex(b"p1")
        );
        let r = s3
            .handle(
                signed(
                    &issuer,
                    now,
                    "POST",
                    &format!("{url}?uploadId={id}"),
                    complete.as_bytes(),
                ),
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let xml = text(r).await;
        assert!(xml.contains("<CompleteMultipartUploadResult"), "{xml}");
        assert!(
            xml.contains(&format!("<Location>http://127.0.0.1:3917{url}</Location>")),
            "{xml}"
        );
        assert!(xml.contains("<ETag>&quot;"), "{xml}");
        let r = s3.handle(signed(&issuer, now, "GET", &url, b""), now).await;
        assert_eq!(text(r).await, "p1");

        let r = s3
            .handle(signed(&issuer, now, "DELETE", &url, b""), now)
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = s3.handle(signed(&issuer, now, "GET", &url, b""), now).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(text(r).await.contains("<Code>NoSuchKey</Code>"));
    }

    #[tokio::test]
    async fn endpoint_errors_are_s3_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = CredentialIssuer::random();
        let s3 = S3Endpoint {
            objects: Objects::new(dir.path()),
            issuer: &issuer,
            base_url: None,
        };
        let now = OffsetDateTime::now_utc();
        let obj = format!("/object-storage/{B}/k");
        let cases: Vec<(Request, StatusCode, &str)> = vec![
            (
                signed(&issuer, now, "GET", "/object-storage/other/k", b""),
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
            ),
            (
                signed(
                    &issuer,
                    now,
                    "GET",
                    &format!("/object-storage/{B}?list-type=1"),
                    b"",
                ),
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
            ),
            (
                signed(&issuer, now, "GET", "/object-storage", b""),
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
            ),
            (
                signed(&issuer, now, "GET", &format!("{obj}?acl"), b""),
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
            ),
            (
                signed(&issuer, now, "PATCH", &obj, b""),
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
            ),
            (
                signed(
                    &issuer,
                    now,
                    "GET",
                    &format!("/object-storage/{B}/a/../k"),
                    b"",
                ),
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
            ),
            (
                signed(
                    &issuer,
                    now,
                    "POST",
                    &format!("{obj}?uploadId=../../x"),
                    b"",
                ),
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
            ),
            (
                signed(&issuer, now, "PUT", &format!("{obj}?partNumber=1"), b""),
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
            ),
            (
                signed(&issuer, now, "GET", &obj, b""),
                StatusCode::NOT_FOUND,
                "NoSuchKey",
            ),
        ];
        for (req, status, code) in cases {
            let what = format!("{} {}", req.method(), req.uri());
            let r = s3.handle(req, now).await;
            assert_eq!(r.status(), status, "{what}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/xml");
            let xml = text(r).await;
            assert!(
                xml.contains(&format!("<Error><Code>{code}</Code><Message>")),
                "{what}: {xml}"
            );
        }
        // Unsigned, streaming-signed, a wrong payload hash, other credentials.
        let r = s3
            .handle(
                Request::builder()
                    .uri(&obj)
                    .body(Body::empty())
                    .expect("request"),
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(text(r).await.contains("<Code>AccessDenied</Code>"));

        let mut req = signed(&issuer, now, "PUT", &obj, b"data");
        *req.body_mut() = Body::from("DATA");
        let r = s3.handle(req, now).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(text(r).await.contains("XAmzContentSHA256Mismatch"));
        assert!(files(dir.path()).iter().all(|f| !f.contains('~')));

        let r = s3
            .handle(
                signed(&CredentialIssuer::random(), now, "GET", &obj, b""),
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(text(r).await.contains("<Code>InvalidAccessKeyId</Code>"));
    }

    #[tokio::test]
    async fn streaming_payloads_are_not_implemented() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = CredentialIssuer::random();
        let s3 = S3Endpoint {
            objects: Objects::new(dir.path()),
            issuer: &issuer,
            base_url: None,
        };
        let now = OffsetDateTime::now_utc();
        // The signature covers the header's value, so sign with it in place.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        );
        assert_eq!(
            payload_mode(&headers).expect_err("streaming").status,
            StatusCode::NOT_IMPLEMENTED
        );
        headers.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        );
        assert_eq!(payload_mode(&headers).expect("unsigned"), Payload::Unsigned);
        headers.insert("x-amz-content-sha256", HeaderValue::from_static("xyz"));
        assert_eq!(
            payload_mode(&headers).expect_err("bad").code,
            "InvalidArgument"
        );
        let r = s3
            .handle(
                signed(&issuer, now, "GET", &format!("/object-storage/{B}/k"), b""),
                now,
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "a plain signed request gets past auth"
        );
    }

    fn config(storage_url: Option<&str>, tls: bool) -> ApiConfig {
        ApiConfig {
            organization_id: "corral".into(),
            public_url: None,
            lifecycle_minute: Duration::from_secs(60),
            preview_domain: "localhost".into(),
            build_log_dir: PathBuf::from("/nonexistent"),
            object_storage_dir: PathBuf::from("/nonexistent"),
            storage_url: storage_url.map(str::to_owned),
            tls,
        }
    }

    #[test]
    fn storage_url_is_configured_tls_or_plain_for_clients_that_accept_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("corral.example:3000"),
        );
        assert_eq!(
            storage_url(
                &config(Some("https://s3.example/object-storage/"), false),
                &headers
            )
            .expect("url"),
            "https://s3.example/object-storage"
        );
        assert_eq!(
            storage_url(&config(None, true), &headers).expect("url"),
            "https://corral.example:3000/object-storage"
        );
        // Plain HTTP: fine for the TypeScript SDK's S3 client, not for the Python SDK's.
        headers.insert(
            "x-daytona-source",
            HeaderValue::from_static("sdk-typescript-legacy"),
        );
        assert_eq!(
            storage_url(&config(None, false), &headers).expect("url"),
            "http://corral.example:3000/object-storage"
        );
        headers.insert("x-daytona-source", HeaderValue::from_static("sdk-python"));
        let e = storage_url(&config(None, false), &headers).expect_err("plain http");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("OBJECT_STORAGE_NEEDS_TLS"));
        assert!(e.message.contains("--tls-cert") && e.message.contains("--storage-url"));
        assert!(storage_url(&config(None, true), &HeaderMap::new()).is_err());
    }

    #[test]
    fn paths_split_into_bucket_and_key() {
        assert_eq!(split_path("/object-storage"), (None, None));
        assert_eq!(split_path("/object-storage/"), (None, None));
        assert_eq!(split_path("/object-storage/b"), (Some("b"), None));
        assert_eq!(split_path("/object-storage/b/"), (Some("b"), None));
        assert_eq!(
            split_path("/object-storage/b/k/x"),
            (Some("b"), Some("k/x"))
        );
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
