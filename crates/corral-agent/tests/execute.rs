//! `POST /process/execute` against the real binary in dev mode.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, eventually, kill_marked, path_str, processes_with};
use serde_json::json;

#[test]
fn merges_both_streams_and_reports_the_exit_code() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/execute",
        json!({"command": "echo $FOO; echo oops >&2; exit 3"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["exitCode"], 3);
    assert_eq!(body["result"], "bar\noops\n");
}

#[test]
fn output_order_is_preserved() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/execute",
        json!({"command": "for i in 1 2 3; do echo out$i; echo err$i >&2; done"}),
    );
    assert_eq!(r.json()["result"], "out1\nerr1\nout2\nerr2\nout3\nerr3\n");
}

#[test]
fn request_envs_override_the_sandbox_env() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/execute",
        json!({"command": "echo $FOO-$EXTRA", "envs": {"FOO": "baz", "EXTRA": "x"}}),
    );
    assert_eq!(r.json(), json!({"exitCode": 0, "result": "baz-x\n"}));
}

#[test]
fn cwd_defaults_to_work_dir_and_resolves_relative_paths() {
    let agent = Agent::start();
    let pwd = |cwd: Option<&str>| {
        let mut body = json!({"command": "pwd"});
        if let Some(cwd) = cwd {
            body["cwd"] = json!(cwd);
        }
        agent.post("/process/execute", body)
    };
    let work = path_str(&agent.work_dir);
    assert_eq!(pwd(None).json()["result"], format!("{work}\n"));
    assert_eq!(pwd(Some("sub")).json()["result"], format!("{work}/sub\n"));
    assert_eq!(pwd(Some("/")).json()["result"], "/\n");
    let missing = pwd(Some("does/not/exist"));
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["code"], "BAD_REQUEST");
}

#[test]
fn signal_deaths_are_128_plus_the_signal() {
    let agent = Agent::start();
    let r = agent.post("/process/execute", json!({"command": "kill -9 $$"}));
    assert_eq!(r.json()["exitCode"], 137);
}

#[test]
fn stdin_is_dev_null() {
    let agent = Agent::start();
    let r = agent.post("/process/execute", json!({"command": "cat; echo done"}));
    assert_eq!(r.json(), json!({"exitCode": 0, "result": "done\n"}));
}

#[test]
fn timeout_answers_408_and_kills_the_process_group() {
    let agent = Agent::start();
    let marker = "4242.17";
    let start = Instant::now();
    let r = agent.post(
        "/process/execute",
        json!({"command": format!("sleep {marker}; echo never"), "timeout": 1}),
    );
    let elapsed = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.body);
    let body = r.json();
    assert_eq!(body["code"], "PROCESS_EXECUTION_TIMEOUT");
    assert_eq!(body["statusCode"], 408);
    assert_eq!(body["source"], "DAYTONA_DAEMON");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let gone = eventually(Duration::from_secs(2), || processes_with(marker).is_empty());
    kill_marked(marker);
    assert!(gone, "sleep survived the timeout");
}

#[test]
fn dropped_request_kills_the_process_group() {
    let agent = Agent::start();
    let marker = "4242.18";
    let stream = agent.send(
        "POST",
        "/process/execute",
        Some(&json!({"command": format!("sleep {marker}; echo never")}).to_string()),
    );
    assert!(
        eventually(Duration::from_secs(3), || !processes_with(marker)
            .is_empty()),
        "command never started"
    );
    drop(stream);
    let gone = eventually(Duration::from_secs(3), || processes_with(marker).is_empty());
    kill_marked(marker);
    assert!(gone, "sleep survived the dropped request");
}

#[test]
fn background_processes_do_not_block_the_response() {
    let agent = Agent::start();
    let marker = "4242.19";
    let start = Instant::now();
    let r = agent.post(
        "/process/execute",
        json!({"command": format!("sleep {marker} & echo started")}),
    );
    let elapsed = start.elapsed();
    let alive = processes_with(marker);
    kill_marked(marker);
    assert_eq!(r.json(), json!({"exitCode": 0, "result": "started\n"}));
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        !alive.is_empty(),
        "the background process should keep running"
    );
}

#[test]
fn large_output_is_complete() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/execute",
        json!({"command": "head -c 1000000 /dev/zero | tr '\\0' x"}),
    );
    let body = r.json();
    assert_eq!(body["exitCode"], 0);
    assert_eq!(body["result"].as_str().map(str::len), Some(1_000_000));
}

#[test]
fn invalid_utf8_is_replaced() {
    let agent = Agent::start();
    let r = agent.post("/process/execute", json!({"command": "printf 'a\\377b'"}));
    assert_eq!(r.json()["result"], "a\u{fffd}b");
}

#[test]
fn missing_program_is_a_shell_error() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/execute",
        json!({"command": "definitely-not-a-command-xyz"}),
    );
    let body = r.json();
    assert_eq!(body["exitCode"], 127);
    assert!(
        body["result"]
            .as_str()
            .is_some_and(|s| s.contains("not found"))
    );
}
