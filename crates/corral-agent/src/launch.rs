//! How the agent gets its listener and config: inherited fds (production) or `--socket/--config` (dev).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use corral_core::agent::{AgentConfig, CONFIG_FD, LISTENER_FD};

use crate::error::AgentError;

/// Where the listener and the config come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Started by the runtime: fd 3 is the listener, fd 4 the config file.
    Inherited,
    /// Dev/test mode: bind a fresh socket at `socket` and read the config from `config`.
    Dev { socket: PathBuf, config: PathBuf },
}

impl Launch {
    /// Whether this is the dev/test mode (not PID 1 of a sandbox).
    pub fn is_dev(&self) -> bool {
        matches!(self, Launch::Dev { .. })
    }
}

/// Parses the arguments after the program name: none, or `--socket PATH --config FILE`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Launch, AgentError> {
    let mut socket = None;
    let mut config = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let slot = match arg.to_str() {
            Some("--socket") => &mut socket,
            Some("--config") => &mut config,
            _ => return Err(AgentError::Usage(format!("unexpected argument {arg:?}"))),
        };
        let value = args
            .next()
            .ok_or_else(|| AgentError::Usage(format!("{arg:?} needs a value")))?;
        *slot = Some(PathBuf::from(value));
    }
    match (socket, config) {
        (None, None) => Ok(Launch::Inherited),
        (Some(socket), Some(config)) => Ok(Launch::Dev { socket, config }),
        _ => Err(AgentError::Usage(
            "--socket and --config go together".to_owned(),
        )),
    }
}

/// What the agent starts serving with.
#[derive(Debug)]
pub struct Startup {
    pub config: AgentConfig,
    pub listener: UnixListener,
}

/// Reads the config and obtains the listener (close-on-exec, so children never inherit it).
pub fn acquire(launch: &Launch) -> Result<Startup, AgentError> {
    let (config, listener) = match launch {
        Launch::Inherited => {
            let config = read_config(take_fd(CONFIG_FD, "config file")?)?;
            let listener = UnixListener::from(std::os::fd::OwnedFd::from(take_fd(
                LISTENER_FD,
                "listening socket",
            )?));
            listener
                .local_addr()
                .map_err(|e| AgentError::io("fd 3 is not a unix socket", e))?;
            (config, listener)
        }
        Launch::Dev { socket, config } => {
            let file = File::open(config)
                .map_err(|e| AgentError::io(format!("open {}", config.display()), e))?;
            let config = read_config(file)?;
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io(format!("remove {}", socket.display()), e)),
            }
            let listener = UnixListener::bind(socket)
                .map_err(|e| AgentError::io(format!("bind {}", socket.display()), e))?;
            (config, listener)
        }
    };
    set_cloexec(&listener).map_err(|e| AgentError::io("set FD_CLOEXEC on the listener", e))?;
    Ok(Startup { config, listener })
}

/// Reads the whole config file and closes it.
fn read_config(mut file: File) -> Result<AgentConfig, AgentError> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| AgentError::io("read the agent config", e))?;
    drop(file);
    Ok(serde_json::from_str(&text)?)
}

/// Takes ownership of an inherited fd after checking that it is open.
fn take_fd(fd: RawFd, what: &'static str) -> Result<File, AgentError> {
    // SAFETY: F_GETFD only queries the descriptor table; an unopened fd yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(AgentError::MissingFd { fd, what });
    }
    // SAFETY: the fd is open (checked above) and was handed to this process by the runtime for
    // the agent's exclusive use; nothing else in the process owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Marks a descriptor close-on-exec.
fn set_cloexec(fd: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFD/F_SETFD take no pointers.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn no_args_means_inherited_fds() {
        assert_eq!(parse_args(args(&[])).expect("parses"), Launch::Inherited);
    }

    #[test]
    fn dev_mode_needs_both_flags() {
        let launch =
            parse_args(args(&["--config", "c.json", "--socket", "a.sock"])).expect("parses");
        assert_eq!(
            launch,
            Launch::Dev {
                socket: "a.sock".into(),
                config: "c.json".into()
            }
        );
        assert!(parse_args(args(&["--socket", "a.sock"])).is_err());
        assert!(parse_args(args(&["--socket"])).is_err());
        assert!(parse_args(args(&["--bogus", "x"])).is_err());
    }
}
