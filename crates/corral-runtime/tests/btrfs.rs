//! btrfs pool tests: quota enforcement, limit changes, deletion, reopening, autoclear of the
//! loop device, and overlayfs with its upper/work dirs in a volume. Need root, so they are
//! `#[ignore]`d and run by `scripts/test.sh` as root (`-- --include-ignored`); skipped (with a
//! message) only when mkfs.btrfs is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_runtime::btrfs::{BtrfsError, Pool};
use nix::mount::{MntFlags, MsFlags};

const MIB: u64 = 1 << 20;
const IMAGE_SIZE: u64 = 512 * MIB;

/// A pool on a fresh image in a temp dir; unmounted (best effort) on drop, before the temp
/// dir is removed.
struct Fixture {
    pool: Pool,
    image: PathBuf,
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.pool.unmount();
    }
}

/// Opens a pool on a new image, or `None` (with the reason printed) without mkfs.btrfs.
fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("pool.img");
    let mnt = dir.path().join("mnt");
    match Pool::open(&mnt, &image, IMAGE_SIZE) {
        Ok(pool) => Some(Fixture {
            pool,
            image,
            mnt,
            dir,
        }),
        Err(e @ BtrfsError::MkfsMissing { .. }) => {
            eprintln!("skipping btrfs test: {e}");
            None
        }
        Err(e) => panic!("open pool: {e}"),
    }
}

/// Writes 1 MiB chunks into files of 8 MiB under `dir` (fsyncing each file) until a write
/// fails; returns the bytes written and the failing errno. Panics after `max` bytes.
fn fill(dir: &Path, prefix: &str, max: u64) -> (u64, io::Error) {
    let chunk = vec![0x5au8; MIB as usize];
    let mut total = 0u64;
    for i in 0.. {
        let path = dir.join(format!("{prefix}-{i}"));
        let mut f = match File::create(&path) {
            Ok(f) => f,
            Err(e) => return (total, e),
        };
        for _ in 0..8 {
            let mut buf = &chunk[..];
            while !buf.is_empty() {
                match f.write(buf) {
                    Ok(n) => {
                        total += n as u64;
                        buf = &buf[n..];
                    }
                    Err(e) => return (total, e),
                }
            }
            assert!(
                total <= max,
                "wrote {total} bytes without hitting the quota"
            );
        }
        if let Err(e) = f.sync_all() {
            return (total, e);
        }
    }
    unreachable!()
}

/// Writes exactly `bytes` into a new file, fsynced.
fn write_file(path: &Path, bytes: u64) -> io::Result<()> {
    let chunk = vec![0xa5u8; MIB as usize];
    let mut f = File::create(path)?;
    for _ in 0..bytes / MIB {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

fn assert_quota_error(e: &io::Error) {
    assert!(
        matches!(e.raw_os_error(), Some(libc::EDQUOT | libc::ENOSPC)),
        "expected EDQUOT/ENOSPC, got {e}"
    );
}

fn syncfs(path: &Path) {
    let f = File::open(path).expect("open for syncfs");
    nix::unistd::syncfs(&f).expect("syncfs");
}

fn mounted_at(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let path = path.to_str().expect("utf-8 path");
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
}

/// Loop devices whose backing file is `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let image = image.to_str().expect("utf-8 path");
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/block")
        .expect("read /sys/block")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file"))
            && backing.trim().trim_end_matches(" (deleted)") == image
        {
            found.push(name);
        }
    }
    found
}

#[test]
#[ignore = "needs root (loop device, mount, btrfs quotas): run by scripts/test.sh as root"]
fn quota_limits_writes_and_pool_lifecycle() {
    let Some(fx) = fixture() else { return };
    let image = fs::canonicalize(&fx.image).expect("canonicalize image");
    assert!(mounted_at(&fx.mnt), "pool not mounted");
    assert_eq!(
        loops_backed_by(&image).len(),
        1,
        "one loop device for the image"
    );
    assert!(fx.pool.loop_device().is_some());
    assert!(fx.pool.list().is_empty());

    // A 32 MiB volume; creating it again is a no-op that reapplies the limit.
    let vol = fx
        .pool
        .create_volume("sb1", Some(32 * MIB))
        .expect("create");
    assert_eq!(vol, fx.mnt.join("sb1"));
    assert_eq!(
        fx.pool
            .create_volume("sb1", Some(32 * MIB))
            .expect("recreate"),
        vol
    );
    assert_eq!(fx.pool.list(), vec!["sb1".to_owned()]);

    // Filling it stops at about the limit.
    let (written, err) = fill(&vol, "a", 64 * MIB);
    eprintln!("32 MiB volume: wrote {} KiB, then {err}", written / 1024);
    assert_quota_error(&err);
    assert!(
        (24 * MIB..=40 * MIB).contains(&written),
        "wrote {written} bytes into a 32 MiB volume"
    );
    // The host only ever holds the (sparse) image: its size and allocation stay bounded.
    let meta = fs::metadata(&fx.image).expect("stat image");
    assert_eq!(meta.len(), IMAGE_SIZE);
    assert!(meta.blocks() * 512 <= IMAGE_SIZE);
    // Nothing was written outside the volume on the host side of the tempdir.
    let host_entries: Vec<_> = fs::read_dir(fx.dir.path()).expect("ls").flatten().collect();
    assert_eq!(
        host_entries.len(),
        2,
        "only pool.img and mnt in the tempdir"
    );

    syncfs(&vol);
    let used = fx.pool.usage("sb1").expect("usage");
    eprintln!("usage after fill: {} KiB", used / 1024);
    assert!((20 * MIB..=44 * MIB).contains(&used), "usage {used}");

    // Raising the limit lets more in, up to the new limit.
    fx.pool
        .set_limit("sb1", Some(64 * MIB))
        .expect("raise limit");
    let (more, err) = fill(&vol, "b", 64 * MIB);
    eprintln!(
        "raised to 64 MiB: wrote {} KiB more, then {err}",
        more / 1024
    );
    assert_quota_error(&err);
    assert!(
        more >= 16 * MIB,
        "only {more} more bytes after raising the limit"
    );
    assert!(written + more <= 72 * MIB);

    // Removing the limit lets it grow past 64 MiB.
    fx.pool.set_limit("sb1", None).expect("remove limit");
    write_file(&vol.join("unlimited"), 32 * MIB).expect("write without a limit");

    // A second volume; then delete the first: gone, listed no more, idempotent.
    fx.pool.create_volume("sb2", None).expect("create sb2");
    fx.pool.delete_volume("sb1").expect("delete");
    assert!(!vol.exists());
    assert_eq!(fx.pool.list(), vec!["sb2".to_owned()]);
    fx.pool.delete_volume("sb1").expect("delete again");
    assert!(matches!(fx.pool.usage("sb1"), Err(BtrfsError::Io { .. })));

    // Plain directories are neither listed nor deleted as volumes.
    fs::create_dir(fx.mnt.join("plain")).expect("mkdir");
    assert_eq!(fx.pool.list(), vec!["sb2".to_owned()]);
    assert!(matches!(
        fx.pool.delete_volume("plain"),
        Err(BtrfsError::NotSubvolume { .. })
    ));
    assert!(matches!(
        fx.pool.create_volume("plain", None),
        Err(BtrfsError::NotSubvolume { .. })
    ));
    assert!(matches!(
        fx.pool.create_volume("../x", None),
        Err(BtrfsError::InvalidName { .. })
    ));

    // Reopening on the mounted dir uses the mount as is.
    let again = Pool::open(&fx.mnt, &fx.image, IMAGE_SIZE).expect("reopen");
    assert!(again.loop_device().is_none());
    assert_eq!(again.list(), vec!["sb2".to_owned()]);
    again
        .create_volume("sb3", Some(8 * MIB))
        .expect("create via reopened pool");
    assert_eq!(fx.pool.list(), vec!["sb2".to_owned(), "sb3".to_owned()]);
    assert_eq!(
        loops_backed_by(&image).len(),
        1,
        "reopen attached no new loop device"
    );

    // Unmounting releases the mount and (autoclear) the loop device.
    again.unmount().expect("unmount");
    assert!(!mounted_at(&fx.mnt), "pool still mounted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loops_backed_by(&image).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        loops_backed_by(&image).is_empty(),
        "loop device still attached: {:?}",
        loops_backed_by(&image)
    );
    again
        .unmount()
        .expect("unmount when not mounted is a no-op");

    // Opening again mounts the existing image, volumes intact.
    let remounted = Pool::open(&fx.mnt, &fx.image, IMAGE_SIZE).expect("remount");
    assert!(remounted.loop_device().is_some());
    assert_eq!(remounted.list(), vec!["sb2".to_owned(), "sb3".to_owned()]);
    drop(fx); // unmounts
    assert!(loops_or_wait_gone(&image));
}

fn loops_or_wait_gone(image: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if loops_backed_by(image).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts the overlay (lazily) on drop, so a failed assertion leaves no mount behind.
struct OverlayMount(PathBuf);

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
#[ignore = "needs root (loop device, mount, btrfs quotas): run by scripts/test.sh as root"]
fn overlay_upper_in_volume_is_limited() {
    let Some(fx) = fixture() else { return };
    let vol = fx.pool.create_volume("ov", Some(32 * MIB)).expect("create");
    let (upper, work) = (vol.join("upper"), vol.join("work"));
    fs::create_dir(&upper).expect("mkdir upper");
    fs::create_dir(&work).expect("mkdir work");
    let lower = fx.dir.path().join("lower");
    let merged = fx.dir.path().join("merged");
    fs::create_dir(&lower).expect("mkdir lower");
    fs::create_dir(&merged).expect("mkdir merged");
    fs::write(lower.join("base.txt"), "from the image").expect("write lower");

    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .expect("mount overlay");
    let guard = OverlayMount(merged.clone());

    assert_eq!(
        fs::read_to_string(merged.join("base.txt")).expect("read through overlay"),
        "from the image"
    );
    fs::write(merged.join("new.txt"), "sandbox data").expect("write through overlay");
    assert_eq!(
        fs::read_to_string(upper.join("new.txt")).expect("read upper"),
        "sandbox data"
    );
    // Copy-up of a lower file lands in the volume too; deleting makes a whiteout there.
    OpenOptions::new()
        .append(true)
        .open(merged.join("base.txt"))
        .and_then(|mut f| f.write_all(b"!"))
        .expect("copy up");
    assert!(upper.join("base.txt").exists());
    fs::remove_file(merged.join("new.txt")).expect("rm");

    let (written, err) = fill(&merged, "fill", 64 * MIB);
    eprintln!(
        "overlay on 32 MiB volume: wrote {} KiB, then {err}",
        written / 1024
    );
    assert_quota_error(&err);
    assert!(
        (24 * MIB..=40 * MIB).contains(&written),
        "wrote {written} bytes through the overlay"
    );
    assert_eq!(
        fs::read_to_string(lower.join("base.txt")).expect("lower"),
        "from the image",
        "lower untouched"
    );

    drop(guard);
    assert!(!mounted_at(&merged));
    fx.pool.delete_volume("ov").expect("delete");
    assert!(fx.pool.list().is_empty());
}

#[test]
#[ignore = "needs root (loop device, mount, btrfs quotas): run by scripts/test.sh as root"]
fn many_volumes_create_and_delete() {
    let Some(fx) = fixture() else { return };
    const N: usize = 50;
    let names: Vec<String> = (0..N).map(|i| format!("vol-{i:02}")).collect();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };

    let mut create = Vec::with_capacity(N);
    for name in &names {
        let t = Instant::now();
        fx.pool.create_volume(name, Some(64 * MIB)).expect("create");
        create.push(t.elapsed());
    }
    assert_eq!(fx.pool.list(), names);
    // A little data in each, so deletion has something to drop.
    for name in &names {
        fs::write(fx.pool.volume_path(name).join("f"), vec![1u8; 64 * 1024]).expect("write");
    }
    let mut delete = Vec::with_capacity(N);
    for name in &names {
        let t = Instant::now();
        fx.pool.delete_volume(name).expect("delete");
        delete.push(t.elapsed());
    }
    assert!(fx.pool.list().is_empty());
    eprintln!(
        "median of {N}: create_volume+limit {:?}, delete_volume {:?}",
        median(create),
        median(delete)
    );
}

#[test]
#[ignore = "needs root (loop device, mount, btrfs quotas): run by scripts/test.sh as root"]
fn pool_as_a_directory_on_btrfs() {
    let Some(fx) = fixture() else { return };
    // The pool's parent is on btrfs (here: the test pool), so no image or loop device is used.
    let nested = fx.mnt.join("nested-pool");
    let image = fx.dir.path().join("unused.img");
    let pool = Pool::open(&nested, &image, IMAGE_SIZE).expect("open nested");
    assert!(pool.loop_device().is_none());
    assert!(!image.exists(), "no image for a pool on btrfs");
    assert!(nested.is_dir());
    let vol = pool.create_volume("v", Some(16 * MIB)).expect("create");
    let (written, err) = fill(&vol, "f", 32 * MIB);
    assert_quota_error(&err);
    assert!((10 * MIB..=20 * MIB).contains(&written), "wrote {written}");
    assert_eq!(pool.list(), vec!["v".to_owned()]);
    assert!(
        fx.pool.list().is_empty(),
        "a plain directory is not a volume"
    );
    pool.unmount()
        .expect("unmount of a directory pool is a no-op");
    assert!(mounted_at(&fx.mnt));
    pool.delete_volume("v").expect("delete");
    assert!(pool.list().is_empty());
}

#[test]
#[ignore = "needs root (loop device, mount, btrfs quotas): run by scripts/test.sh as root"]
fn snapshots_are_point_in_time_copies() {
    let Some(fx) = fixture() else { return };
    let vol = fx
        .pool
        .create_volume("src", Some(64 * MIB))
        .expect("create");
    fs::create_dir(vol.join("d")).expect("mkdir");
    fs::write(vol.join("d/a"), b"one").expect("write");
    // Unsynced data is part of the snapshot: the kernel flushes the source first.
    let mut f = File::create(vol.join("big")).expect("create big");
    f.write_all(&vec![7u8; 4 * MIB as usize])
        .expect("write big");
    drop(f);

    let commits = fx.mnt.join(".commits");
    fs::create_dir(&commits).expect("mkdir commits");
    let ro = fx
        .pool
        .snapshot("src", &commits, "c1", true)
        .expect("read-only snapshot");
    let rw = fx
        .pool
        .snapshot("src", &fx.mnt, "fork", false)
        .expect("writable snapshot");
    assert_eq!(fs::read(ro.join("d/a")).expect("read"), b"one");
    assert_eq!(fs::metadata(ro.join("big")).expect("stat").len(), 4 * MIB);

    // Later writes to the source show in neither copy, and the copies are independent.
    fs::write(vol.join("d/a"), b"two").expect("rewrite");
    assert_eq!(fs::read(ro.join("d/a")).expect("read"), b"one");
    assert_eq!(fs::read(rw.join("d/a")).expect("read"), b"one");
    fs::write(rw.join("d/a"), b"fork").expect("write fork");
    assert_eq!(fs::read(vol.join("d/a")).expect("read"), b"two");
    let e = fs::write(ro.join("d/a"), b"x").expect_err("read-only snapshot written");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    // The writable snapshot is a pool volume (listed, limitable); the one under a plain
    // directory is not listed.
    assert_eq!(fx.pool.list(), vec!["fork".to_owned(), "src".to_owned()]);
    fx.pool
        .set_limit("fork", Some(32 * MIB))
        .expect("limit fork");

    corral_runtime::btrfs::delete_subvolume(&commits, "c1").expect("delete read-only");
    assert!(!ro.exists());
    corral_runtime::btrfs::delete_subvolume(&commits, "c1").expect("missing is fine");
    fx.pool.delete_volume("fork").expect("delete fork");
    fx.pool.delete_volume("src").expect("delete src");
    assert!(fx.pool.list().is_empty());
}
