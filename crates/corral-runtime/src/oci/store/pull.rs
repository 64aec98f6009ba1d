//! Pulling an image from its registry into the store.

use super::install::{Manifests, check_layers, is_index, stage_layer};
use super::*;

/// Layers of one image downloaded at once.
const PARALLEL_LAYERS: usize = 3;

impl ImageStore {
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
}
