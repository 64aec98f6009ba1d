//! Which image a sandbox's root is built from (its binding, recorded at first start), and
//! preparing an OCI root's writable layer: the account, mount points and environment.

use std::collections::BTreeMap;
use std::path::Path;

use corral_core::agent::AGENT_PATH_IN_SANDBOX;
use corral_core::{RuntimeError, SandboxSpec};

use super::{LinuxRuntime, layer_error};
use crate::beneath::Tree;
use crate::oci::images::{self as bound, BoundImage};
use crate::users::Account;

impl LinuxRuntime {
    /// The image a sandbox's root is built from: its binding when it has one, else the
    /// `host` image (`None`), else the committed snapshot or stored OCI image `spec.image`
    /// names (bound now, with the spec's entrypoint override).
    pub(super) fn root_of(&self, spec: &SandboxSpec) -> Result<Option<BoundImage>, RuntimeError> {
        let data = &self.cfg.data_dir;
        if let Some(b) = bound::read_binding(data, &spec.id)
            .map_err(|e| RuntimeError::host("reading the sandbox's image binding", e))?
        {
            return Ok(Some(b));
        }
        if spec.image == "host" && spec.entrypoint.is_none() {
            return Ok(None);
        }
        let mut b = if spec.image == "host" {
            BoundImage::host()
        } else if let Some(id) = crate::commit::id_of(&spec.image) {
            crate::commit::read(data, id)
                .map_err(|e| RuntimeError::host("reading the snapshot manifest", e))?
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!("snapshot {:?} does not exist", spec.image))
                })?
                .image
        } else {
            let img = self
                .oci
                .resolve(&spec.image)
                .map_err(bound::runtime_error)?
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!("image {:?} has not been pulled", spec.image))
                })?;
            BoundImage::of(&img)
        };
        if let Some(e) = &spec.entrypoint {
            b.config.entrypoint = e.clone();
            b.config.cmd.clear();
        }
        bound::write_binding(data, &spec.id, &b)
            .map_err(|e| RuntimeError::host("recording the sandbox's image", e))?;
        Ok(Some(b))
    }
}

/// The longest `/etc/passwd` corral reads from an image or a sandbox's layer.
const MAX_PASSWD: u64 = 4 << 20;

/// The trees of an OCI sandbox's root, top first: its upper dir (`upper/root` of its layer
/// dir), then its image's layers (commits above OCI layers). Each is opened by fd once per
/// start; nothing below is resolved by the host.
pub(super) fn image_trees(layer: &Tree, img: &BoundImage) -> Result<Vec<Tree>, RuntimeError> {
    let upper = layer
        .open_dir(Path::new("upper/root"))
        .map_err(|e| layer_error("opening the sandbox's root", e))?;
    std::iter::once(Ok(upper))
        .chain(
            img.lower_dirs().into_iter().rev().map(|d| {
                Tree::open(&d).map_err(|e| RuntimeError::host("opening an image layer", e))
            }),
        )
        .collect()
}

/// Finds `name`'s account in the image: the sandbox's own `/etc/passwd` (upper) first, else
/// the top-most layer that has one. `name` may be `user`, `uid`, `user:group` or `uid:gid`; a
/// numeric uid not in the file is used as is (home `/`). A passwd that is a link, or behind
/// one, is skipped, never followed.
pub(super) fn oci_account(
    spec: &SandboxSpec,
    img: &BoundImage,
    trees: &[Tree],
) -> Result<Account, RuntimeError> {
    let passwd = trees
        .iter()
        .find_map(|t| match t.read(Path::new("etc/passwd"), MAX_PASSWD) {
            Ok(Some(body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(sandbox = %spec.id, error = %e, "skipping an unreadable /etc/passwd");
                None
            }
        })
        .unwrap_or_default();
    let accounts = crate::users::parse_passwd(&passwd);
    let (user, group) = match spec.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.user.as_str(), None),
    };
    let mut account = match crate::users::find(&accounts, user) {
        Some(a) => a.clone(),
        None => match user.parse::<u32>() {
            Ok(uid) => Account {
                name: user.to_owned(),
                uid,
                gid: uid,
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
            Err(_) => {
                return Err(RuntimeError::Invalid(format!(
                    "user {:?} does not exist in image {:?}",
                    spec.user, img.reference
                )));
            }
        },
    };
    if let Some(gid) = group.and_then(|g| g.parse::<u32>().ok()) {
        account.gid = gid;
    }
    Ok(account)
}

/// Whether `rel` exists in the merged view of an image root (upper, then layers top first).
/// A link (or a file) on the way counts as existing: the caller then creates nothing there.
fn exists_in_image(trees: &[Tree], rel: &str) -> bool {
    trees
        .iter()
        .any(|t| !matches!(t.lstat(Path::new(rel)), Ok(None)))
}

/// Creates in an OCI sandbox's upper dir what the sandbox needs but images may lack: mount
/// points (`/proc`, `/sys`, `/dev`, the agent's file), `/tmp`, `/etc`, and the user's home
/// and working dir. Only missing names are made, each through [`Tree`]: a link planted in
/// the upper dir or an image layer is never followed. `trees` are [`image_trees`].
pub(super) fn prepare_oci_upper(
    trees: &[Tree],
    img: &BoundImage,
    account: &Account,
) -> Result<(), RuntimeError> {
    let top = &trees[0];
    let fail = |e| layer_error("preparing the image root", e);
    for (rel, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
    ] {
        if !exists_in_image(trees, rel) {
            top.mkdir_all(Path::new(rel), mode, None).map_err(fail)?;
        }
    }
    // `/etc` in the upper dir itself (the image's may be only in a lower layer): files are
    // written there next.
    top.mkdir_all(Path::new("etc"), 0o755, None).map_err(fail)?;
    let agent = AGENT_PATH_IN_SANDBOX.trim_start_matches('/');
    if !exists_in_image(trees, agent) {
        if let Some(parent) = Path::new(agent).parent() {
            top.mkdir_all(parent, 0o755, None).map_err(fail)?;
        }
        top.create_empty(Path::new(agent), 0o644).map_err(fail)?;
    }
    let owned = [
        Some(account.home.as_str()),
        img.config.working_dir.as_deref(),
    ];
    for dir in owned.into_iter().flatten() {
        let rel = dir.trim_start_matches('/');
        if !rel.is_empty() && !exists_in_image(trees, rel) {
            top.mkdir_all(Path::new(rel), 0o755, Some((account.uid, account.gid)))
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Overlays an image's `KEY=value` environment on the defaults.
pub(super) fn oci_env(env: &mut BTreeMap<String, String>, image_env: &[String]) {
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=')
            && !k.is_empty()
        {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
}
