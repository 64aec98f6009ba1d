//! The S3 endpoint: which operation a request is, and the answer to it.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::credentials::CredentialIssuer;
use crate::error::{too_large, truncate, xml_escape};
use crate::gc::mark_used;
use crate::sigv4::{Payload, authenticate, content_md5, header_str, payload_mode};
use crate::storage::Objects;
use crate::wire::{
    ObjectKey, S3_XMLNS, UploadId, iso8601, object_headers, parse_complete, quoted, xml_response,
};
use crate::{
    CONTEXT_BUCKET, MAX_OBJECT_SIZE, MAX_PART_NUMBER, MAX_PART_SIZE, MAX_XML_BODY, S3Error,
};

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
pub(crate) fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), S3Error> {
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::wire::OCTET_STREAM;
    use axum::http::HeaderValue;

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
    fn an_oversized_declared_length_is_refused_early() {
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
}
