//! Object storage for uploaded build context: the SDK's `Image.add_local_file`,
//! `add_local_dir` and `from_dockerfile` tar each local source and upload it to
//! `<bucket>/<organization>/<md5 hash>/context.tar` over S3 before asking for the build, which
//! names the uploads by hash in `buildInfo.contextHashes`.
//!
//! An [`ObjectStorage`] is one server's store: its directory and its [`CredentialIssuer`]
//! (nothing is process-global, so two servers in one process share nothing). It serves:
//! - push credentials ([`ObjectStorage::issue`]), which the HTTP edge hands out at
//!   `GET /api/object-storage/push-access` with the endpoint URL;
//! - a small S3-compatible endpoint ([`ObjectStorage::handle`], mounted at
//!   `/object-storage/{bucket}/{key}`: path-style requests, AWS Signature V4 in the
//!   `Authorization` header) with just what uploads need: HEAD, GET, PUT and DELETE of an
//!   object, multipart uploads, and ListObjectsV2. Everything else answers 501, and GET
//!   ignores `Range` (it always answers the whole object).
//!
//! The signature covers the request's path and `Host`, so a TLS proxy named by `--storage-url`
//! must pass both through unchanged: `--storage-url https://proxy.example/object-storage` with
//! the proxy forwarding `/object-storage/...` here as it is.
//!
//! Objects live in files, `<root>/<bucket>/<key>`, and appear only complete: they are written
//! to a temporary file in the same directory, synced and renamed into place. Each object's
//! ETag is kept beside it in `.<name>~etag` (`~` cannot occur in a key, so no key addresses
//! it, nor a temporary file).
//!
//! Modules: `sigv4` (the signature check) and `credentials` (the issuer), `wire` (keys, upload
//! ids, the XML bodies and answers), `endpoint` (which operation a request is, and its
//! answer), `storage` (objects and multipart uploads on disk), `gc` (removing unused
//! uploads) and `sidecar` (the paths of the files kept beside an object).
//!
//! # Why not `s3s`
//!
//! `s3s` (the well-kept S3 service adapter: generated DTOs, SigV4, XML and routing for every
//! S3 operation) was evaluated for this endpoint in issue 15 and not adopted:
//! - **It cannot serve the URL the SDKs are given.** The Python SDK's client (obstore's
//!   `S3Store` with `endpoint=<storageUrl>`) and the TypeScript SDK's AWS client both send
//!   path-style requests under the endpoint's path, `/object-storage/<bucket>/<key>`, and sign
//!   that whole path. `s3s` parses the bucket from the first path segment and computes the
//!   canonical request from the same path, with no base-path setting (0.14.1,
//!   `ops/mod.rs`): mounted under `/object-storage` it would either see the bucket
//!   `object-storage`, or, with the prefix stripped, compute a signature over another path
//!   than the client signed. Serving at `/` instead changes the `storageUrl` clients get
//!   and breaks `--storage-url` proxies set up for `/object-storage`.
//! - **It cannot check corral's credentials.** Its `S3Auth` looks a secret up by access key
//!   alone, and its SigV4 code leaves `x-amz-security-token` unchecked (a `FIXME` in
//!   `sig_v4/methods.rs`). corral's push credentials are stateless: the secret is derived from
//!   the session token, which must be signed and unexpired, so nothing needs storing.
//!   Adopting `s3s` means keeping a table of issued credentials and checking the token
//!   ourselves.
//! - **Toolchain and weight.** Releases 0.15 to 0.17 need Rust 1.96 (the workspace's
//!   `rust-version` and toolchain are 1.95), leaving 0.14.1. That release is about 150,000
//!   lines of Rust (120,000 of them generated DTOs, XML and operations for all of S3) and
//!   brings 32 crates of which the lock file has no compatible version, among them a second
//!   RustCrypto stack (`digest` 0.11, `sha2` 0.11, `hmac` 0.13, `md-5`
//!   0.11), a second `quick-xml` (0.41), `chrono`, `nom`, `crc-fast` and `h2`, where this
//!   crate is about 3,000 lines including its tests over crates the workspace already has.
//!
//! The hand-written code is kept small on purpose: one bucket, the nine operations the SDKs
//! use, and unit tests against the AWS documentation's own signed examples and requests
//! signed independently (Python's `hmac`). The e2e tests `test_build_upload.py` and
//! `test_build_context.py` drive it with the Python SDK's obstore client, including
//! multipart uploads, and `test_typescript_sdk.py` with the TypeScript SDK's AWS client.

#![forbid(unsafe_code)]

mod credentials;
mod endpoint;
mod error;
mod gc;
mod sidecar;
mod sigv4;
mod storage;
mod wire;

#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use time::OffsetDateTime;

pub use credentials::{CredentialIssuer, PushCredentials};
pub use endpoint::S3Endpoint;
pub use error::S3Error;
pub use gc::{mark_used, remove_unused};
pub use sigv4::{Payload, authenticate};
pub use storage::Objects;
pub use wire::{CompletedPart, ObjectKey, ObjectMeta, UploadId, parse_complete};

/// The bucket build context is uploaded to.
pub const CONTEXT_BUCKET: &str = "corral-build-context";
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

/// One server's object storage: the objects under a directory and the issuer of the
/// credentials that may write them.
#[derive(Debug)]
pub struct ObjectStorage {
    objects: Objects,
    issuer: CredentialIssuer,
}

impl ObjectStorage {
    /// Storage under `root` with a fresh random credential key: credentials it issues are
    /// accepted by it alone, and only until it is dropped (a server restart).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_issuer(root, CredentialIssuer::random())
    }

    /// Storage under `root` accepting the credentials of `issuer`.
    pub fn with_issuer(root: impl Into<PathBuf>, issuer: CredentialIssuer) -> Self {
        Self {
            objects: Objects::new(root),
            issuer,
        }
    }

    /// The directory the buckets live in.
    pub fn root(&self) -> &Path {
        self.objects.root()
    }

    /// The objects, for direct access.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// New push credentials, valid for [`CREDENTIAL_LIFETIME_SECS`] from `now`.
    pub fn issue(&self, now: OffsetDateTime) -> PushCredentials {
        self.issuer.issue(now)
    }

    /// Answers one S3 request (any path under `/object-storage`). `base_url` is the endpoint
    /// URL clients use, for `Location`; `http://<host>/object-storage` when `None`.
    pub async fn handle(
        &self,
        req: Request,
        base_url: Option<String>,
        now: OffsetDateTime,
    ) -> Response {
        let endpoint = S3Endpoint {
            objects: self.objects.clone(),
            issuer: &self.issuer,
            base_url,
        };
        endpoint.handle(req, now).await
    }

    /// Where the context archive of `organization` with this hash (as the SDK computes it: 32
    /// hex digits) is kept, or `None` for a malformed hash. The file may not exist.
    pub fn context_archive(&self, organization: &str, hash: &str) -> Option<PathBuf> {
        let valid = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| {
            self.root()
                .join(CONTEXT_BUCKET)
                .join(organization)
                .join(hash)
                .join("context.tar")
        })
    }

    /// Removes unused uploads now and then every hour, for as long as the storage lives
    /// (the task holds it).
    pub async fn collect_unused_forever(self: Arc<Self>) {
        gc::collect_unused_forever(self.root().to_path_buf()).await;
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use crate::testing::*;

    #[tokio::test]
    async fn two_storages_refuse_each_others_credentials() {
        let (dir_a, dir_b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        // Two servers in one process.
        let (a, b) = (
            ObjectStorage::new(dir_a.path()),
            ObjectStorage::new(dir_b.path()),
        );
        let now = OffsetDateTime::now_utc();
        let creds = a.issue(now);
        let url = format!("/object-storage/{B}/corral/abc/context.tar");
        // Positive control: the storage that issued them accepts them.
        let r = a
            .handle(signed_with(&creds, now, "PUT", &url, b"tar"), None, now)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", text(r).await);
        // The other one refuses them, and stores nothing.
        let r = b
            .handle(signed_with(&creds, now, "PUT", &url, b"tar"), None, now)
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(text(r).await.contains("<Code>InvalidAccessKeyId</Code>"));
        assert!(files(dir_b.path()).is_empty());
        // And the other way round.
        let r = a
            .handle(
                signed_with(&b.issue(now), now, "HEAD", &url, b""),
                None,
                now,
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn context_archives_are_under_the_organization() {
        let storage = ObjectStorage::new("/data/object-storage");
        let hash = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            storage.context_archive("corral", hash),
            Some(PathBuf::from(format!(
                "/data/object-storage/{CONTEXT_BUCKET}/corral/{hash}/context.tar"
            )))
        );
        for bad in [
            "",
            "0123",
            "../../../../etc/passwd0123456789",
            &"g".repeat(32),
        ] {
            assert_eq!(storage.context_archive("corral", bad), None, "{bad}");
        }
    }
}
