//! Importing image archives (`docker save` or OCI layout) into the store.

use super::install::{Manifests, check_layers, is_index, stage_layer};
use super::*;

impl ImageStore {
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

/// Extracts an image archive's regular files and directories into `tree`; symlinks (used by
/// old `docker save` for repeated layers) are returned as a map instead of being created.
fn extract_archive(archive: &Path, tree: &Path) -> Result<HashMap<PathBuf, PathBuf>, OciError> {
    let f = fs::File::open(archive).map_err(io_err("open", archive))?;
    let mut tar =
        tar::Archive::new(crate::oci::unpack::decompress(f).map_err(io_err("read", archive))?);
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
