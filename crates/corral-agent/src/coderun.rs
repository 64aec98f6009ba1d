//! How `/process/code-run` runs each language (mirrors Daytona's daemon).
//!
//! - python: `python3 -u - <argv..>` with the code on stdin; code that may plot runs as
//!   `python3 -u -c <charts.py + run_stdin()> <argv..>` instead, which runs stdin the same way
//!   with matplotlib figures reported as chart lines ([`CHART_MARKER`]);
//! - javascript: `node - <argv..>` with [`JS_PREAMBLE`] + code on stdin (the preamble drops
//!   the `-` so `process.argv` looks like a script's);
//! - typescript: the same preamble + code in a fresh `/tmp/dtn_<random>.ts` owned by the user,
//!   run with a `ts-node` found on PATH, else `npx ts-node`, and deleted afterwards.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::spawn::Credentials;

/// Prepended to JavaScript and TypeScript code.
pub const JS_PREAMBLE: &str = "process.argv.splice(1, 1);\n";
/// The ts-node options Daytona uses: transpile only, CommonJS, ignore TS5107.
pub const TS_NODE_ARGS: [&str; 5] = [
    "-T",
    "--ignore-diagnostics",
    "5107",
    "-O",
    r#"{"module":"CommonJS"}"#,
];
/// Python that turns matplotlib figures into chart artifacts (see the file's header).
pub const CHARTS_SCRIPT: &str = include_str!("charts.py");
/// The line prefix of a chart in the output of a python run (`MARKER` in `charts.py`).
pub const CHART_MARKER: &str = "corral_chart_5e1d7b:";
/// Where TypeScript scripts are written.
const SCRIPT_DIR: &str = "/tmp";

/// A supported language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
    TypeScript,
}

impl Language {
    /// Parses Daytona's language names (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "python" => Some(Self::Python),
            "javascript" => Some(Self::JavaScript),
            "typescript" => Some(Self::TypeScript),
            _ => None,
        }
    }
}

/// A code run ready to spawn. Keep it alive until the child exits: dropping it deletes the
/// TypeScript script.
#[derive(Debug)]
pub struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub script: Option<NamedTempFile>,
}

/// Builds the command for `code` in `language`; `env` is the child's environment (for PATH).
pub fn prepare(
    language: Language,
    code: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    creds: Credentials,
) -> io::Result<Prepared> {
    let with_argv = |mut args: Vec<String>| {
        args.extend(argv.iter().cloned());
        args
    };
    Ok(match language {
        Language::Python if may_plot(code) => Prepared {
            program: "python3".to_owned(),
            args: with_argv(vec![
                "-u".to_owned(),
                "-c".to_owned(),
                format!("{CHARTS_SCRIPT}\nrun_stdin()\n"),
            ]),
            stdin: Some(code.as_bytes().to_vec()),
            script: None,
        },
        Language::Python => Prepared {
            program: "python3".to_owned(),
            args: with_argv(vec!["-u".to_owned(), "-".to_owned()]),
            stdin: Some(code.as_bytes().to_vec()),
            script: None,
        },
        Language::JavaScript => Prepared {
            program: "node".to_owned(),
            args: with_argv(vec!["-".to_owned()]),
            stdin: Some(format!("{JS_PREAMBLE}{code}").into_bytes()),
            script: None,
        },
        Language::TypeScript => {
            let script = write_script(code, creds)?;
            let found = find_on_path("ts-node", env.get("PATH").map(String::as_str));
            let (program, mut args) = ts_node_command(found);
            args.extend(TS_NODE_ARGS.iter().map(|a| (*a).to_owned()));
            args.push(script.path().to_string_lossy().into_owned());
            Prepared {
                program,
                args: with_argv(args),
                stdin: None,
                script: Some(script),
            }
        }
    })
}

/// Whether python `code` may draw matplotlib figures; only then does a per-call run load
/// [`CHARTS_SCRIPT`] (the fork server always has it: it costs nothing there).
pub fn may_plot(code: &str) -> bool {
    ["matplotlib", "plot", "seaborn"]
        .iter()
        .any(|word| code.contains(word))
}

/// `ts-node` itself when found on PATH, else `npx ts-node`.
pub fn ts_node_command(found: Option<PathBuf>) -> (String, Vec<String>) {
    match found {
        Some(path) => (path.to_string_lossy().into_owned(), Vec::new()),
        None => ("npx".to_owned(), vec!["ts-node".to_owned()]),
    }
}

/// The first executable file `name` in the directories of `path_var`.
pub fn find_on_path(name: &str, path_var: Option<&str>) -> Option<PathBuf> {
    path_var?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Writes the preamble and `code` to a fresh `/tmp/dtn_<random>.ts` owned by the user.
fn write_script(code: &str, creds: Credentials) -> io::Result<NamedTempFile> {
    let mut script = tempfile::Builder::new()
        .prefix("dtn_")
        .suffix(".ts")
        .tempfile_in(SCRIPT_DIR)?;
    script.write_all(JS_PREAMBLE.as_bytes())?;
    script.write_all(code.as_bytes())?;
    script.flush()?;
    std::os::unix::fs::fchown(script.as_file(), Some(creds.uid), Some(creds.gid))?;
    Ok(script)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn argv() -> Vec<String> {
        vec!["a".to_owned(), "b c".to_owned()]
    }

    fn own_creds() -> Credentials {
        let meta = tempfile::tempfile()
            .and_then(|f| f.metadata())
            .expect("temp file");
        Credentials {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    #[test]
    fn languages() {
        assert_eq!(Language::parse("python"), Some(Language::Python));
        assert_eq!(Language::parse("JavaScript"), Some(Language::JavaScript));
        assert_eq!(Language::parse("typescript"), Some(Language::TypeScript));
        assert_eq!(Language::parse("ruby"), None);
        assert_eq!(Language::parse(""), None);
    }

    #[test]
    fn python_reads_code_from_stdin() {
        let p = prepare(
            Language::Python,
            "print(1)",
            &argv(),
            &BTreeMap::new(),
            own_creds(),
        )
        .expect("prepared");
        assert_eq!(p.program, "python3");
        assert_eq!(p.args, ["-u", "-", "a", "b c"]);
        assert_eq!(p.stdin.as_deref(), Some(&b"print(1)"[..]));
    }

    #[test]
    fn python_that_may_plot_loads_the_chart_hook() {
        let code = "import matplotlib.pyplot as plt";
        let p = prepare(
            Language::Python,
            code,
            &argv(),
            &BTreeMap::new(),
            own_creds(),
        )
        .expect("prepared");
        assert_eq!(p.program, "python3");
        assert_eq!(p.args[..2], ["-u", "-c"]);
        assert!(p.args[2].starts_with(CHARTS_SCRIPT) && p.args[2].ends_with("run_stdin()\n"));
        assert_eq!(p.args[3..], ["a", "b c"]);
        assert_eq!(p.stdin.as_deref(), Some(code.as_bytes()));
        assert!(CHARTS_SCRIPT.contains(&format!("MARKER = \"{CHART_MARKER}\"")));
    }

    #[test]
    fn javascript_gets_the_preamble() {
        let p = prepare(
            Language::JavaScript,
            "x()",
            &argv(),
            &BTreeMap::new(),
            own_creds(),
        )
        .expect("prepared");
        assert_eq!(p.program, "node");
        assert_eq!(p.args, ["-", "a", "b c"]);
        assert_eq!(
            p.stdin.as_deref(),
            Some(&b"process.argv.splice(1, 1);\nx()"[..])
        );
    }

    #[test]
    fn typescript_writes_a_script_that_is_deleted_after() {
        let p = prepare(
            Language::TypeScript,
            "let x: number = 1;",
            &argv(),
            &BTreeMap::new(),
            own_creds(),
        )
        .expect("prepared");
        let script = p.script.as_ref().expect("script").path().to_owned();
        let name = script.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with("dtn_") && name.ends_with(".ts"), "{name}");
        assert_eq!(
            std::fs::read_to_string(&script).expect("read"),
            "process.argv.splice(1, 1);\nlet x: number = 1;"
        );
        assert_eq!(p.program, "npx");
        let script_arg = script.to_string_lossy().into_owned();
        let mut expected = vec!["ts-node"];
        expected.extend(TS_NODE_ARGS);
        expected.extend([script_arg.as_str(), "a", "b c"]);
        assert_eq!(p.args, expected);
        assert!(p.stdin.is_none());
        drop(p);
        assert!(!script.exists());
    }

    #[test]
    fn ts_node_on_path_is_preferred() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("ts-node");
        std::fs::write(&bin, "#!/bin/sh\n").expect("write");
        let path_var = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(
            find_on_path("ts-node", Some(&path_var)),
            None,
            "not executable yet"
        );
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let found = find_on_path("ts-node", Some(&path_var));
        assert_eq!(found.as_deref(), Some(bin.as_path()));
        assert_eq!(
            ts_node_command(found),
            (bin.to_string_lossy().into_owned(), vec![])
        );
        assert_eq!(find_on_path("ts-node", None), None);
    }
}
