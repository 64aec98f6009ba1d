//! [`FakeImages`]: the `Images` port in memory. Known references resolve at once; pulls of
//! references it was not told about fail as a registry's "unknown image" would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use corral_core::ports::ImageInfo;
use corral_core::{Images, RuntimeError};

/// The info the fake reports for an image: a small, single-layer image.
pub fn image_info(reference: &str) -> ImageInfo {
    ImageInfo {
        reference: reference.to_owned(),
        size: 5 << 20,
        user: None,
        layers: vec![format!("sha256:{:0>64}", reference.len())],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        working_dir: None,
        entrypoint: Vec::new(),
        cmd: vec!["sh".into()],
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Stored images.
    stored: BTreeMap<String, ImageInfo>,
    /// Images a pull finds ("in the registry").
    pullable: BTreeSet<String>,
    pulls: Vec<String>,
    removed: Vec<String>,
}

/// The `Images` port in memory. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct FakeImages {
    inner: Arc<Mutex<Inner>>,
}

impl FakeImages {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an image as if imported (resolves without a pull).
    pub fn store(&self, reference: &str) {
        self.lock()
            .stored
            .insert(reference.to_owned(), image_info(reference));
    }

    /// Makes a pull of `reference` succeed.
    pub fn publish(&self, reference: &str) {
        self.lock().pullable.insert(reference.to_owned());
    }

    /// References pulled so far.
    pub fn pulls(&self) -> Vec<String> {
        self.lock().pulls.clone()
    }

    /// References given to `remove_unused` so far.
    pub fn removed(&self) -> Vec<String> {
        self.lock().removed.clone()
    }
}

#[async_trait]
impl Images for FakeImages {
    async fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        Ok(self.lock().stored.get(reference).cloned())
    }

    async fn pull(
        &self,
        reference: &str,
        progress: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<ImageInfo, RuntimeError> {
        let mut inner = self.lock();
        inner.pulls.push(reference.to_owned());
        if let Some(info) = inner.stored.get(reference) {
            return Ok(info.clone());
        }
        if !inner.pullable.contains(reference) {
            return Err(RuntimeError::Invalid(format!(
                "image {reference} not found in the registry"
            )));
        }
        let info = image_info(reference);
        inner.stored.insert(reference.to_owned(), info.clone());
        drop(inner);
        progress("layer 1/1 pulled");
        Ok(info)
    }

    async fn remove_unused(
        &self,
        references: &[String],
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        for r in references.iter().filter(|r| !keep.contains(r)) {
            inner.stored.remove(r);
            inner.removed.push(r.clone());
        }
        Ok(())
    }
}
