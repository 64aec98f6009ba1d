//! The store contract (`corral_testing::conformance`) against the in-memory store and the
//! real SQLite store, so the fake cannot drift from `corral-store`.

use corral_testing::MemoryStore;
use corral_testing::conformance as c;

async fn sqlite() -> (tempfile::TempDir, corral_store::SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = corral_store::SqliteStore::open(&dir.path().join("corral.db"))
        .await
        .expect("open");
    (dir, store)
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::c::$name(&super::MemoryStore::new()).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                let (_dir, store) = super::sqlite().await;
                super::c::$name(&store).await;
            })*
        }
    };
}

both!(
    sandboxes_by_id_or_name,
    sandboxes_list_filters_and_pages,
    sandboxes_list_sdk_filters,
    sandboxes_list_sorted_pages,
    api_keys,
    preview_tokens,
    volumes,
    snapshots,
    ssh_access,
    warm_pools,
);
