//! The control plane through corral-engine's public API (`lifecycle::*`, `reconciler::*`) over
//! the fakes: lifecycle timers with short minutes, failures, hangs, start-up reconciliation.

use std::time::Duration;

use corral_core::{SandboxState, SandboxStore};
use corral_engine::{lifecycle, reconciler};
use corral_testing::{Failure, FakeRuntime, MemoryStore, Op, TestApp};
use serde_json::json;

const MINUTE: Duration = Duration::from_millis(20);

fn fast() -> TestApp {
    TestApp::builder().lifecycle_minute(MINUTE).build()
}

async fn state_of(app: &TestApp, id: &str) -> Option<SandboxState> {
    app.store.get(id).await.expect("store").map(|s| s.state)
}

async fn create(app: &TestApp, body: serde_json::Value) -> String {
    let s = app.create_sandbox(&body).await;
    s["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn auto_stop_after_idle_minutes() {
    let app = fast();
    let idle = create(&app, json!({"autoStopInterval": 1})).await;
    let never = create(&app, json!({"autoStopInterval": 0})).await;
    let long = create(&app, json!({"autoStopInterval": 100_000})).await;
    tokio::time::sleep(MINUTE * 2).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    assert_eq!(state_of(&app, &idle).await, Some(SandboxState::Stopped));
    assert_eq!(state_of(&app, &never).await, Some(SandboxState::Started));
    assert_eq!(state_of(&app, &long).await, Some(SandboxState::Started));
    assert_eq!(app.runtime.calls_of(Op::Stop), std::slice::from_ref(&idle));
    assert!(!app.runtime.running(&idle));
}

#[tokio::test]
async fn activity_postpones_auto_stop() {
    let app = fast();
    let id = create(&app, json!({"autoStopInterval": 5})).await;
    for _ in 0..8 {
        tokio::time::sleep(MINUTE).await;
        app.post_empty(&format!("/api/sandbox/{id}/last-activity"))
            .await
            .expect(201);
        reconciler::reconcile_once(app.state()).await.expect("pass");
    }
    assert_eq!(state_of(&app, &id).await, Some(SandboxState::Started));
    // The flushed activity is in the record.
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert!(rec.last_activity_at > rec.created_at);
}

#[tokio::test]
async fn auto_archive_then_auto_delete() {
    let app = fast();
    let archive = create(
        &app,
        json!({"autoArchiveInterval": 1, "autoDeleteInterval": -1}),
    )
    .await;
    let delete = create(
        &app,
        json!({"autoArchiveInterval": 50, "autoDeleteInterval": 1}),
    )
    .await;
    for id in [&archive, &delete] {
        app.post_empty(&format!("/api/sandbox/{id}/stop"))
            .await
            .expect(200);
    }
    tokio::time::sleep(MINUTE * 2).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    assert_eq!(state_of(&app, &archive).await, Some(SandboxState::Archived));
    assert!(app.runtime.sandbox(&archive).is_some_and(|s| s.archived));
    assert_eq!(state_of(&app, &delete).await, None, "auto-deleted");
    assert!(app.runtime.sandbox(&delete).is_none());
}

#[tokio::test]
async fn auto_delete_zero_deletes_on_stop() {
    let app = fast();
    let id = create(&app, json!({"autoDeleteInterval": 0})).await;
    let mut s = app.store.get(&id).await.expect("store").expect("record");
    let exists = lifecycle::stop(app.state(), &mut s).await.expect("stop");
    assert!(!exists);
    assert_eq!(state_of(&app, &id).await, None);
    assert_eq!(app.runtime.calls_of(Op::Destroy), [id]);
}

#[tokio::test]
async fn a_start_the_runtime_fails_is_error_with_its_reason() {
    let app = fast();
    let id = create(&app, json!({})).await;
    app.post_empty(&format!("/api/sandbox/{id}/stop"))
        .await
        .expect(200);
    app.runtime
        .fail_once_for(Op::Start, &id, Failure::Invalid("image is gone".into()));
    let mut s = app.store.get(&id).await.expect("store").expect("record");
    let err = lifecycle::start(app.state(), &mut s)
        .await
        .expect_err("start fails");
    assert_eq!(err.kind, corral_engine::ErrorKind::Invalid);
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert_eq!(rec.state, SandboxState::Error);
    assert_eq!(
        rec.error_reason.as_deref(),
        Some("the sandbox failed to start: image is gone")
    );
    // Once only: the next start works and clears the reason.
    let mut s = rec;
    lifecycle::start(app.state(), &mut s).await.expect("start");
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert_eq!((rec.state, rec.error_reason), (SandboxState::Started, None));
}

#[tokio::test]
async fn an_exited_init_is_marked_error() {
    let app = fast();
    let id = create(&app, json!({})).await;
    app.runtime.kill(&id);
    reconciler::reconcile_once(app.state()).await.expect("pass");
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert_eq!(rec.state, SandboxState::Error);
    assert_eq!(
        rec.error_reason.as_deref(),
        Some("the sandbox's init process exited")
    );
}

#[tokio::test]
async fn a_hanging_stop_does_not_block_other_sandboxes() {
    let app = fast();
    let stuck = create(&app, json!({"name": "stuck"})).await;
    let other = create(&app, json!({"name": "other"})).await;
    let hang = app.runtime.hang_for(Op::Stop, &stuck);
    let state = app.state().clone();
    let stuck_id = stuck.clone();
    let task = tokio::spawn(async move {
        let mut s = state
            .store
            .get(&stuck_id)
            .await
            .expect("store")
            .expect("record");
        let _guard = state.locks.lock(&stuck_id).await;
        lifecycle::stop(&state, &mut s).await.map(|_| ())
    });
    // Wait for the stop to reach the runtime.
    tokio::time::timeout(Duration::from_secs(5), async {
        while app.runtime.count(Op::Stop) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the stop reached the runtime");
    let quick = tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(
            app.get("/api/sandbox/stuck").await.expect(200)["state"],
            "stopping"
        );
        let r = app.post_empty("/api/sandbox/other/stop").await;
        assert_eq!(r.expect(200)["state"], "stopped");
        app.post_empty("/api/sandbox/other/start").await.expect(200);
        create(&app, json!({"name": "third"})).await
    })
    .await;
    assert!(quick.is_ok(), "other sandboxes waited for the hung stop");
    assert!(!task.is_finished());
    hang.release();
    task.await.expect("joined").expect("stop");
    assert_eq!(state_of(&app, &stuck).await, Some(SandboxState::Stopped));
    assert_eq!(state_of(&app, &other).await, Some(SandboxState::Started));
}

#[tokio::test]
async fn a_failed_teardown_is_retried_by_the_reconciler() {
    let app = fast();
    let id = create(&app, json!({})).await;
    app.runtime
        .fail_once_for(Op::Destroy, &id, Failure::Host("busy".into()));
    app.delete(&format!("/api/sandbox/{id}")).await.expect(200);
    app.state().teardowns.wait().await;
    assert_eq!(state_of(&app, &id).await, Some(SandboxState::Destroying));
    reconciler::reconcile_once(app.state()).await.expect("pass");
    assert_eq!(state_of(&app, &id).await, None);
    assert_eq!(app.runtime.calls_of(Op::Destroy), [id.clone(), id]);
}

#[tokio::test]
async fn restart_reconciles_recorded_sandboxes() {
    let runtime = FakeRuntime::new();
    let store = MemoryStore::new();
    let before = TestApp::builder()
        .runtime(runtime.clone())
        .store(store.clone())
        .build();
    let alive = create(&before, json!({"name": "alive"})).await;
    let died = create(&before, json!({"name": "died"})).await;
    let stopping = create(&before, json!({"name": "stopping"})).await;
    // The server "crashed" mid-stop, one init died meanwhile, and a pooled sandbox was left.
    let mut s = store.get(&stopping).await.expect("store").expect("record");
    s.state = SandboxState::Stopping;
    store.update(&s).await.expect("update");
    runtime.kill(&died);
    runtime.plant("leftover", true);
    drop(before);

    let after = TestApp::builder()
        .runtime(runtime.clone())
        .store(store.clone())
        .build();
    reconciler::on_start(after.state()).await.expect("on_start");
    assert_eq!(state_of(&after, &alive).await, Some(SandboxState::Started));
    let rec = store.get(&died).await.expect("store").expect("record");
    assert_eq!(rec.state, SandboxState::Error);
    assert_eq!(
        rec.error_reason.as_deref(),
        Some("the sandbox was not running when the server started")
    );
    assert_eq!(
        state_of(&after, &stopping).await,
        Some(SandboxState::Stopped)
    );
    assert!(
        runtime.sandbox("leftover").is_none(),
        "leftovers are removed"
    );
    let adopted = runtime.calls_of(Op::Adopt);
    assert!(adopted.contains(&alive) && adopted.contains(&died));
    // The errored one recovers.
    after
        .post_empty("/api/sandbox/died/recover")
        .await
        .expect(200);
    assert_eq!(state_of(&after, &died).await, Some(SandboxState::Started));
}

#[tokio::test]
async fn the_warm_pool_serves_a_default_create() {
    let app = TestApp::builder().pool_size(1).build();
    let filler = tokio::spawn(corral_engine::pool::WarmPool::fill_forever(
        app.state().engine.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(5), async {
        while app.state().pool.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the pool filled");
    let pooled = app.runtime.calls_of(Op::Start)[0].clone();
    let s = app.create_sandbox(&json!({"name": "from-pool"})).await;
    assert_eq!(s["id"], pooled.as_str());
    // A create of another shape starts its own.
    let other = app.create_sandbox(&json!({"env": {"A": "1"}})).await;
    assert_ne!(other["id"], pooled.as_str());
    corral_engine::pool::WarmPool::drain(app.state(), filler).await;
    assert!(app.state().pool.is_empty());
}

/// Every operation of the engine's one entry point, applied directly (no HTTP): each
/// records what the table says and calls the runtime as expected.
#[tokio::test]
async fn every_operation_goes_through_apply() {
    use corral_engine::{NetworkChange, Op as E, Resize, Timer};
    let app = TestApp::new();
    let engine = &app.state().engine;
    let id = create(&app, json!({"labels": {"a": "1"}})).await;
    let apply = |op: E| engine.apply(&id, op);

    let s = apply(E::SetLabels([("b".into(), "2".into())].into()))
        .await
        .expect("labels");
    assert_eq!(s.labels.get("b").map(String::as_str), Some("2"));
    assert!(!s.labels.contains_key("a"));
    let s = apply(E::SetTimer(Timer::Stop, 7)).await.expect("timer");
    assert_eq!(s.auto_stop_interval, 7);
    let s = apply(E::SetTimer(Timer::Delete, -5)).await.expect("timer");
    assert_eq!(
        s.auto_delete_interval, -1,
        "any negative interval means never"
    );
    let s = apply(E::SetPublic(true)).await.expect("public");
    assert!(s.public);
    let s = apply(E::SigningKey {
        key: "k1".into(),
        rotate: false,
    })
    .await
    .expect("key");
    assert_eq!(s.signing_key.as_deref(), Some("k1"));
    let s = apply(E::SigningKey {
        key: "k2".into(),
        rotate: false,
    })
    .await
    .expect("key");
    assert_eq!(s.signing_key.as_deref(), Some("k1"), "kept until rotated");
    let s = apply(E::SigningKey {
        key: "k3".into(),
        rotate: true,
    })
    .await
    .expect("rotate");
    assert_eq!(s.signing_key.as_deref(), Some("k3"));
    let s = apply(E::SetNetwork(NetworkChange {
        block_all: Some(true),
        allow_list: None,
    }))
    .await
    .expect("network");
    assert!(s.network_block_all);
    assert_eq!(app.runtime.count(Op::SetEgress), 1);
    let s = apply(E::Resize(Resize {
        cpu: Some(2),
        ..Resize::default()
    }))
    .await
    .expect("resize");
    assert_eq!(s.resources.cpu, 2);
    let err = apply(E::Resize(Resize {
        disk: Some(1),
        ..Resize::default()
    }))
    .await
    .expect_err("a smaller disk is refused");
    assert_eq!(
        err.kind,
        corral_engine::ErrorKind::Invalid,
        "{}",
        err.message
    );

    let s = apply(E::Snapshot {
        name: "snap-1".into(),
    })
    .await
    .expect("snapshot");
    assert_eq!(
        s.state,
        SandboxState::Started,
        "back in the state it was in"
    );
    let fork = apply(E::Fork {
        name: Some("the-fork".into()),
    })
    .await
    .expect("fork");
    assert_eq!(
        (fork.name.as_str(), fork.state),
        ("the-fork", SandboxState::Started)
    );
    assert_ne!(fork.id, id);

    let s = apply(E::Stop).await.expect("stop");
    assert_eq!(s.state, SandboxState::Stopped);
    let s = apply(E::Archive).await.expect("archive");
    assert_eq!(s.state, SandboxState::Archived);
    let s = apply(E::Start).await.expect("start");
    assert_eq!(s.state, SandboxState::Started);
    // Recover is refused outside `error` with the table's reason.
    let err = apply(E::Recover { skip_start: false })
        .await
        .expect_err("recover is refused outside error");
    assert_eq!(
        err.kind,
        corral_engine::ErrorKind::Invalid,
        "{}",
        err.message
    );
    let s = apply(E::Delete).await.expect("delete");
    assert_eq!(s.state, SandboxState::Destroying);
    app.state().engine.teardowns.wait().await;
    assert_eq!(state_of(&app, &id).await, None);
    assert_eq!(app.runtime.calls_of(Op::Destroy), std::slice::from_ref(&id));
    // An unknown sandbox is a not-found for every operation.
    let err = engine
        .apply("nope", E::Start)
        .await
        .expect_err("no such sandbox");
    assert_eq!(err.kind, corral_engine::ErrorKind::NotFound);
}
