//! API keys: SHA-256 hashes in the store, with a cache of the valid ones.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use corral_core::{ApiKeyStore, StoreError};
use sha2::{Digest, Sha256};

/// API keys: hashes in the store, with a cache of the valid ones.
pub struct Keys {
    store: Arc<dyn ApiKeyStore>,
    valid: RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// The stored form of a key: its SHA-256, hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Keys {
    pub fn new(store: Arc<dyn ApiKeyStore>) -> Self {
        Self {
            store,
            valid: RwLock::new(HashSet::new()),
        }
    }

    /// Accepts a key hash that is not stored (e.g. `CORRAL_API_KEY`, valid while it is set).
    pub fn allow(&self, hash: &str) {
        self.valid
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_owned());
    }

    /// Whether `key` is a valid API key.
    pub async fn check(&self, key: &str) -> Result<bool, StoreError> {
        let h = hash_key(key);
        if self
            .valid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&h)
        {
            return Ok(true);
        }
        let ok = self.store.has_key(&h).await?;
        if ok {
            self.valid
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h);
        }
        Ok(ok)
    }
}
