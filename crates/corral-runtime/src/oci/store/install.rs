//! What pulls and imports share: checking an image's layers, staging each layer in `tmp/`,
//! and committing the staged layers and the image's record to the store.

use super::*;

impl ImageStore {
    /// Moves staged layers into `layers/`, stores manifest and config, records the image
    /// (pinned when the operator records it, or when it was pinned already).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit(
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
}

/// An image's manifest as recorded: its digest and bytes, and the index it came from.
#[derive(Clone, Copy)]
pub(super) struct Manifests<'a> {
    pub(super) digest: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) index: Option<&'a str>,
}

pub(super) fn check_layers(m: &Manifest, c: &ImageConfig) -> Result<(), OciError> {
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

pub(super) fn is_index(bytes: &[u8], media_type: &str) -> bool {
    if media_type.starts_with(MT_OCI_INDEX) || media_type.starts_with(MT_DOCKER_LIST) {
        return true;
    }
    // OCI indexes may omit the media type: tell by shape.
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some() && v.get("layers").is_none())
}

/// Unpacks a verified blob into `work/<diff hex>/root` and checks its diff id.
pub(super) fn stage_layer(
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
