//! Pause and resume, wake on request, auto-pause and the time to live, through the router
//! and the reconciler over the fakes.

use std::time::Duration;

use corral_core::SandboxStore;
use corral_engine::reconciler;
use corral_testing::{Failure, Op, TestApp};
use serde_json::json;

const MINUTE: Duration = Duration::from_millis(20);

fn fast() -> TestApp {
    TestApp::builder().lifecycle_minute(MINUTE).build()
}

#[tokio::test]
async fn pause_and_resume() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "p"})).await;
    let id = s["id"].as_str().expect("id");
    let v = app.post_empty("/api/sandbox/p/pause").await;
    assert_eq!(v.expect(200)["state"], "paused");
    assert_eq!(v.expect(200)["desiredState"], "paused");
    assert_eq!(app.runtime.calls_of(Op::Pause), [id]);
    assert!(
        app.runtime
            .sandbox(id)
            .is_some_and(|s| s.paused && s.running)
    );
    // Idempotent: no second freeze.
    assert_eq!(
        app.post_empty("/api/sandbox/p/pause").await.expect(200)["state"],
        "paused"
    );
    assert_eq!(app.runtime.calls_of(Op::Pause).len(), 1);
    // Its files cannot be copied while frozen.
    app.post("/api/sandbox/p/fork", &json!({}))
        .await
        .expect_error(409);
    // Start resumes the same processes: a thaw, not a new start.
    let starts = app.runtime.calls_of(Op::Start).len();
    assert_eq!(
        app.post_empty("/api/sandbox/p/start").await.expect(200)["state"],
        "started"
    );
    assert_eq!(app.runtime.calls_of(Op::Resume), [id]);
    assert_eq!(app.runtime.calls_of(Op::Start).len(), starts);
    assert!(app.runtime.sandbox(id).is_some_and(|s| !s.paused));
    // A paused sandbox can be stopped and deleted.
    app.post_empty("/api/sandbox/p/pause").await.expect(200);
    assert_eq!(
        app.post_empty("/api/sandbox/p/stop").await.expect(200)["state"],
        "stopped"
    );
    // Only a started sandbox can be paused.
    let v = app.post_empty("/api/sandbox/p/pause").await;
    assert_eq!(v.expect_error(400)["code"], "SANDBOX_NOT_STARTED");
    assert!(
        v.text.contains("only a started sandbox can be paused"),
        "{}",
        v.text
    );
    app.post_empty("/api/sandbox/ghost/pause")
        .await
        .expect_error(404);
}

#[tokio::test]
async fn a_failed_freeze_leaves_it_started() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "f"})).await;
    app.runtime
        .fail(Op::Pause, Failure::Host("freezer stuck".into()));
    app.post_empty("/api/sandbox/f/pause")
        .await
        .expect_error(500);
    let v = app.get("/api/sandbox/f").await;
    assert_eq!(v.expect(200)["state"], "started");
    assert_eq!(v.expect(200)["desiredState"], "started");
}

#[tokio::test]
async fn a_toolbox_call_wakes_a_paused_sandbox_but_not_a_stopped_one() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "w"})).await;
    let id = s["id"].as_str().expect("id");
    app.post_empty("/api/sandbox/w/pause").await.expect(200);
    // The fake has no agent behind the socket: the proxy answers 502, but only after the
    // sandbox was resumed (the client would have seen its answer).
    let r = app.get(&format!("/toolbox/{id}/files?path=/")).await;
    assert_eq!(r.status.as_u16(), 502, "{}", r.text);
    assert_eq!(app.runtime.calls_of(Op::Resume), [id]);
    assert_eq!(
        app.get("/api/sandbox/w").await.expect(200)["state"],
        "started"
    );
    // Stopped: refused by default, with what to do.
    app.post_empty("/api/sandbox/w/stop").await.expect(200);
    let r = app.get(&format!("/toolbox/{id}/files?path=/")).await;
    assert_eq!(r.expect_error(409)["code"], "SANDBOX_NOT_STARTED");
    assert!(r.text.contains("wake-on-request"), "{}", r.text);
    assert_eq!(
        app.get("/api/sandbox/w").await.expect(200)["state"],
        "stopped"
    );
    // The sandbox's label opts in: the call starts it.
    app.put(
        "/api/sandbox/w/labels",
        &json!({"labels": {"corral.dev/wake-on-request": "true"}}),
    )
    .await
    .expect(200);
    let r = app.get(&format!("/toolbox/{id}/files?path=/")).await;
    assert_eq!(r.status.as_u16(), 502, "{}", r.text);
    assert_eq!(
        app.get("/api/sandbox/w").await.expect(200)["state"],
        "started"
    );
}

#[tokio::test]
async fn auto_pause_after_idle_minutes_and_auto_stop_of_a_paused_sandbox() {
    let app = fast();
    let idle = app
        .create_sandbox(&json!({"autoPauseInterval": 1, "autoStopInterval": 0}))
        .await;
    let idle = idle["id"].as_str().expect("id").to_owned();
    let both = app
        .create_sandbox(&json!({"autoPauseInterval": 1, "autoStopInterval": 50}))
        .await;
    let both = both["id"].as_str().expect("id").to_owned();
    let never = app.create_sandbox(&json!({"autoStopInterval": 0})).await;
    let never = never["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.get(&format!("/api/sandbox/{idle}")).await.expect(200)["autoPauseInterval"],
        1
    );
    tokio::time::sleep(MINUTE * 2).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    let state = |id: String| {
        let app = &app;
        async move {
            app.store
                .get(&id)
                .await
                .expect("store")
                .map(|s| s.state.as_str())
        }
    };
    assert_eq!(state(idle.clone()).await, Some("paused"));
    assert_eq!(state(both.clone()).await, Some("paused"));
    assert_eq!(state(never.clone()).await, Some("started"));
    // Later, auto-stop ends the paused one that has it (frees its memory).
    tokio::time::sleep(MINUTE * 50).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    assert_eq!(state(idle).await, Some("paused"));
    assert_eq!(state(both).await, Some("stopped"));
}

#[tokio::test]
async fn a_request_in_flight_keeps_auto_pause_away() {
    let app = fast();
    let s = app
        .create_sandbox(&json!({"autoPauseInterval": 1, "autoStopInterval": 1}))
        .await;
    let id = s["id"].as_str().expect("id").to_owned();
    let busy = app.state().activity.begin(&id);
    tokio::time::sleep(MINUTE * 3).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert_eq!(
        rec.state.as_str(),
        "started",
        "busy: neither paused nor stopped"
    );
    // Positive control: once the request ends and the sandbox idles, it pauses.
    drop(busy);
    tokio::time::sleep(MINUTE * 2).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    let rec = app.store.get(&id).await.expect("store").expect("record");
    assert_ne!(rec.state.as_str(), "started");
}

#[tokio::test]
async fn ttl() {
    let app = fast();
    let s = app
        .create_sandbox(&json!({"name": "short", "ttlMinutes": 30}))
        .await;
    let created = time::OffsetDateTime::parse(
        s["createdAt"].as_str().expect("createdAt"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let at = time::OffsetDateTime::parse(
        s["autoDestroyAt"].as_str().expect("autoDestroyAt"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert_eq!(
        at - created,
        time::Duration::try_from(MINUTE * 30).expect("d")
    );
    let long = app
        .create_sandbox(&json!({"name": "long", "ttlMinutes": 1000}))
        .await;
    assert!(long["autoDestroyAt"].is_string());
    let none = app.create_sandbox(&json!({"name": "none"})).await;
    assert!(none.get("autoDestroyAt").is_none(), "{none}");
    // The list filters on it.
    let after = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let v = app
        .get(&format!("/api/sandbox?autoDestroyAtAfter={after}"))
        .await;
    let names: Vec<&str> = v.expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"none"));
    // Set and cleared through the route; bad values refused.
    let v = app.post_empty("/api/sandbox/long/ttl/0").await;
    assert!(v.expect(200).get("autoDestroyAt").is_none());
    for bad in ["-1", "1.5", "x", "99999999"] {
        let r = app
            .post_empty(&format!("/api/sandbox/long/ttl/{bad}"))
            .await;
        r.expect_error(400);
    }
    let r = app.post("/api/sandbox", &json!({"ttlMinutes": -5})).await;
    assert!(
        r.expect_error(400)["message"]
            .as_str()
            .is_some_and(|m| m.contains("ttlMinutes"))
    );
    // Stopped or not, it is deleted when its time is up; the others stay.
    app.post_empty("/api/sandbox/short/stop").await.expect(200);
    tokio::time::sleep(MINUTE * 31).await;
    reconciler::reconcile_once(app.state()).await.expect("pass");
    app.get("/api/sandbox/short").await.expect_error(404);
    app.get("/api/sandbox/long").await.expect(200);
    app.get("/api/sandbox/none").await.expect(200);
}
