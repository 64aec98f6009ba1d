//! The routes older SDKs call (`corral_api::compat`), in process over the fakes.

use corral_testing::TestApp;
use http::Method;
use serde_json::{Value, json};

fn names(v: &Value) -> Vec<&str> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect()
}

#[tokio::test]
async fn paginated_pages_by_offset() {
    let app = TestApp::new();
    for i in 0..5 {
        let team = if i % 2 == 0 { "a" } else { "b" };
        app.create_sandbox(&json!({"name": format!("s{i}"), "labels": {"team": team}}))
            .await;
    }
    // Newest first by default, as Daytona's.
    let p1 = app
        .get("/api/sandbox/paginated?page=1&limit=2")
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&p1), ["s4", "s3"]);
    assert_eq!(
        (p1["total"].clone(), p1["page"].clone()),
        (json!(5), json!(1))
    );
    assert_eq!(p1["totalPages"], 3);
    assert!(
        p1["items"][0]["env"].is_object(),
        "items are whole Sandboxes"
    );
    let p3 = app
        .get("/api/sandbox/paginated?page=3&limit=2")
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&p3), ["s0"]);
    let past = app
        .get("/api/sandbox/paginated?page=9&limit=2")
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&past), Vec::<&str>::new());
    assert_eq!(past["total"], 5);
    // The filters of the cursor list, with this route's names (`regions`).
    let labels = "labels=%7B%22team%22%3A%22a%22%7D";
    let a = app
        .get(&format!(
            "/api/sandbox/paginated?{labels}&sort=name&order=asc"
        ))
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&a), ["s0", "s2", "s4"]);
    assert_eq!(a["total"], 3);
    let other_region = app
        .get("/api/sandbox/paginated?regions=eu")
        .await
        .expect(200)
        .clone();
    assert_eq!(other_region["total"], 0);
    let local = app
        .get("/api/sandbox/paginated?regions=local&name=S1")
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&local), ["s1"]);
    app.post_empty("/api/sandbox/s3/stop").await.expect(200);
    let stopped = app
        .get("/api/sandbox/paginated?states=stopped&states=started&sort=state&order=desc")
        .await
        .expect(200)
        .clone();
    assert_eq!(names(&stopped)[0], "s3");
    assert_eq!(stopped["total"], 5);
    // A static segment: `paginated` is not taken for a sandbox's name.
    app.get("/api/sandbox/s1").await.expect(200);
}

#[tokio::test]
async fn paginated_refuses_bad_paging() {
    let app = TestApp::new();
    for (query, named) in [
        ("page=0", "page"),
        ("page=x", "page"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("sort=cpu", "sort"),
        ("order=sideways", "order"),
        ("cursor=abc", "cursor"),
        ("states=nope", "nope"),
        ("minCpu=-1", "minCpu"),
        ("lastEventAfter=yesterday", "lastEventAfter"),
    ] {
        let r = app.get(&format!("/api/sandbox/paginated?{query}")).await;
        let v = r.expect_error(400);
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(named)),
            "{query}: {v}"
        );
    }
}

#[tokio::test]
async fn users_me_and_regions() {
    let app = TestApp::new();
    let me = app.get("/api/users/me").await.expect(200).clone();
    for field in ["id", "name", "email", "publicKeys", "createdAt"] {
        assert!(me.get(field).is_some(), "{field}: {me}");
    }
    for path in ["/api/shared-regions", "/api/regions"] {
        let r = app.get(path).await.expect(200).clone();
        assert_eq!(r[0]["id"], "local", "{path}: {r}");
        assert_eq!(r[0]["regionType"], "shared");
        assert!(r[0]["createdAt"].is_string() && r[0]["updatedAt"].is_string());
    }
}

#[tokio::test]
async fn workspace_api_is_refused() {
    let app = TestApp::new();
    for path in ["/api/workspace", "/api/workspace/abc/start"] {
        let v = app.get(path).await.expect_error(410).clone();
        assert_eq!(v["code"], "SDK_VERSION_UNSUPPORTED");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("0.143 and later")),
            "{v}"
        );
    }
}

#[tokio::test]
async fn secrets_are_refused_clearly() {
    let app = TestApp::new();
    app.create_sandbox(&json!({"name": "sec"})).await;
    for (method, path) in [
        (Method::GET, "/api/secret"),
        (Method::POST, "/api/secret"),
        (Method::GET, "/api/secret/paginated"),
        (Method::DELETE, "/api/secret/abc"),
        (Method::PUT, "/api/sandbox/sec/secrets"),
    ] {
        let r = app.request(method.clone(), path).send().await;
        let v = r.expect_error(501);
        assert_eq!(v["code"], "SECRETS_NOT_SUPPORTED", "{method} {path}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("secrets are not supported")),
            "{v}"
        );
    }
}

#[tokio::test]
async fn computer_use_is_refused_at_the_edge() {
    let app = TestApp::new();
    let s = app.create_sandbox(&json!({})).await;
    let id = s["id"].as_str().expect("id");
    let r = app
        .post_empty(&format!("/toolbox/{id}/computeruse/mouse/click"))
        .await;
    let v = r.expect_error(501);
    assert_eq!(v["code"], "COMPUTER_USE_NOT_SUPPORTED");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("computer use is not supported by corral")),
        "{v}"
    );
}
