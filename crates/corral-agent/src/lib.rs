//! corral's in-sandbox agent: PID 1 of every sandbox, serving Daytona's toolbox API.
//!
//! The runtime starts the agent with an inherited listening socket and a config file
//! (see [`corral_core::agent`]); `corral-agent --socket PATH --config FILE` is a dev/test mode
//! that binds its own socket instead. [`main_entry`] is all the binary calls.

mod api;
mod coderun;
mod error;
mod launch;
mod logging;
mod loopback;
mod params;
mod pyfork;
mod reaper;
pub mod runas;
mod runner;
mod server;
mod sftp;
mod shell;
mod signals;
mod spawn;

use std::process::ExitCode;

pub use error::AgentError;
pub use launch::{Launch, parse_args};
pub use server::run;

/// Parses the command line, sets up logging to stderr and runs the agent until it fails.
pub fn main_entry() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "run-as") {
        return runas::main(args.collect());
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "sftp-server")
    {
        return sftp::main();
    }
    logging::init();
    let result = parse_args(std::env::args_os().skip(1)).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("corral-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
