//! Zombie reaping: orphans are re-parented to the agent (a child subreaper in dev mode; PID 1
//! in a sandbox) and must be reaped.

mod common;

use std::time::Duration;

use common::{Agent, children_of, eventually, kill_marked, processes_with};
use serde_json::json;

#[test]
fn orphans_are_reaped() {
    let agent = Agent::start();
    let marker = "0.731";
    let r = agent.post(
        "/process/execute",
        json!({"command": format!("sh -c 'sleep {marker} >/dev/null 2>&1 &'; sh -c 'true &'; echo ok")}),
    );
    assert_eq!(r.json(), json!({"exitCode": 0, "result": "ok\n"}));
    let orphans = processes_with(marker);
    assert!(!orphans.is_empty(), "the orphan should still be sleeping");
    let children = children_of(agent.pid());
    let adopted = orphans
        .iter()
        .all(|pid| children.iter().any(|(c, _)| c == pid));
    let reaped = eventually(Duration::from_secs(3), || {
        processes_with(marker).is_empty() && children_of(agent.pid()).is_empty()
    });
    kill_marked(marker);
    assert!(
        adopted,
        "orphans {orphans:?} not adopted by the agent: {children:?}"
    );
    assert!(
        reaped,
        "children left behind: {:?}\n{}",
        children_of(agent.pid()),
        agent.log()
    );
}

#[test]
fn many_short_commands_leave_no_zombies() {
    let agent = Agent::start();
    for i in 0..20 {
        let r = agent.post(
            "/process/execute",
            json!({"command": format!("(true &); (exit {i})")}),
        );
        assert_eq!(r.json()["exitCode"], i);
    }
    assert!(
        eventually(Duration::from_secs(3), || children_of(agent.pid())
            .is_empty()),
        "zombies: {:?}",
        children_of(agent.pid())
    );
}
