//! OCI images without Docker: pulling from registries, importing archives, and a
//! content-addressed store of unpacked layers that overlayfs can stack directly.
//!
//! - [`reference`]: parsing `name[:tag][@digest]` references.
//! - [`registry`]: the distribution API client (token auth, digests verified).
//! - [`unpack`]: safe tar → overlayfs layer directory (whiteouts translated).
//! - [`store`]: the store under `<data>/images/`, its reference index, import and gc.
//!
//! See `docs/images.md` for the layout on disk.

pub mod images;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use reference::Reference;
pub use registry::{RegistryClient, RegistryOptions};
pub use store::{GcReport, ImageStore, StoredImage};

/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer media type.
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Errors of the image subsystem.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference does not parse.
    #[error("invalid image reference {0}")]
    Reference(String),
    /// A digest is malformed, or content does not match its digest or size.
    #[error("digest check failed: {0}")]
    Digest(String),
    /// The registry refused or failed a request.
    #[error("registry: {0}")]
    Registry(String),
    /// A manifest, index or config is not what the spec says.
    #[error("invalid image: {0}")]
    Invalid(String),
    /// No manifest in an index matches this host's platform.
    #[error("no image for platform {0} in the index")]
    Platform(String),
    /// A layer archive holds an entry that could escape or subvert the layer directory.
    #[error("unsafe layer entry {path:?}: {why}")]
    Unsafe {
        /// The entry's path in the archive.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The image is not in the store.
    #[error("image {0} not found")]
    NotFound(String),
    /// A filesystem error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> OciError {
    let path = path.into();
    move |source| OciError::Io { op, path, source }
}

/// A content descriptor (manifest entries, index entries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// CPU architecture in Go's spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (one per platform).
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config a sandbox needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Architecture (`amd64`).
    pub architecture: String,
    /// OS (`linux`).
    pub os: String,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`).
    pub user: Option<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default command.
    pub cmd: Vec<String>,
    /// Exposed ports (`80/tcp`), sorted.
    pub exposed_ports: Vec<String>,
    /// Layer diff ids (sha256 of each uncompressed layer tar), bottom first.
    pub diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Parses an image config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, OciError> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|e| OciError::Invalid(format!("image config: {e}")))?;
        for d in &raw.rootfs.diff_ids {
            reference::validate_digest(d)?;
        }
        let c = raw.config.unwrap_or_default();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(Self {
            architecture: raw.architecture,
            os: raw.os,
            env: c.env.unwrap_or_default(),
            working_dir: nonempty(c.working_dir),
            user: nonempty(c.user),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            exposed_ports: c
                .exposed_ports
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            diff_ids: raw.rootfs.diff_ids,
        })
    }
}

/// This host's platform in OCI spelling (`linux/amd64` on x86-64).
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: variant.map(str::to_owned),
    }
}

/// Picks the manifest of an index for `want`: same OS and architecture, and the same
/// variant when both state one (arm64 entries often say `v8`, hosts do not).
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let fits = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && match (&p.variant, &want.variant) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        })
    };
    index.manifests.iter().find(fits)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_parsed() {
        let cfg = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin","A=b"],"WorkingDir":"/work","User":"1000:1000",
              "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
              "ExposedPorts":{"8080/tcp":{},"53/udp":{}}},
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let c = ImageConfig::parse(cfg).expect("parse");
        assert_eq!(c.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.working_dir.as_deref(), Some("/work"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(c.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(c.diff_ids.len(), 1);
        assert!(ImageConfig::parse(br#"{"rootfs":{"diff_ids":["md5:x"]}}"#).is_err());
    }

    #[test]
    fn index_resolves_to_this_platform() {
        let d = |arch: &str, n: char| Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: format!("sha256:{}", n.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: Default::default(),
        };
        let idx = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![d("arm64", 'a'), d("amd64", 'b')],
        };
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&idx, &amd).map(|d| d.digest.as_str()),
            Some(format!("sha256:{}", "b".repeat(64)).as_str())
        );
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd
        };
        assert!(select_platform(&idx, &s390).is_none());
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(host_platform().architecture, "amd64");
        }
    }
}
