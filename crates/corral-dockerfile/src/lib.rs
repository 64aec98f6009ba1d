//! Dockerfile parser for declarative image builds: turns `buildInfo.dockerfileContent` (what the
//! Daytona SDK's `Image` builder generates, or a user's own Dockerfile) into a base image and the
//! steps a build executor runs. Pure: no I/O.
//!
//! Written by hand: the Dockerfile crates on crates.io parse syntax only, while a builder needs
//! Docker's evaluation rules (word expansion with its quoting, ARG/ENV scoping, heredocs, SHELL).
//! The rules below follow Docker (BuildKit) as documented and observed:
//!
//! - Parser directives at the top (`# escape=` with `\` or `` ` ``; `# syntax=` and `# check=` are
//!   accepted and ignored), comments, blank lines, continuation lines ending in the escape
//!   character (comment and blank lines inside a continued instruction are skipped), instruction
//!   words in any case.
//! - `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
//!   `${VAR:?msg}`, `${VAR?msg}` expand in FROM (pre-FROM ARGs only), ENV, ARG, LABEL, WORKDIR,
//!   USER, COPY/ADD paths and `--chown`/`--chmod`, and in COPY heredocs with an unquoted
//!   delimiter. Never in RUN, CMD or ENTRYPOINT: the shell expands those. ENV wins over an ARG of
//!   the same name. An unset variable expands to nothing, with a warning.
//! - ARG values in scope are handed to every later RUN as extra environment (as Docker does; they
//!   are not kept in the image).
//! - Shell forms of RUN, CMD and ENTRYPOINT are wrapped in the current SHELL (default
//!   `["/bin/sh", "-c"]`).
//!
//! Not supported, each a clear [`DockerfileError::Unsupported`]: multi-stage builds (a second
//! FROM, `COPY --from`), `FROM --platform`, RUN flags (`--mount`, `--network`, `--security`,
//! `--device`), ADD of a URL or of a tar archive (corral never unpacks archives: use COPY and
//! `RUN tar -xf`; any other ADD is a COPY), `COPY --parents`/`--exclude`, `ADD --checksum` and
//! friends, and the pattern forms `${VAR#p}`, `${VAR%p}`, `${VAR/p/r}`. `--flag value` with a
//! space is not accepted: write `--flag=value`.
//!
//! Parsed and ignored with a warning: EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD,
//! MAINTAINER. LABEL values are collected in [`Dockerfile::labels`].
//!
//! The work is in four passes, one module each: `read` turns lines into instructions,
//! `words` splits and classifies their arguments, `expand` applies Docker's word expansion, and
//! `build` evaluates the instructions into [`Step`]s (`paths` normalises what they name).

#![forbid(unsafe_code)]

mod build;
mod expand;
mod paths;
mod read;
mod words;

use std::collections::BTreeMap;

use build::Builder;
use read::read;

/// Most bytes the parse may produce (expanded variables plus the steps it returns). Guards the
/// server against `ENV a=$a$a`-style doubling: past it the Dockerfile is refused.
pub const MAX_OUTPUT_BYTES: usize = 32 * 1024 * 1024;

/// How deeply `${a:-${b:-...}}` may nest: recursion is bounded so bad input cannot exhaust the
/// stack.
const MAX_NESTING: usize = 32;

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// A parsed single-stage Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The base image reference from FROM, variables expanded (may be `scratch`).
    pub base: String,
    /// The `AS name` of the stage, if given (it has no effect with one stage).
    pub stage_name: Option<String>,
    /// The steps to run, in order. ARG, SHELL, LABEL and the ignored instructions produce none.
    pub steps: Vec<Step>,
    /// LABEL pairs in order, expanded; a later pair with the same key wins, as in Docker.
    pub labels: Vec<(String, String)>,
    /// Notes for the build log: ignored instructions, unset variables, unused build args. Each
    /// starts with `line N:` where a line applies.
    pub warnings: Vec<String>,
}

/// One instruction to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the instruction's first line.
    pub line: usize,
    /// The instruction as written, continuation lines joined (heredoc bodies left out), for
    /// `Step 3/7 : RUN ...` style logs.
    pub text: String,
    pub op: Op,
}

impl Step {
    /// The instruction as written (the `text` field).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What a [`Step`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Run `argv` (shell forms are already wrapped in the SHELL) in the current WORKDIR as the
    /// current USER, with the environment set by the base image and earlier ENV steps plus
    /// `build_args` (the ARG values in scope, for this command only; names also set by ENV are
    /// left out because ENV wins).
    Run {
        argv: Vec<String>,
        build_args: Vec<(String, String)>,
    },
    /// `RUN <<EOF` whose body starts with `#!`: as Docker does, write `script` to a temporary
    /// file with mode 0755, execute that file (no arguments, same environment as [`Op::Run`]),
    /// then remove it.
    RunScript {
        script: String,
        build_args: Vec<(String, String)>,
    },
    /// Set these variables in the image, in order (values expanded).
    Env { vars: Vec<(String, String)> },
    /// Change the working directory: absolute and normalised. Docker creates it if missing.
    Workdir { path: String },
    /// Later steps and the image run as this `user[:group]` (a name or a number).
    User { user: String },
    /// Copy `sources` to `dest`. `dest` is absolute; it ends in `/` when it names a directory
    /// (always so with several sources), otherwise a single source is copied to that exact path.
    /// Context sources may hold glob patterns (`*.py`) for the executor to expand; a pattern
    /// matching several files needs a `dest` ending in `/`, which only the executor can check.
    Copy {
        sources: Vec<CopySource>,
        dest: String,
        /// `--chown=user[:group]`, expanded.
        chown: Option<String>,
        /// `--chmod=` as a number (octal in the Dockerfile).
        chmod: Option<u32>,
    },
    /// Set the image's entrypoint (an empty list clears it). Docker also clears a CMD inherited
    /// from the base image when ENTRYPOINT is set.
    Entrypoint { argv: Vec<String> },
    /// Set the image's default command (an empty list clears it).
    Cmd { argv: Vec<String> },
}

/// Where a COPY source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path in the uploaded build context: relative, normalised, never above the context
    /// root (`.` is the whole context).
    Context(String),
    /// A heredoc (`COPY <<EOF /dest`): a file named `name` holding `content` (Docker gives it
    /// mode 0644 unless `--chmod` says otherwise).
    Inline { name: String, content: String },
}

/// What the parser may know about the base image: Docker expands `$PATH` in `ENV PATH=...:$PATH`
/// from the image's environment and resolves a relative first WORKDIR against the image's.
/// [`parse`] knows nothing of the image; an executor that has pulled it calls
/// [`parse_with_base`] again with its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// The image's environment (`Env` of the image config, split at the first `=`).
    pub env: Vec<(String, String)>,
    /// The image's `WorkingDir`; `/` when absent or empty.
    pub working_dir: Option<String>,
}

/// Why a Dockerfile cannot be built. Every variant is the user's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    /// The text is not a valid Dockerfile.
    #[error("Dockerfile line {line}: {message}")]
    Invalid { line: usize, message: String },
    /// Valid Dockerfile syntax that corral's builder does not support.
    #[error("Dockerfile line {line}: {message}")]
    Unsupported { line: usize, message: String },
    /// No FROM instruction at all.
    #[error(
        "Dockerfile has no FROM instruction: it must name a base image with FROM <image> \
         (only ARG, comments and blank lines may come before it)"
    )]
    MissingFrom,
}

impl DockerfileError {
    /// The 1-based line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Invalid { line, .. } | Self::Unsupported { line, .. } => Some(*line),
            Self::MissingFrom => None,
        }
    }
}

fn invalid(line: usize, message: impl Into<String>) -> DockerfileError {
    DockerfileError::Invalid {
        line,
        message: message.into(),
    }
}

fn unsupported(line: usize, message: impl Into<String>) -> DockerfileError {
    DockerfileError::Unsupported {
        line,
        message: message.into(),
    }
}

/// Parses `content` with the caller's build args (`--build-arg` values; may be empty), knowing
/// nothing of the base image. See [`parse_with_base`].
pub fn parse(
    content: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Dockerfile, DockerfileError> {
    parse_with_base(content, build_args, &BaseImage::default())
}

/// Parses `content` as [`parse`] does, with the base image's environment and working directory
/// known. The base image itself depends only on `content` and `build_args`, so an executor can
/// call [`parse`] to learn it, pull it, then call this with its config.
pub fn parse_with_base(
    content: &str,
    build_args: &BTreeMap<String, String>,
    base: &BaseImage,
) -> Result<Dockerfile, DockerfileError> {
    let source = read(content)?;
    let mut builder = Builder::new(build_args, base, source.escape);
    builder.warnings.extend(source.warnings);
    for instruction in &source.instructions {
        builder.instruction(instruction)?;
    }
    builder.finish()
}
