//! The objects on disk: written to a temporary file, checked, synced and renamed into place;
//! multipart uploads kept as part files until they are completed.

use std::fmt::Display;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt};
use md5::{Digest, Md5};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use crate::error::{io_error, too_large};
use crate::gc::mark_used;
use crate::sidecar::{etag_sidecar, used_sidecar};
use crate::sigv4::Payload;
use crate::wire::{CompletedPart, ObjectKey, ObjectMeta, UploadId};
use crate::{
    MAX_OBJECT_SIZE, MAX_PART_NUMBER, MAX_PART_SIZE, S3Error, STALE_UPLOAD_AGE, UPLOADS_DIR,
};

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

    /// The directory the buckets live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn object_path(&self, bucket: &str, key: &ObjectKey) -> PathBuf {
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

#[cfg(test)]
mod tests;
