//! Routes of `/api/volumes`, `/api/snapshots` and object-storage push access.

use super::*;

#[tokio::test]
async fn volumes() {
    let app = TestApp::new();
    assert_eq!(app.get("/api/volumes").await.expect(200), &json!([]));
    let v = app
        .post("/api/volumes", &json!({"name": "data"}))
        .await
        .expect(200)
        .clone();
    assert_eq!(v["state"], "ready");
    assert_eq!(v["name"], "data");
    assert_eq!(v["errorReason"], Value::Null);
    let id = v["id"].as_str().expect("id");
    assert!(app.runtime.has_volume(id));
    let dup = app.post("/api/volumes", &json!({"name": "data"})).await;
    assert_eq!(dup.expect_error(409)["code"], "VOLUME_NAME_TAKEN");
    assert_eq!(
        app.get(&format!("/api/volumes/{id}")).await.expect(200)["name"],
        "data"
    );
    assert_eq!(
        app.get("/api/volumes/by-name/data").await.expect(200)["id"],
        id
    );
    assert_eq!(
        app.get("/api/volumes/by-name/nope").await.expect_error(404)["code"],
        "VOLUME_NOT_FOUND"
    );
    assert_eq!(
        app.get("/api/volumes")
            .await
            .expect(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    app.delete(&format!("/api/volumes/{id}")).await.expect(200);
    assert!(!app.runtime.has_volume(id));
    assert_eq!(
        app.get(&format!("/api/volumes/{id}")).await.expect(200)["state"],
        "deleted"
    );
    // Idempotent.
    app.delete(&format!("/api/volumes/{id}")).await.expect(200);
    assert_eq!(app.get("/api/volumes").await.expect(200), &json!([]));
    assert_eq!(
        app.get("/api/volumes?includeDeleted=true")
            .await
            .expect(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    app.get("/api/volumes?includeDeleted=maybe")
        .await
        .expect_error(400);
    // The name is free again.
    app.post("/api/volumes", &json!({"name": "data"}))
        .await
        .expect(200);
}

#[tokio::test]
async fn volume_bad_input() {
    let app = TestApp::new();
    for bad in [
        json!({}),
        json!({"name": ""}),
        json!({"name": ".."}),
        json!({"name": "a/b"}),
        json!({"name": 3}),
    ] {
        let r = app.post("/api/volumes", &bad).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.expect_error(400);
    }
    app.request(Method::POST, "/api/volumes")
        .raw("{")
        .send()
        .await
        .expect_error(400);
    app.runtime
        .fail(Op::CreateVolume, Failure::Host("disk full".into()));
    app.post("/api/volumes", &json!({"name": "x"}))
        .await
        .expect_error(500);
}

#[tokio::test]
async fn volume_in_use_is_409() {
    let app = TestApp::new();
    let v = app
        .post("/api/volumes", &json!({"name": "shared"}))
        .await
        .expect(200)
        .clone();
    let vid = v["id"].as_str().expect("id");
    let s = app
        .create_sandbox(
            &json!({"name": "user", "volumes": [{"volumeId": "shared", "mountPath": "/data"}]}),
        )
        .await;
    assert_eq!(s["volumes"][0]["volumeId"], vid);
    assert_eq!(s["volumes"][0]["mountPath"], "/data");
    let spec = app
        .runtime
        .sandbox(s["id"].as_str().expect("id"))
        .and_then(|s| s.spec)
        .expect("spec");
    assert_eq!(spec.volumes.len(), 1);
    let r = app.delete(&format!("/api/volumes/{vid}")).await;
    assert_eq!(r.expect_error(409)["code"], "VOLUME_IN_USE");
    app.delete("/api/sandbox/user").await.expect(200);
    app.wait_for_state(s["id"].as_str().expect("id"), "gone")
        .await;
    app.delete(&format!("/api/volumes/{vid}")).await.expect(200);
}

// ---- snapshots -----------------------------------------------------------------------------

#[tokio::test]
async fn snapshots_list() {
    let app = TestApp::new();
    let l = app.get("/api/snapshots").await.expect(200).clone();
    assert_eq!(
        (
            l["total"].as_u64(),
            l["page"].as_u64(),
            l["totalPages"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(l["items"][0]["name"], "host");
    assert_eq!(l["items"][0]["general"], true);
    for name in ["b-img", "a-img"] {
        app.images.store(&format!("docker.io/library/{name}:1"));
        app.post(
            "/api/snapshots",
            &json!({"name": name, "imageName": format!("docker.io/library/{name}:1")}),
        )
        .await
        .expect(200);
    }
    let l = app
        .get("/api/snapshots?sort=name&order=asc")
        .await
        .expect(200)
        .clone();
    let names: Vec<&str> = l["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["a-img", "b-img", "host"]);
    let l = app
        .get("/api/snapshots?limit=1&page=2&sort=name&order=asc")
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (l["items"][0]["name"].as_str(), l["totalPages"].as_u64()),
        (Some("b-img"), Some(3))
    );
    let l = app.get("/api/snapshots?name=A-I").await.expect(200).clone();
    assert_eq!(l["total"], 1);
    for bad in [
        "limit=0",
        "limit=500",
        "page=0",
        "sort=size",
        "order=up",
        "page=x",
    ] {
        let r = app.get(&format!("/api/snapshots?{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn snapshots_create_pull_delete() {
    let app = TestApp::new();
    app.images.publish("docker.io/library/python:3.12");
    let s = app
        .post("/api/snapshots", &json!({"name": "py", "imageName": "docker.io/library/python:3.12", "entrypoint": ["sleep", "infinity"], "cpu": 2}))
        .await
        .expect(200)
        .clone();
    assert_eq!(s["state"], "pending");
    assert_eq!(s["cpu"], 2);
    let id = s["id"].as_str().expect("id");
    let active = app.wait_for_snapshot(id, "active").await;
    assert_eq!(active["entrypoint"], json!(["sleep", "infinity"]));
    assert!(active["size"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(app.images.pulls(), ["docker.io/library/python:3.12"]);
    assert_eq!(app.get("/api/snapshots/py").await.expect(200)["id"], id);
    assert_eq!(
        app.get("/api/snapshots/host").await.expect(200)["general"],
        true
    );
    app.get("/api/snapshots/nope").await.expect_error(404);
    let dup = app
        .post("/api/snapshots", &json!({"name": "py", "imageName": "x:1"}))
        .await;
    assert_eq!(dup.expect_error(409)["code"], "NAME_TAKEN");
    // A sandbox from it runs the image, as the image's user (root when it names none).
    let sb = app.create_sandbox(&json!({"snapshot": "py"})).await;
    assert_eq!(sb["user"], "root");
    let spec = app
        .runtime
        .sandbox(sb["id"].as_str().expect("id"))
        .and_then(|s| s.spec)
        .expect("spec");
    assert_eq!(spec.image, "docker.io/library/python:3.12");
    assert_eq!(
        spec.entrypoint,
        Some(vec!["sleep".to_owned(), "infinity".to_owned()])
    );
    app.delete(&format!("/api/sandbox/{}", sb["id"].as_str().expect("id")))
        .await
        .expect(200);
    app.wait_for_state(sb["id"].as_str().expect("id"), "gone")
        .await;
    assert_eq!(
        app.delete("/api/snapshots/py").await.expect(200),
        &json!({})
    );
    app.get("/api/snapshots/py").await.expect_error(404);
    assert_eq!(app.images.removed(), ["docker.io/library/python:3.12"]);
    app.delete("/api/snapshots/py").await.expect_error(404);
    app.delete("/api/snapshots/host").await.expect_error(400);
}

#[tokio::test]
async fn snapshot_bad_input() {
    let app = TestApp::new();
    let cases = [
        json!({}),
        json!({"name": "x"}),
        json!({"name": "a b", "imageName": "x:1"}),
        json!({"name": "x", "imageName": "x:1", "gpu": 1}),
        json!({"name": "x", "imageName": "x:1", "cpu": 0}),
        json!({"name": "x", "imageName": "x:1", "buildInfo": {"dockerfileContent": "FROM y"}}),
        json!({"name": "x", "imageName": "corral-snapshot:abc"}),
        json!({"name": "x", "buildInfo": {"dockerfileContent": "RUN true"}}),
        json!({"name": "x", "imageName": 5}),
    ];
    for body in cases {
        let r = app.post("/api/snapshots", &body).await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", r.text);
        r.expect_error(400);
    }
    let v = app
        .post(
            "/api/snapshots",
            &json!({"name": "host", "imageName": "x:1"}),
        )
        .await;
    assert_eq!(v.expect_error(409)["code"], "NAME_TAKEN");
    // An image the registry does not have: the snapshot ends in `error`, with the reason.
    let s = app
        .post(
            "/api/snapshots",
            &json!({"name": "missing", "imageName": "nope:1"}),
        )
        .await
        .expect(200)
        .clone();
    let failed = app
        .wait_for_snapshot(s["id"].as_str().expect("id"), "error")
        .await;
    assert!(
        failed["errorReason"]
            .as_str()
            .is_some_and(|r| r.contains("not found")),
        "{failed}"
    );
    // A sandbox from it is refused as a client error.
    let r = app
        .post("/api/sandbox", &json!({"snapshot": "missing"}))
        .await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
}

#[tokio::test]
async fn snapshot_activate() {
    let app = TestApp::new();
    let s = app
        .post(
            "/api/snapshots",
            &json!({"name": "late", "imageName": "late:1"}),
        )
        .await
        .expect(200)
        .clone();
    let id = s["id"].as_str().expect("id");
    app.wait_for_snapshot(id, "error").await;
    app.images.publish("late:1");
    let r = app.post_empty("/api/snapshots/late/activate").await;
    assert_eq!(r.expect(200)["state"], "pending");
    app.wait_for_snapshot(id, "active").await;
    // Activating an active one changes nothing.
    assert_eq!(
        app.post_empty("/api/snapshots/late/activate")
            .await
            .expect(200)["state"],
        "active"
    );
    assert_eq!(
        app.post_empty("/api/snapshots/host/activate")
            .await
            .expect(200)["state"],
        "active"
    );
}

#[tokio::test]
async fn snapshot_in_use_is_409() {
    let app = TestApp::new();
    app.images.store("img:1");
    let s = app
        .post(
            "/api/snapshots",
            &json!({"name": "used", "imageName": "img:1"}),
        )
        .await
        .expect(200)
        .clone();
    app.wait_for_snapshot(s["id"].as_str().expect("id"), "active")
        .await;
    app.create_sandbox(&json!({"snapshot": "used", "name": "consumer"}))
        .await;
    let r = app.delete("/api/snapshots/used").await;
    assert_eq!(r.expect_error(409)["code"], "SNAPSHOT_IN_USE");
    assert!(
        r.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("consumer"))
    );
}

#[tokio::test]
async fn push_access() {
    let app = TestApp::new();
    let r = app
        .request(Method::GET, "/api/object-storage/push-access")
        .header("host", "corral.test:3000")
        .send()
        .await;
    let v = r.expect(200);
    assert_eq!(v["storageUrl"], "http://corral.test:3000/object-storage");
    for k in [
        "accessKey",
        "secret",
        "sessionToken",
        "organizationId",
        "bucket",
        "region",
    ] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
    // The Python SDK's S3 client needs TLS: a clear 400 instead of a URL that fails later.
    let r = app
        .request(Method::GET, "/api/object-storage/push-access")
        .header("host", "corral.test")
        .header("x-daytona-source", "sdk-python")
        .send()
        .await;
    assert_eq!(r.expect_error(400)["code"], "OBJECT_STORAGE_NEEDS_TLS");
    // No Host header: the URL cannot be told.
    app.get("/api/object-storage/push-access")
        .await
        .expect_error(400);
    let app = TestApp::builder()
        .storage_url("https://s3.example/")
        .build();
    let r = app
        .request(Method::GET, "/api/object-storage/push-access")
        .header("x-daytona-source", "sdk-python")
        .send()
        .await;
    assert_eq!(r.expect(200)["storageUrl"], "https://s3.example");
}
