//! Warm pool routes (`/api/warm-pools`) and the engine's pools over the fakes: CRUD and
//! validation, filling, claims personalised with the request, shrink and delete tearing
//! sandboxes down, and pools coming back after a restart.

use std::time::Duration;

use corral_testing::{MemoryStore, Op, TestApp};
use http::Method;
use serde_json::{Value, json};

/// Runs the filler for `app` until dropped.
struct Filler(Option<tokio::task::JoinHandle<()>>, corral_engine::Engine);

impl Filler {
    fn start(app: &TestApp) -> Self {
        let engine = app.state().engine.clone();
        Self(
            Some(tokio::spawn(corral_engine::pool::WarmPool::fill_forever(
                engine.clone(),
            ))),
            engine,
        )
    }

    async fn stop(mut self) {
        if let Some(h) = self.0.take() {
            corral_engine::pool::WarmPool::drain(&self.1, h).await;
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

async fn pool_of(app: &TestApp, id: &str) -> Value {
    let all = app.get("/api/warm-pools").await.expect(200).clone();
    all.as_array()
        .expect("a list")
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_size(app: &TestApp, id: &str, n: u64) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while pool_of(app, id).await["currentSize"] != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("pool {id} never reached {n}"));
}

async fn patch(app: &TestApp, path: &str, body: &Value) -> corral_testing::TestResponse {
    app.request(Method::PATCH, path).json(body).send().await
}

async fn py_snapshot(app: &TestApp) {
    app.images.publish("docker.io/library/python:3.12");
    let s = app
        .post(
            "/api/snapshots",
            &json!({"name": "py", "imageName": "docker.io/library/python:3.12"}),
        )
        .await
        .expect(200)
        .clone();
    app.wait_for_snapshot(s["id"].as_str().expect("id"), "active")
        .await;
}

#[tokio::test]
async fn crud_and_validation() {
    let app = TestApp::new();
    assert_eq!(app.get("/api/warm-pools").await.expect(200), &json!([]));
    let p = app
        .post("/api/warm-pools", &json!({"snapshot": "host", "pool": 2}))
        .await
        .expect(201)
        .clone();
    let id = p["id"].as_str().expect("id").to_owned();
    assert_eq!(p["snapshot"], "host");
    assert_eq!(p["target"], "us");
    assert_eq!(p["pool"], 2);
    assert_eq!(p["currentSize"], 0);
    assert_eq!(
        (p["cpu"].clone(), p["mem"].clone(), p["disk"].clone()),
        (json!(1), json!(1), json!(3))
    );
    assert_eq!(p["osUser"], "daytona");
    assert_eq!(p["env"], json!({}));
    assert_eq!(p["errorReason"], Value::Null);
    for k in ["organizationId", "createdAt", "updatedAt"] {
        assert!(p[k].is_string(), "{k}");
    }
    assert_eq!(pool_of(&app, &id).await["pool"], 2);
    // The same snapshot and shape again: 409; another shape is another pool.
    app.post("/api/warm-pools", &json!({"snapshot": "host", "pool": 1}))
        .await
        .expect_error(409);
    let big = app
        .post(
            "/api/warm-pools",
            &json!({"snapshot": "host", "pool": 1.0, "cpu": 2}),
        )
        .await
        .expect(201)
        .clone();
    assert_eq!(big["cpu"], 2);
    // Bad input: 400 naming the field.
    for (body, field) in [
        (json!({"snapshot": "host", "pool": 0}), "pool"),
        (json!({"snapshot": "host", "pool": -1}), "pool"),
        (json!({"snapshot": "host", "pool": 1.5}), "pool"),
        (json!({"snapshot": "host", "pool": "3"}), "pool"),
        (json!({"snapshot": "host", "pool": 101}), "pool"),
        (json!({"snapshot": "host"}), "pool"),
        (json!({"pool": 1}), "snapshot"),
        (json!({"snapshot": "", "pool": 1}), "snapshot"),
        (json!({"snapshot": "nope", "pool": 1}), "snapshot"),
        (
            json!({"snapshot": "host", "pool": 1, "target": "eu"}),
            "target",
        ),
        (json!({"snapshot": "host", "pool": 1, "cpu": 0}), "cpu"),
        (
            json!({"snapshot": "host", "pool": 1, "memory": 5000}),
            "memory",
        ),
        (json!({"snapshot": "host", "pool": 1, "gpu": 1}), "gpu"),
    ] {
        let e = app
            .post("/api/warm-pools", &body)
            .await
            .expect_error(400)
            .clone();
        let msg = e["message"].as_str().expect("message");
        assert!(msg.contains(field), "{body}: {msg}");
    }
    // A snapshot that is not active (here: its pull failed) is refused, not waited for.
    let s = app
        .post(
            "/api/snapshots",
            &json!({"name": "slow", "imageName": "x:1"}),
        )
        .await
        .expect(200)
        .clone();
    app.wait_for_snapshot(s["id"].as_str().expect("id"), "error")
        .await;
    let e = app
        .post("/api/warm-pools", &json!({"snapshot": "slow", "pool": 1}))
        .await
        .expect_error(400)
        .clone();
    assert!(
        e["message"].as_str().expect("message").contains("active"),
        "{e}"
    );
    // All pools together keep at most 200 sandboxes.
    app.post(
        "/api/warm-pools",
        &json!({"snapshot": "host", "pool": 100, "cpu": 3}),
    )
    .await
    .expect(201);
    let e = app
        .post(
            "/api/warm-pools",
            &json!({"snapshot": "host", "pool": 98, "cpu": 4}),
        )
        .await
        .expect_error(400)
        .clone();
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("at most 200"),
        "{e}"
    );
    // Resize and delete.
    let r = patch(&app, &format!("/api/warm-pools/{id}"), &json!({"pool": 5}))
        .await
        .expect(200)
        .clone();
    assert_eq!(r["pool"], 5);
    assert_eq!(pool_of(&app, &id).await["pool"], 5);
    patch(&app, &format!("/api/warm-pools/{id}"), &json!({"pool": -1}))
        .await
        .expect_error(400);
    patch(&app, &format!("/api/warm-pools/{id}"), &json!({"size": 1}))
        .await
        .expect_error(400);
    patch(&app, "/api/warm-pools/nope", &json!({"pool": 1}))
        .await
        .expect_error(404);
    let d = app.delete(&format!("/api/warm-pools/{id}")).await;
    assert_eq!(d.status.as_u16(), 204);
    app.delete(&format!("/api/warm-pools/{id}"))
        .await
        .expect_error(404);
    assert_eq!(pool_of(&app, &id).await, Value::Null);
}

#[tokio::test]
async fn the_default_pool_is_listed_and_fixed() {
    let app = TestApp::builder().pool_size(1).build();
    let d = pool_of(&app, "default").await;
    assert_eq!(d["snapshot"], "host");
    assert_eq!(d["pool"], 1);
    patch(&app, "/api/warm-pools/default", &json!({"pool": 3}))
        .await
        .expect_error(400);
    app.delete("/api/warm-pools/default")
        .await
        .expect_error(400);
    // Its key is taken.
    app.post("/api/warm-pools", &json!({"snapshot": "host", "pool": 1}))
        .await
        .expect_error(409);
}

#[tokio::test]
async fn a_matching_create_claims_and_is_personalised() {
    let app = TestApp::new();
    py_snapshot(&app).await;
    let filler = Filler::start(&app);
    let p = app
        .post("/api/warm-pools", &json!({"snapshot": "py", "pool": 2}))
        .await
        .expect(201)
        .clone();
    let pool = p["id"].as_str().expect("id").to_owned();
    assert_eq!(
        p["osUser"], "root",
        "the image's user, as a create of it gets"
    );
    wait_size(&app, &pool, 2).await;
    let pooled = app.runtime.calls_of(Op::Start);
    assert_eq!(pooled.len(), 2);
    let spec = app
        .runtime
        .sandbox(&pooled[0])
        .and_then(|s| s.spec)
        .expect("spec");
    assert_eq!(spec.image, "docker.io/library/python:3.12");
    assert!(spec.env.is_empty());
    let s = app
        .create_sandbox(&json!({
            "snapshot": "py", "name": "mine", "labels": {"team": "a"},
            "autoStopInterval": 7, "autoArchiveInterval": 9, "autoDeleteInterval": 11,
            "public": true, "networkBlockAll": true, "ttlMinutes": 30,
        }))
        .await;
    let id = s["id"].as_str().expect("id");
    assert!(pooled.iter().any(|p| p == id), "{id} not in {pooled:?}");
    assert_eq!(s["state"], "started");
    assert_eq!(s["name"], "mine");
    assert_eq!(s["snapshot"], "py");
    assert_eq!(s["user"], "root");
    assert_eq!(s["labels"]["team"], "a");
    assert_eq!(
        (
            s["autoStopInterval"].clone(),
            s["autoArchiveInterval"].clone(),
            s["autoDeleteInterval"].clone()
        ),
        (json!(7), json!(9), json!(11))
    );
    assert_eq!(s["public"], true);
    assert_eq!(s["networkBlockAll"], true);
    assert!(s["autoDestroyAt"].is_string(), "{s}");
    assert_eq!(
        app.runtime.sandbox(id).and_then(|s| s.egress),
        Some(corral_core::Egress::BlockAll),
        "the network policy is applied on claim"
    );
    assert_eq!(app.get("/api/sandbox/mine").await.expect(200)["id"], id);
    // The pool refills.
    wait_size(&app, &pool, 2).await;
    let pooled_now = app.runtime.calls_of(Op::Start);
    // Other shapes, an env or another user take the cold path.
    for body in [
        json!({"snapshot": "py", "env": {"A": "1"}}),
        json!({"snapshot": "py", "cpu": 2}),
        json!({"snapshot": "py", "user": "daytona"}),
        json!({}),
    ] {
        let s = app.create_sandbox(&body).await;
        let id = s["id"].as_str().expect("id");
        assert!(
            !pooled_now.iter().any(|p| p == id),
            "{body} was served by the pool"
        );
    }
    // Naming the snapshot by id claims too.
    let snap = app.get("/api/snapshots/py").await.expect(200).clone();
    let s = app
        .create_sandbox(&json!({"snapshot": snap["id"], "user": "root"}))
        .await;
    assert!(
        pooled_now
            .iter()
            .any(|p| p == s["id"].as_str().expect("id"))
    );
    assert_eq!(s["snapshot"], "py");
    filler.stop().await;
}

#[tokio::test]
async fn shrink_and_delete_tear_sandboxes_down() {
    let app = TestApp::new();
    let filler = Filler::start(&app);
    let p = app
        .post(
            "/api/warm-pools",
            &json!({"snapshot": "host", "pool": 3, "memory": 2}),
        )
        .await
        .expect(201)
        .clone();
    let pool = p["id"].as_str().expect("id").to_owned();
    wait_size(&app, &pool, 3).await;
    let started = app.runtime.calls_of(Op::Start);
    assert!(started.iter().all(|id| app.runtime.running(id)));
    let r = patch(
        &app,
        &format!("/api/warm-pools/{pool}"),
        &json!({"pool": 1}),
    )
    .await
    .expect(200)
    .clone();
    assert_eq!(r["currentSize"], 1);
    let running = |ids: &[String]| ids.iter().filter(|id| app.runtime.running(id)).count();
    assert_eq!(running(&started), 1);
    assert_eq!(app.runtime.calls_of(Op::Destroy).len(), 2);
    app.delete(&format!("/api/warm-pools/{pool}")).await;
    assert_eq!(running(&started), 0);
    // Nothing refills a deleted pool.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(app.runtime.calls_of(Op::Start).len(), 3);
    filler.stop().await;
}

#[tokio::test]
async fn pools_survive_a_restart() {
    let store = MemoryStore::new();
    let first = TestApp::builder().store(store.clone()).build();
    let p = first
        .post(
            "/api/warm-pools",
            &json!({"snapshot": "host", "pool": 2, "disk": 5}),
        )
        .await
        .expect(201)
        .clone();
    let id = p["id"].as_str().expect("id").to_owned();
    patch(
        &first,
        &format!("/api/warm-pools/{id}"),
        &json!({"pool": 1}),
    )
    .await
    .expect(200);
    drop(first);
    let second = TestApp::builder().store(store).build();
    assert_eq!(second.get("/api/warm-pools").await.expect(200), &json!([]));
    corral_engine::warm_pools::load(&second.state().engine)
        .await
        .expect("load");
    let back = pool_of(&second, &id).await;
    assert_eq!(back["pool"], 1);
    assert_eq!(back["disk"], 5);
    assert_eq!(back["currentSize"], 0);
    let filler = Filler::start(&second);
    wait_size(&second, &id, 1).await;
    let s = second.create_sandbox(&json!({"disk": 5})).await;
    assert_eq!(s["id"], second.runtime.calls_of(Op::Start)[0].as_str());
    filler.stop().await;
}
