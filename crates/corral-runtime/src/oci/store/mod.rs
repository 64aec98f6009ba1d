//! The image store under `<data>/images/`:
//!
//! ```text
//! images/
//!   index.json                     reference (`docker.io/library/alpine:3`) → manifest digest,
//!                                  index digest (when it came from one), config digest,
//!                                  layer diff ids, size, whether the operator pinned it
//!   blobs/sha256/<hex>             manifests and configs, as fetched (digest-verified)
//!   layers/sha256/<diff-id hex>/   one unpacked layer: `root/` (an overlayfs lower dir,
//!                                  whiteouts translated) and `layer.json` (size, source blob)
//!   tmp/                           downloads and unpacking in progress
//!   lock                           flock held while the index or layers/ change
//! ```
//!
//! Layers are keyed by diff id (the sha256 of the uncompressed tar, from the image config),
//! so an image pulled from a registry and the same image imported from an archive share
//! them, and a layer already present is never downloaded again. A layer is unpacked into
//! `tmp/` and renamed into `layers/` only once every layer of the image has been downloaded,
//! verified and unpacked, so neither a crash nor a bad blob leaves a partial layer or image.
//!
//! [`ImageStore::resolve`] finds an image without any network access: a tag reference by
//! its normalised name, a digest reference (`name@sha256:…`, a tag beside it is ignored as
//! Docker ignores it) by any record of the same repository whose manifest, or the index it
//! was chosen from, has that digest. Images recorded by the operator (`corral image import`,
//! `corral image pull`) are *pinned*: [`ImageStore::release`], which the server calls when
//! the last snapshot using an image goes, leaves them; only [`ImageStore::remove`] drops them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

mod gc;
mod import;
mod install;
mod pull;
#[cfg(test)]
mod tests;

use super::reference::{Reference, validate_digest};
use super::registry::{RegistryClient, RegistryOptions};
use super::unpack::unpack_layer;
use super::{
    Descriptor, ImageConfig, Index, MT_DOCKER_LIST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER_TAR,
    MT_OCI_MANIFEST, Manifest, OciError, hex, host_platform, io_err, select_platform,
    sha256_digest,
};

/// An image in the store, ready to be stacked by overlayfs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The reference it is recorded under (`docker.io/library/alpine:3`).
    pub reference: String,
    /// Digest of its (platform) manifest.
    pub manifest_digest: String,
    /// Digest of its config.
    pub config_digest: String,
    /// Unpacked layer directories, bottom first (overlayfs wants `lowerdir` top first).
    pub layers: Vec<PathBuf>,
    /// The parsed config.
    pub config: ImageConfig,
    /// Bytes of file content over all layers.
    pub size: u64,
}

/// Progress of one layer during a pull.
#[derive(Debug, Clone)]
pub struct PullProgress {
    /// Digest of the layer blob.
    pub layer: String,
    /// Bytes received.
    pub done: u64,
    /// Bytes in the blob.
    pub total: u64,
    /// The layer was already in the store: nothing downloaded.
    pub cached: bool,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Layers removed.
    pub layers_removed: usize,
    /// Manifests and configs removed.
    pub blobs_removed: usize,
    /// File bytes of the removed layers.
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<String, Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    manifest: String,
    /// Digest of the index (manifest list) the manifest was chosen from, if any: a
    /// reference pinned to it finds the image too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<String>,
    config: String,
    layers: Vec<String>,
    size: u64,
    /// Recorded by the operator (`corral image import` or `pull`): kept until `image rm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pinned: bool,
}

impl Record {
    fn has_digest(&self, digest: &str) -> bool {
        self.manifest == digest || self.index.as_deref() == Some(digest)
    }
}

/// Who records an image: it decides whether the server may forget it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorder {
    /// The operator, on the command line: the image is pinned (see [`ImageStore::release`]).
    Operator,
    /// The server, for a snapshot: forgotten when no snapshot uses it any more.
    Server,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayerInfo {
    diff_id: String,
    blob_digest: String,
    size: u64,
}

/// A layer unpacked in `tmp/`, waiting for the image's other layers.
#[derive(Debug)]
struct Staged {
    diff_id: String,
    dir: PathBuf,
}

/// The content-addressed image store. See the module docs for the layout.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    client: RegistryClient,
}

struct Lock(fs::File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: valid descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn hex_of(digest: &str) -> Result<&str, OciError> {
    validate_digest(digest)
}

/// sha256 of a file's content.
fn file_digest(path: &Path) -> Result<(String, u64), OciError> {
    let mut f = fs::File::open(path).map_err(io_err("open", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io_err("read", path))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((format!("sha256:{}", hex(&h.finalize())), n))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

impl ImageStore {
    /// Opens (creating) the store under `<data_dir>/images`.
    pub fn open(data_dir: &Path, opts: &RegistryOptions) -> Result<Self, OciError> {
        let root = data_dir.join("images");
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("mkdir", &p))?;
        }
        Ok(Self {
            root,
            client: RegistryClient::new(opts)?,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked directory (overlayfs lower dir) of a layer by diff id.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, OciError> {
        Ok(self
            .root
            .join("layers/sha256")
            .join(hex_of(diff_id)?)
            .join("root"))
    }

    fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).is_ok_and(|d| d.is_dir())
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// Reads a stored blob, re-checking its digest.
    fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, OciError> {
        let p = self.blob_path(digest)?;
        match fs::read(&p) {
            Ok(b) if sha256_digest(&b) == digest => Ok(Some(b)),
            Ok(_) => {
                tracing::warn!(digest, "stored blob does not match its digest; refetching");
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", p)(e)),
        }
    }

    fn lock(&self) -> Result<Lock, OciError> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))?;
        // SAFETY: valid descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("lock", &p)(io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }

    fn read_index(&self) -> Result<IndexFile, OciError> {
        let p = self.root.join("index.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| OciError::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_err("read", p)(e)),
        }
    }

    fn write_index(&self, idx: &IndexFile) -> Result<(), OciError> {
        let bytes =
            serde_json::to_vec_pretty(idx).map_err(|e| OciError::Invalid(format!("index: {e}")))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    fn tmp_dir(&self, what: &str) -> Result<PathBuf, OciError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = self.root.join("tmp").join(format!(
            "{what}-{}-{nanos}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).map_err(io_err("mkdir", &p))?;
        Ok(p)
    }

    fn image_from(&self, reference: &str, rec: &Record) -> Result<StoredImage, OciError> {
        let cfg = self
            .read_blob(&rec.config)?
            .ok_or_else(|| OciError::Invalid(format!("config {} missing", rec.config)))?;
        Ok(StoredImage {
            reference: reference.to_owned(),
            manifest_digest: rec.manifest.clone(),
            config_digest: rec.config.clone(),
            layers: rec
                .layers
                .iter()
                .map(|d| self.layer_dir(d))
                .collect::<Result<_, _>>()?,
            config: ImageConfig::parse(&cfg)?,
            size: rec.size,
        })
    }

    /// The stored image for a reference, without any network access: `alpine:3` finds
    /// `docker.io/library/alpine:3`; `name@sha256:…` finds a record of that repository with
    /// that manifest (or index) digest, whatever its tag; a bare `sha256:…` any record with
    /// it. `None` when it is not in the store (or its layers are incomplete).
    pub fn resolve(&self, reference: &str) -> Result<Option<StoredImage>, OciError> {
        let idx = self.read_index()?;
        let by_digest = (!reference.starts_with("sha256:"))
            .then(|| Reference::parse(reference))
            .transpose()?
            .filter(|r| r.digest.is_some())
            .map(|r| r.to_string());
        for key in keys_for(&idx, reference)? {
            let rec = &idx.images[&key];
            if rec.layers.iter().all(|d| self.has_layer(d)) {
                // A digest reference stays the name: it resolves to exactly this image
                // even if the tag it was recorded under moves on.
                return self
                    .image_from(by_digest.as_deref().unwrap_or(&key), rec)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Every stored image, sorted by reference.
    pub fn list(&self) -> Result<Vec<StoredImage>, OciError> {
        let idx = self.read_index()?;
        idx.images
            .iter()
            .map(|(k, r)| self.image_from(k, r))
            .collect()
    }

    /// Forgets a reference (layers stay until [`ImageStore::gc`]).
    pub fn remove(&self, reference: &str) -> Result<StoredImage, OciError> {
        let _lock = self.lock()?;
        let mut idx = self.read_index()?;
        let key = if reference.starts_with("sha256:") {
            idx.images
                .iter()
                .find(|(_, r)| r.manifest == reference)
                .map(|(k, _)| k.clone())
        } else {
            Some(Reference::parse(reference)?.to_string())
        };
        let Some((key, rec)) = key.and_then(|k| idx.images.remove(&k).map(|r| (k, r))) else {
            return Err(OciError::NotFound(reference.to_owned()));
        };
        let img = self.image_from(&key, &rec);
        self.write_index(&idx)?;
        img
    }

    /// Forgets the records `references` name (as [`ImageStore::resolve`] finds them) that
    /// the server recorded, unless one of `keep` (references still in use) names the same
    /// record. Pinned records (the operator's) stay. Layers stay until [`ImageStore::gc`].
    /// Returns the references forgotten.
    pub fn release(&self, references: &[String], keep: &[String]) -> Result<Vec<String>, OciError> {
        let _lock = self.lock()?;
        let mut idx = self.read_index()?;
        let kept: HashSet<String> = keep
            .iter()
            .filter_map(|k| keys_for(&idx, k).ok())
            .flatten()
            .collect();
        let mut gone = Vec::new();
        for r in references {
            // Not an image reference (a sandbox snapshot's): nothing recorded under it.
            let Ok(keys) = keys_for(&idx, r) else {
                continue;
            };
            for k in keys {
                if kept.contains(&k) || idx.images.get(&k).is_none_or(|rec| rec.pinned) {
                    continue;
                }
                idx.images.remove(&k);
                gone.push(k);
            }
        }
        if !gone.is_empty() {
            self.write_index(&idx)?;
        }
        Ok(gone)
    }
}

/// The index keys a reference names, best first: a tag reference its normalised name (when
/// recorded); a digest reference its exact name, then every record of the same repository
/// whose manifest or index has the digest (a tag beside the digest does not matter, as in
/// Docker); a bare `sha256:…` every record with that digest.
fn keys_for(idx: &IndexFile, reference: &str) -> Result<Vec<String>, OciError> {
    if reference.starts_with("sha256:") {
        validate_digest(reference)?;
        return Ok(idx
            .images
            .iter()
            .filter(|(_, r)| r.has_digest(reference))
            .map(|(k, _)| k.clone())
            .collect());
    }
    let r = Reference::parse(reference)?;
    let key = r.to_string();
    let mut keys: Vec<String> = idx
        .images
        .contains_key(&key)
        .then(|| key.clone())
        .into_iter()
        .collect();
    if let Some(digest) = &r.digest {
        let same_repo = |k: &str| {
            Reference::parse(k)
                .is_ok_and(|s| s.registry == r.registry && s.repository == r.repository)
        };
        keys.extend(
            idx.images
                .iter()
                .filter(|(k, rec)| **k != key && rec.has_digest(digest) && same_repo(k))
                .map(|(k, _)| k.clone()),
        );
    }
    Ok(keys)
}
