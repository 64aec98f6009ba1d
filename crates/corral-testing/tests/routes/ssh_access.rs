//! SSH access routes and the engine's grants (`corral_engine::ssh_access`) over the fakes.

use corral_core::ports::SshAccessStore;
use corral_engine::ssh_access::{self, Refusal};
use corral_testing::TestApp;
use serde_json::json;
use time::{Duration, OffsetDateTime};

async fn grant(app: &TestApp, sandbox: &str, query: &str) -> serde_json::Value {
    app.post_empty(&format!("/api/sandbox/{sandbox}/ssh-access{query}"))
        .await
        .expect(200)
        .clone()
}

async fn validate(app: &TestApp, token: &str) -> serde_json::Value {
    app.get(&format!("/api/sandbox/ssh-access/validate?token={token}"))
        .await
        .expect(200)
        .clone()
}

#[tokio::test]
async fn grant_validate_revoke() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "a"})).await;
    let id = s["id"].as_str().expect("id");
    let before = OffsetDateTime::now_utc();
    let g = grant(&app, "a", "?expiresInMinutes=5").await;
    let token = g["token"].as_str().expect("token");
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
    assert_eq!(g["sandboxId"], id);
    assert!(g["id"].as_str().is_some_and(|i| i.len() == 36));
    assert_eq!(
        g["sshCommand"],
        format!("ssh -p 2222 {token}@127.0.0.1"),
        "the host is the API's"
    );
    let expires = OffsetDateTime::parse(
        g["expiresAt"].as_str().expect("expiresAt"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let ttl = expires - before;
    assert!(
        (ttl - Duration::minutes(5)).abs() < Duration::seconds(5),
        "{ttl}"
    );
    for k in ["createdAt", "updatedAt"] {
        assert!(g[k].is_string(), "{k}");
    }
    // Only the hash is stored.
    let hash = ssh_access::token_hash(token);
    let stored = app
        .store
        .ssh_access(&hash)
        .await
        .expect("store")
        .expect("stored");
    assert_eq!(stored.sandbox_id, id);
    assert!(app.store.ssh_access(token).await.expect("store").is_none());

    assert_eq!(
        validate(&app, token).await,
        json!({"valid": true, "sandboxId": id})
    );
    // Revoking another token changes nothing; the answer is the sandbox.
    let r = app
        .delete("/api/sandbox/a/ssh-access?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(r.expect(200)["id"], id);
    assert_eq!(validate(&app, token).await["valid"], true);
    app.delete(&format!("/api/sandbox/a/ssh-access?token={token}"))
        .await
        .expect(200);
    assert_eq!(
        validate(&app, token).await,
        json!({"valid": false, "sandboxId": ""})
    );
}

#[tokio::test]
async fn revoke_all_and_new_grants_replace_old_ones() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "a"})).await;
    app.create_sandbox(&json!({"name": "b"})).await;
    let t1 = grant(&app, "a", "").await["token"].clone();
    let t2 = grant(&app, "a", "").await["token"].clone();
    let tb = grant(&app, "b", "").await["token"].clone();
    // As Daytona: a new grant revokes the sandbox's earlier ones.
    assert_eq!(
        validate(&app, t1.as_str().expect("t")).await["valid"],
        false
    );
    assert_eq!(validate(&app, t2.as_str().expect("t")).await["valid"], true);
    // A token of b is not revoked through a.
    app.delete(&format!(
        "/api/sandbox/a/ssh-access?token={}",
        tb.as_str().expect("t")
    ))
    .await
    .expect(200);
    assert_eq!(validate(&app, tb.as_str().expect("t")).await["valid"], true);
    app.delete("/api/sandbox/a/ssh-access").await.expect(200);
    assert_eq!(
        validate(&app, t2.as_str().expect("t")).await["valid"],
        false
    );
    assert_eq!(validate(&app, tb.as_str().expect("t")).await["valid"], true);
    // Deleting the sandbox takes its grants.
    app.delete("/api/sandbox/b").await.expect(200);
    app.wait_for_state("b", "gone").await;
    assert_eq!(
        validate(&app, tb.as_str().expect("t")).await["valid"],
        false
    );
}

#[tokio::test]
async fn revoke_all() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "a"})).await;
    let t = grant(&app, "a", "").await["token"].clone();
    app.delete("/api/sandbox/a/ssh-access").await.expect(200);
    assert_eq!(validate(&app, t.as_str().expect("t")).await["valid"], false);
    app.delete("/api/sandbox/nope/ssh-access")
        .await
        .expect_error(404);
}

#[tokio::test]
async fn bad_input() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "a"})).await;
    for q in ["0", "0.5", "-1", "1441", "x", "NaN", "inf", "1e9"] {
        let v = app
            .post_empty(&format!("/api/sandbox/a/ssh-access?expiresInMinutes={q}"))
            .await;
        let v = v.expect_error(400);
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("expiresInMinutes")),
            "{q}: {v}"
        );
    }
    let v = app.post_empty("/api/sandbox/a/ssh-access?minutes=5").await;
    assert!(
        v.expect_error(400)["message"]
            .as_str()
            .is_some_and(|m| m.contains("minutes"))
    );
    app.post_empty("/api/sandbox/nope/ssh-access")
        .await
        .expect_error(404);
    app.get("/api/sandbox/ssh-access/validate")
        .await
        .expect_error(400);
    app.get("/api/sandbox/ssh-access/validate?token=")
        .await
        .expect_error(400);
    app.delete("/api/sandbox/a/ssh-access?token=")
        .await
        .expect_error(400);
    // Junk tokens are simply invalid.
    for t in ["x", "%00", "a%2Fb", &"z".repeat(5000)] {
        assert_eq!(validate(&app, t).await["valid"], false, "{t}");
    }
    // Fractional minutes are fine, as in Daytona.
    grant(&app, "a", "?expiresInMinutes=1.5").await;
    grant(&app, "a", "?expiresInMinutes=1440").await;
}

#[tokio::test]
async fn gateway_off() {
    let app = TestApp::builder().ssh(None).build();
    app.create_sandbox(&json!({"name": "a"})).await;
    let r = app.post_empty("/api/sandbox/a/ssh-access").await;
    assert_eq!(r.expect_error(400)["code"], "SSH_NOT_SUPPORTED");
}

#[tokio::test]
async fn configured_host_and_port_22() {
    let app = TestApp::builder()
        .ssh(Some(corral_api::state::SshEndpoint {
            host: Some("ssh.example".into()),
            port: 22,
        }))
        .build();
    app.create_sandbox(&json!({"name": "a"})).await;
    let g = grant(&app, "a", "").await;
    assert_eq!(
        g["sshCommand"],
        format!("ssh {}@ssh.example", g["token"].as_str().expect("t"))
    );
}

#[tokio::test]
async fn expiry_is_checked_by_the_clock() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({"name": "a"})).await;
    let engine = &app.state().engine;
    let t0 = OffsetDateTime::now_utc();
    let issued = ssh_access::create(engine, "a", Some(1.0), t0)
        .await
        .expect("grant");
    let ok = |at| ssh_access::validate(engine, &issued.token, at);
    assert!(ok(t0).await.expect("v").is_some());
    assert!(ok(t0 + Duration::seconds(59)).await.expect("v").is_some());
    assert!(ok(t0 + Duration::seconds(60)).await.expect("v").is_none());
    assert!(ok(t0 + Duration::hours(2)).await.expect("v").is_none());
    // The gateway's check: same clock, and it names the sandbox.
    let g = ssh_access::authorize(engine, &issued.token, t0)
        .await
        .expect("granted");
    assert_eq!(g.sandbox.id, s["id"].as_str().expect("id"));
    assert_eq!(
        ssh_access::authorize(engine, &issued.token, t0 + Duration::seconds(61))
            .await
            .err(),
        Some(Refusal::Invalid)
    );
    // Expired grants are purged by the next grant.
    let hash = ssh_access::token_hash(&issued.token);
    ssh_access::create(engine, "a", None, t0 + Duration::hours(2))
        .await
        .expect("grant");
    assert!(app.store.ssh_access(&hash).await.expect("store").is_none());
}

#[tokio::test]
async fn a_stopped_sandbox_is_refused_not_started() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "a"})).await;
    let engine = &app.state().engine;
    let now = OffsetDateTime::now_utc();
    let issued = ssh_access::create(engine, "a", None, now)
        .await
        .expect("grant");
    app.post_empty("/api/sandbox/a/stop").await.expect(200);
    app.wait_for_state("a", "stopped").await;
    let e = ssh_access::authorize(engine, &issued.token, now)
        .await
        .expect_err("refused");
    assert!(matches!(e, Refusal::NotStarted { .. }), "{e:?}");
    assert!(e.to_string().contains("stopped"), "{e}");
    // Not started by the check.
    let s = app.get("/api/sandbox/a").await.expect(200).clone();
    assert_eq!(s["state"], "stopped");
    assert!(
        ssh_access::authorize(engine, "not-a-token", now)
            .await
            .is_err_and(|e| e == Refusal::Invalid)
    );
}
