//! `POST /process/code-run` against the real binary in dev mode.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, eventually, kill_marked, processes_with};
use serde_json::json;

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python() {
    if !have("python3") {
        return;
    }
    let agent = Agent::start();
    let r = agent.post(
        "/process/code-run",
        json!({"code": "print(sum(range(10)))", "language": "python"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"exitCode": 0, "result": "45\n", "artifacts": {"charts": []}})
    );
}

#[test]
fn python_argv_envs_and_errors() {
    if !have("python3") {
        return;
    }
    let agent = Agent::start();
    let r = agent.post(
        "/process/code-run",
        json!({
            "code": "import os, sys\nprint(sys.argv[1:], os.environ['FOO'], os.environ['X'])\nraise SystemExit(4)",
            "language": "python",
            "argv": ["a", "b c"],
            "envs": {"X": "y"},
        }),
    );
    let body = r.json();
    assert_eq!(body["result"], "['a', 'b c'] bar y\n");
    assert_eq!(body["exitCode"], 4);
}

#[test]
fn python_large_code_does_not_deadlock() {
    if !have("python3") {
        return;
    }
    let agent = Agent::start();
    // ~1 MB of code that prints as it goes: stdin and stdout are both far beyond a pipe buffer.
    let code = "print('x' * 100)\n".repeat(60_000);
    let r = agent.post(
        "/process/code-run",
        json!({"code": code, "language": "python"}),
    );
    let body = r.json();
    assert_eq!(body["exitCode"], 0);
    assert_eq!(body["result"].as_str().map(str::len), Some(60_000 * 101));
}

#[test]
fn javascript_with_argv() {
    if !have("node") {
        return;
    }
    let agent = Agent::start();
    let r = agent.post(
        "/process/code-run",
        json!({
            "code": "console.log(1+1, process.argv.slice(1).join(','))",
            "language": "javascript",
            "argv": ["a", "b"],
        }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], "2 a,b\n");
    assert_eq!(r.json()["exitCode"], 0);
}

#[test]
fn unknown_language_is_400() {
    let agent = Agent::start();
    let r = agent.post(
        "/process/code-run",
        json!({"code": "puts 1", "language": "ruby"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "BAD_REQUEST");
    assert_eq!(r.json()["path"], "/process/code-run");
}

#[test]
fn timeout_is_408() {
    if !have("python3") {
        return;
    }
    let agent = Agent::start();
    let marker = "4242.21";
    let start = Instant::now();
    let r = agent.post(
        "/process/code-run",
        json!({
            "code": format!("import subprocess\nsubprocess.run(['sleep', '{marker}'])"),
            "language": "python",
            "timeout": 1,
        }),
    );
    assert_eq!(r.status, 408, "{}", r.body);
    assert_eq!(r.json()["code"], "PROCESS_EXECUTION_TIMEOUT");
    assert!(start.elapsed() < Duration::from_secs(3));
    let gone = eventually(Duration::from_secs(2), || processes_with(marker).is_empty());
    kill_marked(marker);
    assert!(gone);
}
