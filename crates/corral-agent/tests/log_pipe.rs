//! The agent's stdout/stderr is a pipe the server reads; while nobody reads it (the server
//! restarting), log writes fail with EPIPE, which must not take the agent (PID 1) down.

mod common;

use common::Agent;

#[test]
fn the_agent_survives_a_log_pipe_nobody_reads() {
    // Its start-up line is written before it binds its socket: with the read end already
    // closed that write fails with EPIPE, and the agent must still come up and answer.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let agent = Agent::start_logging_to(writer.into());
    for _ in 0..3 {
        let r = agent.request("GET", "/version", None);
        assert_eq!(r.status, 200, "{}", r.body);
    }
}
