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

/// Layers of one image downloaded at once.
const PARALLEL_LAYERS: usize = 3;

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

    /// Removes layers and blobs no image references, keeping the layers whose diff ids are
    /// in `keep` (e.g. those of running sandboxes), and leftovers in `tmp/` older than an
    /// hour.
    pub fn gc(&self, keep: &[String]) -> Result<GcReport, OciError> {
        let _lock = self.lock()?;
        let idx = self.read_index()?;
        let mut layers: HashSet<String> = keep
            .iter()
            .filter_map(|d| hex_of(d).ok().map(str::to_owned))
            .collect();
        let mut blobs = HashSet::new();
        for r in idx.images.values() {
            layers.extend(
                r.layers
                    .iter()
                    .filter_map(|d| hex_of(d).ok().map(str::to_owned)),
            );
            for d in [&r.manifest, &r.config] {
                if let Ok(h) = hex_of(d) {
                    blobs.insert(h.to_owned());
                }
            }
        }
        let mut report = GcReport::default();
        let ldir = self.root.join("layers/sha256");
        for e in fs::read_dir(&ldir)
            .map_err(io_err("readdir", &ldir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if layers.contains(&name) {
                continue;
            }
            let size = fs::read(e.path().join("layer.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerInfo>(&b).ok())
                .map(|l| l.size)
                .unwrap_or(0);
            // Out of `layers/` first, so a crash mid-removal leaves no half layer there.
            let doomed = self.tmp_dir("gc")?.join(&name);
            fs::rename(e.path(), &doomed).map_err(io_err("rename", e.path()))?;
            fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
            tracing::info!(layer = %name, size, "removed unused image layer");
            report.layers_removed += 1;
            report.bytes_freed += size;
        }
        let bdir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&bdir)
            .map_err(io_err("readdir", &bdir))?
            .flatten()
        {
            if !blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                fs::remove_file(e.path()).map_err(io_err("remove", e.path()))?;
                report.blobs_removed += 1;
            }
        }
        let tdir = self.root.join("tmp");
        let hour = std::time::Duration::from_secs(3600);
        for e in fs::read_dir(&tdir)
            .map_err(io_err("readdir", &tdir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > hour);
            if name.starts_with("gc-") || old {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(report)
    }

    /// Pulls an image from its registry (resolving an index to this host's platform) and
    /// records it under the reference, whether or not the store has it already: this always
    /// asks the registry (an image in the store is used without a pull by
    /// [`ImageStore::resolve`]'s callers). Layers already in the store are not downloaded.
    pub async fn pull(
        &self,
        reference: &str,
        recorder: Recorder,
        progress: &(dyn Fn(&PullProgress) + Send + Sync),
    ) -> Result<StoredImage, OciError> {
        let r = Reference::parse(reference)?;
        let key = r.to_string();
        let (mut bytes, mut ctype, mut digest) = self.client.manifest(&r, r.manifest_ref()).await?;
        let mut index_digest = None;
        let mut hops = 0;
        while is_index(&bytes, &ctype) {
            index_digest.get_or_insert_with(|| digest.clone());
            hops += 1;
            if hops > 2 {
                return Err(OciError::Invalid("nested indexes".into()));
            }
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| OciError::Invalid(format!("index of {key}: {e}")))?;
            let want = host_platform();
            let desc = select_platform(&index, &want)
                .ok_or_else(|| OciError::Platform(format!("{}/{}", want.os, want.architecture)))?;
            tracing::info!(image = %key, manifest = %desc.digest, platform = %want.architecture, "resolved index to this platform");
            (bytes, ctype, digest) = self.client.manifest(&r, &desc.digest).await?;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| OciError::Invalid(format!("manifest of {key}: {e}")))?;
        let config = match self.read_blob(&manifest.config.digest)? {
            Some(c) => c,
            None => self.client.blob_bytes(&r, &manifest.config).await?,
        };
        let parsed = ImageConfig::parse(&config)?;
        check_layers(&manifest, &parsed)?;
        let work = self.tmp_dir("pull")?;
        let result = async {
            // Layers to fetch: those not in the store yet, each once.
            let mut seen = HashSet::new();
            let mut wanted = Vec::new();
            for (desc, diff_id) in manifest.layers.iter().zip(&parsed.diff_ids) {
                if self.has_layer(diff_id) || !seen.insert(diff_id.clone()) {
                    progress(&PullProgress {
                        layer: desc.digest.clone(),
                        done: 0,
                        total: desc.size,
                        cached: true,
                    });
                } else {
                    wanted.push((desc.clone(), diff_id.clone()));
                }
            }
            // A few at once, as Docker does: each is unpacked as soon as it has arrived,
            // while the others download.
            let (r, name, work) = (&r, key.as_str(), work.as_path());
            let staged: Vec<Staged> = futures_util::stream::iter(wanted)
                .map(move |(desc, diff_id)| async move {
                    self.fetch_layer(r, name, work, &desc, &diff_id, progress)
                        .await
                })
                .buffer_unordered(PARALLEL_LAYERS)
                .try_collect()
                .await?;
            self.commit(
                &key,
                Manifests {
                    digest: &digest,
                    bytes: &bytes,
                    index: index_digest.as_deref(),
                },
                &manifest.config.digest,
                &config,
                &parsed,
                staged,
                recorder,
            )
        }
        .await;
        let _ = fs::remove_dir_all(&work);
        result
    }

    /// Downloads one layer blob into `work`, checks it and unpacks it there.
    async fn fetch_layer(
        &self,
        r: &Reference,
        key: &str,
        work: &Path,
        desc: &Descriptor,
        diff_id: &str,
        progress: &(dyn Fn(&PullProgress) + Send + Sync),
    ) -> Result<Staged, OciError> {
        let blob = work.join(hex_of(&desc.digest)?);
        let mut last = 0u64;
        let mut report = |done: u64| {
            // Every 4 MiB and at the end.
            if done == desc.size || done - last >= 4 << 20 {
                last = done;
                progress(&PullProgress {
                    layer: desc.digest.clone(),
                    done,
                    total: desc.size,
                    cached: false,
                });
            }
        };
        self.client
            .download_blob(r, desc, &blob, &mut report)
            .await?;
        tracing::info!(image = %key, layer = %desc.digest, bytes = desc.size, "downloaded layer");
        let (store_work, diff, blob_digest) =
            (work.to_path_buf(), diff_id.to_owned(), desc.digest.clone());
        let blob2 = blob.clone();
        let staged = tokio::task::spawn_blocking(move || {
            stage_layer(&store_work, &blob2, &diff, &blob_digest)
        })
        .await
        .map_err(|e| OciError::Invalid(format!("unpack task: {e}")))??;
        let _ = fs::remove_file(&blob);
        Ok(staged)
    }

    /// Moves staged layers into `layers/`, stores manifest and config, records the image
    /// (pinned when the operator records it, or when it was pinned already).
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        key: &str,
        manifest: Manifests<'_>,
        config_digest: &str,
        config: &[u8],
        parsed: &ImageConfig,
        staged: Vec<Staged>,
        recorder: Recorder,
    ) -> Result<StoredImage, OciError> {
        let manifest_digest = manifest.digest;
        let _lock = self.lock()?;
        for s in staged {
            let dest = self.root.join("layers/sha256").join(hex_of(&s.diff_id)?);
            match fs::rename(&s.dir, &dest) {
                Ok(()) => {}
                // Another pull installed the same layer meanwhile.
                Err(e) if dest.join("root").is_dir() => {
                    tracing::debug!(error = %e, layer = %s.diff_id, "layer already installed");
                    let _ = fs::remove_dir_all(&s.dir);
                }
                Err(e) => return Err(io_err("install layer", dest)(e)),
            }
        }
        let mut size = 0;
        for d in &parsed.diff_ids {
            if !self.has_layer(d) {
                return Err(OciError::Invalid(format!(
                    "layer {d} vanished during the pull (concurrent gc?); pull again"
                )));
            }
            size += fs::read(
                self.root
                    .join("layers/sha256")
                    .join(hex_of(d)?)
                    .join("layer.json"),
            )
            .ok()
            .and_then(|b| serde_json::from_slice::<LayerInfo>(&b).ok())
            .map(|l| l.size)
            .unwrap_or(0);
        }
        write_atomic(&self.blob_path(manifest_digest)?, manifest.bytes)?;
        write_atomic(&self.blob_path(config_digest)?, config)?;
        let mut idx = self.read_index()?;
        let rec = Record {
            manifest: manifest_digest.to_owned(),
            index: manifest.index.map(str::to_owned),
            config: config_digest.to_owned(),
            layers: parsed.diff_ids.clone(),
            size,
            pinned: recorder == Recorder::Operator || idx.images.get(key).is_some_and(|r| r.pinned),
        };
        idx.images.insert(key.to_owned(), rec.clone());
        self.write_index(&idx)?;
        tracing::info!(
            image = key,
            manifest = manifest_digest,
            size,
            "image stored"
        );
        self.image_from(key, &rec)
    }

    /// Imports a `docker save` archive (`manifest.json` + layer tars) or an OCI layout
    /// archive (`index.json` + `blobs/sha256/…`). `name` overrides the names recorded in
    /// the archive (then the archive must hold one image).
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<Vec<StoredImage>, OciError> {
        let work = self.tmp_dir("import")?;
        let result = self.import_in(archive, name, &work);
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn import_in(
        &self,
        archive: &Path,
        name: Option<&str>,
        work: &Path,
    ) -> Result<Vec<StoredImage>, OciError> {
        let tree = work.join("archive");
        let links = extract_archive(archive, &tree)?;
        let resolve = |p: &str| resolve_in(&tree, &links, p);
        let mut images: Vec<ArchivedImage> = Vec::new();
        if tree.join("manifest.json").is_file() {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Entry {
                config: String,
                #[serde(default)]
                repo_tags: Option<Vec<String>>,
                layers: Vec<String>,
            }
            let m = fs::read(tree.join("manifest.json")).map_err(io_err("read", archive))?;
            let entries: Vec<Entry> = serde_json::from_slice(&m)
                .map_err(|e| OciError::Invalid(format!("manifest.json: {e}")))?;
            for e in entries {
                let cpath = resolve(&e.config)?;
                let config = fs::read(&cpath).map_err(io_err("read", &cpath))?;
                let layers = e
                    .layers
                    .iter()
                    .map(|l| resolve(l))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut layer_descs = Vec::new();
                for l in &layers {
                    let (digest, size) = file_digest(l)?;
                    layer_descs.push(Descriptor {
                        media_type: layer_media_type(l),
                        digest,
                        size,
                        platform: None,
                        annotations: Default::default(),
                    });
                }
                let manifest = Manifest {
                    schema_version: 2,
                    media_type: Some(MT_OCI_MANIFEST.into()),
                    config: Descriptor {
                        media_type: MT_OCI_CONFIG.into(),
                        digest: sha256_digest(&config),
                        size: config.len() as u64,
                        platform: None,
                        annotations: Default::default(),
                    },
                    layers: layer_descs,
                };
                let mbytes = serde_json::to_vec(&manifest)
                    .map_err(|e| OciError::Invalid(format!("manifest: {e}")))?;
                images.push(ArchivedImage {
                    names: e.repo_tags.unwrap_or_default(),
                    manifest: mbytes,
                    index: None,
                    config,
                    layers,
                });
            }
        } else if tree.join("index.json").is_file() {
            let ib = fs::read(tree.join("index.json")).map_err(io_err("read", archive))?;
            let index: Index = serde_json::from_slice(&ib)
                .map_err(|e| OciError::Invalid(format!("index.json: {e}")))?;
            let blob = |d: &str| -> Result<PathBuf, OciError> {
                let p = tree.join("blobs/sha256").join(hex_of(d)?);
                if links.contains_key(&p) || !p.is_file() {
                    return Err(OciError::Invalid(format!(
                        "blob {d} missing from the archive"
                    )));
                }
                Ok(p)
            };
            let read_verified = |d: &Descriptor| -> Result<Vec<u8>, OciError> {
                let p = blob(&d.digest)?;
                let b = fs::read(&p).map_err(io_err("read", &p))?;
                if sha256_digest(&b) != d.digest {
                    return Err(OciError::Digest(format!(
                        "blob {} in the archive",
                        d.digest
                    )));
                }
                Ok(b)
            };
            for top in &index.manifests {
                let mut desc = top.clone();
                let mut bytes = read_verified(&desc)?;
                let mut from_index = None;
                if is_index(&bytes, &desc.media_type) {
                    from_index = Some(desc.digest.clone());
                    let inner: Index = serde_json::from_slice(&bytes)
                        .map_err(|e| OciError::Invalid(format!("index {}: {e}", desc.digest)))?;
                    let want = host_platform();
                    desc = select_platform(&inner, &want)
                        .ok_or_else(|| {
                            OciError::Platform(format!("{}/{}", want.os, want.architecture))
                        })?
                        .clone();
                    bytes = read_verified(&desc)?;
                } else if let Some(p) = &desc.platform
                    && (p.architecture != host_platform().architecture || p.os != "linux")
                    && index.manifests.len() > 1
                {
                    continue;
                }
                let manifest: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| OciError::Invalid(format!("manifest {}: {e}", desc.digest)))?;
                let config = read_verified(&manifest.config)?;
                let mut layers = Vec::new();
                for l in &manifest.layers {
                    let p = blob(&l.digest)?;
                    if file_digest(&p)?.0 != l.digest {
                        return Err(OciError::Digest(format!(
                            "layer {} in the archive",
                            l.digest
                        )));
                    }
                    layers.push(p);
                }
                let names = [
                    "io.containerd.image.name",
                    "org.opencontainers.image.ref.name",
                ]
                .iter()
                .filter_map(|k| top.annotations.get(*k))
                .filter(|n| n.contains('/') || n.contains(':'))
                .take(1)
                .cloned()
                .collect();
                images.push(ArchivedImage {
                    names,
                    manifest: bytes,
                    index: from_index,
                    config,
                    layers,
                });
            }
        } else {
            return Err(OciError::Invalid(
                "not a docker-save or OCI layout archive (no manifest.json or index.json)".into(),
            ));
        }
        if name.is_some() && images.len() != 1 {
            return Err(OciError::Invalid(format!(
                "--name needs an archive with one image; this one has {}",
                images.len()
            )));
        }
        let mut out = Vec::new();
        for ArchivedImage {
            names,
            manifest: manifest_bytes,
            index,
            config,
            layers,
        } in images
        {
            let names: Vec<String> = match name {
                Some(n) => vec![n.to_owned()],
                None if names.is_empty() => {
                    return Err(OciError::Invalid(
                        "the archive names no image; pass a name (--name)".into(),
                    ));
                }
                None => names,
            };
            let keys = names
                .iter()
                .map(|n| Reference::parse(n).map(|r| r.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            let parsed = ImageConfig::parse(&config)?;
            let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| OciError::Invalid(format!("manifest: {e}")))?;
            check_layers(&manifest, &parsed)?;
            let mut staged = Vec::new();
            let mut seen = HashSet::new();
            for ((path, diff_id), desc) in layers.iter().zip(&parsed.diff_ids).zip(&manifest.layers)
            {
                if self.has_layer(diff_id) || !seen.insert(diff_id.clone()) {
                    continue;
                }
                staged.push(stage_layer(work, path, diff_id, &desc.digest)?);
            }
            let digest = sha256_digest(&manifest_bytes);
            let mut img = None;
            for (i, key) in keys.iter().enumerate() {
                let st = if i == 0 {
                    std::mem::take(&mut staged)
                } else {
                    Vec::new()
                };
                img = Some(self.commit(
                    key,
                    Manifests {
                        digest: &digest,
                        bytes: &manifest_bytes,
                        index: index.as_deref(),
                    },
                    &manifest.config.digest,
                    &config,
                    &parsed,
                    st,
                    Recorder::Operator,
                )?);
            }
            out.extend(img);
        }
        Ok(out)
    }
}

/// An image in an archive.
struct ArchivedImage {
    /// The names the archive records for it.
    names: Vec<String>,
    /// Its (platform) manifest.
    manifest: Vec<u8>,
    /// Digest of the index the manifest was chosen from, if any.
    index: Option<String>,
    /// Its config.
    config: Vec<u8>,
    /// Its layer blobs, bottom first.
    layers: Vec<PathBuf>,
}

/// An image's manifest as recorded: its digest and bytes, and the index it came from.
#[derive(Clone, Copy)]
struct Manifests<'a> {
    digest: &'a str,
    bytes: &'a [u8],
    index: Option<&'a str>,
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

fn check_layers(m: &Manifest, c: &ImageConfig) -> Result<(), OciError> {
    if m.layers.len() != c.diff_ids.len() {
        return Err(OciError::Invalid(format!(
            "manifest has {} layers, config {} diff ids",
            m.layers.len(),
            c.diff_ids.len()
        )));
    }
    for l in &m.layers {
        validate_digest(&l.digest)?;
    }
    Ok(())
}

fn is_index(bytes: &[u8], media_type: &str) -> bool {
    if media_type.starts_with(MT_OCI_INDEX) || media_type.starts_with(MT_DOCKER_LIST) {
        return true;
    }
    // OCI indexes may omit the media type: tell by shape.
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some() && v.get("layers").is_none())
}

fn layer_media_type(path: &Path) -> String {
    let mut head = [0u8; 4];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        format!("{MT_OCI_LAYER_TAR}+gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        format!("{MT_OCI_LAYER_TAR}+zstd")
    } else {
        MT_OCI_LAYER_TAR.to_owned()
    }
}

/// Unpacks a verified blob into `work/<diff hex>/root` and checks its diff id.
fn stage_layer(
    work: &Path,
    blob: &Path,
    diff_id: &str,
    blob_digest: &str,
) -> Result<Staged, OciError> {
    let dir = work.join(format!("layer-{}", hex_of(diff_id)?));
    let root = dir.join("root");
    fs::create_dir_all(&root).map_err(io_err("mkdir", &root))?;
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_err("chmod", &root))?;
    let f = fs::File::open(blob).map_err(io_err("open", blob))?;
    let stats = unpack_layer(f, &root)?;
    if stats.diff_id != diff_id {
        return Err(OciError::Digest(format!(
            "layer {blob_digest}: uncompressed content is {}, the config says {diff_id}",
            stats.diff_id
        )));
    }
    let info = LayerInfo {
        diff_id: diff_id.to_owned(),
        blob_digest: blob_digest.to_owned(),
        size: stats.size,
    };
    let b = serde_json::to_vec(&info).map_err(|e| OciError::Invalid(e.to_string()))?;
    fs::write(dir.join("layer.json"), b).map_err(io_err("write", &dir))?;
    tracing::info!(
        layer = diff_id,
        size = stats.size,
        entries = stats.entries,
        "unpacked layer"
    );
    Ok(Staged {
        diff_id: diff_id.to_owned(),
        dir,
    })
}

/// Extracts an image archive's regular files and directories into `tree`; symlinks (used by
/// old `docker save` for repeated layers) are returned as a map instead of being created.
fn extract_archive(archive: &Path, tree: &Path) -> Result<HashMap<PathBuf, PathBuf>, OciError> {
    let f = fs::File::open(archive).map_err(io_err("open", archive))?;
    let mut tar = tar::Archive::new(super::unpack::decompress(f).map_err(io_err("read", archive))?);
    let mut links = HashMap::new();
    fs::create_dir_all(tree).map_err(io_err("mkdir", tree))?;
    for e in tar.entries().map_err(io_err("read", archive))? {
        let mut e = e.map_err(io_err("read", archive))?;
        let rel = e.path().map_err(io_err("read", archive))?.into_owned();
        let mut clean = PathBuf::new();
        for c in rel.components() {
            match c {
                std::path::Component::Normal(n) => clean.push(n),
                std::path::Component::CurDir => {}
                _ => {
                    return Err(OciError::Unsafe {
                        path: rel,
                        why: "archive path leaves the archive",
                    });
                }
            }
        }
        if clean.as_os_str().is_empty() {
            continue;
        }
        let dest = tree.join(&clean);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&dest).map_err(io_err("mkdir", &dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).map_err(io_err("mkdir", p))?;
                }
                let mut out = fs::File::create(&dest).map_err(io_err("create", &dest))?;
                io::copy(&mut e, &mut out).map_err(io_err("write", &dest))?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .map_err(io_err("read", archive))?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let base = if e.header().entry_type() == tar::EntryType::Symlink {
                    clean.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                links.insert(dest, tree.join(base).join(target));
            }
            _ => {}
        }
    }
    Ok(links)
}

/// A path inside the extracted archive, following recorded links lexically; never outside.
fn resolve_in(
    tree: &Path,
    links: &HashMap<PathBuf, PathBuf>,
    p: &str,
) -> Result<PathBuf, OciError> {
    let mut cur = tree.join(p);
    for _ in 0..16 {
        let mut norm = PathBuf::new();
        for c in cur.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::CurDir => {}
                c => norm.push(c),
            }
        }
        if !norm.starts_with(tree) || norm == tree {
            return Err(OciError::Unsafe {
                path: PathBuf::from(p),
                why: "archive reference leaves the archive",
            });
        }
        match links.get(&norm) {
            Some(t) => cur = t.clone(),
            None if norm.is_file() => return Ok(norm),
            None => {
                return Err(OciError::Invalid(format!("{p} missing from the archive")));
            }
        }
    }
    Err(OciError::Invalid(format!("{p}: too many links")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Platform;

    /// A layer of regular files owned by the user running the test, so importing it needs
    /// no root (the unpacker's ownership handling is tested in `unpack.rs`).
    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(nix::unistd::geteuid().as_raw().into());
            h.set_gid(nix::unistd::getegid().as_raw().into());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn config_for(diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["A=1"], "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json")
    }

    /// Writes a docker-save archive of one image with the given layer tars.
    fn docker_save(dir: &Path, layers: &[Vec<u8>], tamper: bool) -> PathBuf {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
        let config = config_for(&diff_ids);
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).expect("append");
        };
        add("cfg.json", &config);
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let name = format!("l{i}/layer.tar");
            let mut data = l.clone();
            if tamper && i == layers.len() - 1 {
                data = layer_tar(&[("x", b"tampered")]);
            }
            add(&name, &data);
            names.push(name);
        }
        let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["test/img:1"], "Layers": names}]);
        add(
            "manifest.json",
            &serde_json::to_vec(&manifest).expect("json"),
        );
        let out = dir.join("save.tar");
        fs::write(&out, b.into_inner().expect("tar")).expect("write");
        out
    }

    #[test]
    fn import_resolve_rm_and_gc() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(
            d.path(),
            &RegistryOptions {
                auth_file: Some("/nonexistent".into()),
                ..Default::default()
            },
        )
        .expect("open");
        let l1 = layer_tar(&[("a", b"one"), ("gone", b"x")]);
        let l2 = layer_tar(&[(".wh.gone", b""), ("b", b"two")]);
        let archive = docker_save(d.path(), &[l1, l2], false);
        let imgs = store.import(&archive, None).expect("import");
        assert_eq!(imgs.len(), 1);
        let img = store
            .resolve("test/img:1")
            .expect("resolve")
            .expect("present");
        assert_eq!(img.reference, "docker.io/test/img:1");
        assert_eq!(img.layers.len(), 2);
        assert_eq!(fs::read(img.layers[0].join("a")).expect("a"), b"one");
        assert_eq!(img.size, 3 + 1 + 3);
        assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(store.list().expect("list").len(), 1);
        // Importing again under another name shares the layers.
        store.import(&archive, Some("other:2")).expect("import 2");
        assert_eq!(store.list().expect("list").len(), 2);
        store.remove("test/img:1").expect("rm");
        assert_eq!(store.gc(&[]).expect("gc").layers_removed, 0, "still used");
        store.remove("other:2").expect("rm");
        assert!(matches!(
            store.remove("other:2"),
            Err(OciError::NotFound(_))
        ));
        let kept = store
            .gc(std::slice::from_ref(&sha256_digest(&layer_tar(&[
                ("a", b"one"),
                ("gone", b"x"),
            ]))))
            .expect("gc");
        assert_eq!(kept.layers_removed, 1, "the kept layer stays");
        let r = store.gc(&[]).expect("gc");
        assert_eq!((r.layers_removed, r.bytes_freed), (1, 4));
        assert_eq!(
            fs::read_dir(store.root().join("layers/sha256"))
                .expect("ls")
                .count(),
            0
        );
    }

    fn open_store(d: &Path) -> ImageStore {
        ImageStore::open(
            d,
            &RegistryOptions {
                auth_file: Some("/nonexistent".into()),
                ..Default::default()
            },
        )
        .expect("open")
    }

    /// Writes an OCI layout archive whose `index.json` names an index (one manifest for
    /// this host's platform, one for another) and returns it with the index's digest and
    /// the platform manifest's.
    fn oci_layout_with_index(dir: &Path, layer: &[u8]) -> (PathBuf, String, String) {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).expect("append");
        };
        let desc = |mt: &str, data: &[u8], platform: Option<Platform>| Descriptor {
            media_type: mt.into(),
            digest: sha256_digest(data),
            size: data.len() as u64,
            platform,
            annotations: Default::default(),
        };
        let config = config_for(&[sha256_digest(layer)]);
        let manifest = serde_json::to_vec(&Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config: desc(MT_OCI_CONFIG, &config, None),
            layers: vec![desc(MT_OCI_LAYER_TAR, layer, None)],
        })
        .expect("json");
        let other = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        let index = serde_json::to_vec(&Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: vec![
                desc(MT_OCI_MANIFEST, b"{}", Some(other)),
                desc(MT_OCI_MANIFEST, &manifest, Some(host_platform())),
            ],
        })
        .expect("json");
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [desc(MT_OCI_INDEX, &index, None)]});
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &serde_json::to_vec(&top).expect("json"));
        for blob in [&config[..], &manifest, &index, layer] {
            add(&format!("blobs/sha256/{}", &sha256_digest(blob)[7..]), blob);
        }
        let out = dir.join("oci.tar");
        fs::write(&out, b.into_inner().expect("tar")).expect("write");
        (out, sha256_digest(&index), sha256_digest(&manifest))
    }

    #[test]
    fn digest_references_find_a_stored_image_by_its_manifest() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = open_store(d.path());
        let archive = docker_save(d.path(), &[layer_tar(&[("a", b"one")])], false);
        let digest = store.import(&archive, None).expect("import")[0]
            .manifest_digest
            .clone();
        let found = |r: &str| store.resolve(r).expect("resolve").map(|i| i.reference);
        let pinned = format!("docker.io/test/img@{digest}");
        // By digest, with or without the registry, whatever tag stands beside it; the
        // name stays the digest reference (it finds exactly this image).
        assert_eq!(found(&format!("test/img@{digest}")), Some(pinned.clone()));
        assert_eq!(found(&pinned), Some(pinned.clone()));
        assert_eq!(
            found(&format!("test/img:other@{digest}")),
            Some(format!("docker.io/test/img:other@{digest}"))
        );
        assert_eq!(found(&digest), Some("docker.io/test/img:1".to_owned()));
        // Another repository, or another digest, is not this image.
        assert_eq!(found(&format!("test/else@{digest}")), None);
        assert_eq!(found(&format!("reg.invalid/test/img@{digest}")), None);
        assert_eq!(found(&format!("test/img@sha256:{}", "0".repeat(64))), None);
        assert_eq!(found("test/img:2"), None);
        assert!(store.resolve("test/img@sha256:short").is_err());
    }

    #[test]
    fn an_index_digest_finds_the_platform_image_imported_from_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = open_store(d.path());
        let (archive, index, manifest) =
            oci_layout_with_index(d.path(), &layer_tar(&[("f", b"data")]));
        let img = store
            .import(&archive, Some("reg.invalid:5000/app:1"))
            .expect("import");
        assert_eq!(img[0].manifest_digest, manifest);
        for digest in [&index, &manifest] {
            let r = format!("reg.invalid:5000/app@{digest}");
            let img = store.resolve(&r).expect("resolve").expect("stored");
            assert_eq!(img.reference, r);
            assert_eq!(fs::read(img.layers[0].join("f")).expect("f"), b"data");
        }
    }

    #[test]
    fn release_forgets_only_images_the_server_recorded_and_nothing_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = open_store(d.path());
        let archive = docker_save(d.path(), &[layer_tar(&[("a", b"one")])], false);
        let imported = store.import(&archive, None).expect("import").remove(0);
        let manifest =
            fs::read(store.blob_path(&imported.manifest_digest).expect("path")).expect("manifest");
        let config =
            fs::read(store.blob_path(&imported.config_digest).expect("path")).expect("config");
        // What a pull by the server records (the layers are stored already).
        let record = |key: &str, recorder| {
            store
                .commit(
                    key,
                    Manifests {
                        digest: &imported.manifest_digest,
                        bytes: &manifest,
                        index: None,
                    },
                    &imported.config_digest,
                    &config,
                    &imported.config,
                    Vec::new(),
                    recorder,
                )
                .expect("commit")
        };
        let names = || -> Vec<String> {
            store
                .list()
                .expect("list")
                .into_iter()
                .map(|i| i.reference)
                .collect()
        };
        record("docker.io/test/srv:1", Recorder::Server);
        record("docker.io/test/srv:2", Recorder::Server);
        let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The imported image is pinned: releasing it does nothing.
        let gone = store
            .release(&all(&["test/img:1", "test/srv:1"]), &[])
            .expect("release");
        assert_eq!(gone, all(&["docker.io/test/srv:1"]));
        assert_eq!(
            names(),
            all(&["docker.io/test/img:1", "docker.io/test/srv:2"])
        );
        // A snapshot still naming the image by digest keeps it.
        let by_digest = format!("test/srv@{}", imported.manifest_digest);
        let gone = store
            .release(&all(&["test/srv:2"]), std::slice::from_ref(&by_digest))
            .expect("release");
        assert!(gone.is_empty());
        // Released through its digest reference once nothing else needs it.
        let gone = store.release(&[by_digest], &[]).expect("release");
        assert_eq!(gone, all(&["docker.io/test/srv:2"]));
        // A server pull of a pinned reference (its layers were lost) keeps it pinned;
        // references that do not parse name nothing (and are no error).
        record("docker.io/test/img:1", Recorder::Server);
        let gone = store
            .release(&all(&["test/img:1", "Not/A Reference"]), &[])
            .expect("release");
        assert!(gone.is_empty());
        assert_eq!(names(), all(&["docker.io/test/img:1"]));
    }

    #[test]
    fn a_layer_not_matching_its_diff_id_installs_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(
            d.path(),
            &RegistryOptions {
                auth_file: Some("/nonexistent".into()),
                ..Default::default()
            },
        )
        .expect("open");
        let archive = docker_save(
            d.path(),
            &[layer_tar(&[("a", b"one")]), layer_tar(&[("b", b"two")])],
            true,
        );
        let err = store.import(&archive, None).expect_err("tampered");
        assert!(matches!(err, OciError::Digest(_)), "{err}");
        assert!(store.list().expect("list").is_empty());
        assert_eq!(
            fs::read_dir(store.root().join("layers/sha256"))
                .expect("ls")
                .count(),
            0
        );
        assert_eq!(
            fs::read_dir(store.root().join("tmp")).expect("ls").count(),
            0
        );
    }
}
