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
        "GET",
        "/api/sandbox/paginated",
        "compat::paginated_pages_by_offset, compat::paginated_refuses_bad_paging",
    ),
    ("GET", "/api/users/me", "compat::users_me_and_regions"),
    ("GET", "/api/shared-regions", "compat::users_me_and_regions"),
    ("GET", "/api/regions", "compat::users_me_and_regions"),
    ("ANY", "/api/workspace", "compat::workspace_api_is_refused"),
    (
        "ANY",
        "/api/workspace/{*rest}",
        "compat::workspace_api_is_refused",
    ),
    ("ANY", "/api/secret", "compat::secrets_are_refused_clearly"),
    (
        "ANY",
        "/api/secret/{*rest}",
        "compat::secrets_are_refused_clearly",
    ),
    (
        "ANY",
        "/api/sandbox/{id_or_name}/secrets",
        "compat::secrets_are_refused_clearly",
    ),
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
    (
        "POST",
        "/api/sandbox/{id_or_name}/pause",
        "pause_and_resume",
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
        "ssh_access::grant_validate_revoke, ssh_access::bad_input, ssh_access::gateway_off",
    ),
    (
        "DELETE",
        "/api/sandbox/{id_or_name}/ssh-access",
        "ssh_access::grant_validate_revoke, ssh_access::revoke_all*",
    ),
    (
        "GET",
        "/api/sandbox/ssh-access/validate",
        "ssh_access::grant_validate_revoke, ssh_access::bad_input",
    ),
    ("GET", "/api/config", "config_is_public_and_complete"),
    (
        "GET",
        "/api/warm-pools",
        "warm_pools::crud_and_validation, warm_pools::the_default_pool_is_listed_and_fixed",
    ),
    (
        "POST",
        "/api/warm-pools",
        "warm_pools::crud_and_validation, warm_pools::a_matching_create_claims_and_is_personalised",
    ),
    (
        "PATCH",
        "/api/warm-pools/{id}",
        "warm_pools::crud_and_validation, warm_pools::shrink_and_delete_tear_sandboxes_down",
    ),
    (
        "DELETE",
        "/api/warm-pools/{id}",
        "warm_pools::crud_and_validation, warm_pools::shrink_and_delete_tear_sandboxes_down",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/telemetry/metrics",
        "metrics_history_answers_a_window, metrics_query_bad_input",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/telemetry/logs",
        "telemetry_logs_and_traces_are_refused",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/telemetry/traces",
        "telemetry_logs_and_traces_are_refused",
    ),
    (
        "GET",
        "/api/sandbox/{id_or_name}/telemetry/traces/{trace_id}",
        "telemetry_logs_and_traces_are_refused",
    ),
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
        "/api/sandbox/{id_or_name}/autopause/{minutes}",
        "timers",
    ),
    ("POST", "/api/sandbox/{id_or_name}/ttl/{minutes}", "ttl"),
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
    let src = include_str!("../../../corral-api/src/lib.rs");
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
        .replace("{trace_id}", "t1")
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
    !path.starts_with("/api/") && !path.starts_with("/toolbox/")
        || path == "/api/socket.io/"
        || path == "/api/config"
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
        if p.starts_with("/api/workspace") {
            assert_eq!(r.json["code"], "SDK_VERSION_UNSUPPORTED", "{m} {path}");
            continue;
        }
        if p.contains("/secret") {
            assert_eq!(r.json["code"], "SECRETS_NOT_SUPPORTED", "{m} {path}");
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
    // Method and whole path, the nest's `/api` included.
    assert_eq!(v.json["message"], "no route for GET /api/nope");
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

mod compat;
mod pause;
mod sandboxes;
mod ssh_access;
mod telemetry;
mod volumes_and_snapshots;
mod warm_pools;
