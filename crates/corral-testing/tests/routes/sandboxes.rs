//! Routes of `/api/sandbox`: create, list, get, delete, the lifecycle operations, settings,
//! snapshots and forks, previews and the toolbox proxy.

use super::*;

#[tokio::test]
async fn create_sandbox() {
    let app = TestApp::new();
    let s = app
        .create_sandbox(&json!({
            "name": "box-1", "env": {"A": "1"}, "labels": {"team": "x"},
            "cpu": 2, "memory": 2, "disk": 5, "autoStopInterval": 0,
        }))
        .await;
    assert_eq!(s["name"], "box-1");
    assert_eq!(s["state"], "started");
    assert_eq!(s["desiredState"], "started");
    assert_eq!(s["env"], json!({"A": "1"}));
    assert_eq!(s["labels"], json!({"team": "x"}));
    assert_eq!(
        (s["cpu"].as_u64(), s["memory"].as_u64(), s["disk"].as_u64()),
        (Some(2), Some(2), Some(5))
    );
    assert_eq!(s["autoStopInterval"], 0);
    assert_eq!(s["snapshot"], "host");
    assert_eq!(s["toolboxProxyUrl"], "http://127.0.0.1/toolbox");
    let id = s["id"].as_str().expect("id");
    let started = app.runtime.sandbox(id).expect("started in the runtime");
    assert!(started.running);
    let spec = started.spec.expect("spec");
    assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(spec.resources.cpu, 2);
    // The name is taken now.
    let v = app.post("/api/sandbox", &json!({"name": "box-1"})).await;
    assert_eq!(v.expect_error(409)["code"], "NAME_TAKEN");
    // Defaults.
    let d = app.create_sandbox(&json!({})).await;
    assert_eq!(d["name"], d["id"]);
    assert_eq!(d["user"], "daytona");
    assert_eq!(d["autoStopInterval"], 15);
    // An empty body is `{}`.
    app.request(Method::POST, "/api/sandbox")
        .send()
        .await
        .expect(200);
}

#[tokio::test]
async fn create_sandbox_bad_input() {
    let app = TestApp::new();
    let cases = [
        json!({"cpu": "two"}),
        json!({"cpu": 0}),
        json!({"memory": 100000}),
        json!({"name": "has space"}),
        json!({"name": 5}),
        json!({"gpu": 1}),
        json!({"kvm": true}),
        json!({"env": {"A=B": "x"}}),
        json!({"env": ["A"]}),
        json!({"labels": {"code-toolbox-language": "cobol"}}),
        json!({"domainAllowList": "example.com"}),
        json!({"networkAllowList": "not-a-cidr"}),
        json!({"volumes": [{"volumeId": "v", "mountPath": "relative"}]}),
        json!({"snapshot": "no-such-snapshot"}),
        json!([1, 2]),
    ];
    for body in cases {
        let r = app.post("/api/sandbox", &body).await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", r.text);
        r.expect_error(400);
    }
    for raw in ["{", "{\"name\": }", "null", "\"x\""] {
        let r = app
            .request(Method::POST, "/api/sandbox")
            .raw(raw)
            .send()
            .await;
        assert_eq!(r.status.as_u16(), 400, "{raw}: {}", r.text);
        r.expect_error(400);
    }
    // A volume that does not exist.
    let v = app
        .post(
            "/api/sandbox",
            &json!({"volumes": [{"volumeId": "nope", "mountPath": "/data"}]}),
        )
        .await;
    assert_eq!(v.expect_error(404)["code"], "VOLUME_NOT_FOUND");
    // Nothing was recorded or started.
    assert_eq!(
        app.get("/api/sandbox").await.expect(200)["items"],
        json!([])
    );
    assert!(app.runtime.calls_of(Op::Start).is_empty());
}

#[tokio::test]
async fn create_start_failure_on_the_host_leaves_an_error_sandbox() {
    let app = TestApp::new();
    app.runtime
        .fail(Op::Start, Failure::Host("spawn failed".into()));
    let r = app.post("/api/sandbox", &json!({"name": "broken"})).await;
    let v = r.expect_error(500);
    assert_eq!(v["code"], "INTERNAL_ERROR");
    assert!(
        !r.text.contains("spawn failed"),
        "the cause stays in the log: {}",
        r.text
    );
    let s = app.get("/api/sandbox/broken").await.expect(200).clone();
    assert_eq!(s["state"], "error");
    assert!(
        s["errorReason"]
            .as_str()
            .is_some_and(|m| m.contains("failed to start"))
    );
}

#[tokio::test]
async fn create_start_failure_by_the_request_leaves_nothing() {
    let app = TestApp::new();
    app.runtime
        .fail(Op::Start, Failure::Invalid("no such user".into()));
    let v = app
        .post("/api/sandbox", &json!({"name": "nouser", "user": "ghost"}))
        .await;
    assert_eq!(v.expect_error(400)["message"], "no such user");
    app.get("/api/sandbox/nouser").await.expect_error(404);
    assert_eq!(app.runtime.calls_of(Op::Destroy).len(), 1);
}

#[tokio::test]
async fn get_sandbox_by_id_or_name() {
    let app = TestApp::new();
    let s = app
        .create_sandbox(&json!({"name": "named", "env": {"K": "v"}}))
        .await;
    let by_id = app
        .get(&format!("/api/sandbox/{}", s["id"].as_str().expect("id")))
        .await;
    assert_eq!(by_id.expect(200)["name"], "named");
    assert_eq!(by_id.json["env"], json!({"K": "v"}));
    assert_eq!(
        app.get("/api/sandbox/named").await.expect(200)["id"],
        s["id"]
    );
    let v = app.get("/api/sandbox/missing").await;
    assert_eq!(v.expect_error(404)["code"], "SANDBOX_NOT_FOUND");
}

#[tokio::test]
async fn list_sandboxes() {
    let app = TestApp::new();
    for i in 0..3 {
        let team = if i == 1 { "b" } else { "a" };
        app.create_sandbox(
            &json!({"name": format!("s{i}"), "labels": {"team": team}, "env": {"SECRET": "x"}}),
        )
        .await;
    }
    let all = app.get("/api/sandbox").await.expect(200).clone();
    let names: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s0", "s1", "s2"]);
    assert_eq!(all["nextCursor"], Value::Null);
    assert!(
        all["items"][0].get("env").is_none(),
        "list items carry no env"
    );

    let labels = "/api/sandbox?labels=%7B%22team%22%3A%22a%22%7D";
    let a = app.get(labels).await.expect(200).clone();
    assert_eq!(a["items"].as_array().map(Vec::len), Some(2));

    let p1 = app.get("/api/sandbox?limit=2").await.expect(200).clone();
    assert_eq!(p1["items"].as_array().map(Vec::len), Some(2));
    let cursor = p1["nextCursor"].as_str().expect("a cursor");
    let p2 = app
        .get(&format!("/api/sandbox?limit=2&cursor={cursor}"))
        .await
        .expect(200)
        .clone();
    assert_eq!(p2["items"][0]["name"], "s2");
    assert_eq!(p2["nextCursor"], Value::Null);

    app.post_empty("/api/sandbox/s0/stop").await.expect(200);
    let stopped = app
        .get("/api/sandbox?states=stopped")
        .await
        .expect(200)
        .clone();
    assert_eq!(stopped["items"][0]["name"], "s0");
    assert_eq!(stopped["items"].as_array().map(Vec::len), Some(1));
    let both = app
        .get("/api/sandbox?states=stopped&states[]=started")
        .await
        .expect(200)
        .clone();
    assert_eq!(both["items"].as_array().map(Vec::len), Some(3));

    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "labels=notjson",
        "labels=%5B1%5D",
        "states=sleeping",
        "cursor=abc",
        // What cannot be applied, bad values and unknown parameters are refused by name.
        "sort=color",
        "order=sideways",
        "includeWarm=true",
        "sandboxClasses=small",
        "minCpu=two",
        "isPublic=yes",
        "createdAtAfter=yesterday",
        "nmae=typo",
    ] {
        let r = app.get(&format!("/api/sandbox?{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        let e = r.expect_error(400);
        let key = bad.split(['=', '[']).next().unwrap_or_default();
        if !key.starts_with("limit") && key != "labels" && key != "states" && key != "cursor" {
            assert!(
                e["message"].as_str().unwrap_or_default().contains(key),
                "{e}"
            );
        }
    }

    // The SDK's other filters, in the forms it sends them.
    let count = |q: &'static str| {
        let app = &app;
        async move {
            let page = app
                .get(&format!("/api/sandbox?{q}"))
                .await
                .expect(200)
                .clone();
            page["items"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(count("snapshots=host").await, 3);
    assert_eq!(count("snapshots[]=python%3A3.12").await, 0);
    assert_eq!(count("minCpu=1&maxCpu=1&minMemoryGiB=1").await, 3);
    assert_eq!(count("minDiskGiB=50").await, 0);
    assert_eq!(count("isPublic=false").await, 3);
    assert_eq!(count("isPublic=true").await, 0);
    assert_eq!(count("isRecoverable=true").await, 0);
    assert_eq!(count("regionIds=local").await, 3);
    assert_eq!(count("regionIds=us").await, 0);
    assert_eq!(
        count("createdAtAfter=2020-01-01T00:00:00.000000%2B0000").await,
        3
    );
    assert_eq!(count("createdAtBefore=2020-01-01T00:00:00.000000").await, 0);
    assert_eq!(count("lastEventAfter=2020-01-01T00:00:00Z").await, 3);
    assert_eq!(count("autoDestroyAtAfter=2020-01-01T00:00:00Z").await, 0);
    assert_eq!(count("sort=createdAt&order=asc").await, 3);
    // Sorted, in pages of one: the names come back in order, descending too.
    let sorted = |q: &'static str| {
        let app = &app;
        async move {
            let mut names = Vec::new();
            let mut cursor = String::new();
            loop {
                let page = app
                    .get(&format!("/api/sandbox?limit=1&{q}{cursor}"))
                    .await
                    .expect(200)
                    .clone();
                for s in page["items"].as_array().into_iter().flatten() {
                    names.push(s["name"].as_str().unwrap_or_default().to_owned());
                }
                match page["nextCursor"].as_str() {
                    Some(c) => cursor = format!("&cursor={}", c.replace('"', "%22")),
                    None => return names,
                }
            }
        }
    };
    assert_eq!(sorted("sort=name&order=desc").await, ["s2", "s1", "s0"]);
    assert_eq!(sorted("order=desc").await, ["s2", "s1", "s0"]);
    assert_eq!(sorted("sort=cpu").await, ["s0", "s1", "s2"]);
    // A cursor of another sort is a 400, not a 500.
    let page = app
        .get("/api/sandbox?limit=1&sort=name")
        .await
        .expect(200)
        .clone();
    let c = page["nextCursor"]
        .as_str()
        .unwrap_or_default()
        .replace('"', "%22");
    app.get(&format!("/api/sandbox?limit=1&cursor={c}"))
        .await
        .expect_error(400);

    // `id` and `name` are prefixes, ignoring case.
    let named = |q: &'static str| {
        let app = &app;
        async move {
            let page = app
                .get(&format!("/api/sandbox?{q}"))
                .await
                .expect(200)
                .clone();
            let mut names: Vec<String> = page["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    };
    let all = named("").await;
    assert!(all.len() >= 3, "{all:?}");
    let first = all[0].clone();
    let upper = first.to_uppercase();
    let by_name = app
        .get(&format!("/api/sandbox?name={}", &upper[..upper.len() - 1]))
        .await
        .expect(200)
        .clone();
    let hits: Vec<&str> = by_name["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(hits.contains(&first.as_str()), "{hits:?} for {upper}");
    assert!(
        hits.iter()
            .all(|h| h.to_uppercase().starts_with(&upper[..upper.len() - 1]))
    );
    assert!(named("name=no-such-prefix").await.is_empty());
    let one = by_name["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let by_id = app
        .get(&format!("/api/sandbox?id={}", &one[..8].to_uppercase()))
        .await
        .expect(200)
        .clone();
    assert_eq!(by_id["items"][0]["id"], one.as_str());
}

#[tokio::test]
async fn delete_sandbox() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "doomed"})).await;
    let id = s["id"].as_str().expect("id");
    let d = app.delete("/api/sandbox/doomed").await;
    assert_eq!(d.expect(200)["state"], "destroying");
    assert_eq!(d.json["desiredState"], "destroyed");
    app.wait_for_state(id, "gone").await;
    assert!(app.runtime.sandbox(id).is_none());
    app.delete("/api/sandbox/doomed").await.expect_error(404);
}

#[tokio::test]
async fn start_while_deleting_is_409() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "slow"})).await;
    let id = s["id"].as_str().expect("id").to_owned();
    let hang = app.runtime.hang(Op::Destroy);
    app.delete("/api/sandbox/slow").await.expect(200);
    // The teardown holds the sandbox's lock: a start waits for it, then is refused.
    let start = {
        let path = format!("/api/sandbox/{id}/start");
        let app = &app;
        async move { app.post_empty(&path).await }
    };
    let reader = async {
        // Reads are not blocked by the hung teardown.
        let r = app.get(&format!("/api/sandbox/{id}")).await;
        assert_eq!(r.expect(200)["state"], "destroying");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        hang.release();
    };
    let (r, ()) = tokio::join!(start, reader);
    // Either refused as being deleted (409) or, once the teardown finished, gone (404).
    assert!(
        matches!(r.status.as_u16(), 409 | 404),
        "{} {}",
        r.status,
        r.text
    );
    r.expect_error(r.status.as_u16());
    app.wait_for_state(&id, "gone").await;
}

#[tokio::test]
async fn stop_start_archive() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "cycle"})).await;
    let id = s["id"].as_str().expect("id");
    // Archive needs a stopped sandbox.
    let v = app.post_empty("/api/sandbox/cycle/archive").await;
    assert_eq!(v.expect_error(400)["code"], "SANDBOX_NOT_STOPPED");
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/stop").await.expect(200)["state"],
        "stopped"
    );
    assert!(!app.runtime.running(id));
    // Idempotent.
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/stop").await.expect(200)["state"],
        "stopped"
    );
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/archive")
            .await
            .expect(200)["state"],
        "archived"
    );
    assert!(app.runtime.sandbox(id).is_some_and(|s| s.archived));
    // Snapshot and fork of an archived sandbox: a state conflict.
    let v = app
        .post("/api/sandbox/cycle/snapshot", &json!({"name": "snap"}))
        .await;
    v.expect_error(409);
    app.post("/api/sandbox/cycle/fork", &json!({}))
        .await
        .expect_error(409);
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/start").await.expect(200)["state"],
        "started"
    );
    assert!(app.runtime.running(id));
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/start").await.expect(200)["state"],
        "started"
    );
    // A stop the runtime fails: 500, and the state says so.
    app.runtime
        .fail(Op::Stop, Failure::Host("kill failed".into()));
    app.post_empty("/api/sandbox/cycle/stop")
        .await
        .expect_error(500);
    app.runtime.clear_failures();
    // It stays `stopping` (the reconciler or another stop finishes the job).
    assert_eq!(
        app.get("/api/sandbox/cycle").await.expect(200)["state"],
        "stopping"
    );
    assert_eq!(
        app.post_empty("/api/sandbox/cycle/stop").await.expect(200)["state"],
        "stopped"
    );
    for op in ["start", "stop", "archive"] {
        app.post_empty(&format!("/api/sandbox/ghost/{op}"))
            .await
            .expect_error(404);
    }
}

#[tokio::test]
async fn recover() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "r"})).await;
    // Only an errored sandbox can be recovered.
    app.post_empty("/api/sandbox/r/recover")
        .await
        .expect_error(400);
    app.runtime.fail(Op::Start, Failure::Host("boom".into()));
    app.post_empty("/api/sandbox/r/stop").await.expect(200);
    app.post_empty("/api/sandbox/r/start")
        .await
        .expect_error(500);
    let s = app.get("/api/sandbox/r").await.expect(200).clone();
    assert_eq!(s["state"], "error");
    assert!(
        s["errorReason"]
            .as_str()
            .is_some_and(|m| m.contains("failed to start")),
        "{s}"
    );
    app.runtime.clear_failures();
    let r = app
        .post_empty("/api/sandbox/r/recover?skipStart=true")
        .await;
    assert_eq!(r.expect(200)["state"], "stopped");
    app.runtime.fail(Op::Start, Failure::Host("boom".into()));
    app.post_empty("/api/sandbox/r/start")
        .await
        .expect_error(500);
    app.runtime.clear_failures();
    let r = app.post_empty("/api/sandbox/r/recover").await;
    assert_eq!(r.expect(200)["state"], "started");
    assert_eq!(r.json.get("errorReason"), None);
}

#[tokio::test]
async fn resize() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "rs"})).await;
    let id = s["id"].as_str().expect("id");
    let r = app
        .post("/api/sandbox/rs/resize", &json!({"cpu": 4, "memory": 8}))
        .await;
    assert_eq!(
        (r.expect(200)["cpu"].as_u64(), r.json["memory"].as_u64()),
        (Some(4), Some(8))
    );
    assert_eq!(
        app.runtime
            .sandbox(id)
            .and_then(|s| s.resources)
            .map(|r| r.cpu),
        Some(4)
    );
    let v = app
        .post("/api/sandbox/rs/resize", &json!({"disk": 10}))
        .await;
    assert_eq!(v.expect_error(400)["code"], "SANDBOX_NOT_STOPPED");
    for bad in [
        json!({}),
        json!({"cpu": 0}),
        json!({"cpu": "x"}),
        json!({"disk": 1}),
    ] {
        let r = app.post("/api/sandbox/rs/resize", &bad).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
    app.post_empty("/api/sandbox/rs/stop").await.expect(200);
    assert_eq!(
        app.post("/api/sandbox/rs/resize", &json!({"disk": 10}))
            .await
            .expect(200)["disk"],
        10
    );
}

#[tokio::test]
async fn sandbox_snapshot() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "src"})).await;
    let r = app
        .post("/api/sandbox/src/snapshot", &json!({"name": "my-snap"}))
        .await;
    assert_eq!(r.expect(200)["state"], "started");
    let snap = app.get("/api/snapshots/my-snap").await.expect(200).clone();
    assert_eq!(snap["state"], "active");
    assert!(
        snap["imageName"]
            .as_str()
            .is_some_and(|i| i.starts_with("corral-snapshot:"))
    );
    let v = app
        .post("/api/sandbox/src/snapshot", &json!({"name": "my-snap"}))
        .await;
    assert_eq!(v.expect_error(409)["code"], "NAME_TAKEN");
    let v = app
        .post("/api/sandbox/src/snapshot", &json!({"name": "host"}))
        .await;
    assert_eq!(v.expect_error(409)["code"], "NAME_TAKEN");
    app.post(
        "/api/sandbox/src/snapshot",
        &json!({"name": "m", "includeMemory": true}),
    )
    .await
    .expect_error(400);
    app.post("/api/sandbox/src/snapshot", &json!({}))
        .await
        .expect_error(400);
    app.post("/api/sandbox/src/snapshot", &json!({"name": "a b"}))
        .await
        .expect_error(400);
    // A commit the runtime refuses leaves no snapshot.
    app.runtime
        .fail(Op::Snapshot, Failure::Invalid("no space".into()));
    app.post("/api/sandbox/src/snapshot", &json!({"name": "nospace"}))
        .await
        .expect_error(400);
    app.get("/api/snapshots/nospace").await.expect_error(404);
    assert_eq!(
        app.get("/api/sandbox/src").await.expect(200)["state"],
        "started"
    );
    // Create from the snapshot.
    let from = app.create_sandbox(&json!({"snapshot": "my-snap"})).await;
    assert_eq!(from["snapshot"], "my-snap");
    assert_eq!(from["state"], "started");
}

#[tokio::test]
async fn fork() {
    let app = TestApp::new();
    let src = app
        .create_sandbox(&json!({"name": "orig", "env": {"E": "1"}, "labels": {"l": "v"}}))
        .await;
    let f = app
        .post("/api/sandbox/orig/fork", &json!({"name": "copy"}))
        .await;
    let f = f.expect(200).clone();
    assert_eq!(f["name"], "copy");
    assert_eq!(f["state"], "started");
    assert_eq!(f["env"], src["env"]);
    assert_eq!(f["labels"], src["labels"]);
    assert_ne!(f["id"], src["id"]);
    assert_eq!(
        app.runtime.calls_of(Op::Fork),
        [src["id"].as_str().expect("id")]
    );
    let v = app
        .post("/api/sandbox/orig/fork", &json!({"name": "copy"}))
        .await;
    assert_eq!(v.expect_error(409)["code"], "NAME_TAKEN");
    app.post("/api/sandbox/orig/fork", &json!({"name": "bad name"}))
        .await
        .expect_error(400);
    app.runtime
        .fail(Op::Fork, Failure::Host("copy failed".into()));
    app.post("/api/sandbox/orig/fork", &json!({"name": "copy2"}))
        .await
        .expect_error(500);
    app.get("/api/sandbox/copy2").await.expect_error(404);
    assert_eq!(
        app.get("/api/sandbox/orig").await.expect(200)["state"],
        "started"
    );
}

#[tokio::test]
async fn signing_key() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "k"})).await;
    let k1 = app
        .get("/api/sandbox/k/signing-key")
        .await
        .expect(200)
        .clone();
    assert!(k1.as_str().is_some_and(|k| k.len() >= 32), "{k1}");
    assert_eq!(app.get("/api/sandbox/k/signing-key").await.expect(200), &k1);
    let k2 = app
        .post_empty("/api/sandbox/k/signing-key/rotate")
        .await
        .expect(200)
        .clone();
    assert!(k2.is_string());
    assert_ne!(k1, k2);
    assert_eq!(app.get("/api/sandbox/k/signing-key").await.expect(200), &k2);
}

#[tokio::test]
async fn build_logs() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "b"})).await;
    let id = s["id"].as_str().expect("id");
    let u = app.get("/api/sandbox/b/build-logs-url").await;
    assert_eq!(
        u.expect(200)["url"],
        format!("http://127.0.0.1/api/sandbox/{id}/build-logs")
    );
    let l = app.get("/api/sandbox/b/build-logs").await;
    l.expect(200);
    assert!(
        l.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    app.get("/api/sandbox/b/build-logs?follow=maybe")
        .await
        .expect_error(400);

    app.images.publish("docker.io/library/alpine:3");
    let snap = app
        .post(
            "/api/snapshots",
            &json!({"name": "alp", "imageName": "docker.io/library/alpine:3"}),
        )
        .await;
    let sid = snap.expect(200)["id"].as_str().expect("id").to_owned();
    app.wait_for_snapshot(&sid, "active").await;
    let u = app.get("/api/snapshots/alp/build-logs-url").await;
    assert_eq!(
        u.expect(200)["url"],
        format!("http://127.0.0.1/api/snapshots/{sid}/build-logs")
    );
    let l = app.get("/api/snapshots/alp/build-logs").await;
    assert!(l.expect(200).is_null(), "plain text");
    assert!(
        l.text.contains("Pulling image docker.io/library/alpine:3"),
        "{}",
        l.text
    );
    let followed = app.get("/api/snapshots/alp/build-logs?follow=true").await;
    assert_eq!(followed.expect(200).clone(), Value::Null);
    assert!(followed.text.contains("Pulled"), "{}", followed.text);
    app.get("/api/snapshots/alp/build-logs?follow=2")
        .await
        .expect_error(400);
    app.get("/api/snapshots/nope/build-logs-url")
        .await
        .expect_error(404);
}

#[tokio::test]
async fn labels() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "lb", "labels": {"old": "1"}}))
        .await;
    let r = app
        .put("/api/sandbox/lb/labels", &json!({"labels": {"new": "2"}}))
        .await;
    assert_eq!(r.expect(200), &json!({"labels": {"new": "2"}}));
    assert_eq!(
        app.get("/api/sandbox/lb").await.expect(200)["labels"],
        json!({"new": "2"})
    );
    for bad in [
        json!({}),
        json!({"labels": {"a": 1}}),
        json!({"labels": []}),
        json!({"labels": {"code-toolbox-language": "cobol"}}),
    ] {
        let r = app.put("/api/sandbox/lb/labels", &bad).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
    app.request(Method::PUT, "/api/sandbox/lb/labels")
        .raw("{labels")
        .send()
        .await
        .expect_error(400);
}

#[tokio::test]
async fn last_activity() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "act"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    app.post_empty("/api/sandbox/act/last-activity")
        .await
        .expect(201);
    let after = app.get("/api/sandbox/act/toolbox-proxy-url").await;
    after.expect(200);
    // The activity shows in answers that report it (stop answers the sandbox).
    let stopped = app
        .post_empty("/api/sandbox/act/stop")
        .await
        .expect(200)
        .clone();
    assert!(
        stopped["lastActivityAt"].as_str() > s["lastActivityAt"].as_str(),
        "{stopped}"
    );
}

#[tokio::test]
async fn timers() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "t"})).await;
    assert_eq!(
        app.post_empty("/api/sandbox/t/autostop/30")
            .await
            .expect(200)["autoStopInterval"],
        30
    );
    // As Daytona: 0 is answered (and stored) as the maximum, 30 days; more is capped.
    assert_eq!(
        app.post_empty("/api/sandbox/t/autoarchive/0")
            .await
            .expect(200)["autoArchiveInterval"],
        43200
    );
    assert_eq!(
        app.post_empty("/api/sandbox/t/autoarchive/50000")
            .await
            .expect(200)["autoArchiveInterval"],
        43200
    );
    assert_eq!(
        app.post_empty("/api/sandbox/t/autoarchive/60")
            .await
            .expect(200)["autoArchiveInterval"],
        60
    );
    let zero = app
        .create_sandbox(&json!({"name": "t0", "autoArchiveInterval": 0}))
        .await;
    assert_eq!(zero["autoArchiveInterval"], 43200, "{zero}");
    let r = app
        .post(
            "/api/sandbox",
            &json!({"name": "neg", "autoArchiveInterval": -1}),
        )
        .await;
    r.expect(400);
    assert_eq!(
        app.post_empty("/api/sandbox/t/autodelete/-5")
            .await
            .expect(200)["autoDeleteInterval"],
        -1
    );
    assert_eq!(
        app.post_empty("/api/sandbox/t/autodelete/60.0")
            .await
            .expect(200)["autoDeleteInterval"],
        60
    );
    assert_eq!(
        app.post_empty("/api/sandbox/t/autopause/5")
            .await
            .expect(200)["autoPauseInterval"],
        5
    );
    for bad in [
        "autostop/-1",
        "autopause/-1",
        "autoarchive/-1",
        "autostop/1.5",
        "autostop/x",
        "autodelete/inf",
    ] {
        let r = app.post_empty(&format!("/api/sandbox/t/{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.expect_error(400);
    }
}

#[tokio::test]
async fn network_settings() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "net"})).await;
    let id = s["id"].as_str().expect("id");
    let r = app
        .post(
            "/api/sandbox/net/network-settings",
            &json!({"networkBlockAll": true}),
        )
        .await;
    assert_eq!(r.expect(200)["networkBlockAll"], true);
    assert_eq!(app.runtime.calls_of(Op::SetEgress), [id]);
    let r = app
        .post(
            "/api/sandbox/net/network-settings",
            &json!({"networkAllowList": "10.0.0.0/8,1.1.1.1/32"}),
        )
        .await;
    assert_eq!(r.expect(200)["networkBlockAll"], false);
    assert!(
        r.json["networkAllowList"]
            .as_str()
            .is_some_and(|l| l.contains("10.0.0.0/8")),
        "{}",
        r.text
    );
    for bad in [
        json!({}),
        json!({"domainAllowList": "example.com"}),
        json!({"networkAllowList": "nope"}),
        json!({"networkBlockAll": "yes"}),
    ] {
        let r = app.post("/api/sandbox/net/network-settings", &bad).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn public() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "pub"})).await;
    assert_eq!(
        app.post_empty("/api/sandbox/pub/public/true")
            .await
            .expect(200)["public"],
        true
    );
    assert_eq!(
        app.get("/api/sandbox/pub").await.expect(200)["public"],
        true
    );
    assert_eq!(
        app.post_empty("/api/sandbox/pub/public/false")
            .await
            .expect(200)["public"],
        false
    );
    app.post_empty("/api/sandbox/pub/public/yes")
        .await
        .expect_error(400);
}

#[tokio::test]
async fn previews() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "pv"})).await;
    let id = s["id"].as_str().expect("id");
    let p = app
        .get("/api/sandbox/pv/ports/3000/preview-url")
        .await
        .expect(200)
        .clone();
    assert_eq!(p["sandboxId"], id);
    assert!(p["token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        p["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("3000-{id}"))),
        "{p}"
    );
    // Stable.
    assert_eq!(
        app.get("/api/sandbox/pv/ports/3000/preview-url")
            .await
            .expect(200)["token"],
        p["token"]
    );
    let sp = app
        .get("/api/sandbox/pv/ports/8080/signed-preview-url?expiresInSeconds=60")
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (sp["sandboxId"].as_str(), sp["port"].as_u64()),
        (Some(id), Some(8080))
    );
    let token = sp["token"].as_str().expect("token");
    assert!(
        sp["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("8080-{token}"))),
        "{sp}"
    );
    app.post_empty(&format!(
        "/api/sandbox/pv/ports/8080/signed-preview-url/{token}/expire"
    ))
    .await
    .expect(200);
    // Another port's token, or an unknown one: 404.
    app.post_empty(&format!(
        "/api/sandbox/pv/ports/3000/signed-preview-url/{token}/expire"
    ))
    .await
    .expect_error(404);
    for bad in [
        "ports/0/preview-url",
        "ports/70000/preview-url",
        "ports/x/signed-preview-url",
        "ports/1/signed-preview-url?expiresInSeconds=0",
        "ports/1/signed-preview-url?expiresInSeconds=abc",
    ] {
        let r = app.get(&format!("/api/sandbox/pv/{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
    app.post_empty("/api/sandbox/pv/ports/x/signed-preview-url/t/expire")
        .await
        .expect_error(400);
}

#[tokio::test]
async fn toolbox_proxy_url() {
    let app = TestApp::builder()
        .public_url("https://corral.example/")
        .build();
    app.create_sandbox(&json!({"name": "tb"})).await;
    let u = app.get("/api/sandbox/tb/toolbox-proxy-url").await;
    assert_eq!(
        u.expect(200),
        &json!({"url": "https://corral.example/toolbox"})
    );
}

#[tokio::test]
async fn toolbox_proxy() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "tp"})).await;
    let id = s["id"].as_str().expect("id");
    // Nothing listens on the fake's agent socket: the edge says the agent is unreachable.
    for path in [
        format!("/toolbox/{id}/files"),
        "/toolbox/tp/process/execute".to_owned(),
    ] {
        let r = app.request(Method::GET, &path).send().await;
        let v = r.expect_error(502);
        assert_eq!(v["code"], "BAD_GATEWAY");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("agent is unreachable")),
            "{v}"
        );
    }
    app.post_empty("/api/sandbox/tp/stop").await.expect(200);
    let v = app.get(&format!("/toolbox/{id}/files")).await;
    assert_eq!(v.expect_error(409)["code"], "SANDBOX_NOT_STARTED");
    app.get("/toolbox/ghost/files").await.expect_error(404);
}
