//! Tests of the build context index: matching, links, batches and the tar it streams.

use super::*;

/// A test entry: name, type, data or link target, mode.
type Spec<'a> = (&'a str, tar::EntryType, &'a str, u32);
use tar::EntryType as E;

/// Writes an archive with these raw names (no normalisation by the `tar` crate).
fn write_archive(path: &std::path::Path, entries: &[Spec<'_>]) {
    let mut out = Vec::new();
    for (name, kind, data, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        let size = if *kind == E::Regular { data.len() } else { 0 };
        h.set_size(size as u64);
        if matches!(kind, E::Symlink | E::Link) {
            h.set_link_name(data).expect("link name");
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if *kind == E::Regular {
            out.extend_from_slice(data.as_bytes());
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    std::fs::write(path, out).expect("write archive");
}

/// An index of archives given as entry lists; the temp dir must outlive it.
fn index(archives: &[&[Spec<'_>]]) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut list = Vec::new();
    for (n, entries) in archives.iter().enumerate() {
        let path = dir.path().join(format!("{n}.tar"));
        write_archive(&path, entries);
        list.push(Archive {
            hash: format!("{n:032x}"),
            path,
        });
    }
    let index = Index::read(list).expect("read");
    (dir, index)
}

/// The SDK's archives: `add_local_dir` of an app, `add_local_file` of a file.
fn sdk() -> (tempfile::TempDir, Index) {
    index(&[
        &[
            ("tmp/p/app", E::Directory, "", 0o750),
            ("tmp/p/app/main.py", E::Regular, "print(1)", 0o644),
            ("tmp/p/app/run.sh", E::Regular, "#!/bin/sh", 0o755),
            ("tmp/p/app/lib", E::Directory, "", 0o755),
            ("tmp/p/app/lib/util.py", E::Regular, "x = 1", 0o600),
            ("tmp/p/app/current", E::Symlink, "lib", 0o777),
            ("tmp/p/app/again.py", E::Link, "tmp/p/app/main.py", 0o644),
        ],
        &[("./tmp/q/f.txt", E::Regular, "file", 0o640)],
    ])
}

/// (name in the batch, what it is) for each item, for comparisons.
fn names(index: &Index, batches: &[Batch]) -> Vec<(String, String)> {
    batches
        .iter()
        .flat_map(|b| {
            b.items.iter().map(|(i, n)| {
                let e = &index.entries[*i];
                (b.dir.clone(), format!("{n} <- {}", e.name))
            })
        })
        .collect()
}

fn plan(index: &Index, source: &str, dest: &str, dest_is_dir: bool) -> Vec<(String, String)> {
    let m = index.find(source).expect(source);
    let b = index.plan(source, &m, dest, dest_is_dir).expect(dest);
    names(index, &b)
}

fn pair(dir: &str, item: &str) -> (String, String) {
    (dir.to_owned(), item.to_owned())
}

#[test]
fn a_file_goes_to_dest_or_into_a_directory() {
    let (_d, ix) = sdk();
    assert_eq!(
        plan(&ix, "tmp/q/f.txt", "/etc/f.conf", false),
        [pair("/etc", "f.conf <- tmp/q/f.txt")]
    );
    assert_eq!(
        plan(&ix, "tmp/q/f.txt", "/opt/", false),
        [pair("/opt", "f.txt <- tmp/q/f.txt")]
    );
    // An existing directory in the sandbox, named without a slash.
    assert_eq!(
        plan(&ix, "tmp/q/f.txt", "/opt", true),
        [pair("/opt", "f.txt <- tmp/q/f.txt")]
    );
    assert_eq!(
        plan(&ix, "tmp/q/f.txt", "/", false),
        [pair("/", "f.txt <- tmp/q/f.txt")]
    );
}

#[test]
fn a_directory_copies_its_contents() {
    let (_d, ix) = sdk();
    let want = [
        pair("/app", ". <- tmp/p/app"),
        pair("/app", "main.py <- tmp/p/app/main.py"),
        pair("/app", "run.sh <- tmp/p/app/run.sh"),
        pair("/app", "lib <- tmp/p/app/lib"),
        pair("/app", "lib/util.py <- tmp/p/app/lib/util.py"),
        pair("/app", "current <- tmp/p/app/current"),
        pair("/app", "again.py <- tmp/p/app/again.py"),
    ];
    assert_eq!(plan(&ix, "tmp/p/app", "/app", false), want);
    assert_eq!(plan(&ix, "tmp/p/app", "/app/", false), want);
    // A directory only implied by deeper names.
    assert_eq!(
        plan(&ix, "tmp/q", "/q", false),
        [pair("/q", "f.txt <- tmp/q/f.txt")]
    );
}

#[test]
fn dot_is_the_whole_context_of_every_archive() {
    let (_d, ix) = sdk();
    let got = plan(&ix, ".", "/", false);
    assert_eq!(got.len(), 8);
    assert!(got.contains(&pair("/", "tmp/p/app/main.py <- tmp/p/app/main.py")));
    assert!(
        got.contains(&pair("/", "tmp/q/f.txt <- tmp/q/f.txt")),
        "{got:?}"
    );
    assert_eq!(
        plan(&ix, ".", "/srv/", false).first(),
        Some(&pair("/srv", "tmp/p/app <- tmp/p/app"))
    );
}

#[test]
fn patterns_match_per_segment_as_go_does() {
    let (_d, ix) = sdk();
    assert_eq!(
        plan(&ix, "tmp/p/app/*.py", "/code/", false),
        [
            pair("/code", "again.py <- tmp/p/app/again.py"),
            pair("/code", "main.py <- tmp/p/app/main.py"),
        ]
    );
    // `*` stays within a segment.
    assert!(ix.find("tmp/*.py").is_err());
    assert!(ix.find("tmp/p/*/util.py").is_err());
    assert_eq!(
        plan(&ix, "tmp/*/app/lib/util.py", "/u.py", false),
        [pair("/", "u.py <- tmp/p/app/lib/util.py")]
    );
    // A matched directory copies its contents.
    assert_eq!(
        plan(&ix, "tmp/?", "/all/", false),
        [
            pair("/all", "app <- tmp/p/app"),
            pair("/all", "app/main.py <- tmp/p/app/main.py"),
            pair("/all", "app/run.sh <- tmp/p/app/run.sh"),
            pair("/all", "app/lib <- tmp/p/app/lib"),
            pair("/all", "app/lib/util.py <- tmp/p/app/lib/util.py"),
            pair("/all", "app/current <- tmp/p/app/current"),
            pair("/all", "app/again.py <- tmp/p/app/again.py"),
            pair("/all", "f.txt <- tmp/q/f.txt"),
        ]
    );
    assert_eq!(
        plan(&ix, "tmp/p/app/[mr]*", "/x/", false).len(),
        2,
        "main.py and run.sh"
    );
    assert_eq!(plan(&ix, "tmp/p/app/[^mr]*.py", "/x/", false).len(), 1);
    // Several matches need a directory destination.
    let m = ix.find("tmp/p/app/*.py").expect("find");
    let e = ix
        .plan("tmp/p/app/*.py", &m, "/code", true)
        .expect_err("several");
    let text = e.to_string();
    assert!(
        text.contains("matches several files") && text.contains("tmp/p/app/main.py"),
        "{text}"
    );
}

#[test]
fn go_patterns_translate_to_globset() {
    let matches = |pattern: &str, name: &str| {
        let g = globset::GlobBuilder::new(&go_pattern(pattern).expect(pattern))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .expect(pattern)
            .compile_matcher();
        g.is_match(name)
    };
    assert!(matches("a**b", "axyb"));
    assert!(!matches("a**b", "ax/yb"), "** is not recursive in Go");
    assert!(matches("{a,b}", "{a,b}"));
    assert!(!matches("{a,b}", "a"), "no alternations in Go");
    assert!(matches("[^a]x", "bx") && !matches("[^a]x", "ax"));
    assert!(
        matches("[!]x", "!x") && !matches("[!]x", "bx"),
        "! is literal in Go"
    );
    assert!(matches("[\\]]", "]") && matches("[a\\-]", "-") && matches("[a\\-]", "a"));
    assert!(matches("[\\!\\-]", "!") && matches("[\\!\\-]", "-") && !matches("[\\!\\-]", "a"));
    assert!(matches("[a-c]", "b") && !matches("[a-c]", "d"));
    assert!(matches("\\*", "*") && !matches("\\*", "x"));
    for bad in ["[", "[]", "a\\", "[a-]", "[z-a]"] {
        assert!(go_pattern(bad).is_err(), "{bad}");
    }
    let (_d, ix) = sdk();
    let e = ix.find("tmp/[").expect_err("bad pattern").to_string();
    assert!(e.contains("not a valid pattern"), "{e}");
}

#[test]
fn missing_sources_name_what_was_uploaded() {
    let (_d, ix) = sdk();
    let e = ix
        .find("tmp/p/nothere.txt")
        .expect_err("missing")
        .to_string();
    assert_eq!(
        e,
        "COPY source tmp/p/nothere.txt not found in the build context \
         (uploaded: tmp/p/app, tmp/q/f.txt)"
    );
    assert!(ix.find("nothing*").is_err());
    let (_d, empty) = index(&[]);
    let e = empty.find("a").expect_err("empty").to_string();
    assert!(e.ends_with("(uploaded: nothing)"), "{e}");
}

#[test]
fn symlink_sources_are_followed_within_the_context() {
    let (_d, ix) = sdk();
    assert_eq!(
        plan(&ix, "tmp/p/app/current", "/l", false),
        [
            pair("/l", ". <- tmp/p/app/lib"),
            pair("/l", "util.py <- tmp/p/app/lib/util.py")
        ]
    );
    let (_d, ix) = index(&[&[
        ("data.txt", E::Regular, "d", 0o644),
        ("link", E::Symlink, "/data.txt", 0o777),
        ("loop", E::Symlink, "loop", 0o777),
        ("out", E::Symlink, "../../etc/passwd", 0o777),
    ]]);
    assert_eq!(
        plan(&ix, "link", "/x/", false),
        [pair("/x", "link <- data.txt")]
    );
    assert!(
        ix.find("loop")
            .is_err_and(|e| e.to_string().contains("symlinks"))
    );
    // `..` stops at the context's root, as in Docker: `etc/passwd` is not uploaded.
    assert!(
        ix.find("out")
            .is_err_and(|e| e.to_string().contains("not found"))
    );
}

#[test]
fn unsafe_archive_names_are_refused() {
    for bad in ["../x", "a/../../x"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.tar");
        write_archive(&path, &[(bad, E::Regular, "x", 0o644)]);
        let e = Index::read(vec![Archive {
            hash: "h".into(),
            path,
        }])
        .expect_err(bad);
        assert!(e.to_string().contains(bad), "{e}");
    }
    // Leading slashes are dropped, as tar does.
    let (_d, ix) = index(&[&[("/abs/f", E::Regular, "x", 0o644)]]);
    assert!(ix.find("abs/f").is_ok());
}

/// The (name, type, data or link, mode, uid, mtime) of every entry of a written batch.
fn written(index: &Index, batch: &Batch) -> Vec<(String, char, String, u32, u64, u64)> {
    let mut out = Vec::new();
    index.write_batch(batch, &mut out).expect("write");
    let mut archive = tar::Archive::new(&out[..]);
    let mut found = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let h = entry.header().clone();
        let kind = h.entry_type().as_byte() as char;
        let mut data = String::new();
        if let Some(l) = entry.link_name().expect("link") {
            data = l.to_string_lossy().into_owned();
        } else {
            entry.read_to_string(&mut data).expect("data");
        }
        found.push((
            entry.path().expect("path").to_string_lossy().into_owned(),
            kind,
            data,
            h.mode().expect("mode"),
            h.uid().expect("uid"),
            h.mtime().expect("mtime"),
        ));
    }
    found
}

#[test]
fn batches_are_written_as_tar_with_root_owners_and_links() {
    let (_d, ix) = sdk();
    let m = ix.find("tmp/p/app").expect("find");
    let b = ix.plan("tmp/p/app", &m, "/app", false).expect("plan");
    let got = written(&ix, &b[0]);
    let t = 1_700_000_000;
    assert_eq!(
        got,
        [
            (".".to_owned(), '5', String::new(), 0o750, 0, t),
            (
                "main.py".to_owned(),
                '0',
                "print(1)".to_owned(),
                0o644,
                0,
                t
            ),
            (
                "run.sh".to_owned(),
                '0',
                "#!/bin/sh".to_owned(),
                0o755,
                0,
                t
            ),
            ("lib".to_owned(), '5', String::new(), 0o755, 0, t),
            (
                "lib/util.py".to_owned(),
                '0',
                "x = 1".to_owned(),
                0o600,
                0,
                t
            ),
            ("current".to_owned(), '2', "lib".to_owned(), 0o777, 0, t),
            // Its file is in the batch: a hard link to it, by its new name.
            (
                "again.py".to_owned(),
                '1',
                "main.py".to_owned(),
                0o644,
                0,
                t
            ),
        ]
    );
    // Alone, the hard link is a copy of its file.
    let m = ix.find("tmp/p/app/again.py").expect("find");
    let b = ix
        .plan("tmp/p/app/again.py", &m, "/x/", false)
        .expect("plan");
    assert_eq!(
        written(&ix, &b[0]),
        [(
            "again.py".to_owned(),
            '0',
            "print(1)".to_owned(),
            0o644,
            0,
            t
        )]
    );
}

#[test]
fn a_truncated_archive_fails_the_copy() {
    let (d, ix) = sdk();
    let path = d.path().join("1.tar");
    let bytes = std::fs::read(&path).expect("read");
    // Header and 2 bytes of the 4-byte file.
    std::fs::write(&path, &bytes[..514]).expect("truncate");
    let m = ix.find("tmp/q/f.txt").expect("find");
    let b = ix.plan("tmp/q/f.txt", &m, "/f", false).expect("plan");
    let e = ix.write_batch(&b[0], Vec::new()).expect_err("truncated");
    assert!(e.to_string().contains("ends inside a file"), "{e}");
}

#[test]
fn chunks_reach_the_channel_until_it_closes() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let mut w = ChunkWriter::new(tx);
    w.write_all(b"hello").expect("write");
    w.flush().expect("flush");
    assert_eq!(
        rx.try_recv().ok().and_then(Result::ok),
        Some(b"hello".to_vec())
    );
    drop(rx);
    w.write_all(b"more").expect("buffered");
    let e = w.flush().expect_err("closed");
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}
