//! AWS Signature Version 4, checked on the server side.
//!
//! Verified by hand: no well-kept crate checks SigV4 on the server side without bringing a
//! whole S3 server along (see the crate documentation for `s3s`), and the check is short. Only
//! the header form is accepted (no presigned URLs, no aws-chunked streaming signatures).

use axum::http::HeaderMap;
use axum::http::request::Parts;
use hmac::Mac;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::credentials::{CredentialIssuer, HmacSha256, hmac_sha256};
use crate::error::truncate;
use crate::{MAX_CLOCK_SKEW, S3Error};

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

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn canonical_request(
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

pub(crate) fn payload_mode(headers: &HeaderMap) -> Result<Payload, S3Error> {
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

pub(crate) fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, S3Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use axum::http::{HeaderValue, Method, Request, StatusCode};

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
}
