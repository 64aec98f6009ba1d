//! Object storage for uploaded build context: the SDK's `Image.add_local_file`,
//! `add_local_dir` and `from_dockerfile` tar each local source and upload it to
//! `<bucket>/<organization>/<md5 hash>/context.tar` over S3 before asking for the build, which
//! names the uploads by hash in `buildInfo.contextHashes`.

use std::path::PathBuf;

use crate::state::AppState;

/// The bucket build context is uploaded to.
pub const CONTEXT_BUCKET: &str = "corral-build-context";

/// Where the context archive with this hash (as the SDK computes it: 32 hex digits) is kept,
/// or `None` for a malformed hash. The file may not exist.
pub fn context_archive(state: &AppState, hash: &str) -> Option<PathBuf> {
    let valid = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| {
        state
            .config
            .object_storage_dir
            .join(CONTEXT_BUCKET)
            .join(&state.config.organization_id)
            .join(hash)
            .join("context.tar")
    })
}
