use super::install::Manifests;
use super::*;
use crate::oci::Platform;

/// A layer of regular files owned by the user running the test, so importing it needs
/// no root (the unpacker's ownership handling is tested in `unpack.rs`).
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(nix::unistd::geteuid().as_raw().into());
        h.set_gid(nix::unistd::getegid().as_raw().into());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn config_for(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["A=1"], "WorkingDir": "/w"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json")
}

/// Writes a docker-save archive of one image with the given layer tars.
fn docker_save(dir: &Path, layers: &[Vec<u8>], tamper: bool) -> PathBuf {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = config_for(&diff_ids);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).expect("append");
    };
    add("cfg.json", &config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        let mut data = l.clone();
        if tamper && i == layers.len() - 1 {
            data = layer_tar(&[("x", b"tampered")]);
        }
        add(&name, &data);
        names.push(name);
    }
    let manifest =
        serde_json::json!([{"Config": "cfg.json", "RepoTags": ["test/img:1"], "Layers": names}]);
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    let out = dir.join("save.tar");
    fs::write(&out, b.into_inner().expect("tar")).expect("write");
    out
}

#[test]
fn import_resolve_rm_and_gc() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(
        d.path(),
        &RegistryOptions {
            auth_file: Some("/nonexistent".into()),
            ..Default::default()
        },
    )
    .expect("open");
    let l1 = layer_tar(&[("a", b"one"), ("gone", b"x")]);
    let l2 = layer_tar(&[(".wh.gone", b""), ("b", b"two")]);
    let archive = docker_save(d.path(), &[l1, l2], false);
    let imgs = store.import(&archive, None).expect("import");
    assert_eq!(imgs.len(), 1);
    let img = store
        .resolve("test/img:1")
        .expect("resolve")
        .expect("present");
    assert_eq!(img.reference, "docker.io/test/img:1");
    assert_eq!(img.layers.len(), 2);
    assert_eq!(fs::read(img.layers[0].join("a")).expect("a"), b"one");
    assert_eq!(img.size, 3 + 1 + 3);
    assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(store.list().expect("list").len(), 1);
    // Importing again under another name shares the layers.
    store.import(&archive, Some("other:2")).expect("import 2");
    assert_eq!(store.list().expect("list").len(), 2);
    store.remove("test/img:1").expect("rm");
    assert_eq!(store.gc(&[]).expect("gc").layers_removed, 0, "still used");
    store.remove("other:2").expect("rm");
    assert!(matches!(
        store.remove("other:2"),
        Err(OciError::NotFound(_))
    ));
    let kept = store
        .gc(std::slice::from_ref(&sha256_digest(&layer_tar(&[
            ("a", b"one"),
            ("gone", b"x"),
        ]))))
        .expect("gc");
    assert_eq!(kept.layers_removed, 1, "the kept layer stays");
    let r = store.gc(&[]).expect("gc");
    assert_eq!((r.layers_removed, r.bytes_freed), (1, 4));
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .expect("ls")
            .count(),
        0
    );
}

fn open_store(d: &Path) -> ImageStore {
    ImageStore::open(
        d,
        &RegistryOptions {
            auth_file: Some("/nonexistent".into()),
            ..Default::default()
        },
    )
    .expect("open")
}

/// Writes an OCI layout archive whose `index.json` names an index (one manifest for
/// this host's platform, one for another) and returns it with the index's digest and
/// the platform manifest's.
fn oci_layout_with_index(dir: &Path, layer: &[u8]) -> (PathBuf, String, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).expect("append");
    };
    let desc = |mt: &str, data: &[u8], platform: Option<Platform>| Descriptor {
        media_type: mt.into(),
        digest: sha256_digest(data),
        size: data.len() as u64,
        platform,
        annotations: Default::default(),
    };
    let config = config_for(&[sha256_digest(layer)]);
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: desc(MT_OCI_CONFIG, &config, None),
        layers: vec![desc(MT_OCI_LAYER_TAR, layer, None)],
    })
    .expect("json");
    let other = Platform {
        architecture: "s390x".into(),
        os: "linux".into(),
        variant: None,
    };
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: vec![
            desc(MT_OCI_MANIFEST, b"{}", Some(other)),
            desc(MT_OCI_MANIFEST, &manifest, Some(host_platform())),
        ],
    })
    .expect("json");
    let top =
        serde_json::json!({"schemaVersion": 2, "manifests": [desc(MT_OCI_INDEX, &index, None)]});
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &serde_json::to_vec(&top).expect("json"));
    for blob in [&config[..], &manifest, &index, layer] {
        add(&format!("blobs/sha256/{}", &sha256_digest(blob)[7..]), blob);
    }
    let out = dir.join("oci.tar");
    fs::write(&out, b.into_inner().expect("tar")).expect("write");
    (out, sha256_digest(&index), sha256_digest(&manifest))
}

#[test]
fn digest_references_find_a_stored_image_by_its_manifest() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = open_store(d.path());
    let archive = docker_save(d.path(), &[layer_tar(&[("a", b"one")])], false);
    let digest = store.import(&archive, None).expect("import")[0]
        .manifest_digest
        .clone();
    let found = |r: &str| store.resolve(r).expect("resolve").map(|i| i.reference);
    let pinned = format!("docker.io/test/img@{digest}");
    // By digest, with or without the registry, whatever tag stands beside it; the
    // name stays the digest reference (it finds exactly this image).
    assert_eq!(found(&format!("test/img@{digest}")), Some(pinned.clone()));
    assert_eq!(found(&pinned), Some(pinned.clone()));
    assert_eq!(
        found(&format!("test/img:other@{digest}")),
        Some(format!("docker.io/test/img:other@{digest}"))
    );
    assert_eq!(found(&digest), Some("docker.io/test/img:1".to_owned()));
    // Another repository, or another digest, is not this image.
    assert_eq!(found(&format!("test/else@{digest}")), None);
    assert_eq!(found(&format!("reg.invalid/test/img@{digest}")), None);
    assert_eq!(found(&format!("test/img@sha256:{}", "0".repeat(64))), None);
    assert_eq!(found("test/img:2"), None);
    assert!(store.resolve("test/img@sha256:short").is_err());
}

#[test]
fn an_index_digest_finds_the_platform_image_imported_from_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = open_store(d.path());
    let (archive, index, manifest) = oci_layout_with_index(d.path(), &layer_tar(&[("f", b"data")]));
    let img = store
        .import(&archive, Some("reg.invalid:5000/app:1"))
        .expect("import");
    assert_eq!(img[0].manifest_digest, manifest);
    for digest in [&index, &manifest] {
        let r = format!("reg.invalid:5000/app@{digest}");
        let img = store.resolve(&r).expect("resolve").expect("stored");
        assert_eq!(img.reference, r);
        assert_eq!(fs::read(img.layers[0].join("f")).expect("f"), b"data");
    }
}

#[test]
fn release_forgets_only_images_the_server_recorded_and_nothing_kept() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = open_store(d.path());
    let archive = docker_save(d.path(), &[layer_tar(&[("a", b"one")])], false);
    let imported = store.import(&archive, None).expect("import").remove(0);
    let manifest =
        fs::read(store.blob_path(&imported.manifest_digest).expect("path")).expect("manifest");
    let config = fs::read(store.blob_path(&imported.config_digest).expect("path")).expect("config");
    // What a pull by the server records (the layers are stored already).
    let record = |key: &str, recorder| {
        store
            .commit(
                key,
                Manifests {
                    digest: &imported.manifest_digest,
                    bytes: &manifest,
                    index: None,
                },
                &imported.config_digest,
                &config,
                &imported.config,
                Vec::new(),
                recorder,
            )
            .expect("commit")
    };
    let names = || -> Vec<String> {
        store
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.reference)
            .collect()
    };
    record("docker.io/test/srv:1", Recorder::Server);
    record("docker.io/test/srv:2", Recorder::Server);
    let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The imported image is pinned: releasing it does nothing.
    let gone = store
        .release(&all(&["test/img:1", "test/srv:1"]), &[])
        .expect("release");
    assert_eq!(gone, all(&["docker.io/test/srv:1"]));
    assert_eq!(
        names(),
        all(&["docker.io/test/img:1", "docker.io/test/srv:2"])
    );
    // A snapshot still naming the image by digest keeps it.
    let by_digest = format!("test/srv@{}", imported.manifest_digest);
    let gone = store
        .release(&all(&["test/srv:2"]), std::slice::from_ref(&by_digest))
        .expect("release");
    assert!(gone.is_empty());
    // Released through its digest reference once nothing else needs it.
    let gone = store.release(&[by_digest], &[]).expect("release");
    assert_eq!(gone, all(&["docker.io/test/srv:2"]));
    // A server pull of a pinned reference (its layers were lost) keeps it pinned;
    // references that do not parse name nothing (and are no error).
    record("docker.io/test/img:1", Recorder::Server);
    let gone = store
        .release(&all(&["test/img:1", "Not/A Reference"]), &[])
        .expect("release");
    assert!(gone.is_empty());
    assert_eq!(names(), all(&["docker.io/test/img:1"]));
}

#[test]
fn a_layer_not_matching_its_diff_id_installs_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(
        d.path(),
        &RegistryOptions {
            auth_file: Some("/nonexistent".into()),
            ..Default::default()
        },
    )
    .expect("open");
    let archive = docker_save(
        d.path(),
        &[layer_tar(&[("a", b"one")]), layer_tar(&[("b", b"two")])],
        true,
    );
    let err = store.import(&archive, None).expect_err("tampered");
    assert!(matches!(err, OciError::Digest(_)), "{err}");
    assert!(store.list().expect("list").is_empty());
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .expect("ls")
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).expect("ls").count(),
        0
    );
}
