//! Request parameters shared by the process routes: environment, working directory, timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest timeout honoured (about 136 years); larger values are clamped.
const MAX_TIMEOUT_SECS: u64 = u32::MAX as u64;

/// The child's environment: `base` (the sandbox's) overlaid with the request's `envs`.
pub fn merge_env(
    base: &BTreeMap<String, String>,
    envs: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = base.clone();
    for (key, value) in envs.into_iter().flatten() {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!("invalid environment variable name {key:?}"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {key} contains a NUL byte"));
        }
        env.insert(key.clone(), value.clone());
    }
    Ok(env)
}

/// The working directory: `work_dir` when `cwd` is absent or empty, `cwd` when absolute, `~`
/// and `~/..` relative to `home`, anything else relative to `work_dir`.
pub fn resolve_cwd(work_dir: &str, home: &str, cwd: Option<&str>) -> PathBuf {
    match cwd {
        None | Some("") => PathBuf::from(work_dir),
        Some("~") => PathBuf::from(home),
        Some(path) => match path.strip_prefix("~/") {
            Some(rest) => Path::new(home).join(rest),
            None => Path::new(work_dir).join(path),
        },
    }
}

/// Ensures `dir` is an existing directory.
pub fn require_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "working directory {} does not exist or is not a directory",
            dir.display()
        ))
    }
}

/// The timeout in seconds as a duration; absent, zero or negative means none.
pub fn timeout(secs: Option<i64>) -> Option<Duration> {
    let secs = u64::try_from(secs?).ok().filter(|&s| s > 0)?;
    Some(Duration::from_secs(secs.min(MAX_TIMEOUT_SECS)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A string map from pairs (shared by the agent's unit tests).
    pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn request_envs_override_the_sandbox_env() {
        let base = map(&[("PATH", "/bin"), ("FOO", "base")]);
        let envs = map(&[("FOO", "req"), ("BAR", "1")]);
        let merged = merge_env(&base, Some(&envs)).expect("valid");
        assert_eq!(
            merged,
            map(&[("PATH", "/bin"), ("FOO", "req"), ("BAR", "1")])
        );
        assert_eq!(merge_env(&base, None).expect("valid"), base);
    }

    #[test]
    fn bad_env_names_are_rejected() {
        let base = BTreeMap::new();
        for bad in [
            map(&[("A=B", "x")]),
            map(&[("", "x")]),
            map(&[("A", "x\0y")]),
        ] {
            assert!(merge_env(&base, Some(&bad)).is_err());
        }
    }

    #[test]
    fn cwd_resolution() {
        let r = |cwd| resolve_cwd("/work", "/home/u", cwd);
        assert_eq!(r(None), Path::new("/work"));
        assert_eq!(r(Some("")), Path::new("/work"));
        assert_eq!(r(Some("/tmp")), Path::new("/tmp"));
        assert_eq!(r(Some("sub/dir")), Path::new("/work/sub/dir"));
        assert_eq!(r(Some("~")), Path::new("/home/u"));
        assert_eq!(r(Some("~/x")), Path::new("/home/u/x"));
    }

    #[test]
    fn require_dir_checks_existence() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(require_dir(dir.path()).is_ok());
        assert!(require_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout(None), None);
        assert_eq!(timeout(Some(0)), None);
        assert_eq!(timeout(Some(-5)), None);
        assert_eq!(timeout(Some(3)), Some(Duration::from_secs(3)));
        assert_eq!(
            timeout(Some(i64::MAX)),
            Some(Duration::from_secs(MAX_TIMEOUT_SECS))
        );
    }
}
