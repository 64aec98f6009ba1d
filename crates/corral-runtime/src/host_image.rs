//! The `host` image: a read-only view of an allowlist of the host's directories.
//!
//! A sandbox's root is an overlay whose lower layer is a small skeleton corral writes
//! (`/home/daytona`, `/tmp`, mount points, the agent's mount point, and the host's
//! `/bin -> usr/bin` style links). Each allowlisted host directory (`/usr`, `/etc`, and
//! `/bin`, `/lib*`, `/sbin` when they are real directories) gets its own overlay on top, with
//! the host directory as a read-only lower layer and the sandbox's own upper, so the sandbox
//! may change its view of `/usr` without touching the host. `/etc` has one more lower layer
//! above the host's: corral's `etc` layer, which holds the generated `passwd`/`group` (host
//! system accounts plus `daytona`, no host login users) and overlay whiteouts that mask
//! secrets such as `/etc/shadow`. `/usr` gets one too when the host has `python3` but no
//! `python` (Debian and Ubuntu hosts): corral's `usr` layer holds just
//! `local/bin/python -> /usr/bin/python3`, so `python` works as in Daytona's default image
//! while the host stays untouched.
//!
//! Overlayfs does not cross mount points inside a lower layer, which is why each host
//! directory is its own overlay rather than a bind mount under one lower tree.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::users::{self, Account};

/// The default OS user of sandboxes, as in Daytona's images.
pub const DEFAULT_USER: &str = "daytona";
const DEFAULT_UID: u32 = 1000;

/// Host directories a sandbox sees (when they exist on the host).
const ALLOWLIST: &[&str] = &[
    "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];

/// Files under the host's `/etc` that sandboxes never see.
const MASKED_ETC: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "ssl/private",
    "security/opasswd",
    "sudoers",
    "sudoers.d",
    "subuid",
    "subgid",
];

/// Errors building the host image.
#[derive(Debug, thiserror::Error)]
pub enum HostImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HostImageError + use<> {
    let path = path.to_owned();
    move |source| HostImageError::Io { op, path, source }
}

/// One overlay of a host directory: where it mounts in the sandbox and its lower layers,
/// top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirOverlay {
    /// Name of the directory under `/` (also the name of its upper/work dirs).
    pub name: String,
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
}

/// The built host image.
#[derive(Debug, Clone)]
pub struct HostImage {
    /// The skeleton lower layer of the sandbox root.
    pub skeleton: PathBuf,
    /// Host directories overlaid on the root, in mount order.
    pub dirs: Vec<DirOverlay>,
    /// Accounts sandboxes can run as.
    pub accounts: Vec<Account>,
}

impl HostImage {
    /// Resolves a user name (or uid) to an account of this image.
    pub fn account(&self, name: &str) -> Option<&Account> {
        users::find(&self.accounts, name)
    }
}

/// Builds the host image under `images_dir` from the host tree at `host_root` (`/` in
/// production; a temp dir in tests). The result is content-addressed: a running sandbox's
/// lower layers are never rewritten, a changed host gives a new directory.
pub fn build(images_dir: &Path, host_root: &Path) -> Result<HostImage, HostImageError> {
    let passwd = read_or_empty(&host_root.join("etc/passwd"))?;
    let group = read_or_empty(&host_root.join("etc/group"))?;
    let passwd = sandbox_passwd(&passwd);
    let group = sandbox_group(&group);

    let mut links = Vec::new();
    let mut dirs = Vec::new();
    for name in ALLOWLIST {
        let host = host_root.join(name);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&host).map_err(io_err("readlink", &host))?;
                links.push((name.to_string(), target));
            }
            Ok(m) if m.is_dir() => dirs.push(name.to_string()),
            _ => {}
        }
    }

    let mut hasher = Sha256::new();
    hasher.update(&passwd);
    hasher.update(&group);
    for (n, t) in &links {
        hasher.update(format!("{n}->{}\n", t.display()));
    }
    for d in &dirs {
        hasher.update(format!("dir {d}\n"));
    }
    hasher.update(MASKED_ETC.join(",").as_bytes());
    let python_shim = needs_python_shim(host_root);
    if python_shim {
        hasher.update(b"python shim\n");
    }
    hasher.update(b"layout v1");
    let digest = hasher.finalize();
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let base = images_dir.join("host").join(&id);
    let skeleton = base.join("rootfs");
    let etc_layer = base.join("etc");
    let usr_layer = base.join("usr");

    if !base.exists() {
        let tmp = images_dir
            .join("host")
            .join(format!(".tmp-{id}-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        write_skeleton(&tmp.join("rootfs"), &links, &dirs)?;
        write_etc_layer(&tmp.join("etc"), host_root, &passwd, &group)?;
        if python_shim {
            write_usr_layer(&tmp.join("usr"))?;
        }
        fs::rename(&tmp, &base).map_err(io_err("rename", &tmp))?;
    }

    let dirs = dirs
        .into_iter()
        .map(|name| {
            let mut lowers = Vec::new();
            if name == "etc" {
                lowers.push(etc_layer.clone());
            }
            if name == "usr" && python_shim {
                lowers.push(usr_layer.clone());
            }
            lowers.push(host_root.join(&name));
            DirOverlay { name, lowers }
        })
        .collect();
    Ok(HostImage {
        skeleton,
        dirs,
        accounts: users::parse_passwd(&String::from_utf8_lossy(&passwd)),
    })
}

fn read_or_empty(path: &Path) -> Result<Vec<u8>, HostImageError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(HostImageError::Io {
            op: "read",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Host system accounts (uid < 1000, and `nobody`) plus `daytona`; host login users are
/// left out so their names and homes are not exposed.
fn sandbox_passwd(host: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in String::from_utf8_lossy(host).lines() {
        let f: Vec<&str> = line.split(':').collect();
        let Some(uid) = f.get(2).and_then(|u| u.parse::<u32>().ok()) else {
            continue;
        };
        if (uid < DEFAULT_UID || uid == 65534) && f[0] != DEFAULT_USER {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{DEFAULT_USER}:x:{DEFAULT_UID}:{DEFAULT_UID}:Daytona:/home/{DEFAULT_USER}:/bin/bash\n"
    ));
    out.into_bytes()
}

fn sandbox_group(host: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in String::from_utf8_lossy(host).lines() {
        let f: Vec<&str> = line.split(':').collect();
        let Some(gid) = f.get(2).and_then(|g| g.parse::<u32>().ok()) else {
            continue;
        };
        if (gid < DEFAULT_UID || gid == 65534) && f[0] != DEFAULT_USER {
            // Drop member lists: they may name host login users.
            out.push_str(&format!("{}:x:{}:\n", f[0], gid));
        }
    }
    out.push_str(&format!("{DEFAULT_USER}:x:{DEFAULT_UID}:\n"));
    out.into_bytes()
}

fn mkdir(path: &Path, mode: u32) -> Result<(), HostImageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("mkdir", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), HostImageError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))
}

fn write_skeleton(
    root: &Path,
    links: &[(String, PathBuf)],
    dirs: &[String],
) -> Result<(), HostImageError> {
    mkdir(root, 0o755)?;
    for d in [
        "proc", "sys", "dev", "run", "mnt", "opt", "srv", "var", "home", ".corral",
    ] {
        mkdir(&root.join(d), 0o755)?;
    }
    for d in dirs {
        mkdir(&root.join(d), 0o755)?;
    }
    mkdir(&root.join("tmp"), 0o1777)?;
    mkdir(&root.join("var/tmp"), 0o1777)?;
    mkdir(&root.join("root"), 0o700)?;
    let home = root.join("home").join(DEFAULT_USER);
    mkdir(&home, 0o755)?;
    chown(&home, DEFAULT_UID, DEFAULT_UID)?;
    for (name, target) in links {
        let p = root.join(name);
        symlink(target, &p).map_err(io_err("symlink", &p))?;
    }
    // The agent binary is bind-mounted read-only onto this file.
    let agent = root.join(".corral/agent");
    fs::write(&agent, b"").map_err(io_err("write", &agent))?;
    Ok(())
}

fn write_etc_layer(
    etc: &Path,
    host_root: &Path,
    passwd: &[u8],
    group: &[u8],
) -> Result<(), HostImageError> {
    mkdir(etc, 0o755)?;
    for (name, body) in [("passwd", passwd), ("group", group)] {
        let p = etc.join(name);
        fs::write(&p, body).map_err(io_err("write", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io_err("chmod", &p))?;
    }
    let mut masked: Vec<String> = MASKED_ETC.iter().map(|s| s.to_string()).collect();
    // SSH host private keys.
    if let Ok(entries) = fs::read_dir(host_root.join("etc/ssh")) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") && n.ends_with("_key") {
                masked.push(format!("ssh/{n}"));
            }
        }
    }
    for rel in masked {
        if fs::symlink_metadata(host_root.join("etc").join(&rel)).is_err() {
            continue;
        }
        let p = etc.join(&rel);
        if let Some(parent) = p.parent() {
            mkdir(parent, 0o755)?;
        }
        whiteout(&p)?;
    }
    Ok(())
}

/// Whether the host tree has `/usr/bin/python3` but no `python` where a PATH lookup would
/// find one first (`/usr/local/bin`, `/usr/bin`, and `/bin` when it is a real directory).
fn needs_python_shim(host_root: &Path) -> bool {
    let exists = |rel: &str| fs::symlink_metadata(host_root.join(rel)).is_ok();
    exists("usr/bin/python3")
        && !["usr/local/bin/python", "usr/bin/python", "bin/python"]
            .iter()
            .any(|rel| exists(rel))
}

/// corral's `usr` layer: `local/bin/python -> /usr/bin/python3` (see the module header).
fn write_usr_layer(usr: &Path) -> Result<(), HostImageError> {
    let bin = usr.join("local/bin");
    mkdir(&usr.join("local"), 0o755)?;
    mkdir(&bin, 0o755)?;
    mkdir(usr, 0o755)?;
    let p = bin.join("python");
    symlink("/usr/bin/python3", &p).map_err(io_err("symlink", &p))
}

/// An overlayfs whiteout: a character device 0/0 hides the same name in lower layers.
fn whiteout(path: &Path) -> Result<(), HostImageError> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(|e| HostImageError::Io {
        op: "mknod whiteout",
        path: path.to_owned(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_keeps_system_accounts_and_adds_daytona() {
        let host = b"root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
        let out = String::from_utf8(sandbox_passwd(host)).expect("utf8");
        assert!(out.contains("root:x:0:0"));
        assert!(out.contains("nobody:x:65534"));
        assert!(!out.contains("alice"));
        assert!(out.ends_with("daytona:x:1000:1000:Daytona:/home/daytona:/bin/bash\n"));
    }

    #[test]
    fn group_drops_member_lists() {
        let out = String::from_utf8(sandbox_group(b"sudo:x:27:alice,bob\nalice:x:1000:\n"))
            .expect("utf8");
        assert_eq!(out, "sudo:x:27:\ndaytona:x:1000:\n");
    }

    #[test]
    fn python_shim_only_when_the_host_has_python3_alone() {
        let host = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(host.path().join("usr/bin")).expect("mkdir");
        assert!(
            !needs_python_shim(host.path()),
            "no python3: nothing to point at"
        );
        fs::write(host.path().join("usr/bin/python3"), b"").expect("write");
        assert!(needs_python_shim(host.path()));
        symlink("python3", host.path().join("usr/bin/python")).expect("symlink");
        assert!(
            !needs_python_shim(host.path()),
            "the host's own python wins"
        );
    }

    #[test]
    fn usr_layer_holds_only_the_python_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usr = dir.path().join("usr");
        write_usr_layer(&usr).expect("write");
        assert_eq!(
            fs::read_link(usr.join("local/bin/python")).expect("link"),
            PathBuf::from("/usr/bin/python3")
        );
        assert_eq!(fs::read_dir(&usr).expect("ls").count(), 1);
        assert_eq!(fs::read_dir(usr.join("local/bin")).expect("ls").count(), 1);
    }

    #[test]
    #[ignore = "needs root (chown of /home/daytona to the sandbox user): run by scripts/test.sh as root"]
    fn build_lays_out_skeleton_and_overlays() {
        let host = tempfile::tempdir().expect("tempdir");
        let images = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(host.path().join("usr/bin")).expect("mkdir");
        fs::create_dir_all(host.path().join("etc")).expect("mkdir");
        fs::write(
            host.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n",
        )
        .expect("write");
        fs::write(host.path().join("usr/bin/python3"), b"").expect("write");
        symlink("usr/bin", host.path().join("bin")).expect("symlink");
        let img = build(images.path(), host.path()).expect("build");
        assert_eq!(
            img.dirs[0].lowers.len(),
            2,
            "usr has corral's python layer above the host's"
        );
        assert_eq!(
            fs::read_link(img.dirs[0].lowers[0].join("local/bin/python")).expect("link"),
            PathBuf::from("/usr/bin/python3")
        );
        assert_eq!(
            img.dirs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["usr", "etc"]
        );
        assert_eq!(
            img.dirs[1].lowers.len(),
            2,
            "etc has corral's layer above the host's"
        );
        assert_eq!(
            fs::read_link(img.skeleton.join("bin")).expect("link"),
            PathBuf::from("usr/bin")
        );
        assert!(img.skeleton.join(".corral/agent").is_file());
        assert_eq!(
            img.account("daytona").map(|a| a.home.as_str()),
            Some("/home/daytona")
        );
        // Building again reuses the same content-addressed directory.
        let again = build(images.path(), host.path()).expect("build");
        assert_eq!(again.skeleton, img.skeleton);
    }
}
