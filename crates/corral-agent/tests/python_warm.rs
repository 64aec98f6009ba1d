//! Python code-runs on the fork server (warm) answer exactly like per-call `python3 -u -`
//! (cold, the agent started with `CORRAL_PYTHON_FORKSERVER=0`).

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Response, children_of, eventually, kill_marked, path_str, processes_with};
use serde_json::{Value, json};

/// Disables the fork server (see `pyfork::SWITCH_ENV`).
const SWITCH: &str = "CORRAL_PYTHON_FORKSERVER";
/// A comment in the fork server's script, hence in its command line.
const SERVER_MARKER: &str = "corral-agent's python fork server";

fn have_python() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cold_agent() -> Agent {
    Agent::start_with(&[(SWITCH, "0")], None)
}

fn code_run(agent: &Agent, body: Value) -> Response {
    agent.post("/process/code-run", body)
}

fn python(code: &str) -> Value {
    json!({"code": code, "language": "python"})
}

/// Status and body, with the agent's temp dir (home, work dir) replaced by `<dir>`.
fn normalized(agent: &Agent, response: &Response) -> (u16, String) {
    let body = response.body.replace(&path_str(agent.dir.path()), "<dir>");
    (response.status, body)
}

/// The agent's fork server, if it has one.
fn fork_server(agent: &Agent) -> Option<u32> {
    let servers = processes_with(SERVER_MARKER);
    children_of(agent.pid())
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| servers.contains(pid))
}

/// Runs `body` on a warm and a cold agent and checks they answer the same; returns the answer.
fn same(warm: &Agent, cold: &Agent, body: Value) -> (u16, String) {
    let w = normalized(warm, &code_run(warm, body.clone()));
    let c = normalized(cold, &code_run(cold, body.clone()));
    assert_eq!(w, c, "warm vs cold for {body}\n{}", warm.log());
    w
}

fn result(answer: &(u16, String)) -> Value {
    assert_eq!(answer.0, 200, "{}", answer.1);
    serde_json::from_str(&answer.1).expect("json")
}

#[test]
fn warm_and_cold_answer_the_same() {
    if !have_python() {
        return;
    }
    let (warm, cold) = (Agent::start(), cold_agent());
    let print = same(&warm, &cold, python("print(sum(range(10)))"));
    assert_eq!(
        result(&print),
        json!({"exitCode": 0, "result": "45\n", "artifacts": {"charts": []}})
    );
    let order = same(
        &warm,
        &cold,
        python(
            "import sys\nfor i in range(3):\n print('out', i)\n print('err', i, file=sys.stderr)",
        ),
    );
    assert_eq!(
        result(&order)["result"],
        "out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n"
    );
    let argv = same(
        &warm,
        &cold,
        json!({"code": "import sys; print(sys.argv)", "language": "python", "argv": ["a", "b c", ""]}),
    );
    assert_eq!(result(&argv)["result"], "['-', 'a', 'b c', '']\n");
    let env = same(
        &warm,
        &cold,
        json!({
            "code": "import os; print(os.environ['X'], os.environ['FOO']); print(sorted(os.environ.items()))",
            "language": "python",
            "envs": {"X": "y", "FOO": "baz"},
        }),
    );
    assert!(
        result(&env)["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("y baz\n")),
        "{env:?}"
    );
    let cwd = same(&warm, &cold, python("import os; print(os.getcwd())"));
    assert_eq!(result(&cwd)["result"], "<dir>/work\n");
    let exit = same(&warm, &cold, python("import sys; sys.exit(3)"));
    assert_eq!(result(&exit)["exitCode"], 3);
    let message = same(&warm, &cold, python("import sys; sys.exit('msg')"));
    assert_eq!(result(&message)["exitCode"], 1);
    assert_eq!(result(&message)["result"], "msg\n");
    let raised = same(
        &warm,
        &cold,
        python("def f():\n    raise ValueError('boom')\nf()"),
    );
    let raised = result(&raised);
    assert_eq!(raised["exitCode"], 1);
    let traceback = raised["result"].as_str().unwrap_or_default();
    assert!(
        traceback.starts_with("Traceback (most recent call last):\n")
            && traceback.contains("File \"<stdin>\", line 2, in f")
            && traceback.ends_with("ValueError: boom\n"),
        "{traceback}"
    );
    for code in [
        "print(sorted(globals()), __name__, __file__)",
        "import sys; print(sorted(sys.modules))",
        "print(1)\nx = = 1",
        "raise KeyboardInterrupt",
        "raise SystemExit(None)",
        "import atexit; atexit.register(print, 'bye'); print('hi')",
        "import sys\nsys.stdout.write('no newline')",
        "import sys; print(sys.stdin.read() == '', sys.stdout.seekable(), sys.flags.unbuffered)",
        "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()",
        "import os\nclass D:\n def __del__(self): print('del', os.sep)\nd = D()\nf = open('unclosed.txt', 'w'); f.write('data')",
        "class D:\n def __del__(self): print('del')\ndef f():\n d = D()\n raise ValueError(1)\nf()",
        "print(open('unclosed.txt').read())",
        "import os; print(sorted(os.listdir('/proc/self/fd')), os.getpgid(0) == os.getpid(), os.getsid(0))",
        "import os; print(oct(os.umask(0)), os.getuid(), os.getgid(), os.getgroups())",
        "import signal; print([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE)], signal.pthread_sigmask(signal.SIG_BLOCK, []))",
    ] {
        same(&warm, &cold, python(code));
    }
    assert!(fork_server(&warm).is_some(), "{}", warm.log());
    assert!(fork_server(&cold).is_none());
}

#[test]
fn the_fork_server_starts_on_first_use_and_forks_the_runs() {
    if !have_python() {
        return;
    }
    let agent = Agent::start();
    let r = agent.post("/process/execute", json!({"command": "true"}));
    assert_eq!(r.json()["exitCode"], 0);
    assert_eq!(fork_server(&agent), None, "started before any python run");
    let r = code_run(&agent, python("import os; print(os.getppid())"));
    let server = fork_server(&agent).expect("a fork server");
    assert_eq!(r.json()["result"], format!("{server}\n"));
    // A run that changes a start-up variable, or declares an encoding, gets its own python3.
    let r = code_run(
        &agent,
        json!({"code": "import os; print(os.getppid())", "language": "python",
               "envs": {"PYTHONDONTWRITEBYTECODE": "1"}}),
    );
    assert_eq!(r.json()["result"], format!("{}\n", agent.pid()));
    let r = code_run(
        &agent,
        python("# -*- coding: utf-8 -*-\nimport os; print(os.getppid())"),
    );
    assert_eq!(r.json()["result"], format!("{}\n", agent.pid()));
}

#[test]
fn modules_imported_by_one_run_are_not_loaded_in_the_next() {
    if !have_python() {
        return;
    }
    let (warm, cold) = (Agent::start(), cold_agent());
    let first = same(
        &warm,
        &cold,
        python("import sys, xml.dom\nprint('xml' in sys.modules)"),
    );
    assert_eq!(result(&first)["result"], "True\n");
    // The fork server itself uses json; runs start without it all the same.
    let next = same(
        &warm,
        &cold,
        python("import sys\nprint('xml' in sys.modules, 'json' in sys.modules)"),
    );
    assert_eq!(result(&next)["result"], "False False\n");
}

#[test]
fn timeouts_answer_408_and_kill_the_child() {
    if !have_python() {
        return;
    }
    for (agent, marker) in [(Agent::start(), "4243.17"), (cold_agent(), "4243.18")] {
        let start = Instant::now();
        let r = code_run(
            &agent,
            json!({
                "code": format!("import subprocess\nprint('started', flush=True)\nsubprocess.run(['sleep', '{marker}'])"),
                "language": "python",
                "timeout": 1,
            }),
        );
        assert_eq!(r.status, 408, "{}", r.body);
        assert_eq!(r.json()["code"], "PROCESS_EXECUTION_TIMEOUT");
        assert!(start.elapsed() < Duration::from_secs(5));
        let gone = eventually(Duration::from_secs(3), || processes_with(marker).is_empty());
        kill_marked(marker);
        assert!(gone, "{marker} survived the timeout");
    }
}

#[test]
fn concurrent_runs_are_served_at_once() {
    if !have_python() {
        return;
    }
    let agent = Agent::start();
    code_run(&agent, python("pass"));
    let flag = path_str(&agent.dir.path().join("flag"));
    // The first run only ends once the second one has run.
    let waiter = format!(
        "import os, time\nfor _ in range(200):\n    if os.path.exists({flag:?}): break\n    time.sleep(0.05)\nprint('saw', os.path.exists({flag:?}))"
    );
    let setter = format!("open({flag:?}, 'w').close()\nprint('set')");
    std::thread::scope(|scope| {
        let first = scope.spawn(|| code_run(&agent, python(&waiter)));
        std::thread::sleep(Duration::from_millis(200));
        let second = code_run(&agent, python(&setter));
        assert_eq!(second.json()["result"], "set\n");
        let first = first.join().expect("first run");
        assert_eq!(first.json()["result"], "saw True\n");
    });
}

#[test]
fn a_killed_fork_server_is_replaced() {
    if !have_python() {
        return;
    }
    let agent = Agent::start();
    assert_eq!(code_run(&agent, python("print(1)")).json()["result"], "1\n");
    let old = fork_server(&agent).expect("a fork server");
    let _ = std::process::Command::new("kill")
        .args(["-9", &old.to_string()])
        .status();
    // At once, before the agent may even have noticed.
    let r = code_run(&agent, python("import os; print(os.getppid())"));
    let new = fork_server(&agent).expect("a new fork server");
    assert_ne!(new, old);
    assert_eq!(r.json()["result"], format!("{new}\n"), "{}", agent.log());
    // Killed between calls, once the agent has noticed.
    let _ = std::process::Command::new("kill")
        .args(["-9", &new.to_string()])
        .status();
    assert!(eventually(Duration::from_secs(3), || fork_server(&agent).is_none()));
    let r = code_run(&agent, python("print(2)"));
    assert_eq!(
        r.json(),
        json!({"exitCode": 0, "result": "2\n", "artifacts": {"charts": []}})
    );
}

#[test]
fn packages_installed_after_start_are_importable() {
    if !have_python() {
        return;
    }
    let (warm, cold) = (Agent::start(), cold_agent());
    // Like `pip install --user`: the user site-packages dir appears after python started.
    let install = "import os, site\np = site.getusersitepackages()\nos.makedirs(p, exist_ok=True)\nopen(os.path.join(p, 'corral_probe.py'), 'w').write('X = 42')";
    same(&warm, &cold, python(install));
    let imported = same(
        &warm,
        &cold,
        python(
            "import site\nprint(site.ENABLE_USER_SITE)\nimport corral_probe; print(corral_probe.X)",
        ),
    );
    let text = result(&imported)["result"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Without a user site (a venv, say) neither path can import it.
    assert!(
        text == "True\n42\n" || text.starts_with("False\n"),
        "{text}"
    );
}

/// Not a test: prints the median latency of `print(1)` through the agent, warm vs per call:
/// `cargo test -p corral-agent --test python_warm -- --ignored --nocapture`. Measures with our
/// PATH, with the directory of the python3 it finds first, and with `CORRAL_BENCH_PATH`.
#[test]
#[ignore = "benchmark"]
fn benchmark_print_one() {
    if !have_python() {
        return;
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(sys.executable))",
        ])
        .output()
        .expect("python3");
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ours = std::env::var("PATH").unwrap_or_default();
    let direct = format!("{bin}:{ours}");
    let mut setups = vec![
        ("our PATH".to_owned(), None),
        (format!("{bin} first on PATH"), Some(direct)),
    ];
    if let Ok(path) = std::env::var("CORRAL_BENCH_PATH") {
        setups.push((format!("PATH={path}"), Some(path)));
    }
    for (label, path) in &setups {
        let path = path.as_deref();
        let warm = Agent::start_with(&[], path);
        let cold = Agent::start_with(&[(SWITCH, "0")], path);
        let median = |agent: &Agent| {
            for _ in 0..3 {
                code_run(agent, python("print(1)"));
            }
            let mut times: Vec<Duration> = (0..50)
                .map(|_| {
                    let start = Instant::now();
                    let r = code_run(agent, python("print(1)"));
                    let elapsed = start.elapsed();
                    assert_eq!(r.json()["result"], "1\n");
                    elapsed
                })
                .collect();
            times.sort();
            times[times.len() / 2]
        };
        let (w, c) = (median(&warm), median(&cold));
        eprintln!(
            "{label}: median of 50 `print(1)` code-runs: warm {w:.2?}, per call {c:.2?} ({:.1}x)",
            c.as_secs_f64() / w.as_secs_f64()
        );
    }
}
