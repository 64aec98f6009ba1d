//! The store ports' contract as checks any implementation must pass. `tests/store_conformance.rs`
//! runs them against [`crate::MemoryStore`] and `corral_store::SqliteStore`, so the in-memory
//! store cannot drift from the real one. Each check wants a fresh, empty store.

use std::collections::BTreeMap;

use corral_core::ports::{
    PreviewTokenStore, SignedPreviewToken, Snapshot, SnapshotState, SnapshotStore, SshAccess,
    SshAccessStore, Volume, VolumeState, VolumeStore, WarmPoolRecord, WarmPoolStore,
};
use corral_core::{
    ApiKeyStore, DesiredState, ListQuery, Resources, Sandbox, SandboxState, SandboxStore,
    StoreError, VolumeMount,
};
use time::OffsetDateTime;

/// Every port at once.
pub trait AllStores:
    SandboxStore
    + ApiKeyStore
    + PreviewTokenStore
    + VolumeStore
    + SnapshotStore
    + SshAccessStore
    + WarmPoolStore
{
}
impl<
    T: SandboxStore
        + ApiKeyStore
        + PreviewTokenStore
        + VolumeStore
        + SnapshotStore
        + SshAccessStore
        + WarmPoolStore,
> AllStores for T
{
}

/// A sandbox record for tests.
pub fn sandbox(id: &str, name: &str, labels: &[(&str, &str)]) -> Sandbox {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
    Sandbox {
        id: id.into(),
        name: name.into(),
        organization_id: "corral".into(),
        snapshot: "host".into(),
        user: "daytona".into(),
        env: BTreeMap::new(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        public: false,
        network_block_all: false,
        network_allow_list: None,
        resources: Resources::default(),
        state: SandboxState::Started,
        desired_state: DesiredState::Started,
        error_reason: None,
        auto_stop_interval: 15,
        auto_archive_interval: 10080,
        auto_delete_interval: -1,
        auto_pause_interval: 0,
        auto_destroy_at: None,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        stopped_at: None,
        volumes: Vec::new(),
        signing_key: None,
    }
}

fn volume(id: &str, name: &str, org: &str) -> Volume {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
    Volume {
        id: id.into(),
        name: name.into(),
        organization_id: org.into(),
        state: VolumeState::Ready,
        error_reason: None,
        created_at: now,
        updated_at: now,
        last_used_at: None,
    }
}

fn snapshot(id: &str, name: &str, created_at_ms: i64) -> Snapshot {
    Snapshot {
        id: id.into(),
        name: name.into(),
        image_name: Some(format!("docker.io/library/{name}:latest")),
        state: SnapshotState::Pending,
        size: None,
        entrypoint: vec!["sleep".into(), "infinity".into()],
        cpu: 1,
        memory_gib: 1,
        disk_gib: 3,
        error_reason: None,
        general: false,
        created_at_ms,
        updated_at_ms: created_at_ms,
        last_used_at_ms: None,
    }
}

fn ids(items: &[Sandbox]) -> Vec<&str> {
    items.iter().map(|s| s.id.as_str()).collect()
}

/// Inserts, lookups by id before name, unique names on insert and update, removal.
pub async fn sandboxes_by_id_or_name(store: &impl AllStores) {
    store
        .insert(&sandbox("a", "alpha", &[]))
        .await
        .expect("insert");
    // A name that is another sandbox's id: the id wins.
    store.insert(&sandbox("b", "a", &[])).await.expect("insert");
    assert_eq!(
        store.get("a").await.expect("get").map(|s| s.name),
        Some("alpha".into())
    );
    assert_eq!(
        store.get("alpha").await.expect("get").map(|s| s.id),
        Some("a".into())
    );
    assert!(store.get("nope").await.expect("get").is_none());
    assert!(matches!(
        store.insert(&sandbox("c", "alpha", &[])).await,
        Err(StoreError::NameTaken(n)) if n == "alpha"
    ));
    assert!(matches!(
        store.insert(&sandbox("a", "other", &[])).await,
        Err(StoreError::NameTaken(_))
    ));
    let mut b = sandbox("b", "alpha", &[]);
    assert!(matches!(
        store.update(&b).await,
        Err(StoreError::NameTaken(_))
    ));
    b.name = "beta".into();
    b.state = SandboxState::Stopped;
    store.update(&b).await.expect("update");
    assert_eq!(store.get("beta").await.expect("get"), Some(b.clone()));
    // Updating a sandbox with no record is not an error (and records nothing).
    store
        .update(&sandbox("ghost", "ghost", &[]))
        .await
        .expect("update");
    assert!(store.get("ghost").await.expect("get").is_none());
    store.remove("a").await.expect("remove");
    store.remove("a").await.expect("remove twice");
    assert!(store.get("a").await.expect("get").is_none());
    // The name is free again.
    store
        .insert(&sandbox("d", "alpha", &[]))
        .await
        .expect("insert");
}

/// The SDK's other list filters: snapshots, resource ranges (inclusive), public, and the
/// created / last-activity windows (exclusive ends), combined with cursor pages.
pub async fn sandboxes_list_sdk_filters(store: &impl AllStores) {
    use corral_core::{Bounds, ListFilters, Window};
    let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
    let minute = time::Duration::minutes(1);
    for i in 0..6u32 {
        let mut s = sandbox(&format!("f{i}"), &format!("filtered-{i}"), &[]);
        s.snapshot = if i % 2 == 0 { "host" } else { "python:3.12" }.into();
        s.resources.cpu = i + 1;
        s.resources.memory_gib = 2 * (i + 1);
        s.resources.disk_gib = 10 + i;
        s.public = i >= 4;
        s.created_at = t0 + minute * (i as i32);
        s.last_activity_at = t0 + minute * (10 - i as i32);
        store.insert(&s).await.expect("insert");
    }
    let ids_for = |filters: ListFilters, limit: u32| async move {
        let mut q = ListQuery {
            limit,
            filters,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let page = store.list(&q).await.expect("list");
            out.extend(page.items.into_iter().map(|s| s.id));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return out,
            }
        }
    };
    let all = ListFilters::default();
    assert_eq!(
        ids_for(all.clone(), 100).await,
        ["f0", "f1", "f2", "f3", "f4", "f5"]
    );
    let f = ListFilters {
        snapshots: vec!["python:3.12".into()],
        ..all.clone()
    };
    assert_eq!(ids_for(f.clone(), 1).await, ["f1", "f3", "f5"]);
    let f = ListFilters {
        cpu: Bounds {
            min: Some(2),
            max: Some(4),
        },
        ..all.clone()
    };
    assert_eq!(ids_for(f, 2).await, ["f1", "f2", "f3"]);
    let f = ListFilters {
        memory_gib: Bounds {
            min: Some(8),
            max: None,
        },
        disk_gib: Bounds {
            min: None,
            max: Some(14),
        },
        ..all.clone()
    };
    assert_eq!(ids_for(f, 100).await, ["f3", "f4"]);
    let f = ListFilters {
        public: Some(true),
        ..all.clone()
    };
    assert_eq!(ids_for(f, 100).await, ["f4", "f5"]);
    let f = ListFilters {
        public: Some(false),
        snapshots: vec!["host".into()],
        ..all.clone()
    };
    assert_eq!(ids_for(f, 100).await, ["f0", "f2"]);
    // Both ends exclusive: created after t0+1 min and before t0+4 min.
    let f = ListFilters {
        created: Window {
            after: Some(t0 + minute),
            before: Some(t0 + minute * 4),
        },
        ..all.clone()
    };
    assert_eq!(ids_for(f, 1).await, ["f2", "f3"]);
    let f = ListFilters {
        last_activity: Window {
            after: Some(t0 + minute * 8),
            before: None,
        },
        ..all.clone()
    };
    assert_eq!(ids_for(f, 100).await, ["f0", "f1"]);
    let f = ListFilters {
        cpu: Bounds {
            min: Some(100),
            max: None,
        },
        ..all
    };
    assert!(ids_for(f, 100).await.is_empty());
}

/// Sorted lists, both directions, ties in creation order, in pages whose cursors stay right
/// while sandboxes are created and deleted between pages.
pub async fn sandboxes_list_sorted_pages(store: &impl AllStores) {
    use corral_core::{ListSort, SortField};
    let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
    // (id, name, cpu, minutes of last activity after t0)
    let rows = [
        ("o0", "delta", 2, 5),
        ("o1", "alpha", 4, 1),
        ("o2", "charlie", 2, 9),
        ("o3", "bravo", 1, 3),
        ("o4", "echo", 4, 7),
    ];
    for (id, name, cpu, act) in rows {
        let mut s = sandbox(id, name, &[]);
        s.resources.cpu = cpu;
        s.resources.memory_gib = 10 - cpu;
        s.last_activity_at = t0 + time::Duration::minutes(act);
        store.insert(&s).await.expect("insert");
    }
    let pages = |field: SortField, descending: bool| async move {
        let mut q = ListQuery {
            limit: 2,
            sort: Some(ListSort { field, descending }),
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let page = store.list(&q).await.expect("list");
            out.extend(page.items.into_iter().map(|s| s.id));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return out,
            }
        }
    };
    assert_eq!(
        pages(SortField::Name, false).await,
        ["o1", "o3", "o2", "o0", "o4"]
    );
    assert_eq!(
        pages(SortField::Name, true).await,
        ["o4", "o0", "o2", "o3", "o1"]
    );
    // Ties in creation order (reversed when descending).
    assert_eq!(
        pages(SortField::Cpu, false).await,
        ["o3", "o0", "o2", "o1", "o4"]
    );
    assert_eq!(
        pages(SortField::Cpu, true).await,
        ["o4", "o1", "o2", "o0", "o3"]
    );
    assert_eq!(
        pages(SortField::MemoryGib, false).await,
        ["o1", "o4", "o0", "o2", "o3"]
    );
    assert_eq!(
        pages(SortField::DiskGib, false).await,
        ["o0", "o1", "o2", "o3", "o4"]
    );
    assert_eq!(
        pages(SortField::LastActivityAt, false).await,
        ["o1", "o3", "o0", "o4", "o2"]
    );
    assert_eq!(
        pages(SortField::CreatedAt, true).await,
        ["o4", "o3", "o2", "o1", "o0"]
    );

    // Keyset pages: what is created or deleted between pages moves nothing else.
    let mut q = ListQuery {
        limit: 2,
        sort: Some(ListSort {
            field: SortField::Name,
            descending: false,
        }),
        ..Default::default()
    };
    let first = store.list(&q).await.expect("list");
    assert_eq!(ids(&first.items), ["o1", "o3"]);
    store.remove("o3").await.expect("remove");
    store
        .insert(&sandbox("o5", "aardvark", &[]))
        .await
        .expect("insert");
    store
        .insert(&sandbox("o6", "cobra", &[]))
        .await
        .expect("insert");
    q.cursor = first.next_cursor;
    let mut rest = Vec::new();
    loop {
        let page = store.list(&q).await.expect("list");
        rest.extend(page.items.into_iter().map(|s| s.id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    // `aardvark` sorts before the cursor: not seen; `cobra` after it: seen, in place.
    assert_eq!(rest, ["o2", "o6", "o0", "o4"]);
    // A cursor of another sort is not accepted.
    q.sort = None;
    assert!(store.list(&q).await.is_err());
}

/// Oldest first, label and state filters, cursor pages, `destroyed` hidden by default.
pub async fn sandboxes_list_filters_and_pages(store: &impl AllStores) {
    for i in 0..5 {
        let team = if i % 2 == 0 { "a" } else { "b" };
        let mut s = sandbox(
            &format!("s{i}"),
            &format!("n{i}"),
            &[("team", team), ("k", "v")],
        );
        if i == 4 {
            s.state = SandboxState::Destroyed;
        }
        if i == 3 {
            s.state = SandboxState::Stopped;
        }
        store.insert(&s).await.expect("insert");
    }
    let mut q = ListQuery {
        limit: 100,
        ..Default::default()
    };
    let all = store.list(&q).await.expect("list");
    assert_eq!(ids(&all.items), ["s0", "s1", "s2", "s3"]);
    assert!(all.next_cursor.is_none());

    q.labels.insert("team".into(), "a".into());
    assert_eq!(
        ids(&store.list(&q).await.expect("list").items),
        ["s0", "s2"]
    );
    q.labels.insert("k".into(), "other".into());
    assert!(store.list(&q).await.expect("list").items.is_empty());
    q.labels.clear();

    // Id and name prefixes, ignoring ASCII case; `%` and `_` are plain characters.
    q.name_prefix = Some("N".into());
    assert_eq!(
        ids(&store.list(&q).await.expect("list").items),
        ["s0", "s1", "s2", "s3"]
    );
    q.name_prefix = Some("n2".into());
    assert_eq!(ids(&store.list(&q).await.expect("list").items), ["s2"]);
    q.name_prefix = Some("n%".into());
    assert!(store.list(&q).await.expect("list").items.is_empty());
    q.name_prefix = None;
    q.id_prefix = Some("S1".into());
    assert_eq!(ids(&store.list(&q).await.expect("list").items), ["s1"]);
    q.id_prefix = Some("s_".into());
    assert!(store.list(&q).await.expect("list").items.is_empty());
    q.id_prefix = None;

    q.states = vec![SandboxState::Destroyed, SandboxState::Stopped];
    assert_eq!(
        ids(&store.list(&q).await.expect("list").items),
        ["s3", "s4"]
    );
    q.states.clear();

    q.limit = 2;
    let p1 = store.list(&q).await.expect("list");
    assert_eq!(ids(&p1.items), ["s0", "s1"]);
    q.cursor = p1.next_cursor.clone();
    assert!(q.cursor.is_some());
    let p2 = store.list(&q).await.expect("list");
    assert_eq!(ids(&p2.items), ["s2", "s3"]);
    // The destroyed one after s3 does not make another page.
    assert!(p2.next_cursor.is_none(), "cursor {:?}", p2.next_cursor);

    // A page boundary that falls exactly at the end of the matches.
    q.limit = 4;
    q.cursor = None;
    let exact = store.list(&q).await.expect("list");
    assert_eq!(exact.items.len(), 4);
    assert!(exact.next_cursor.is_none());

    // A cursor survives the removal of the sandbox it points at.
    q.limit = 1;
    let first = store.list(&q).await.expect("list");
    store.remove("s0").await.expect("remove");
    q.cursor = first.next_cursor;
    assert_eq!(ids(&store.list(&q).await.expect("list").items), ["s1"]);

    // A limit of 0 is read as 1.
    q.limit = 0;
    q.cursor = None;
    assert_eq!(store.list(&q).await.expect("list").items.len(), 1);

    q.cursor = Some("not-a-number".into());
    assert!(matches!(store.list(&q).await, Err(StoreError::Corrupt(_))));
}

/// Keys are kept by hash, added once.
pub async fn api_keys(store: &impl AllStores) {
    assert_eq!(store.count_keys().await.expect("count"), 0);
    store.add_key("ci", "h1").await.expect("add");
    store.add_key("ci again", "h1").await.expect("add twice");
    store.add_key("dev", "h2").await.expect("add");
    assert_eq!(store.count_keys().await.expect("count"), 2);
    assert!(store.has_key("h1").await.expect("has"));
    assert!(!store.has_key("h3").await.expect("has"));
}

/// Preview tokens: stable, only for recorded sandboxes, expire, purge, go with the sandbox.
pub async fn preview_tokens(store: &impl AllStores) {
    assert_eq!(store.preview_token("s", "t1").await.expect("token"), None);
    store.insert(&sandbox("s", "s", &[])).await.expect("insert");
    assert_eq!(
        store.preview_token("s", "t1").await.expect("token"),
        Some("t1".into())
    );
    assert_eq!(
        store.preview_token("s", "t2").await.expect("token"),
        Some("t1".into())
    );

    let tok = SignedPreviewToken {
        token: "sig".into(),
        sandbox_id: "s".into(),
        port: 3000,
        expires_at_ms: 10_000,
    };
    store.add_signed_token(&tok).await.expect("add");
    assert!(matches!(
        store.add_signed_token(&tok).await,
        Err(StoreError::Backend(_))
    ));
    let orphan = SignedPreviewToken {
        token: "orphan".into(),
        sandbox_id: "nobody".into(),
        ..tok.clone()
    };
    assert!(store.add_signed_token(&orphan).await.is_err());
    assert_eq!(
        store.signed_token("sig").await.expect("get"),
        Some(tok.clone())
    );
    assert!(store.signed_token("none").await.expect("get").is_none());

    assert!(
        !store
            .expire_signed_token("s", 3001, "sig", 5)
            .await
            .expect("expire")
    );
    assert!(
        !store
            .expire_signed_token("other", 3000, "sig", 5)
            .await
            .expect("expire")
    );
    assert!(
        store
            .expire_signed_token("s", 3000, "sig", 20_000)
            .await
            .expect("expire")
    );
    // Never later than it was.
    assert_eq!(
        store
            .signed_token("sig")
            .await
            .expect("get")
            .map(|t| t.expires_at_ms),
        Some(10_000)
    );
    assert!(
        store
            .expire_signed_token("s", 3000, "sig", 5_000)
            .await
            .expect("expire")
    );
    assert_eq!(
        store
            .signed_token("sig")
            .await
            .expect("get")
            .map(|t| t.expires_at_ms),
        Some(5_000)
    );

    store
        .add_signed_token(&SignedPreviewToken {
            token: "later".into(),
            expires_at_ms: 9_000,
            ..tok.clone()
        })
        .await
        .expect("add");
    assert_eq!(store.purge_signed_tokens(5_000).await.expect("purge"), 0);
    assert_eq!(store.purge_signed_tokens(5_001).await.expect("purge"), 1);
    assert!(store.signed_token("sig").await.expect("get").is_none());

    store.remove("s").await.expect("remove");
    assert!(store.signed_token("later").await.expect("get").is_none());
    store
        .insert(&sandbox("s", "s", &[]))
        .await
        .expect("insert again");
    assert_eq!(
        store.preview_token("s", "t3").await.expect("token"),
        Some("t3".into())
    );
}

/// SSH access: only for recorded sandboxes, found by hash, revoked one or all per sandbox
/// (never another sandbox's), purged after expiry, gone with the sandbox.
pub async fn ssh_access(store: &impl AllStores) {
    let grant = |id: &str, sandbox: &str, hash: &str, expires_at_ms: i64| SshAccess {
        id: id.into(),
        sandbox_id: sandbox.into(),
        token_hash: hash.into(),
        created_at_ms: 1_000,
        expires_at_ms,
    };
    assert!(
        !store
            .add_ssh_access(&grant("g0", "a", "h0", 10_000))
            .await
            .expect("add for no sandbox")
    );
    assert!(store.ssh_access("h0").await.expect("get").is_none());
    store.insert(&sandbox("a", "a", &[])).await.expect("insert");
    store.insert(&sandbox("b", "b", &[])).await.expect("insert");
    for g in [
        grant("g1", "a", "h1", 10_000),
        grant("g2", "a", "h2", 20_000),
        grant("g3", "b", "h3", 30_000),
        grant("g4", "b", "h4", 5_000),
    ] {
        assert!(store.add_ssh_access(&g).await.expect("add"));
    }
    // A hash is one grant.
    assert!(
        store
            .add_ssh_access(&grant("g5", "b", "h1", 10_000))
            .await
            .is_err()
    );
    assert_eq!(
        store.ssh_access("h1").await.expect("get"),
        Some(grant("g1", "a", "h1", 10_000))
    );
    // Another sandbox's token is not revoked through this one.
    assert_eq!(
        store
            .revoke_ssh_access("a", Some("h3"))
            .await
            .expect("revoke"),
        0
    );
    assert!(store.ssh_access("h3").await.expect("get").is_some());
    assert_eq!(
        store
            .revoke_ssh_access("a", Some("h1"))
            .await
            .expect("revoke"),
        1
    );
    assert!(store.ssh_access("h1").await.expect("get").is_none());
    assert!(store.ssh_access("h2").await.expect("get").is_some());
    assert_eq!(store.revoke_ssh_access("a", None).await.expect("revoke"), 1);
    assert!(store.ssh_access("h2").await.expect("get").is_none());
    assert!(store.ssh_access("h3").await.expect("get").is_some());
    // Purge: strictly before.
    assert_eq!(store.purge_ssh_access(5_000).await.expect("purge"), 0);
    assert_eq!(store.purge_ssh_access(5_001).await.expect("purge"), 1);
    assert!(store.ssh_access("h4").await.expect("get").is_none());
    // Gone with the sandbox.
    store.remove("b").await.expect("remove");
    assert!(store.ssh_access("h3").await.expect("get").is_none());
    store.insert(&sandbox("b", "b", &[])).await.expect("again");
    assert!(store.ssh_access("h3").await.expect("get").is_none());
}

/// Volumes: live names unique per organization, freed on delete; usage by sandboxes.
pub async fn volumes(store: &impl AllStores) {
    store
        .insert_volume(&volume("v1", "data", "o"))
        .await
        .expect("insert");
    store
        .insert_volume(&volume("v2", "data", "other-org"))
        .await
        .expect("insert");
    assert!(matches!(
        store.insert_volume(&volume("v3", "data", "o")).await,
        Err(StoreError::NameTaken(n)) if n == "data"
    ));
    assert_eq!(
        store.volume("v1").await.expect("get").map(|v| v.name),
        Some("data".into())
    );
    assert!(store.volume("nope").await.expect("get").is_none());
    assert_eq!(
        store
            .volume_by_name("o", "data")
            .await
            .expect("get")
            .map(|v| v.id),
        Some("v1".into())
    );

    let mut v1 = volume("v1", "data", "o");
    v1.state = VolumeState::Deleted;
    v1.error_reason = Some("gone".into());
    store.update_volume(&v1).await.expect("update");
    assert!(
        store
            .volume_by_name("o", "data")
            .await
            .expect("get")
            .is_none()
    );
    store
        .insert_volume(&volume("v3", "data", "o"))
        .await
        .expect("name freed");
    let live: Vec<String> = store
        .list_volumes("o", false)
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(live, ["v3"]);
    let every: Vec<String> = store
        .list_volumes("o", true)
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(every, ["v1", "v3"]);
    assert_eq!(
        store
            .volume("v1")
            .await
            .expect("get")
            .and_then(|v| v.error_reason),
        Some("gone".into())
    );

    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
    store.touch_volume("v3", at).await.expect("touch");
    assert_eq!(
        store
            .volume("v3")
            .await
            .expect("get")
            .and_then(|v| v.last_used_at),
        Some(at)
    );

    let mount = |id: &str| VolumeMount {
        volume_id: id.into(),
        mount_path: "/data".into(),
        subpath: None,
    };
    let mut a = sandbox("a", "a", &[]);
    a.volumes = vec![mount("v3")];
    let mut b = sandbox("b", "bee", &[]);
    b.volumes = vec![mount("v2"), mount("v3")];
    let mut c = sandbox("c", "c", &[]);
    c.volumes = vec![mount("v3")];
    c.state = SandboxState::Destroyed;
    for s in [&a, &b, &c] {
        store.insert(s).await.expect("insert");
    }
    assert_eq!(
        store.sandboxes_using_volume("v3").await.expect("users"),
        [
            ("a".to_owned(), "a".to_owned()),
            ("b".to_owned(), "bee".to_owned())
        ]
    );
    assert!(
        store
            .sandboxes_using_volume("v1")
            .await
            .expect("users")
            .is_empty()
    );
}

/// Snapshots: unique names, lookups by id before name, oldest first, partial updates.
pub async fn snapshots(store: &impl AllStores) {
    store
        .insert_snapshot(&snapshot("i2", "later", 2_000))
        .await
        .expect("insert");
    store
        .insert_snapshot(&snapshot("i1", "i2", 1_000))
        .await
        .expect("insert");
    store
        .insert_snapshot(&snapshot("i3", "tie", 2_000))
        .await
        .expect("insert");
    assert!(matches!(
        store.insert_snapshot(&snapshot("i4", "later", 3_000)).await,
        Err(StoreError::NameTaken(n)) if n == "later"
    ));
    assert!(matches!(
        store.insert_snapshot(&snapshot("i1", "fresh", 3_000)).await,
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        store.get_snapshot("i2").await.expect("get").map(|s| s.name),
        Some("later".into())
    );
    assert_eq!(
        store.get_snapshot("tie").await.expect("get").map(|s| s.id),
        Some("i3".into())
    );
    let names: Vec<String> = store
        .list_snapshots()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["i2", "later", "tie"]);

    // `general` is never stored; only some fields change on update.
    let mut s = snapshot("i3", "renamed", 2_000);
    s.general = true;
    s.state = SnapshotState::Active;
    s.size = Some(42);
    s.error_reason = Some("x".into());
    s.updated_at_ms = 5_000;
    s.last_used_at_ms = Some(6_000);
    s.cpu = 9;
    store.update_snapshot(&s).await.expect("update");
    let got = store
        .get_snapshot("i3")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got.name, "tie");
    assert_eq!(got.cpu, 1);
    assert!(!got.general);
    assert_eq!(
        (
            got.state,
            got.size,
            got.error_reason,
            got.updated_at_ms,
            got.last_used_at_ms
        ),
        (
            SnapshotState::Active,
            Some(42),
            Some("x".into()),
            5_000,
            Some(6_000)
        )
    );
    assert_eq!(got.entrypoint, ["sleep", "infinity"]);

    store.remove_snapshot("i3").await.expect("remove");
    assert!(store.get_snapshot("tie").await.expect("get").is_none());
    store
        .insert_snapshot(&snapshot("i5", "tie", 1))
        .await
        .expect("name freed");
}

/// Warm pools: one per (snapshot, target, shape), listed oldest first, resized and deleted.
pub async fn warm_pools(store: &impl AllStores) {
    let pool = |id: &str, snapshot: &str, cpu: u32, at: i64| WarmPoolRecord {
        id: id.into(),
        snapshot: snapshot.into(),
        target: "us".into(),
        size: 2,
        cpu,
        memory_gib: 1,
        disk_gib: 3,
        os_user: "daytona".into(),
        error_reason: None,
        created_at_ms: at,
        updated_at_ms: at,
    };
    assert!(store.warm_pools().await.expect("list").is_empty());
    assert!(
        store
            .add_warm_pool(&pool("p2", "host", 1, 20))
            .await
            .expect("add")
    );
    assert!(
        store
            .add_warm_pool(&pool("p1", "img", 1, 10))
            .await
            .expect("add")
    );
    assert!(
        store
            .add_warm_pool(&pool("p3", "host", 2, 30))
            .await
            .expect("add")
    );
    // The same key under another id, and the same id: refused, nothing stored.
    assert!(
        !store
            .add_warm_pool(&pool("p4", "host", 1, 40))
            .await
            .expect("add")
    );
    assert!(
        !store
            .add_warm_pool(&pool("p1", "other", 1, 40))
            .await
            .expect("add")
    );
    let ids: Vec<String> = store
        .warm_pools()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["p1", "p2", "p3"]);
    let mut p = pool("p2", "host", 1, 20);
    p.size = 0;
    p.error_reason = Some("no image".into());
    p.updated_at_ms = 50;
    assert!(store.update_warm_pool(&p).await.expect("update"));
    assert!(
        !store
            .update_warm_pool(&pool("nope", "host", 1, 1))
            .await
            .expect("update")
    );
    let got = store.warm_pools().await.expect("list");
    assert_eq!(got[1], p);
    assert!(store.delete_warm_pool("p2").await.expect("delete"));
    assert!(!store.delete_warm_pool("p2").await.expect("delete"));
    // Its key is free again.
    assert!(
        store
            .add_warm_pool(&pool("p5", "host", 1, 60))
            .await
            .expect("add")
    );
    assert_eq!(store.warm_pools().await.expect("list").len(), 3);
}
