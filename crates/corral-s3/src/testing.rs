//! Helpers the unit tests share.

use std::path::Path;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request};
use axum::response::Response;
use futures_util::Stream;
use md5::{Digest, Md5};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::credentials::{CredentialIssuer, PushCredentials, hmac_sha256};
use crate::sigv4::{Payload, canonical_request};
use crate::wire::ObjectKey;
use crate::{CONTEXT_BUCKET, REGION};

pub(crate) const EMPTY_SHA: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub(crate) const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

pub(crate) fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
}

/// 2013-05-24T00:00:00Z, the date of the AWS documentation's examples.
pub(crate) const AWS_EXAMPLE_TIME: i64 = 1_369_353_600;

pub(crate) fn parts_of(req: Request<()>) -> Parts {
    req.into_parts().0
}
pub(crate) const TEST_KEY: [u8; 32] = [7; 32];
pub(crate) const TEST_TOKEN: &str = "1700003600.0123456789abcdef0123456789abcdef";
pub(crate) fn key(k: &str) -> ObjectKey {
    ObjectKey::parse(k).expect("key")
}

pub(crate) fn body(chunks: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(
        chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn sha(data: &[u8]) -> Payload {
    Payload::Sha256(Sha256::digest(data).into())
}

pub(crate) fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// Every file under `dir`, relative.
pub(crate) fn files(dir: &Path) -> Vec<String> {
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

pub(crate) const B: &str = CONTEXT_BUCKET;

/// A request signed with new credentials from `issuer`, as an SDK signs it.
pub(crate) fn signed(
    issuer: &CredentialIssuer,
    now: OffsetDateTime,
    method: &str,
    uri: &str,
    data: &[u8],
) -> Request<Body> {
    signed_with(&issuer.issue(now), now, method, uri, data)
}

/// A request signed with `creds`, as an SDK signs it.
pub(crate) fn signed_with(
    creds: &PushCredentials,
    now: OffsetDateTime,
    method: &str,
    uri: &str,
    data: &[u8],
) -> Request<Body> {
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
    let creq =
        canonical_request(&parts, &signed, &hex::encode(Sha256::digest(data))).expect("canonical");
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

/// The body of an answer, as text.
pub(crate) async fn text(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}
