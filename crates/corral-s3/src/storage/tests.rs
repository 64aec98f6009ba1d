use std::path::Path;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;

use super::*;
use crate::gc::{mark_used, remove_unused};
use crate::sidecar::used_sidecar;
use crate::testing::*;
use crate::{UNUSED_OBJECT_AGE, UPLOADS_DIR};

#[tokio::test]
async fn put_then_head_and_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("corral/abc/context.tar");
    let etag = objects
        .put(
            B,
            &k,
            body(&[b"hello ", b"world"]),
            sha(b"hello world"),
            None,
        )
        .await
        .expect("put");
    assert_eq!(etag, md5_hex(b"hello world"));
    let meta = objects.head(B, &k).await.expect("head");
    assert_eq!(meta.size, 11);
    assert_eq!(meta.etag, etag);
    let stored = dir.path().join(B).join("corral/abc/context.tar");
    assert_eq!(std::fs::read(&stored).expect("file"), b"hello world");
    // Overwrite, unsigned; the recorded ETag follows.
    let etag2 = objects
        .put(B, &k, body(&[b"bye"]), Payload::Unsigned, None)
        .await
        .expect("put");
    assert_eq!(objects.head(B, &k).await.expect("head").etag, etag2);
    let (meta, mut file) = objects.open(B, &k).await.expect("open");
    assert_eq!(meta.size, 3);
    let mut content = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut file, &mut content)
        .await
        .expect("read");
    assert_eq!(content, b"bye");
    // No temporary files are left: the object and its ETag only.
    assert_eq!(
        files(dir.path()),
        vec![
            format!("{B}/corral/abc/.context.tar~etag"),
            format!("{B}/corral/abc/context.tar"),
        ]
    );
    let e = objects
        .head(B, &key("corral/abc"))
        .await
        .expect_err("a directory");
    assert_eq!(e.code, "NoSuchKey");
    let e = objects.head(B, &key("nope")).await.expect_err("absent");
    assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "NoSuchKey"));
    let e = objects
        .head(B, &key("corral/abc/context.tar/x"))
        .await
        .expect_err("under a file");
    assert_eq!(e.code, "NoSuchKey");
}

/// Stores `data` under each key.
async fn put_all(objects: &Objects, keys: &[&str]) {
    for k in keys {
        objects
            .put(B, &key(k), body(&[b"data"]), Payload::Unsigned, None)
            .await
            .expect("put");
    }
}

#[tokio::test]
async fn list_finds_keys_under_a_prefix_in_order_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    put_all(
        &objects,
        &[
            "org/b/context.tar",
            "org/a/context.tar",
            "org/a/x",
            "other/a",
        ],
    )
    .await;
    let names = |found: &[(String, ObjectMeta)]| -> Vec<String> {
        found.iter().map(|(k, _)| k.clone()).collect()
    };
    let (found, more) = objects.list(B, "org/a/", "", 1000).await.expect("list");
    assert_eq!(names(&found), ["org/a/context.tar", "org/a/x"]);
    assert!(!more);
    assert_eq!(found[0].1.etag, md5_hex(b"data"));
    assert_eq!(found[0].1.size, 4);
    // A prefix that is not a whole directory, paging by the last key.
    let (found, more) = objects.list(B, "org/", "", 2).await.expect("list");
    assert_eq!(names(&found), ["org/a/context.tar", "org/a/x"]);
    assert!(more);
    let (found, more) = objects.list(B, "org/", "org/a/x", 2).await.expect("list");
    assert_eq!(names(&found), ["org/b/context.tar"]);
    assert!(!more);
    // Nothing there, and no way out of the bucket.
    let (found, _) = objects.list(B, "none/", "", 10).await.expect("list");
    assert!(found.is_empty());
    assert!(objects.list(B, "../x/", "", 10).await.is_err());
}

#[tokio::test]
async fn unused_objects_go_and_used_or_fresh_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    put_all(
        &objects,
        &[
            "org/old/context.tar",
            "org/used/context.tar",
            "org/new/context.tar",
        ],
    )
    .await;
    let path = |k: &str| dir.path().join(B).join(k);
    let age = |p: &Path, days: u64| {
        let t = SystemTime::now() - Duration::from_secs(days * 86_400);
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    };
    age(&path("org/old/context.tar"), 8);
    age(&path("org/used/context.tar"), 8);
    mark_used(&path("org/used/context.tar"));
    // An unfinished upload is not an object (it has its own cleanup).
    std::fs::create_dir_all(dir.path().join(UPLOADS_DIR).join("u1")).expect("mkdir");
    assert_eq!(remove_unused(dir.path(), UNUSED_OBJECT_AGE).expect("gc"), 1);
    assert!(
        !path("org/old").exists(),
        "its records and empty dir go too"
    );
    assert!(path("org/used/context.tar").is_file());
    assert!(path("org/new/context.tar").is_file());
    assert!(dir.path().join(UPLOADS_DIR).join("u1").is_dir());
    // Once the use is old too, it goes.
    age(&used_sidecar(&path("org/used/context.tar")), 8);
    assert_eq!(remove_unused(dir.path(), UNUSED_OBJECT_AGE).expect("gc"), 1);
    assert!(!path("org/used").exists());
    assert!(dir.path().join(B).is_dir(), "the bucket stays");
}

#[tokio::test]
async fn etag_is_recomputed_when_its_record_is_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("a");
    objects
        .put(B, &k, body(&[b"one"]), Payload::Unsigned, None)
        .await
        .expect("put");
    // Replaced behind the store's back: the recorded ETag is for another file.
    let path = dir.path().join(B).join("a");
    std::fs::remove_file(&path).expect("rm");
    std::fs::write(&path, b"other content").expect("write");
    assert_eq!(
        objects.head(B, &k).await.expect("head").etag,
        md5_hex(b"other content")
    );
}

#[tokio::test]
async fn a_bad_body_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("corral/abc/context.tar");
    let e = objects
        .put(B, &k, body(&[b"hello"]), sha(b"HELLO"), None)
        .await
        .expect_err("mismatch");
    assert_eq!(
        (e.status, e.code),
        (StatusCode::BAD_REQUEST, "XAmzContentSHA256Mismatch")
    );
    let e = objects
        .put(
            B,
            &k,
            body(&[b"hello"]),
            Payload::Unsigned,
            Some(Md5::digest(b"x").into()),
        )
        .await
        .expect_err("md5 mismatch");
    assert_eq!(e.code, "BadDigest");
    let broken = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"half")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let e = objects
        .put(B, &k, broken, Payload::Unsigned, None)
        .await
        .expect_err("broken body");
    assert_eq!(e.code, "IncompleteBody");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert_eq!(
        objects.head(B, &k).await.expect_err("absent").code,
        "NoSuchKey"
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tmp, file) = TempFile::create(dir.path()).await.expect("temp file");
    assert_eq!(files(dir.path()).len(), 1);
    let e = match receive(body(&[b"12345", b"678"]), file, 6, Payload::Unsigned, None).await {
        Ok(_) => panic!("accepted 8 bytes with a limit of 6"),
        Err(e) => e,
    };
    assert_eq!(
        (e.status, e.code),
        (StatusCode::BAD_REQUEST, "EntityTooLarge")
    );
    drop(tmp);
    assert!(files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_key_cannot_be_object_and_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    objects
        .put(B, &key("a/b"), body(&[b"x"]), Payload::Unsigned, None)
        .await
        .expect("put");
    let e = objects
        .put(B, &key("a/b/c"), body(&[b"y"]), Payload::Unsigned, None)
        .await
        .expect_err("under an object");
    assert_eq!(
        (e.status, e.code),
        (StatusCode::BAD_REQUEST, "InvalidArgument")
    );
    let e = objects
        .put(B, &key("a"), body(&[b"y"]), Payload::Unsigned, None)
        .await
        .expect_err("over a prefix");
    assert_eq!(
        (e.status, e.code),
        (StatusCode::BAD_REQUEST, "InvalidArgument")
    );
    assert_eq!(
        files(dir.path()),
        vec![format!("{B}/a/.b~etag"), format!("{B}/a/b")]
    );
    objects.delete(B, &key("a/b")).await.expect("delete");
    objects.delete(B, &key("a/b")).await.expect("delete again");
    assert!(files(dir.path()).is_empty());
}

#[tokio::test]
async fn multipart_concatenates_the_listed_parts_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("corral/abc/context.tar");
    let id = objects.create_upload(B, &k).await.expect("create");
    let mut etags = std::collections::BTreeMap::new();
    for (n, data) in [
        (3u32, &b"three"[..]),
        (1, b"one-"),
        (2, b"two-"),
        (5, b"unused"),
    ] {
        let etag = objects
            .put_part(B, &k, &id, n, body(&[data]), sha(data), None)
            .await
            .expect("part");
        assert_eq!(etag, md5_hex(data));
        etags.insert(n, etag);
    }
    // Uploading a part again replaces it.
    let etag = objects
        .put_part(B, &k, &id, 2, body(&[b"TWO-"]), Payload::Unsigned, None)
        .await
        .expect("part again");
    etags.insert(2, etag);
    let list: Vec<CompletedPart> = [1u32, 2, 3]
        .iter()
        .map(|n| CompletedPart {
            number: *n,
            etag: etags.get(n).cloned(),
        })
        .collect();
    let etag = objects
        .complete_upload(B, &k, &id, list)
        .await
        .expect("complete");
    let mut all = Md5::new();
    for data in [&b"one-"[..], b"TWO-", b"three"] {
        all.update(Md5::digest(data));
    }
    assert_eq!(etag, format!("{}-3", hex::encode(all.finalize())));
    let meta = objects.head(B, &k).await.expect("head");
    assert_eq!((meta.size, meta.etag), (13, etag));
    assert_eq!(
        std::fs::read(dir.path().join(B).join(k.as_str())).expect("object"),
        b"one-TWO-three"
    );
    // The upload is gone, with its unused part.
    assert!(!dir.path().join(UPLOADS_DIR).join(id.as_str()).exists());
    let e = objects
        .complete_upload(
            B,
            &k,
            &id,
            vec![CompletedPart {
                number: 1,
                etag: None,
            }],
        )
        .await
        .expect_err("completed");
    assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "NoSuchUpload"));
}

#[tokio::test]
async fn multipart_refuses_bad_part_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("obj");
    let id = objects.create_upload(B, &k).await.expect("create");
    for n in [1u32, 2] {
        objects
            .put_part(B, &k, &id, n, body(&[b"data"]), Payload::Unsigned, None)
            .await
            .expect("part");
    }
    let part = |number, etag: Option<&str>| CompletedPart {
        number,
        etag: etag.map(str::to_owned),
    };
    let cases = [
        (vec![part(1, None), part(4, None)], "InvalidPart"),
        (vec![part(1, Some("00"))], "InvalidPart"),
        (vec![part(2, None), part(1, None)], "InvalidPartOrder"),
        (vec![part(1, None), part(1, None)], "InvalidPartOrder"),
        (vec![], "MalformedXML"),
    ];
    for (list, code) in cases {
        let e = objects
            .complete_upload(B, &k, &id, list)
            .await
            .expect_err(code);
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, code));
    }
    // Nothing was stored and the upload is still there.
    assert_eq!(
        objects.head(B, &k).await.expect_err("absent").code,
        "NoSuchKey"
    );
    assert!(!dir.path().join(B).join("obj").exists());
    let tmp_left = files(dir.path()).into_iter().any(|f| f.contains('~'));
    assert!(!tmp_left);
    for n in [0u32, MAX_PART_NUMBER + 1] {
        let e = objects
            .put_part(B, &k, &id, n, body(&[b"x"]), Payload::Unsigned, None)
            .await
            .expect_err("part number");
        assert_eq!(e.code, "InvalidArgument");
    }
    // Another key cannot use this upload.
    let e = objects
        .put_part(
            B,
            &key("other"),
            &id,
            1,
            body(&[b"x"]),
            Payload::Unsigned,
            None,
        )
        .await
        .expect_err("other key");
    assert_eq!(e.code, "NoSuchUpload");
    let e = objects
        .put_part(B, &k, &id, 3, body(&[b"x"]), sha(b"y"), None)
        .await
        .expect_err("sha");
    assert_eq!(e.code, "XAmzContentSHA256Mismatch");
    assert!(
        !dir.path()
            .join(UPLOADS_DIR)
            .join(id.as_str())
            .join("part-3")
            .exists()
    );
}

#[tokio::test]
async fn abort_removes_the_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let k = key("obj");
    let id = objects.create_upload(B, &k).await.expect("create");
    objects
        .put_part(B, &k, &id, 1, body(&[b"data"]), Payload::Unsigned, None)
        .await
        .expect("part");
    objects.abort_upload(B, &k, &id).await.expect("abort");
    assert!(files(dir.path()).is_empty());
    let e = objects.abort_upload(B, &k, &id).await.expect_err("again");
    assert_eq!(e.code, "NoSuchUpload");
    let e = objects
        .put_part(B, &k, &id, 1, body(&[b"data"]), Payload::Unsigned, None)
        .await
        .expect_err("aborted");
    assert_eq!(e.code, "NoSuchUpload");
    let e = objects
        .complete_upload(
            B,
            &k,
            &id,
            vec![CompletedPart {
                number: 1,
                etag: None,
            }],
        )
        .await
        .expect_err("aborted");
    assert_eq!(e.code, "NoSuchUpload");
}

#[tokio::test]
async fn stale_uploads_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = Objects::new(dir.path());
    let old = objects.create_upload(B, &key("a")).await.expect("create");
    let old_dir = dir.path().join(UPLOADS_DIR).join(old.as_str());
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::open(&old_dir)
        .and_then(|d| d.set_modified(two_days_ago))
        .expect("set mtime");
    let fresh = objects.create_upload(B, &key("b")).await.expect("create");
    assert!(!old_dir.exists());
    assert!(dir.path().join(UPLOADS_DIR).join(fresh.as_str()).exists());
}
