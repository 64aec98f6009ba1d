//! Garbage collection of the store: layers and blobs no image references, old leftovers
//! in `tmp/`.

use super::*;

impl ImageStore {
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
}
