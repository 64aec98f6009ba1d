//! The SFTP server driven in-process by `russh-sftp`'s client over an in-memory pipe (no
//! root, no sandbox: the files are a temporary directory's).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as ClientError;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::Server;

const BOUND: Duration = Duration::from_secs(10);

async fn session(cwd: &std::path::Path) -> (SftpSession, tokio::sync::oneshot::Receiver<()>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (done, finished) = tokio::sync::oneshot::channel();
    russh_sftp::server::run(server, Server::new(cwd.to_owned(), done)).await;
    let sftp = timeout(BOUND, SftpSession::new(client))
        .await
        .expect("init in time")
        .expect("init");
    (sftp, finished)
}

fn code(e: &ClientError) -> Option<StatusCode> {
    match e {
        ClientError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

fn s(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8").to_owned()
}

#[tokio::test]
async fn files_and_directories_round_trip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let (sftp, finished) = session(root).await;
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();

    let f = root.join("a.bin");
    let mut w = sftp.create(s(&f)).await.expect("create");
    w.write_all(&data).await.expect("write");
    w.shutdown().await.expect("close");
    assert_eq!(std::fs::read(&f).expect("on disk"), data);

    let mut r = sftp.open(s(&f)).await.expect("open");
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, data);
    assert_eq!(
        sftp.metadata(s(&f)).await.expect("stat").size,
        Some(data.len() as u64)
    );

    // setstat: mode and times.
    let attrs = FileAttributes {
        permissions: Some(0o640),
        atime: Some(1_000_000_000),
        mtime: Some(1_200_000_000),
        ..Default::default()
    };
    sftp.set_metadata(s(&f), attrs).await.expect("setstat");
    let meta = std::fs::metadata(&f).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.mtime(), 1_200_000_000);
    assert_eq!(meta.atime(), 1_000_000_000);

    // mkdir, readdir, rename (refusing an existing target), symlink, readlink.
    let d = root.join("d");
    sftp.create_dir(s(&d)).await.expect("mkdir");
    std::fs::write(root.join("other"), b"x").expect("other");
    let moved = d.join("b.bin");
    sftp.rename(s(&f), s(&moved)).await.expect("rename");
    let e = sftp
        .rename(s(&root.join("other")), s(&moved))
        .await
        .expect_err("target exists");
    assert_eq!(code(&e), Some(StatusCode::Failure));
    let names: Vec<String> = sftp
        .read_dir(s(&d))
        .await
        .expect("readdir")
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec!["b.bin".to_owned()]);
    // OpenSSH's order: the target first, then the link.
    let link = root.join("ln");
    sftp.symlink("d/b.bin", s(&link)).await.expect("symlink");
    assert_eq!(
        std::fs::read_link(&link).expect("link"),
        std::path::Path::new("d/b.bin")
    );
    assert_eq!(sftp.read_link(s(&link)).await.expect("readlink"), "d/b.bin");
    assert!(
        sftp.symlink_metadata(s(&link))
            .await
            .expect("lstat")
            .is_symlink()
    );

    // realpath of a path that does not exist yet is cleaned lexically.
    let real = sftp
        .canonicalize(s(&root.join("d/../nope")))
        .await
        .expect("realpath");
    assert_eq!(real, s(&root.join("nope")));

    // Errors carry the right codes.
    let e = sftp
        .open(s(&root.join("missing")))
        .await
        .err()
        .expect("missing");
    assert_eq!(code(&e), Some(StatusCode::NoSuchFile));
    let e = sftp.remove_dir(s(&d)).await.expect_err("not empty");
    assert_eq!(code(&e), Some(StatusCode::Failure));

    sftp.remove_file(s(&moved)).await.expect("rm");
    sftp.remove_file(s(&link)).await.expect("rm link");
    sftp.remove_dir(s(&d)).await.expect("rmdir");
    assert!(!d.exists());

    // The session ends when the client goes: the handler (and its `done`) is dropped.
    sftp.close().await.expect("close session");
    drop(sftp);
    timeout(BOUND, finished)
        .await
        .expect("server ends in time")
        .ok();
}

#[tokio::test]
async fn permission_denied_is_reported() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let locked = root.join("locked");
    std::fs::create_dir(&locked).expect("dir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let (sftp, _finished) = session(root).await;
    // Positive control: a writable directory takes the same file.
    sftp.create(s(&root.join("f"))).await.expect("writable dir");
    if nix::unistd::geteuid().is_root() {
        // Root ignores mode bits; the e2e test checks this as the sandbox user.
        return;
    }
    let e = sftp
        .create(s(&locked.join("f")))
        .await
        .err()
        .expect("read-only dir");
    assert_eq!(code(&e), Some(StatusCode::PermissionDenied), "{e}");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[test]
fn extended_strings() {
    let mut d = Vec::new();
    for p in ["a", "bc"] {
        d.extend_from_slice(&(p.len() as u32).to_be_bytes());
        d.extend_from_slice(p.as_bytes());
    }
    assert_eq!(
        super::two_strings(&d),
        Some(("a".to_owned(), "bc".to_owned()))
    );
    assert_eq!(super::two_strings(&d[..6]), None);
}
