//! The core's `Images` port over the [`ImageStore`], and the record binding a sandbox to the
//! image its root filesystem was created from.
//!
//! A sandbox is bound to an image at its first start: `<data>/bound/<id>.json` names the
//! image and its layer directories. Later starts use the binding (whatever the request
//! names), so a sandbox keeps its layers even if the reference is re-pulled elsewhere, and
//! garbage collection keeps every bound layer.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use corral_core::{ImageInfo, Images, RuntimeError};
use serde::{Deserialize, Serialize};

use super::store::{PullProgress, StoredImage};
use super::{ImageConfig, ImageStore, OciError};
use crate::commit::Commits;

/// The image a sandbox's root is built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BoundImage {
    /// The reference it was resolved from.
    pub reference: String,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Diff ids of the layers, bottom first.
    pub diff_ids: Vec<String>,
    /// The image's config.
    pub config: ImageConfig,
    /// Committed sandbox snapshots on top of the image, bottom first: directories holding
    /// `upper/<layer name>` (see `commit.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<PathBuf>,
}

/// The reference of the built-in `host` image in a binding.
pub const HOST_REFERENCE: &str = "host";

impl BoundImage {
    /// The binding of the `host` image (before any commit).
    pub fn host() -> Self {
        Self {
            reference: HOST_REFERENCE.to_owned(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            config: ImageConfig::default(),
            commits: Vec::new(),
        }
    }

    /// Whether the root is the `host` image (several overlays) rather than an OCI image.
    pub fn is_host(&self) -> bool {
        self.reference == HOST_REFERENCE
    }

    /// The lower directories of an OCI root, bottom first: the image's layers, then the
    /// root layer of each commit.
    pub fn lower_dirs(&self) -> Vec<PathBuf> {
        self.layers
            .iter()
            .cloned()
            .chain(self.commits.iter().map(|c| c.join("upper/root")))
            .collect()
    }

    /// The binding of a stored image.
    pub fn of(img: &StoredImage) -> Self {
        Self {
            reference: img.reference.clone(),
            layers: img.layers.clone(),
            diff_ids: img.config.diff_ids.clone(),
            config: img.config.clone(),
            commits: Vec::new(),
        }
    }
}

/// Where sandbox bindings live.
pub fn bound_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bound")
}

/// The binding file of a sandbox.
pub fn bound_path(data_dir: &Path, id: &str) -> PathBuf {
    bound_dir(data_dir).join(format!("{id}.json"))
}

/// Reads a JSON file; `None` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a JSON file atomically (a temporary file renamed over it), creating its dir.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let body =
        serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, body)?;
    fs::rename(&tmp, path)
}

/// Reads a sandbox's binding; `None` when it has none (a `host` sandbox).
pub fn read_binding(data_dir: &Path, id: &str) -> io::Result<Option<BoundImage>> {
    read_json(&bound_path(data_dir, id))
}

/// Records a sandbox's binding (atomically).
pub fn write_binding(data_dir: &Path, id: &str, img: &BoundImage) -> io::Result<()> {
    write_json(&bound_path(data_dir, id), img)
}

/// Removes a sandbox's binding, if any.
pub fn remove_binding(data_dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(bound_path(data_dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Diff ids of every bound sandbox's layers and of the images below committed snapshots:
/// what garbage collection must keep even when no reference names them any more.
pub fn layers_in_use(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(bound_dir(data_dir)) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<BoundImage>(&b).ok())
        .flat_map(|b| b.diff_ids)
        .collect();
    ids.extend(crate::commit::base_layers(data_dir));
    ids
}

/// Maps an image error to a runtime error: problems of the request (reference, registry
/// answers, image content) are client errors; local I/O is a host failure.
pub fn runtime_error(e: OciError) -> RuntimeError {
    match e {
        OciError::Io { .. } => RuntimeError::host("image store", e),
        other => RuntimeError::Invalid(other.to_string()),
    }
}

fn info(img: &StoredImage) -> ImageInfo {
    ImageInfo {
        reference: img.reference.clone(),
        size: img.size,
        user: img.config.user.clone(),
        layers: img.config.diff_ids.clone(),
        env: img.config.env.clone(),
        working_dir: img.config.working_dir.clone(),
        entrypoint: img.config.entrypoint.clone(),
        cmd: img.config.cmd.clone(),
    }
}

/// The `Images` port on the OCI store under a data dir.
#[derive(Debug, Clone)]
pub struct OciImages {
    store: Arc<ImageStore>,
    commits: Arc<Commits>,
    data_dir: PathBuf,
}

impl OciImages {
    /// Wraps a store and the snapshots opened on the same data dir (the runtime's: see
    /// [`crate::LinuxRuntime::images`]).
    pub fn new(store: Arc<ImageStore>, commits: Arc<Commits>) -> Self {
        Self {
            store,
            data_dir: commits.data_dir().to_owned(),
            commits,
        }
    }
}

#[async_trait]
impl Images for OciImages {
    async fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        if let Some(id) = crate::commit::id_of(reference) {
            return crate::commit::read(&self.data_dir, id)
                .map(|m| m.as_ref().map(crate::commit::info))
                .map_err(|e| RuntimeError::host("reading a snapshot manifest", e));
        }
        let store = self.store.clone();
        let r = reference.to_owned();
        tokio::task::spawn_blocking(move || store.resolve(&r))
            .await
            .map_err(|e| RuntimeError::host("joining image lookup", e))?
            .map(|i| i.as_ref().map(info))
            .map_err(runtime_error)
    }

    async fn pull(
        &self,
        reference: &str,
        lines: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<ImageInfo, RuntimeError> {
        if crate::commit::id_of(reference).is_some() {
            // Nothing to fetch: the snapshot exists once it is committed.
            return self.resolve(reference).await?.ok_or_else(|| {
                RuntimeError::Invalid(
                    "the snapshot's files are missing: the server stopped while it was being \
                     taken; delete it and take it again"
                        .into(),
                )
            });
        }
        let image = reference.to_owned();
        let progress = move |p: &PullProgress| {
            let short = p
                .layer
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or(&p.layer);
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            if p.cached {
                tracing::info!(image = %image, layer = %p.layer, "layer already stored");
                lines(&format!("layer {short}: already stored"));
            } else {
                tracing::info!(image = %image, layer = %p.layer, done = p.done, total = p.total, "pulling layer");
                lines(&format!(
                    "layer {short}: {:.1}/{:.1} MiB",
                    mib(p.done),
                    mib(p.total)
                ));
            }
        };
        tracing::info!(image = %reference, "pulling image");
        let img = self
            .store
            .pull(reference, super::store::Recorder::Server, &progress)
            .await
            .map_err(runtime_error)?;
        Ok(info(&img))
    }

    async fn remove_unused(
        &self,
        references: &[String],
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let store = self.store.clone();
        let commits = self.commits.clone();
        let data_dir = self.data_dir.clone();
        let references = references.to_vec();
        let keep = keep.to_vec();
        tokio::task::spawn_blocking(move || -> Result<(), OciError> {
            for r in &references {
                if let Some(id) = crate::commit::id_of(r)
                    && !keep.contains(r)
                {
                    commits.remove(id).map_err(|e| OciError::Io {
                        op: "removing snapshot",
                        path: data_dir.clone(),
                        source: e,
                    })?;
                }
            }
            // Images the operator imported or pulled stay (pinned): on a host without
            // registry access they could not be fetched again.
            let images: Vec<String> = references
                .iter()
                .filter(|r| crate::commit::id_of(r).is_none())
                .cloned()
                .collect();
            for r in store.release(&images, &keep)? {
                tracing::info!(image = %r, "image no longer used by any snapshot: forgotten");
            }
            let report = store.gc(&layers_in_use(&data_dir))?;
            tracing::info!(
                layers = report.layers_removed,
                bytes = report.bytes_freed,
                "image garbage collected"
            );
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::host("joining image gc", e))?
        .map_err(runtime_error)
    }
}
