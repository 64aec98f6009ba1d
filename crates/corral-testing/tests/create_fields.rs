//! Nothing a create asks for is silently dropped: every field of the SDK's `CreateSandbox`
//! model (from `tests/data/daytona-models.json`, generated from the pinned SDK) is either
//! honoured (the sandbox shows it) or refused with a 400 that names the field. The table
//! must cover every field the model has, so a new SDK field fails this test until it is
//! decided.

use corral_testing::TestApp;
use serde_json::{Value, json};

const MODELS: &str = include_str!("data/daytona-models.json");

/// What a create with `body` must do.
enum Expect {
    /// Answered 200; the check reads the answer (the created sandbox).
    Honoured(fn(&Value) -> bool),
    /// Answered 400 naming the field.
    Refused,
}
use Expect::{Honoured, Refused};

fn cases() -> Vec<(&'static str, Value, Expect)> {
    vec![
        (
            "name",
            json!({"name": "fields-name"}),
            Honoured(|s| s["name"] == "fields-name"),
        ),
        (
            "snapshot",
            json!({"snapshot": "host"}),
            Honoured(|s| s["snapshot"] == "host"),
        ),
        (
            "user",
            json!({"user": "root"}),
            Honoured(|s| s["user"] == "root"),
        ),
        (
            "env",
            json!({"env": {"A": "1"}}),
            Honoured(|s| s["env"]["A"] == "1"),
        ),
        (
            "labels",
            json!({"labels": {"team": "a"}}),
            Honoured(|s| s["labels"]["team"] == "a"),
        ),
        (
            "public",
            json!({"public": true}),
            Honoured(|s| s["public"] == true),
        ),
        (
            "networkBlockAll",
            json!({"networkBlockAll": true}),
            Honoured(|s| s["networkBlockAll"] == true),
        ),
        (
            "networkAllowList",
            json!({"networkAllowList": "10.1.0.0/16"}),
            Honoured(|s| s["networkAllowList"] == "10.1.0.0/16"),
        ),
        (
            "domainAllowList",
            json!({"domainAllowList": "example.com"}),
            Refused,
        ),
        (
            "outboundProxyUrl",
            json!({"outboundProxyUrl": "http://proxy:3128"}),
            Refused,
        ),
        (
            "otelEndpointOverride",
            json!({"otelEndpointOverride": "http://otel:4318"}),
            Refused,
        ),
        (
            "target",
            json!({"target": "local"}),
            Honoured(|s| s["target"] == "local"),
        ),
        ("cpu", json!({"cpu": 2}), Honoured(|s| s["cpu"] == 2)),
        ("gpu", json!({"gpu": 1}), Refused),
        ("gpuType", json!({"gpuType": ["H100"]}), Refused),
        ("spot", json!({"spot": true}), Refused),
        (
            "memory",
            json!({"memory": 2}),
            Honoured(|s| s["memory"] == 2),
        ),
        ("disk", json!({"disk": 5}), Honoured(|s| s["disk"] == 5)),
        (
            "autoStopInterval",
            json!({"autoStopInterval": 7}),
            Honoured(|s| s["autoStopInterval"] == 7),
        ),
        (
            "autoPauseInterval",
            json!({"autoPauseInterval": 5}),
            Honoured(|s| s["autoPauseInterval"] == 5),
        ),
        (
            "autoArchiveInterval",
            json!({"autoArchiveInterval": 9}),
            Honoured(|s| s["autoArchiveInterval"] == 9),
        ),
        (
            "autoDeleteInterval",
            json!({"autoDeleteInterval": 11}),
            Honoured(|s| s["autoDeleteInterval"] == 11),
        ),
        (
            "ttlMinutes",
            json!({"ttlMinutes": 30}),
            Honoured(|s| s["autoDestroyAt"].is_string()),
        ),
        // Creation never waits for a runner here, so any positive queue timeout is met.
        (
            "queueTimeout",
            json!({"queueTimeout": 3}),
            Honoured(|s| s["state"] == "started"),
        ),
        (
            "volumes",
            json!({"volumes": [{"volumeId": "fields-vol", "mountPath": "/data"}]}),
            Honoured(|s| s["volumes"][0]["mountPath"] == "/data"),
        ),
        (
            "buildInfo",
            json!({"buildInfo": {"dockerfileContent": "FROM busybox\nRUN true\n"}}),
            Honoured(|s| s["state"] == "pending_build"),
        ),
        ("linkedSandbox", json!({"linkedSandbox": "other"}), Refused),
        (
            "secrets",
            json!({"secrets": [{"API_KEY": "my-secret"}]}),
            Refused,
        ),
        ("kvm", json!({"kvm": true}), Refused),
    ]
}

#[tokio::test]
async fn every_create_field_is_honoured_or_refused_by_name() {
    let models: Value = serde_json::from_str(MODELS).expect("daytona-models.json parses");
    let fields = models["models"]["CreateSandbox"]["fields"]
        .as_object()
        .expect("the SDK's CreateSandbox model is in daytona-models.json");
    let cases = cases();
    let covered: std::collections::BTreeSet<&str> = cases.iter().map(|(f, _, _)| *f).collect();
    let missing: Vec<&String> = fields
        .keys()
        .filter(|f| !covered.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "CreateSandbox fields with no decision here: {missing:?}"
    );
    let extra: Vec<&&str> = covered
        .iter()
        .filter(|f| !fields.contains_key(**f))
        .collect();
    assert!(extra.is_empty(), "fields not in the SDK's model: {extra:?}");

    let app = TestApp::new();
    // The volume the `volumes` case mounts (by name).
    app.post("/api/volumes", &json!({"name": "fields-vol"}))
        .await
        .expect(200);
    for (field, body, expect) in cases {
        let r = app.post("/api/sandbox", &body).await;
        match expect {
            Honoured(check) => {
                let answer = r.expect(200);
                assert!(check(answer), "{field}: not honoured: {answer}");
            }
            Refused => {
                let e = r.expect_error(400);
                let message = e["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(field)
                        || (field == "gpu" && message.contains("GPU"))
                        || (field == "kvm" && message.contains("KVM")),
                    "{field}: the refusal does not say which field: {message}"
                );
            }
        }
    }
}

#[tokio::test]
async fn zero_and_null_mean_not_asked_for() {
    let app = TestApp::new();
    let s = app
        .post(
            "/api/sandbox",
            &json!({"autoPauseInterval": 0, "ttlMinutes": 0, "gpu": 0, "gpuType": [],
                    "spot": false, "kvm": false, "secrets": null, "linkedSandbox": null,
                    "outboundProxyUrl": "", "target": ""}),
        )
        .await;
    assert_eq!(s.expect(200)["state"], "started");
}

#[tokio::test]
async fn a_key_outside_the_model_is_refused_by_name() {
    let app = TestApp::new();
    let r = app.post("/api/sandbox", &json!({"cpus": 2})).await;
    let e = r.expect_error(400);
    assert!(
        e["message"].as_str().unwrap_or_default().contains("cpus"),
        "{e}"
    );
    let r = app.post("/api/sandbox", &json!({"target": "us"})).await;
    let e = r.expect_error(400);
    assert!(
        e["message"].as_str().unwrap_or_default().contains("target"),
        "{e}"
    );
}
