//! The static agent embedded at build time (see `build.rs`), and where it is unpacked.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/corral-agent"));
const DIGEST: &str = env!("CORRAL_AGENT_DIGEST");

/// Writes the embedded agent to `<data_dir>/bin/corral-agent-<digest>` unless it is already
/// there, and returns that path. The name carries the content digest, so a running sandbox's
/// agent file is never rewritten by a newer server.
pub fn install(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("bin");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("corral-agent-{DIGEST}"));
    if path.is_file()
        && fs::metadata(&path)
            .map(|m| m.len() == AGENT.len() as u64)
            .unwrap_or(false)
    {
        return Ok(path);
    }
    let tmp = dir.join(format!(".corral-agent-{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o555)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(AGENT)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555))?;
    fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(path)
}
