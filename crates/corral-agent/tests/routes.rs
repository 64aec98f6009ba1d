//! Info routes and the error shape, against the real binary in dev mode.

mod common;

use common::{Agent, path_str};
use serde_json::json;

#[test]
fn info_routes() {
    let agent = Agent::start();
    let version = agent.request("GET", "/version", None);
    assert_eq!(version.status, 200);
    assert_eq!(version.header("content-type"), Some("application/json"));
    assert_eq!(
        version.json(),
        json!({"version": env!("CARGO_PKG_VERSION")})
    );
    let home = agent.request("GET", "/user-home-dir", None);
    assert_eq!(home.json(), json!({"dir": path_str(&agent.home)}));
    let work = agent.request("GET", "/work-dir", None);
    assert_eq!(work.json(), json!({"dir": path_str(&agent.work_dir)}));
}

fn assert_error_shape(body: &serde_json::Value, status: u16, code: &str, path: &str, method: &str) {
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["source"], "DAYTONA_DAEMON", "{body}");
    assert_eq!(body["path"], path, "{body}");
    assert_eq!(body["method"], method, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.contains('T') && timestamp.ends_with('Z'),
        "{timestamp}"
    );
}

#[test]
fn unknown_route_is_404_in_the_error_shape() {
    let agent = Agent::start();
    let r = agent.request("GET", "/no/such/thing", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_error_shape(&r.json(), 404, "NOT_FOUND", "/no/such/thing", "GET");
}

#[test]
fn wrong_method_is_405_in_the_error_shape() {
    let agent = Agent::start();
    let r = agent.request("GET", "/process/execute", None);
    assert_eq!(r.status, 405);
    assert_error_shape(
        &r.json(),
        405,
        "METHOD_NOT_ALLOWED",
        "/process/execute",
        "GET",
    );
}

#[test]
fn bad_bodies_are_400_in_the_error_shape() {
    let agent = Agent::start();
    for body in [
        "{not json",
        r#"{"command": 42}"#,
        r#"{"cwd": "/"}"#,
        r#"{"command": "true", "timeout": "soon"}"#,
        r#"{"command": "true", "envs": {"A": 1}}"#,
        "",
    ] {
        let r = agent.request("POST", "/process/execute", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_error_shape(&r.json(), 400, "BAD_REQUEST", "/process/execute", "POST");
    }
    let r = agent.request("POST", "/process/code-run", Some(r#"{"code": "1"}"#));
    assert_eq!(r.status, 400);
    assert_error_shape(&r.json(), 400, "BAD_REQUEST", "/process/code-run", "POST");
}
