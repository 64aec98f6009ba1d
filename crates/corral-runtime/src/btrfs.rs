//! Per-sandbox disk quotas on btrfs: each sandbox's writable layer lives in its own btrfs
//! subvolume with a qgroup limit, so filling it fails with `EDQUOT` inside the sandbox instead
//! of filling the host disk (btrfs is used because it has per-subvolume quotas that this
//! kernel accepts, unlike XFS project quotas, and cheap snapshots for a later fork/snapshot
//! feature). The pool is a btrfs filesystem in a sparse image file on a loop device (or a
//! directory on a host btrfs); everything per request is done with ioctls, never by spawning
//! `btrfs` processes. Only [`Pool::open`] shells out, once, to `mkfs.btrfs` for a new image.
//!
//! All calls are blocking syscalls that may wait for a btrfs transaction commit (a few ms);
//! call them from `spawn_blocking` in async code. Everything needs `CAP_SYS_ADMIN`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{BTRFS_SUPER_MAGIC, statfs};

/// Errors managing the btrfs pool and its volumes.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("invalid volume name {name:?} in pool {pool}: {reason}")]
    InvalidName {
        pool: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("mkfs.btrfs not found while creating the pool image {image}: install btrfs-progs")]
    MkfsMissing { image: PathBuf },
    #[error("mkfs.btrfs {image} failed ({status}): {stderr}")]
    Mkfs {
        image: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{path} exists but is not a btrfs subvolume")]
    NotSubvolume { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BtrfsError {
    /// The OS error number behind this error, if any (e.g. `ENOENT`, `EPERM`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BtrfsError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BtrfsError + use<> {
    let path = path.to_owned();
    move |source| BtrfsError::Io { op, path, source }
}

// ---- kernel ABI (linux/btrfs.h, linux/btrfs_tree.h, linux/loop.h) ----

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX + 1`: the name buffer of `btrfs_ioctl_vol_args`.
const VOL_NAME_BUF: usize = 4088;
/// `BTRFS_VOL_NAME_MAX`: the longest subvolume name.
const VOL_NAME_MAX: usize = 255;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = 256;
/// `BTRFS_QUOTA_TREE_OBJECTID`.
const QUOTA_TREE_OBJECTID: u64 = 8;
/// `BTRFS_QGROUP_INFO_KEY`.
const QGROUP_INFO_KEY: u32 = 242;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// `max_rfer` value that clears the limit (the kernel's `CLEAR_VALUE`).
const QGROUP_LIMIT_CLEAR: u64 = u64::MAX;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME_BUF],
}

/// `BTRFS_SUBVOL_NAME_MAX + 1`: the name buffer of `btrfs_ioctl_vol_args_v2`.
const VOL_V2_NAME_BUF: usize = 4040;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args_v2` (the `size`/`qgroup_inherit` union as `unused`).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; VOL_V2_NAME_BUF],
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - size_of::<SearchKey>()],
}

/// `sizeof(struct btrfs_ioctl_search_header)`.
const SEARCH_HEADER_LEN: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = {
    assert!(size_of::<VolArgs>() == 4096);
    assert!(size_of::<VolArgsV2>() == 4096);
    assert!(size_of::<QgroupLimitArgs>() == 48);
    assert!(size_of::<QuotaCtlArgs>() == 16);
    assert!(size_of::<QgroupCreateArgs>() == 16);
    assert!(size_of::<InoLookupArgs>() == 4096);
    assert!(size_of::<SearchKey>() == 104);
    assert!(size_of::<SearchArgs>() == 4096);
    assert!(size_of::<LoopInfo64>() == 232);
    assert!(size_of::<LoopConfig>() == 304);
};

type Request = nix::sys::ioctl::ioctl_num_type;

const BTRFS_IOC_SUBVOL_CREATE: Request =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 14, size_of::<VolArgs>());
const BTRFS_IOC_SNAP_DESTROY: Request =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 15, size_of::<VolArgs>());
const BTRFS_IOC_SNAP_CREATE_V2: Request =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 23, size_of::<VolArgsV2>());
const BTRFS_IOC_TREE_SEARCH: Request =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 17, size_of::<SearchArgs>());
const BTRFS_IOC_INO_LOOKUP: Request =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 18, size_of::<InoLookupArgs>());
const BTRFS_IOC_QUOTA_CTL: Request =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 40, size_of::<QuotaCtlArgs>());
const BTRFS_IOC_QGROUP_CREATE: Request =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 42, size_of::<QgroupCreateArgs>());
// The header declares this one _IOR although userspace passes the limit in.
const BTRFS_IOC_QGROUP_LIMIT: Request =
    nix::request_code_read!(BTRFS_IOCTL_MAGIC, 43, size_of::<QgroupLimitArgs>());

const LOOP_SET_FD: Request = 0x4C00;
const LOOP_CLR_FD: Request = 0x4C01;
const LOOP_SET_STATUS64: Request = 0x4C04;
const LOOP_CONFIGURE: Request = 0x4C0A;
const LOOP_CTL_GET_FREE: Request = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Argument structs of the ioctls above.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs laid out exactly as the kernel struct the
/// ioctls they are passed to read and write, with every bit pattern valid.
unsafe trait IoctlArg {}
// SAFETY: each is a #[repr(C)] mirror of the kernel struct named in its doc comment (sizes
// asserted above), made only of integers and byte arrays.
unsafe impl IoctlArg for VolArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for VolArgsV2 {}
// SAFETY: as above.
unsafe impl IoctlArg for QgroupLimitArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for QuotaCtlArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for QgroupCreateArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for InoLookupArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for SearchArgs {}
// SAFETY: as above.
unsafe impl IoctlArg for LoopConfig {}
// SAFETY: as above.
unsafe impl IoctlArg for LoopInfo64 {}

/// Issues `request` on `fd` with a pointer to `arg`, returning the ioctl's result.
fn ioctl<T: IoctlArg>(fd: &File, request: Request, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a valid, exclusively borrowed struct with the layout the request
    // expects (IoctlArg), and it outlives the call; `fd` is an open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Issues an ioctl whose argument is a plain integer.
fn ioctl_int(fd: &File, request: Request, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the request takes an integer argument, not a pointer; `fd` is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn vol_args(name: &str) -> VolArgs {
    let mut args = VolArgs {
        fd: 0,
        name: [0; VOL_NAME_BUF],
    };
    // validate_name bounds the length well below the buffer.
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    args
}

fn validate_name(pool: &Path, name: &str) -> Result<(), BtrfsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.len() > VOL_NAME_MAX {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BtrfsError::InvalidName {
            pool: pool.to_owned(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Deletes subvolume `name` of directory `parent` (read-only ones too) and, best effort, its
/// qgroup. A missing subvolume is not an error; a directory that is not one is.
pub fn delete_subvolume(parent: &Path, name: &str) -> Result<(), BtrfsError> {
    validate_name(parent, name)?;
    let path = parent.join(name);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", &path)(e)),
        Ok(_) if !is_subvolume(&path) => return Err(BtrfsError::NotSubvolume { path }),
        Ok(_) => {}
    }
    let id = subvolume_id(&path)?;
    let dir = open_dir(parent)?;
    let mut args = vol_args(name);
    match ioctl(&dir, BTRFS_IOC_SNAP_DESTROY, &mut args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err("delete subvolume", &path)(e)),
    }
    // Best effort: drop the subvolume's qgroup so they don't pile up. Kernels that refuse
    // while the subvolume is still being cleaned up remove it themselves once it is gone.
    let mut args = QgroupCreateArgs {
        create: 0,
        qgroupid: id,
    };
    if let Err(e) = ioctl(&dir, BTRFS_IOC_QGROUP_CREATE, &mut args) {
        tracing::debug!(volume = %path.display(), qgroup = id, error = %e, "qgroup not removed");
    }
    Ok(())
}

/// Sets (or with `None` removes) the limit on the referenced bytes of the subvolume at `path`.
pub fn set_limit_at(path: &Path, limit_bytes: Option<u64>) -> Result<(), BtrfsError> {
    let vol = open_dir(path)?;
    let mut args = QgroupLimitArgs {
        // 0 = the qgroup of the subvolume `vol` is in.
        qgroupid: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: limit_bytes.unwrap_or(QGROUP_LIMIT_CLEAR),
            ..QgroupLimit::default()
        },
    };
    ioctl(&vol, BTRFS_IOC_QGROUP_LIMIT, &mut args).map_err(io_err("set qgroup limit on", path))?;
    Ok(())
}

/// Whether `path` is on a btrfs filesystem.
pub fn on_btrfs(path: &Path) -> bool {
    is_btrfs(path).unwrap_or(false)
}

fn is_btrfs(path: &Path) -> nix::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BTRFS_SUPER_MAGIC)
}

fn open_dir(path: &Path) -> Result<File, BtrfsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(io_err("open", path))
}

/// A btrfs filesystem mounted at (or a directory on btrfs at) `mount_dir`, holding one
/// subvolume per sandbox directly under it. Cheap to clone; holds no file descriptors.
#[derive(Debug, Clone)]
pub struct Pool {
    mount_dir: PathBuf,
    /// The loop device this `open` attached and mounted, if it did.
    loop_device: Option<PathBuf>,
}

impl Pool {
    /// Opens the pool at `mount_dir`, enabling quotas on it.
    ///
    /// * `mount_dir` already on btrfs (mounted earlier, or a directory on a host btrfs): used as is.
    /// * `mount_dir` missing but its parent on btrfs: created as a plain directory and used.
    ///   Note that quotas are then enabled on that whole host filesystem.
    /// * Otherwise: `image` is created if missing (a sparse file of `size_bytes`, formatted
    ///   with `mkfs.btrfs`; btrfs needs at least ~128 MiB), attached to a free loop device with
    ///   autoclear (so it detaches when unmounted) and mounted at `mount_dir`.
    pub fn open(mount_dir: &Path, image: &Path, size_bytes: u64) -> Result<Pool, BtrfsError> {
        let on_btrfs = |p: &Path| is_btrfs(p).unwrap_or(false);
        let mut loop_device = None;
        if mount_dir.exists() && on_btrfs(mount_dir) {
            tracing::debug!(dir = %mount_dir.display(), "btrfs pool already mounted");
        } else if !mount_dir.exists() && mount_dir.parent().is_some_and(on_btrfs) {
            fs::create_dir(mount_dir).map_err(io_err("create", mount_dir))?;
            tracing::info!(dir = %mount_dir.display(), "btrfs pool is a directory on a host btrfs");
        } else {
            if !image.exists() {
                make_image(image, size_bytes)?;
            }
            fs::create_dir_all(mount_dir).map_err(io_err("create", mount_dir))?;
            let device = mount_image(image, mount_dir)?;
            tracing::info!(
                image = %image.display(),
                device = %device.display(),
                dir = %mount_dir.display(),
                "mounted btrfs pool"
            );
            loop_device = Some(device);
        }
        let pool = Pool {
            mount_dir: mount_dir.to_owned(),
            loop_device,
        };
        pool.enable_quota()?;
        Ok(pool)
    }

    /// The directory the pool is at.
    pub fn path(&self) -> &Path {
        &self.mount_dir
    }

    /// Where volume `name` lives (whether or not it exists).
    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.mount_dir.join(name)
    }

    /// Enables btrfs quota groups on the pool's filesystem; a no-op if already enabled.
    fn enable_quota(&self) -> Result<(), BtrfsError> {
        let dir = open_dir(&self.mount_dir)?;
        let mut args = QuotaCtlArgs {
            cmd: QUOTA_CTL_ENABLE,
            status: 0,
        };
        match ioctl(&dir, BTRFS_IOC_QUOTA_CTL, &mut args) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(io_err("enable quotas on", &self.mount_dir)(e)),
        }
    }

    /// Creates subvolume `name` under the pool and limits it to `limit_bytes` (referenced
    /// bytes, data and metadata; `None` = no limit). If it already exists as a subvolume,
    /// only (re)applies the limit. Returns its path.
    pub fn create_volume(
        &self,
        name: &str,
        limit_bytes: Option<u64>,
    ) -> Result<PathBuf, BtrfsError> {
        self.create_subvolume(&self.mount_dir, name, limit_bytes)
    }

    /// [`Self::create_volume`] in `dir`, a directory of this pool (such subvolumes are not
    /// listed by [`Self::list`]).
    pub fn create_subvolume(
        &self,
        dir: &Path,
        name: &str,
        limit_bytes: Option<u64>,
    ) -> Result<PathBuf, BtrfsError> {
        validate_name(dir, name)?;
        let path = dir.join(name);
        let parent = open_dir(dir)?;
        let mut args = vol_args(name);
        match ioctl(&parent, BTRFS_IOC_SUBVOL_CREATE, &mut args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if !is_subvolume(&path) {
                    return Err(BtrfsError::NotSubvolume { path });
                }
            }
            Err(e) => return Err(io_err("create subvolume", &path)(e)),
        }
        set_limit_at(&path, limit_bytes)?;
        Ok(path)
    }

    /// Sets (or with `None` removes) the limit on the referenced bytes of volume `name`.
    pub fn set_limit(&self, name: &str, limit_bytes: Option<u64>) -> Result<(), BtrfsError> {
        validate_name(&self.mount_dir, name)?;
        set_limit_at(&self.volume_path(name), limit_bytes)
    }

    /// Deletes volume `name` with everything in it, and its qgroup. A missing volume is not an
    /// error. The kernel frees the space in the background.
    pub fn delete_volume(&self, name: &str) -> Result<(), BtrfsError> {
        validate_name(&self.mount_dir, name)?;
        delete_subvolume(&self.mount_dir, name)
    }

    /// Snapshots volume `source` (atomically: a point-in-time copy that shares every extent
    /// with it) as subvolume `name` in `dest_dir`, a directory of this pool, read-only or
    /// writable. Returns the snapshot's path.
    pub fn snapshot(
        &self,
        source: &str,
        dest_dir: &Path,
        name: &str,
        readonly: bool,
    ) -> Result<PathBuf, BtrfsError> {
        validate_name(&self.mount_dir, source)?;
        validate_name(dest_dir, name)?;
        let src = open_dir(&self.volume_path(source))?;
        let dest = open_dir(dest_dir)?;
        let path = dest_dir.join(name);
        let mut args = VolArgsV2 {
            fd: i64::from(src.as_raw_fd()),
            transid: 0,
            flags: if readonly { SUBVOL_RDONLY } else { 0 },
            unused: [0; 4],
            name: [0; VOL_V2_NAME_BUF],
        };
        // validate_name bounds the length well below the buffer.
        args.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl(&dest, BTRFS_IOC_SNAP_CREATE_V2, &mut args)
            .map_err(io_err("snapshot subvolume into", &path))?;
        Ok(path)
    }

    /// Bytes referenced by volume `name` as of the last btrfs transaction commit (so it lags
    /// writes by up to the commit interval, 30 s by default).
    pub fn usage(&self, name: &str) -> Result<u64, BtrfsError> {
        validate_name(&self.mount_dir, name)?;
        let path = self.volume_path(name);
        let id = subvolume_id(&path)?;
        let dir = open_dir(&self.mount_dir)?;
        let mut args = SearchArgs {
            key: SearchKey {
                tree_id: QUOTA_TREE_OBJECTID,
                min_offset: id,
                max_offset: id,
                max_transid: u64::MAX,
                min_type: QGROUP_INFO_KEY,
                max_type: QGROUP_INFO_KEY,
                nr_items: 1,
                ..SearchKey::default()
            },
            buf: [0; 4096 - size_of::<SearchKey>()],
        };
        ioctl(&dir, BTRFS_IOC_TREE_SEARCH, &mut args).map_err(io_err("search qgroup of", &path))?;
        // struct btrfs_qgroup_info_item { generation, rfer, rfer_cmpr, excl, excl_cmpr } (LE).
        let rfer = SEARCH_HEADER_LEN + 8;
        match args.buf.get(rfer..rfer + 8) {
            Some(b) if args.key.nr_items >= 1 => {
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                Ok(u64::from_le_bytes(le))
            }
            _ => Err(io_err("find qgroup of", &path)(
                io::Error::from_raw_os_error(libc::ENOENT),
            )),
        }
    }

    /// Names of the subvolumes directly under the pool, sorted. Unreadable entries are
    /// skipped; an unreadable pool directory gives an empty list (logged).
    pub fn list(&self) -> Vec<String> {
        let entries = match fs::read_dir(&self.mount_dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.mount_dir.display(), error = %e, "cannot list btrfs pool");
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.metadata()
                    .is_ok_and(|m| m.is_dir() && m.ino() == SUBVOL_ROOT_INO)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Detaches the pool's mount (`MNT_DETACH`); with autoclear, the loop device goes away once
    /// nothing uses the filesystem any more. A no-op if `mount_dir` is not a mount point.
    pub fn unmount(&self) -> Result<(), BtrfsError> {
        match nix::mount::umount2(&self.mount_dir, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(e) => Err(io_err("unmount", &self.mount_dir)(e.into())),
        }
    }

    /// The loop device this pool's `open` attached, if it mounted the image itself.
    pub fn loop_device(&self) -> Option<&Path> {
        self.loop_device.as_deref()
    }
}

/// Whether `path` is the root directory of a btrfs subvolume.
fn is_subvolume(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOL_ROOT_INO)
        && is_btrfs(path).unwrap_or(false)
}

/// The id (root objectid, also its level-0 qgroup id) of the subvolume rooted at `path`.
fn subvolume_id(path: &Path) -> Result<u64, BtrfsError> {
    let vol = open_dir(path)?;
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOL_ROOT_INO,
        name: [0; 4080],
    };
    ioctl(&vol, BTRFS_IOC_INO_LOOKUP, &mut args)
        .map_err(io_err("look up subvolume id of", path))?;
    Ok(args.treeid)
}

/// Creates `image` as a sparse file of `size_bytes` formatted as btrfs. Formats a temporary
/// file and renames it into place, so a failed mkfs never leaves a half-made image behind.
fn make_image(image: &Path, size_bytes: u64) -> Result<(), BtrfsError> {
    if let Some(parent) = image.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let mut tmp = image.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.set_len(size_bytes).map_err(io_err("size", &tmp))?;
        drop(file);
        mkfs(image, &tmp)?;
        fs::rename(&tmp, image).map_err(io_err("rename into place", image))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs `mkfs.btrfs -q` on `file`, looking in PATH and then the sbin directories (which a
/// service's PATH may lack).
fn mkfs(image: &Path, file: &Path) -> Result<(), BtrfsError> {
    for program in ["mkfs.btrfs", "/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs"] {
        let output = Command::new(program)
            .arg("-q")
            .arg(file)
            .stdin(Stdio::null())
            .output();
        match output {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("run mkfs.btrfs on", file)(e)),
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(BtrfsError::Mkfs {
                    image: image.to_owned(),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
    }
    Err(BtrfsError::MkfsMissing {
        image: image.to_owned(),
    })
}

/// Attaches `image` to a free loop device with autoclear and mounts it at `mount_dir`.
/// Returns the loop device's path.
fn mount_image(image: &Path, mount_dir: &Path) -> Result<PathBuf, BtrfsError> {
    let (loop_file, device) = attach_loop(image)?;
    let result = nix::mount::mount(
        Some(device.as_path()),
        mount_dir,
        Some("btrfs"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    );
    // Closing our descriptor leaves the mount as the device's only user, so autoclear
    // detaches it at unmount (or right away if the mount failed).
    drop(loop_file);
    result.map_err(|e| io_err("mount btrfs image", image)(e.into()))?;
    Ok(device)
}

/// Attaches `image` to a free loop device (from `/dev/loop-control`) with
/// `LO_FLAGS_AUTOCLEAR`. Returns the open device and its path.
fn attach_loop(image: &Path) -> Result<(File, PathBuf), BtrfsError> {
    const CONTROL: &str = "/dev/loop-control";
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err("open", image))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(io_err("open", Path::new(CONTROL)))?;
    let backing_fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io_err("open", image)(io::Error::from_raw_os_error(libc::EBADF)))?;
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let name = image.as_os_str().as_bytes();
    let n = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);

    // Another process may grab the device between GET_FREE and configuring it (EBUSY): retry.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..16 {
        let n = ioctl_int(&control, LOOP_CTL_GET_FREE, 0)
            .map_err(io_err("get a free loop device from", Path::new(CONTROL)))?;
        let device = PathBuf::from(format!("/dev/loop{n}"));
        let dev = open_loop_device(&device, n)?;
        let mut config = LoopConfig {
            fd: backing_fd,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        match ioctl(&dev, LOOP_CONFIGURE, &mut config) {
            Ok(_) => return Ok((dev, device)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            // Kernels before 5.8 lack LOOP_CONFIGURE: set the fd, then the flags.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
                match ioctl_int(&dev, LOOP_SET_FD, libc::c_ulong::from(backing_fd)) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        last = e;
                        continue;
                    }
                    Err(e) => return Err(io_err("attach image to", &device)(e)),
                }
                let mut status = info;
                if let Err(e) = ioctl(&dev, LOOP_SET_STATUS64, &mut status) {
                    // Without autoclear the device would stay attached: detach it now.
                    let _ = ioctl_int(&dev, LOOP_CLR_FD, 0);
                    return Err(io_err("set autoclear on", &device)(e));
                }
                return Ok((dev, device));
            }
            Err(e) => return Err(io_err("attach image to", &device)(e)),
        }
    }
    Err(io_err("attach image to a loop device", image)(last))
}

/// Opens `/dev/loop<n>`, creating the node from sysfs's major:minor if the device manager
/// has not (as in minimal containers).
fn open_loop_device(device: &Path, n: libc::c_int) -> Result<File, BtrfsError> {
    let open = || OpenOptions::new().read(true).write(true).open(device);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let sys = PathBuf::from(format!("/sys/block/loop{n}/dev"));
            let majmin = fs::read_to_string(&sys).map_err(io_err("read", &sys))?;
            let parse = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u32>().ok());
            let mut parts = majmin.split(':');
            let (Some(major), Some(minor)) = (parse(parts.next()), parse(parts.next())) else {
                return Err(io_err("parse", &sys)(io::Error::from(
                    io::ErrorKind::InvalidData,
                )));
            };
            nix::sys::stat::mknod(
                device,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(major.into(), minor.into()),
            )
            .or_else(|e| {
                if e == nix::errno::Errno::EEXIST {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| io_err("create device node", device)(e.into()))?;
            open().map_err(io_err("open", device))
        }
        Err(e) => Err(io_err("open", device)(e)),
        Ok(f) if f.metadata().is_ok_and(|m| m.file_type().is_block_device()) => Ok(f),
        Ok(_) => Err(io_err("open", device)(io::Error::from_raw_os_error(
            libc::ENOTBLK,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        // Values printed by a C program including linux/btrfs.h and linux/loop.h (x86_64).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            assert_eq!(BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e_u32 as Request);
            assert_eq!(BTRFS_IOC_SNAP_DESTROY, 0x5000_940f_u32 as Request);
            assert_eq!(BTRFS_IOC_SNAP_CREATE_V2, 0x5000_9417_u32 as Request);
            assert_eq!(BTRFS_IOC_TREE_SEARCH, 0xd000_9411_u32 as Request);
            assert_eq!(BTRFS_IOC_INO_LOOKUP, 0xd000_9412_u32 as Request);
            assert_eq!(BTRFS_IOC_QUOTA_CTL, 0xc010_9428_u32 as Request);
            assert_eq!(BTRFS_IOC_QGROUP_CREATE, 0x4010_942a_u32 as Request);
            assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b_u32 as Request);
        }
    }

    #[test]
    fn names_are_validated() {
        let pool = Path::new("/pool");
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(
                matches!(
                    validate_name(pool, bad),
                    Err(BtrfsError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(validate_name(pool, &"x".repeat(256)).is_err());
        for good in ["sb-1", "a.b", "...", &"x".repeat(255)] {
            assert!(validate_name(pool, good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn vol_args_carries_the_name() {
        let args = vol_args("sb-1");
        assert_eq!(&args.name[..5], b"sb-1\0");
    }
}
