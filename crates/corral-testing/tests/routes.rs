//! Router-level tests of every route of `corral_api::router`, in process over the fakes.
//!
//! `ROUTES` is the table of routes and the tests that cover them;
//! `every_route_has_a_test` parses the router out of `crates/corral-api/src/lib.rs` and fails
//! when a route is missing from the table (or the table names one that is gone). Every route
//! is also walked by `every_route_refuses_missing_and_wrong_keys` (401 in Daytona's error
//! shape) and `unknown_ids_are_404s_never_500s`.

use std::collections::BTreeSet;

use corral_testing::{Failure, Op, TestApp};
use http::Method;
use serde_json::{Value, json};

/// (method, path, the tests that cover it). Paths as `lib.rs` writes them, with the nest
/// prefix (`/api`, `/toolbox`) added.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/health", "health_ready_metrics"),
    ("GET", "/ready", "health_ready_metrics"),
    ("GET", "/metrics", "health_ready_metrics"),
    (
        "GET",
        "/api/socket.io/",
        "socket_io_without_upgrade_is_a_client_error",
    ),
    (
        "ANY",
        "/object-storage",
        "object_storage_s3_refuses_unsigned_requests",
    ),
    (
        "ANY",
        "/object-storage/{bucket}",
        "object_storage_s3_refuses_unsigned_requests",
    ),
    (
        "ANY",
        "/object-storage/{bucket}/",
        "object_storage_s3_refuses_unsigned_requests",
    ),
    (
        "ANY",
        "/object-storage/{bucket}/{*key}",
        "object_storage_s3_refuses_unsigned_requests",
    ),
    ("GET", "/api/sandbox", "list_sandboxes"),
    (
        "POST",
        "/api/sandbox",
        "create_sandbox, create_sandbox_bad_input, create_start_failure_*",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}",
        "get_sandbox_by_id_or_name",
    ),
    ("DELETE", "/api/sandbox/{id_or_name}", "delete_sandbox"),
    (
        "GET",
        "/api/sandbox/{id_or_name}/toolbox-proxy-url",
        "toolbox_proxy_url",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/start",
        "stop_start_archive, start_while_deleting_is_409",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/stop",
        "stop_start_archive",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/archive",
        "stop_start_archive",
    ),
    ("POST", "/api/sandbox/{id_or_name}/recover", "recover"),
    ("POST", "/api/sandbox/{id_or_name}/resize", "resize"),
    (
        "POST",
        "/api/sandbox/{id_or_name}/snapshot",
        "sandbox_snapshot",
    ),
    ("POST", "/api/sandbox/{id_or_name}/fork", "fork"),
    (
        "GET",
        "/api/sandbox/{id_or_name}/signing-key",
        "signing_key",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/ssh-access",
        "ssh_is_refused",
    ),
    (
        "DELETE",
        "/api/sandbox/{id_or_name}/ssh-access",
        "ssh_is_refused",
    ),
    ("GET", "/api/sandbox/ssh-access/validate", "ssh_is_refused"),
    (
        "POST",
        "/api/sandbox/{id_or_name}/signing-key/rotate",
        "signing_key",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/build-logs-url",
        "build_logs",
    ),
    ("GET", "/api/sandbox/{id_or_name}/build-logs", "build_logs"),
    ("PUT", "/api/sandbox/{id_or_name}/labels", "labels"),
    (
        "POST",
        "/api/sandbox/{id_or_name}/last-activity",
        "last_activity",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/autostop/{minutes}",
        "timers",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/autoarchive/{minutes}",
        "timers",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/autodelete/{minutes}",
        "timers",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/network-settings",
        "network_settings",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/public/{is_public}",
        "public",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/ports/{port}/preview-url",
        "previews",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/ports/{port}/signed-preview-url",
        "previews",
    ),
    (
        "POST",
        "/api/sandbox/{id_or_name}/ports/{port}/signed-preview-url/{token}/expire",
        "previews",
    ),
    ("GET", "/api/volumes", "volumes"),
    ("POST", "/api/volumes", "volumes, volume_bad_input"),
    ("GET", "/api/volumes/by-name/{name}", "volumes"),
    ("GET", "/api/volumes/{volume_id}", "volumes"),
    (
        "DELETE",
        "/api/volumes/{volume_id}",
        "volumes, volume_in_use_is_409",
    ),
    ("GET", "/api/snapshots", "snapshots_list"),
    (
        "POST",
        "/api/snapshots",
        "snapshots_create_pull_delete, snapshot_bad_input",
    ),
    (
        "GET",
        "/api/snapshots/{id_or_name}/build-logs-url",
        "build_logs",
    ),
    (
        "GET",
        "/api/snapshots/{id_or_name}/build-logs",
        "build_logs",
    ),
    (
        "GET",
        "/api/snapshots/{id_or_name}",
        "snapshots_create_pull_delete",
    ),
    (
        "DELETE",
        "/api/snapshots/{id_or_name}",
        "snapshots_create_pull_delete, snapshot_in_use_is_409",
    ),
    (
        "POST",
        "/api/snapshots/{id_or_name}/activate",
        "snapshot_activate",
    ),
    ("GET", "/api/object-storage/push-access", "push_access"),
    ("ANY", "/toolbox/{id}/{*path}", "toolbox_proxy"),
];

/// The routes of `corral_api::router`, read from its source: each `.route("path", ...)`
/// with the method routers (`get(`, `.post(`, ... `any(`) it is given; the first block is
/// nested under `/api`, the second under `/toolbox`, the rest are top-level.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = include_str!("../../corral-api/src/lib.rs");
    let body = &src[src.find("pub fn router(").expect("router() in lib.rs")..];
    let toolbox_at = body.find("let toolbox").expect("the toolbox router");
    let protected_at = body.find("let protected").expect("the protected router");
    let mut out = BTreeSet::new();
    for (start, end, prefix) in [
        (0, toolbox_at, "/api"),
        (toolbox_at, protected_at, "/toolbox"),
        (protected_at, body.len(), ""),
    ] {
        let part = &body[start..end];
        let mut rest = part;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let q1 = rest.find('"').expect("a path string");
            let q2 = q1 + 1 + rest[q1 + 1..].find('"').expect("a closing quote");
            let path = &rest[q1 + 1..q2];
            // The call's arguments end at the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut end = 0;
            for (j, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &rest[q2 + 1..end];
            let bytes = args.as_bytes();
            for m in ["get", "post", "put", "delete", "patch", "any"] {
                let needle = format!("{m}(");
                let mut from = 0;
                while let Some(k) = args[from..].find(&needle) {
                    let at = from + k;
                    let before = if at == 0 { b' ' } else { bytes[at - 1] };
                    if !before.is_ascii_alphanumeric() && before != b':' && before != b'_' {
                        out.insert((m.to_ascii_uppercase(), format!("{prefix}{path}")));
                    }
                    from = at + needle.len();
                }
            }
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_route_has_a_test() {
    let parsed = routes_in_source();
    assert!(
        parsed.len() > 40,
        "the parse found too few routes: {parsed:?}"
    );
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let untested: Vec<_> = parsed.difference(&table).collect();
    let stale: Vec<_> = table.difference(&parsed).collect();
    assert!(
        untested.is_empty(),
        "routes without a test (add them to ROUTES with a test): {untested:?}"
    );
    assert!(
        stale.is_empty(),
        "ROUTES names routes the router no longer has: {stale:?}"
    );
}

/// A concrete path for a route template.
fn concrete(path: &str, id: &str) -> String {
    path.replace("{id_or_name}", id)
        .replace("{volume_id}", id)
        .replace("{id}", id)
        .replace("{name}", id)
        .replace("{minutes}", "5")
        .replace("{is_public}", "true")
        .replace("{port}", "3000")
        .replace("{token}", "abc")
        .replace("{bucket}", "b")
        .replace("{*key}", "k")
        .replace("{*path}", "files")
}

fn method(m: &str) -> Method {
    match m {
        "ANY" => Method::GET,
        other => other.parse().expect("a method"),
    }
}

/// Routes outside the key check: their own auth (SigV4, the Socket.IO CONNECT packet) or none.
fn is_public(path: &str) -> bool {
    !path.starts_with("/api/") && !path.starts_with("/toolbox/") || path == "/api/socket.io/"
}

#[tokio::test]
async fn every_route_refuses_missing_and_wrong_keys() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({})).await;
    let id = s["id"].as_str().expect("id");
    for (m, p) in routes_in_source() {
        if is_public(&p) {
            continue;
        }
        let path = concrete(&p, id);
        for r in [
            app.request(method(&m), &path).no_key().send().await,
            app.request(method(&m), &path).key("wrong").send().await,
            app.request(method(&m), &path)
                .no_key()
                .header("authorization", "Basic Zm9vOmJhcg==")
                .send()
                .await,
        ] {
            let v = r.expect_error(401);
            assert_eq!(v["code"], "UNAUTHORIZED", "{m} {path}: {v}");
            assert_eq!(v["error"], "Unauthorized", "{m} {path}: {v}");
        }
    }
    // Nothing happened to the sandbox.
    app.get(&format!("/api/sandbox/{id}")).await.expect(200);
}

#[tokio::test]
async fn unknown_ids_are_404s_never_500s() {
    let app = TestApp::new();
    let ghost = "00000000-0000-4000-8000-000000000000";
    for (m, p) in routes_in_source() {
        if is_public(&p) || !p.contains('{') {
            continue;
        }
        let path = concrete(&p, ghost);
        let r = app
            .request(method(&m), &path)
            .json(&json!({"name": "x", "cpu": 2, "labels": {}, "networkBlockAll": true}))
            .send()
            .await;
        if p.contains("ssh-access") {
            assert_eq!(r.json["code"], "SSH_NOT_SUPPORTED", "{m} {path}");
            continue;
        }
        let v = r.expect_error(404);
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(ghost)),
            "{m} {path}: the message names what is missing: {v}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let app = TestApp::new();
    let v = app.get("/api/nope").await;
    assert_eq!(v.expect_error(404)["code"], "NOT_FOUND");
    let v = app.request(Method::PATCH, "/api/sandbox").send().await;
    assert_eq!(v.expect_error(405)["code"], "METHOD_NOT_ALLOWED");
    app.get("/elsewhere").await.expect_error(404);
}

#[tokio::test]
async fn health_ready_metrics() {
    let app = TestApp::new();
    assert_eq!(app.get("/health").await.expect(200)["status"], "ok");
    assert_eq!(app.get("/ready").await.expect(200)["status"], "ready");
    app.runtime.set_ready(false);
    assert_eq!(app.get("/ready").await.expect(503)["status"], "starting");
    let m = app.get("/metrics").await;
    m.expect(200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain")),
        "{:?}",
        m.headers
    );
}

#[tokio::test]
async fn socket_io_without_upgrade_is_a_client_error() {
    let app = TestApp::new();
    for q in ["", "?EIO=4&transport=polling", "?EIO=3", "?EIO=4&sid=x"] {
        let r = app.get(&format!("/api/socket.io/{q}")).await;
        assert!(r.status.is_client_error(), "{q}: {} {}", r.status, r.text);
    }
}

#[tokio::test]
async fn object_storage_s3_refuses_unsigned_requests() {
    let app = TestApp::new();
    for p in [
        "/object-storage",
        "/object-storage/b",
        "/object-storage/b/",
        "/object-storage/b/k",
    ] {
        let r = app.request(Method::GET, p).no_key().send().await;
        assert!(r.status.is_client_error(), "{p}: {} {}", r.status, r.text);
        let r = app.request(Method::PUT, p).send().await;
        assert!(r.status.is_client_error(), "{p}: {} {}", r.status, r.text);
    }
}

// ---- sandboxes -----------------------------------------------------------------------------

#[tokio::test]
async fn create_sandbox() {
    let app = TestApp::new();
    let s = app
        .create_sandbox(&json!({
            "name": "box-1", "env": {"A": "1"}, "labels": {"team": "x"},
            "cpu": 2, "memory": 2, "disk": 5, "autoStopInterval": 0,
            "someNewerSdkField": {"ignored": true},
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
    ] {
        let r = app.get(&format!("/api/sandbox?{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.expect_error(400);
    }
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
async fn ssh_is_refused() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "ssh"})).await;
    for r in [
        app.post_empty("/api/sandbox/ssh/ssh-access").await,
        app.delete("/api/sandbox/ssh/ssh-access").await,
        app.get("/api/sandbox/ssh-access/validate?token=x").await,
    ] {
        assert_eq!(r.expect_error(400)["code"], "SSH_NOT_SUPPORTED");
    }
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
    assert_eq!(
        app.post_empty("/api/sandbox/t/autoarchive/0")
            .await
            .expect(200)["autoArchiveInterval"],
        0
    );
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
    for bad in [
        "autostop/-1",
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

// ---- volumes -------------------------------------------------------------------------------

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
