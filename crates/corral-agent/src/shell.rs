//! Which shell runs `/process/execute` commands.
//!
//! Like Daytona's daemon: the first of zsh, bash, sh that exists, checked on every call (a stat
//! or three) so a shell installed after startup is picked up. The command is passed as
//! `<shell> -c <command>` rather than on stdin, so stdin stays `/dev/null` and a command that
//! reads stdin cannot swallow the rest of the script.

use std::path::Path;

/// The candidates, in order of preference.
pub const SHELLS: [&str; 3] = ["/bin/zsh", "/bin/bash", "/bin/sh"];

/// The first shell in [`SHELLS`] that exists on this filesystem.
pub fn choose() -> Option<&'static str> {
    choose_with(|path| Path::new(path).is_file())
}

/// The first shell in [`SHELLS`] for which `exists` holds.
pub fn choose_with(exists: impl Fn(&str) -> bool) -> Option<&'static str> {
    SHELLS.into_iter().find(|shell| exists(shell))
}

/// The arguments that make `shell` run `command`.
pub fn args(command: String) -> Vec<String> {
    vec!["-c".to_owned(), command]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_zsh_then_bash_then_sh() {
        assert_eq!(choose_with(|_| true), Some("/bin/zsh"));
        assert_eq!(choose_with(|p| p != "/bin/zsh"), Some("/bin/bash"));
        assert_eq!(choose_with(|p| p == "/bin/sh"), Some("/bin/sh"));
        assert_eq!(choose_with(|_| false), None);
    }

    #[test]
    fn this_machine_has_a_shell() {
        assert!(choose().is_some());
    }
}
