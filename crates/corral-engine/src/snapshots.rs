//! Snapshots: named OCI images sandboxes are created from, pulled or built in the
//! background, plus the built-in `host` snapshot. Also the image side of sandbox create:
//! a snapshot name or a bare `FROM <image>` build resolves to a pulled image.

use corral_core::{ImageInfo, Snapshot, SnapshotState, StoreError};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::DEFAULT_SNAPSHOT;
use crate::Engine;
use crate::error::EngineError;

/// `CreateBuildInfo`: a Dockerfile and uploaded context.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub dockerfile_content: String,
    #[serde(default)]
    pub context_hashes: Option<Vec<String>>,
}

/// A snapshot to create, as the request asked for it.
#[derive(Debug, Clone, Default)]
pub struct NewSnapshot {
    pub name: String,
    pub image_name: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub build_info: Option<BuildInfo>,
}

pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The built-in snapshot of the `host` image.
pub fn host_snapshot() -> Snapshot {
    let d = corral_core::Resources::default();
    Snapshot {
        id: DEFAULT_SNAPSHOT.into(),
        name: DEFAULT_SNAPSHOT.into(),
        image_name: None,
        state: SnapshotState::Active,
        size: None,
        entrypoint: Vec::new(),
        cpu: d.cpu,
        memory_gib: d.memory_gib,
        disk_gib: d.disk_gib,
        error_reason: None,
        general: true,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_used_at_ms: None,
    }
}

pub fn not_found(id_or_name: &str) -> EngineError {
    EngineError::not_found(format!("Snapshot {id_or_name} not found"))
        .with_code("SNAPSHOT_NOT_FOUND")
}

/// Finds a snapshot (the built-in `host` one included) by id or name.
pub async fn find(state: &Engine, id_or_name: &str) -> Result<Option<Snapshot>, EngineError> {
    if id_or_name == DEFAULT_SNAPSHOT {
        return Ok(Some(host_snapshot()));
    }
    Ok(state.snapshots.get_snapshot(id_or_name).await?)
}

pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(EngineError::bad_request(
            "snapshot name must be 1-255 characters without spaces or control characters",
        ))
    }
}

/// The image of a Dockerfile that only names a base (`FROM <image>`, optionally with
/// `ENTRYPOINT`/`CMD` in JSON form), and its entrypoint. Anything else is refused.
pub fn image_of_dockerfile(content: &str) -> Result<(String, Vec<String>), EngineError> {
    let mut image = None;
    let mut entrypoint: Vec<String> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    for line in content.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            "FROM" if image.is_none() => {
                let mut parts = rest.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(img), None) if !img.starts_with("--") => image = Some(img.to_owned()),
                    _ => {
                        return Err(EngineError::bad_request(format!(
                            "unsupported FROM line {line:?}: only `FROM <image>` is supported"
                        )));
                    }
                }
            }
            "ENTRYPOINT" | "CMD" => {
                let args: Vec<String> = serde_json::from_str(rest).map_err(|_| {
                    EngineError::bad_request(format!(
                        "{word} must be in JSON form, e.g. {word} [\"sleep\", \"infinity\"]"
                    ))
                })?;
                if word.eq_ignore_ascii_case("ENTRYPOINT") {
                    entrypoint = args;
                } else {
                    cmd = args;
                }
            }
            other => {
                return Err(EngineError::bad_request(format!(
                    "Dockerfile builds with {other} are not supported yet: only `FROM <image>` \
                     (plus ENTRYPOINT/CMD) is; build the image elsewhere and use it by name"
                ))
                .with_code("BUILD_NOT_SUPPORTED"));
            }
        }
    }
    let image = image.ok_or_else(|| EngineError::bad_request("the Dockerfile has no FROM line"))?;
    entrypoint.extend(cmd);
    Ok((image, entrypoint))
}

pub(crate) async fn insert(state: &Engine, s: &Snapshot) -> Result<(), EngineError> {
    match state.snapshots.insert_snapshot(s).await {
        Err(StoreError::NameTaken(n)) => Err(EngineError::conflict(format!(
            "a snapshot named {n:?} already exists"
        ))
        .with_code("NAME_TAKEN")),
        other => Ok(other?),
    }
}

/// Image `image` for a snapshot or build: the stored one when the image store has it (by
/// tag or digest; no registry is contacted at all, so images imported on a host without
/// registry access work, and a tag is not checked for a newer image), else pulled, with
/// its progress in `log`. The error of a failed pull says the image is not stored.
pub(crate) async fn fetch(
    state: &Engine,
    image: &str,
    log: &crate::build_log::Log,
) -> Result<ImageInfo, EngineError> {
    if let Some(info) = state.images.resolve(image).await? {
        log.line(&format!("Image {image} is in the image store: not pulled"));
        tracing::info!(image = %image, "image already stored: no pull");
        return Ok(info);
    }
    log.line(&format!("Pulling image {image}"));
    let sink = log.clone();
    let info = state
        .images
        .pull(image, &move |l: &str| sink.line(l))
        .await
        .map_err(|e| {
            let mut err = EngineError::from(e);
            if err.is_client_error() && !image.starts_with(corral_core::SANDBOX_SNAPSHOT_PREFIX) {
                err.message = format!(
                    "{} ({image} is not in the image store; on a host without registry \
                     access, add it with `corral image import`)",
                    err.message
                );
            }
            err
        })?;
    log.line(&format!(
        "Pulled {image} ({:.1} MiB)",
        info.size as f64 / f64::from(1u32 << 20)
    ));
    Ok(info)
}

/// Makes a snapshot's image ready (from the store, else pulled: see [`fetch`]), moving the
/// snapshot `pulling` → `active` (with its size) or `error`.
pub async fn pull(state: &Engine, s: &mut Snapshot) -> Result<ImageInfo, EngineError> {
    let image = s.image_name.clone().unwrap_or_default();
    s.state = SnapshotState::Pulling;
    s.updated_at_ms = now_ms();
    state.snapshots.update_snapshot(s).await?;
    // Progress goes to the snapshot's log (what the SDK streams while a sandbox waits).
    let log = crate::build_log::Log::create(state, &s.id);
    match fetch(state, &image, &log).await {
        Ok(info) => {
            s.state = SnapshotState::Active;
            s.size = Some(info.size);
            s.error_reason = None;
            s.updated_at_ms = now_ms();
            state.snapshots.update_snapshot(s).await?;
            tracing::info!(snapshot = %s.name, image = %image, size = info.size, "snapshot active");
            Ok(info)
        }
        Err(err) => {
            s.state = SnapshotState::Error;
            s.error_reason = Some(format!("pulling {image} failed: {}", err.message));
            log.line(&format!("ERROR: {}", err.message));
            s.updated_at_ms = now_ms();
            state.snapshots.update_snapshot(s).await?;
            tracing::warn!(snapshot = %s.name, image = %image, error = %err.message, "snapshot pull failed");
            Err(EngineError::bad_request(
                s.error_reason.clone().unwrap_or_default(),
            ))
        }
    }
}

/// The snapshot of a bare `FROM <image>` (with its entrypoint, if any): one per image,
/// named after it and shared by every create from it; recorded `pending` when new.
pub(crate) async fn image_snapshot(
    state: &Engine,
    image: &str,
    entrypoint: Vec<String>,
) -> Result<Snapshot, EngineError> {
    // Checks the reference's syntax.
    state.images.resolve(image).await?;
    let name = if entrypoint.is_empty() {
        image.to_owned()
    } else {
        format!("{image}+{}", short_hash(&entrypoint.join("\0")))
    };
    if let Some(s) = state.snapshots.get_snapshot(&name).await? {
        return Ok(s);
    }
    let d = corral_core::Resources::default();
    let now = now_ms();
    let s = Snapshot {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        image_name: Some(image.to_owned()),
        state: SnapshotState::Pending,
        size: None,
        entrypoint,
        cpu: d.cpu,
        memory_gib: d.memory_gib,
        disk_gib: d.disk_gib,
        error_reason: None,
        general: false,
        created_at_ms: now,
        updated_at_ms: now,
        last_used_at_ms: None,
    };
    match insert(state, &s).await {
        Ok(()) => Ok(s),
        // Created by a concurrent request meanwhile.
        Err(_) => state
            .snapshots
            .get_snapshot(&s.name)
            .await?
            .ok_or_else(|| not_found(&s.name)),
    }
}

fn short_hash(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_from_dockerfiles_are_accepted_and_builds_refused() {
        assert_eq!(
            image_of_dockerfile("FROM reg:5000/a/b:1\n").ok(),
            Some(("reg:5000/a/b:1".to_owned(), vec![]))
        );
        assert_eq!(
            image_of_dockerfile("# c\nFROM x\nENTRYPOINT [\"sh\",\"-c\"]\nCMD [\"echo hi\"]\n")
                .ok(),
            Some((
                "x".to_owned(),
                vec!["sh".into(), "-c".into(), "echo hi".into()]
            ))
        );
        let e = image_of_dockerfile("FROM x\nRUN apt-get update\n").err();
        assert!(e.is_some_and(|e| e.message.contains("RUN")));
        assert!(image_of_dockerfile("FROM x\nCOPY a b\n").is_err());
        assert!(image_of_dockerfile("").is_err());
    }
}
