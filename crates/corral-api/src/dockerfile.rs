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

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::str::Chars;

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

// ---------------------------------------------------------------------------------------------
// Reading: lines into instructions (directives, comments, continuations, heredoc bodies).

/// One instruction as read, before evaluation.
#[derive(Debug)]
struct Instruction {
    line: usize,
    /// The instruction word as written.
    word: String,
    /// Upper-cased `word`.
    keyword: String,
    /// Everything after the instruction word, trimmed (flags included).
    args: String,
    /// The whole logical line, trimmed.
    text: String,
    heredocs: Vec<Heredoc>,
}

#[derive(Debug)]
struct Heredoc {
    name: String,
    /// The delimiter was unquoted: the body's variables expand (COPY only).
    expand: bool,
    /// `<<-`: leading tabs are stripped from the body's lines.
    chomp: bool,
    /// The body lines, each with its line ending.
    content: String,
}

impl Heredoc {
    fn body(&self) -> String {
        if self.chomp {
            strip_leading_tabs(&self.content)
        } else {
            self.content.clone()
        }
    }
}

#[derive(Debug)]
struct Source {
    escape: char,
    instructions: Vec<Instruction>,
    warnings: Vec<String>,
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line).trim_start().starts_with('#')
}

fn strip_leading_tabs(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// `# key = value` at the top of the file.
fn directive(line: &str) -> Option<(String, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then(|| (key.to_ascii_lowercase(), value))
}

/// Strips a continuation escape (and blanks after it) from the end of `line`. Returns the line
/// and whether the instruction ends here. An escape preceded by another escape is literal.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) if before.is_empty() || !before.ends_with(escape) => (before, false),
        _ => (line, true),
    }
}

fn read(content: &str) -> Result<Source, DockerfileError> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let lines: Vec<&str> = content.split_inclusive('\n').collect();

    let mut escape = '\\';
    let mut seen = BTreeSet::new();
    for (idx, raw) in lines.iter().enumerate() {
        let Some((key, value)) = directive(trim_newline(raw).trim_start()) else {
            break;
        };
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            break;
        }
        if !seen.insert(key.clone()) {
            return Err(invalid(
                idx + 1,
                format!("only one {key} parser directive can be used"),
            ));
        }
        if key == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(invalid(
                        idx + 1,
                        format!("invalid escape directive {other:?}: use \\ or `"),
                    ));
                }
            };
        }
    }

    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let first = trim_newline(lines[i]).trim_start();
        i += 1;
        if first.starts_with('#') {
            continue;
        }
        let start = i;
        let (head, mut done) = trim_continuation(first, escape);
        let mut logical = head.to_owned();
        if done && logical.trim().is_empty() {
            continue;
        }
        let mut empty_continuation = false;
        while !done && i < lines.len() {
            let raw = lines[i];
            i += 1;
            if is_comment(raw) {
                continue;
            }
            let next = trim_newline(raw);
            if next.trim().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, end) = trim_continuation(next, escape);
            logical.push_str(part);
            done = end;
        }
        let text = logical.trim();
        if text.is_empty() {
            continue;
        }
        if empty_continuation {
            warnings.push(format!(
                "line {start}: empty continuation line in this instruction (Docker will refuse \
                 these in a future release)"
            ));
        }
        let (word, args) = match text.find(char::is_whitespace) {
            Some(at) => (&text[..at], text[at..].trim()),
            None => (text, ""),
        };
        let keyword = word.to_ascii_uppercase();

        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            let (_, after_flags) = split_flags(args);
            let exec_form = matches!(command_form(after_flags), Ok(Form::Exec(_)));
            if !exec_form {
                for word in split_words(text, '\\') {
                    let Some(marker) =
                        heredoc_marker(&word).map_err(|message| invalid(start, message))?
                    else {
                        continue;
                    };
                    let mut body = String::new();
                    let mut terminated = false;
                    while i < lines.len() {
                        let raw = lines[i];
                        i += 1;
                        let mut candidate = trim_newline(raw);
                        if marker.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == marker.name {
                            terminated = true;
                            break;
                        }
                        body.push_str(raw);
                    }
                    if !terminated {
                        return Err(invalid(
                            start,
                            format!(
                                "heredoc <<{name} is not terminated: no line reading {name} \
                                 follows it",
                                name = marker.name
                            ),
                        ));
                    }
                    heredocs.push(Heredoc {
                        name: marker.name,
                        expand: marker.expand,
                        chomp: marker.chomp,
                        content: body,
                    });
                }
            }
        }

        instructions.push(Instruction {
            line: start,
            word: word.to_owned(),
            keyword,
            args: args.to_owned(),
            text: text.to_owned(),
            heredocs,
        });
    }
    Ok(Source {
        escape,
        instructions,
        warnings,
    })
}

// ---------------------------------------------------------------------------------------------
// Words: splitting, flags, heredoc markers, JSON forms.

/// Splits at unquoted whitespace, keeping quotes and escapes in the words (they are removed
/// later, when each word is expanded). An escape or quote left open runs to the end.
fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    word.push(c);
                } else if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    word.push(c);
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Leading `--name[=value]` words of an instruction, and the text after them.
fn split_flags(args: &str) -> (Vec<&str>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while rest.starts_with("--") {
        let end = word_end(rest);
        let flag = &rest[..end];
        rest = rest[end..].trim_start();
        if flag == "--" {
            break;
        }
        flags.push(flag);
    }
    (flags, rest.trim_end())
}

/// Byte index of the first whitespace outside quotes.
fn word_end(text: &str) -> usize {
    let mut quote: Option<char> = None;
    for (at, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c.is_whitespace() => return at,
            None => {}
        }
    }
    text.len()
}

/// `--name=value` → (`name`, `Some(value)`); `--name` → (`name`, `None`).
fn flag_parts(flag: &str) -> (&str, Option<&str>) {
    let body = flag.trim_start_matches('-');
    match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    }
}

struct Marker {
    name: String,
    expand: bool,
    chomp: bool,
}

/// A heredoc marker word: `[fd]<<[-]NAME`, NAME possibly quoted (then its body is not expanded).
fn heredoc_marker(word: &str) -> Result<Option<Marker>, String> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') || split_words(rest, '\\').len() != 1 {
        return Ok(None);
    }
    let name = unquote(rest)
        .ok_or_else(|| format!("heredoc delimiter {rest} has a quote that is never closed"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Ok(None);
    }
    Ok(Some(Marker {
        name,
        expand: !rest.contains(['\'', '"']),
        chomp,
    }))
}

/// Removes shell quoting from a heredoc delimiter (no variable expansion). `None` when a quote is
/// left open.
fn unquote(word: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => out.push(chars.next()?),
                    c => out.push(c),
                }
            },
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

#[derive(Debug)]
enum Form {
    /// JSON (exec) form.
    Exec(Vec<String>),
    /// Shell form: the text as written.
    Shell(String),
}

/// JSON form when the text is a JSON array of strings. Text that is not valid JSON is shell
/// form, as in Docker (`RUN [ -f /x ] && ...` and `RUN [[ ... ]]` are shell commands), unless
/// it plainly meant to be JSON (`[` right before a quote, or a comma-separated list in
/// brackets): then an error.
fn command_form(text: &str) -> Result<Form, String> {
    let text = text.trim();
    if !text.starts_with('[') {
        return Ok(Form::Shell(text.to_owned()));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                other => Err(format!(
                    "the JSON form must list strings only, but it holds {other}"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Form::Exec),
        Ok(_) => Ok(Form::Shell(text.to_owned())),
        Err(e) => {
            let quote_first = text[1..].starts_with(['"', '\'']);
            let meant_json = quote_first || (text.ends_with(']') && text.contains(','));
            if meant_json {
                Err(format!(
                    "{text} is not valid JSON ({e}); write the JSON form as [\"program\", \
                     \"arg\", ...] with double quotes and commas"
                ))
            } else {
                Ok(Form::Shell(text.to_owned()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// Normalises an absolute path: no `.`, `..`, empty or trailing segments (`..` stops at `/`).
fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `path` made absolute against `dir`, normalised.
fn resolve(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_absolute(path)
    } else {
        clean_absolute(&format!("{dir}/{path}"))
    }
}

/// A COPY destination: absolute, ending in `/` when it names a directory.
fn resolve_dest(dir: &str, dest: &str) -> String {
    let is_dir = dest.ends_with('/')
        || dest == "."
        || dest == ".."
        || dest.ends_with("/.")
        || dest.ends_with("/..");
    let path = resolve(dir, dest);
    if is_dir && path != "/" {
        path + "/"
    } else {
        path
    }
}

/// A COPY source as a normalised path in the build context; `None` if it climbs out.
fn context_path(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for segment in source.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

fn is_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "git://", "ssh://", "git@"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
}

fn is_tar_archive(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst",
        ".tzst",
    ]
    .iter()
    .any(|suffix| lower.ends_with(suffix))
}

fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(8)) {
        return None;
    }
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
}

// ---------------------------------------------------------------------------------------------
// Expansion: Docker's word processing (quote removal and variable substitution).

/// The variables visible to an expansion: ENV first, then ARG.
#[derive(Clone, Copy)]
struct Scope<'a> {
    env: &'a BTreeMap<String, String>,
    args: &'a BTreeMap<String, String>,
}

impl<'a> Scope<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        let env: &'a BTreeMap<String, String> = self.env;
        let args: &'a BTreeMap<String, String> = self.args;
        env.get(name).or_else(|| args.get(name)).map(String::as_str)
    }
}

struct Expander<'a> {
    scope: Scope<'a>,
    escape: char,
    /// Heredoc bodies: quotes stay as written and the escape only protects `$` and itself.
    raw: bool,
    /// Most bytes one expansion may produce.
    limit: usize,
    /// Names of unset variables that expanded to nothing.
    unset: BTreeSet<String>,
}

const TOO_LARGE: &str = "the Dockerfile expands to too much text";

impl Expander<'_> {
    fn expand(&mut self, word: &str) -> Result<String, String> {
        let mut chars = word.chars().peekable();
        self.until(&mut chars, None, 0)
    }

    fn until(
        &mut self,
        chars: &mut Peekable<Chars<'_>>,
        stop: Option<char>,
        depth: usize,
    ) -> Result<String, String> {
        if depth > MAX_NESTING {
            return Err("variable substitutions are nested too deeply".to_owned());
        }
        let mut out = String::new();
        while let Some(c) = chars.next() {
            if Some(c) == stop {
                return Ok(out);
            }
            match c {
                '$' => {
                    let value = self.dollar(chars, depth)?;
                    out.push_str(&value);
                }
                '\'' if !self.raw => loop {
                    match chars.next() {
                        None => return Err("a single quote is never closed".to_owned()),
                        Some('\'') => break,
                        Some(c) => out.push(c),
                    }
                },
                '"' if !self.raw => self.double_quoted(chars, &mut out, depth)?,
                c if c == self.escape => {
                    if self.raw {
                        match chars.peek() {
                            Some(&next) if next == '$' || next == self.escape => {
                                out.push(next);
                                chars.next();
                            }
                            _ => out.push(c),
                        }
                    } else if let Some(next) = chars.next() {
                        out.push(next);
                    }
                }
                c => out.push(c),
            }
            if out.len() > self.limit {
                return Err(TOO_LARGE.to_owned());
            }
        }
        match stop {
            Some(stop) => Err(format!("missing '{stop}'")),
            None => Ok(out),
        }
    }

    fn double_quoted(
        &mut self,
        chars: &mut Peekable<Chars<'_>>,
        out: &mut String,
        depth: usize,
    ) -> Result<(), String> {
        loop {
            match chars.next() {
                None => return Err("a double quote is never closed".to_owned()),
                Some('"') => return Ok(()),
                Some('$') => {
                    let value = self.dollar(chars, depth)?;
                    out.push_str(&value);
                }
                Some(c) if c == self.escape => match chars.peek() {
                    Some(&next) if next == '"' || next == '$' || next == self.escape => {
                        out.push(next);
                        chars.next();
                    }
                    Some(_) => out.push(c),
                    None => {}
                },
                Some(c) => out.push(c),
            }
            if out.len() > self.limit {
                return Err(TOO_LARGE.to_owned());
            }
        }
    }

    /// After a `$`.
    fn dollar(&mut self, chars: &mut Peekable<Chars<'_>>, depth: usize) -> Result<String, String> {
        if chars.peek() != Some(&'{') {
            let name = read_name(chars);
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(self.lookup(&name));
        }
        chars.next();
        match chars.peek() {
            None => return Err("missing '}'".to_owned()),
            Some('{' | '}' | ':') => return Err("bad substitution".to_owned()),
            Some(_) => {}
        }
        let name = read_name(chars);
        let (op, colon) = match chars.next() {
            None => return Err("missing '}'".to_owned()),
            Some('}') => return Ok(self.lookup(&name)),
            Some(':') => match chars.next() {
                Some(op @ ('-' | '+' | '?')) => (op, true),
                Some(other) => {
                    return Err(format!("unsupported modifier (:{other}) in ${{{name}...}}"));
                }
                None => return Err("missing '}'".to_owned()),
            },
            Some(op @ ('-' | '+' | '?')) => (op, false),
            Some(op @ ('#' | '%' | '/')) => {
                return Err(format!(
                    "${{{name}{op}...}} (pattern removal or replacement) is not supported"
                ));
            }
            Some(other) => {
                return Err(format!("unsupported modifier ({other}) in ${{{name}...}}"));
            }
        };
        let word = self.until(chars, Some('}'), depth + 1)?;
        let value = self.scope.get(&name);
        let missing = match value {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        match (op, value) {
            ('-', Some(v)) if !missing => Ok(v.to_owned()),
            ('-', _) => Ok(word),
            ('+', _) if missing => Ok(String::new()),
            ('+', _) => Ok(word),
            (_, Some(v)) if !missing => Ok(v.to_owned()),
            (_, found) => {
                let default = if found.is_none() {
                    "is not allowed to be unset"
                } else {
                    "is not allowed to be empty"
                };
                let message = if word.is_empty() { default } else { &word };
                Err(format!("{name}: {message}"))
            }
        }
    }

    fn lookup(&mut self, name: &str) -> String {
        match self.scope.get(name) {
            Some(value) => value.to_owned(),
            None => {
                if name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
                    self.unset.insert(name.to_owned());
                }
                String::new()
            }
        }
    }
}

/// A variable name after `$` or `${`: digits (a positional parameter), one special parameter
/// character, or letters, digits and `_`.
fn read_name(chars: &mut Peekable<Chars<'_>>) -> String {
    let mut name = String::new();
    match chars.peek() {
        Some(c) if c.is_ascii_digit() => {
            while let Some(&c) = chars.peek()
                && c.is_ascii_digit()
            {
                name.push(c);
                chars.next();
            }
            return name;
        }
        Some(&c) if matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!') => {
            name.push(c);
            chars.next();
            return name;
        }
        _ => {}
    }
    while let Some(&c) = chars.peek()
        && (c.is_alphanumeric() || c == '_')
    {
        name.push(c);
        chars.next();
    }
    name
}

// ---------------------------------------------------------------------------------------------
// Evaluation: instructions into steps.

const KNOWN: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

struct Builder<'a> {
    build_args: &'a BTreeMap<String, String>,
    used_build_args: BTreeSet<String>,
    escape: char,
    /// ARGs declared before FROM: visible to FROM, and to `ARG name` inside the stage.
    meta_args: BTreeMap<String, String>,
    /// ARGs declared in the stage that have a value.
    args: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    shell: Vec<String>,
    workdir: String,
    /// Line, image and stage name of the FROM, once seen.
    from: Option<(usize, String, Option<String>)>,
    steps: Vec<Step>,
    labels: Vec<(String, String)>,
    warnings: Vec<String>,
    /// Bytes the parse may still produce.
    budget: usize,
}

impl<'a> Builder<'a> {
    fn new(build_args: &'a BTreeMap<String, String>, base: &BaseImage, escape: char) -> Self {
        let workdir = match base.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => resolve("/", dir),
            _ => "/".to_owned(),
        };
        Self {
            build_args,
            used_build_args: BTreeSet::new(),
            escape,
            meta_args: BTreeMap::new(),
            args: BTreeMap::new(),
            env: base.env.iter().cloned().collect(),
            shell: DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect(),
            workdir,
            from: None,
            steps: Vec::new(),
            labels: Vec::new(),
            warnings: Vec::new(),
            budget: MAX_OUTPUT_BYTES,
        }
    }

    fn warn(&mut self, line: usize, message: impl AsRef<str>) {
        self.warnings
            .push(format!("line {line}: {}", message.as_ref()));
    }

    fn charge(&mut self, line: usize, bytes: usize) -> Result<(), DockerfileError> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(invalid(
                line,
                format!(
                    "{TOO_LARGE}: more than {} MiB after variable expansion",
                    MAX_OUTPUT_BYTES >> 20
                ),
            )),
        }
    }

    /// Expands `word` in the stage scope (`meta`: the pre-FROM scope; `raw`: heredoc rules).
    fn expand_with(
        &mut self,
        line: usize,
        word: &str,
        meta: bool,
        raw: bool,
    ) -> Result<String, DockerfileError> {
        let no_env = BTreeMap::new();
        let scope = if meta {
            Scope {
                env: &no_env,
                args: &self.meta_args,
            }
        } else {
            Scope {
                env: &self.env,
                args: &self.args,
            }
        };
        let mut expander = Expander {
            scope,
            escape: self.escape,
            raw,
            limit: self.budget,
            unset: BTreeSet::new(),
        };
        let result = expander.expand(word);
        let unset = expander.unset;
        let out = result.map_err(|message| {
            if message == TOO_LARGE {
                invalid(
                    line,
                    format!(
                        "{TOO_LARGE}: more than {} MiB after variable expansion",
                        MAX_OUTPUT_BYTES >> 20
                    ),
                )
            } else {
                invalid(line, format!("cannot expand {word:?}: {message}"))
            }
        })?;
        self.charge(line, out.len())?;
        for name in unset {
            self.warn(
                line,
                format!("${name} is not set, so it expands to an empty string"),
            );
        }
        Ok(out)
    }

    fn expand(&mut self, line: usize, word: &str) -> Result<String, DockerfileError> {
        self.expand_with(line, word, false, false)
    }

    fn push(&mut self, ins: &Instruction, op: Op) -> Result<(), DockerfileError> {
        fn strings(items: &[String]) -> usize {
            items.iter().map(String::len).sum()
        }
        fn pairs(items: &[(String, String)]) -> usize {
            items.iter().map(|(k, v)| k.len() + v.len()).sum()
        }
        let size = match &op {
            Op::Run { argv, build_args } => strings(argv) + pairs(build_args),
            Op::RunScript { script, build_args } => script.len() + pairs(build_args),
            Op::Env { vars } => pairs(vars),
            Op::Workdir { path } => path.len(),
            Op::User { user } => user.len(),
            Op::Copy { sources, dest, .. } => {
                dest.len()
                    + sources
                        .iter()
                        .map(|s| match s {
                            CopySource::Context(path) => path.len(),
                            CopySource::Inline { name, content } => name.len() + content.len(),
                        })
                        .sum::<usize>()
            }
            Op::Entrypoint { argv } | Op::Cmd { argv } => strings(argv),
        };
        self.charge(ins.line, size + ins.text.len())?;
        self.steps.push(Step {
            line: ins.line,
            text: ins.text.clone(),
            op,
        });
        Ok(())
    }

    fn shell_wrap(&self, command: String) -> Vec<String> {
        let mut argv = self.shell.clone();
        argv.push(command);
        argv
    }

    /// ARG values a RUN gets as extra environment.
    fn run_args(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(name, _)| !self.env.contains_key(*name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    fn no_flags(&self, ins: &Instruction) -> Result<(), DockerfileError> {
        let (flags, _) = split_flags(&ins.args);
        match flags.first() {
            Some(flag) => Err(invalid(
                ins.line,
                format!("unknown flag {flag} for {}", ins.keyword),
            )),
            None => Ok(()),
        }
    }

    fn instruction(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        let line = ins.line;
        let keyword = ins.keyword.as_str();
        if !KNOWN.contains(&keyword) {
            let hint = if self.from.is_some() {
                " (if this line continues the instruction above, end that line with \\)"
            } else {
                ""
            };
            return Err(invalid(
                line,
                format!("unknown instruction {}{hint}", ins.word),
            ));
        }
        if ins.args.is_empty() {
            return Err(invalid(line, format!("{keyword} needs arguments")));
        }
        if self.from.is_none() && keyword != "FROM" && keyword != "ARG" {
            return Err(invalid(
                line,
                format!(
                    "{keyword} comes before FROM: a Dockerfile must start with FROM <image> \
                     (only ARG may come before it)"
                ),
            ));
        }
        match keyword {
            "FROM" => self.from(ins),
            "ARG" => self.arg(ins),
            "ENV" => self.env(ins),
            "LABEL" => self.label(ins),
            "RUN" => self.run(ins),
            "CMD" | "ENTRYPOINT" => self.command(ins),
            "SHELL" => self.shell(ins),
            "WORKDIR" => self.workdir(ins),
            "USER" => self.user(ins),
            "COPY" => self.copy(ins, false),
            "ADD" => self.copy(ins, true),
            other => {
                let why = match other {
                    "EXPOSE" => "corral does not record exposed ports",
                    "VOLUME" => "the path stays an ordinary directory of the image",
                    "STOPSIGNAL" => "corral stops sandboxes its own way",
                    "HEALTHCHECK" => "corral runs no health checks",
                    "ONBUILD" => "its instruction would only run in builds based on this image",
                    _ => "it is deprecated; use LABEL",
                };
                self.warn(line, format!("{other} is ignored: {why}"));
                Ok(())
            }
        }
    }

    fn from(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        let line = ins.line;
        if let Some((first, ..)) = &self.from {
            return Err(unsupported(
                line,
                format!(
                    "multi-stage builds are not supported: this is a second FROM (the first is on \
                     line {first}); corral builds a single stage"
                ),
            ));
        }
        let (flags, rest) = split_flags(&ins.args);
        if let Some(flag) = flags.first() {
            let (name, _) = flag_parts(flag);
            return Err(if name == "platform" {
                unsupported(
                    line,
                    "FROM --platform is not supported: corral builds for the machine it runs on",
                )
            } else {
                invalid(line, format!("unknown flag {flag} for FROM"))
            });
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (image, stage) = match words.as_slice() {
            [image] => (*image, None),
            [image, as_word, stage] if as_word.eq_ignore_ascii_case("as") => {
                (*image, Some((*stage).to_owned()))
            }
            _ => {
                return Err(invalid(
                    line,
                    "FROM takes an image and an optional AS <name>, e.g. FROM python:3.12-slim",
                ));
            }
        };
        let base = self.expand_with(line, image, true, false)?;
        if base.is_empty() || base.contains(char::is_whitespace) {
            return Err(invalid(
                line,
                format!("FROM {image} does not name an image (it expands to {base:?})"),
            ));
        }
        self.from = Some((line, base, stage));
        Ok(())
    }

    fn arg(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let line = ins.line;
        let meta = self.from.is_none();
        let mut declared = Vec::new();
        for word in split_words(&ins.args, self.escape) {
            let (name, default) = match word.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (word.as_str(), None),
            };
            if name.is_empty() {
                return Err(invalid(line, "ARG needs a name before '='"));
            }
            let name = self.expand_with(line, name, meta, false)?;
            let default = match default {
                Some(value) => Some(self.expand_with(line, value, meta, false)?),
                None => None,
            };
            declared.push((name, default));
        }
        for (name, default) in declared {
            let given = self.build_args.get(&name).cloned();
            if given.is_some() {
                self.used_build_args.insert(name.clone());
            }
            let inherited = if meta {
                self.meta_args.get(&name).cloned()
            } else {
                self.args
                    .get(&name)
                    .or_else(|| self.meta_args.get(&name))
                    .cloned()
            };
            if let Some(value) = given.or(default).or(inherited) {
                if meta {
                    self.meta_args.insert(name, value);
                } else {
                    self.args.insert(name, value);
                }
            }
        }
        Ok(())
    }

    /// `name=value ...` pairs of ENV and LABEL, or the legacy `name value` form; unexpanded.
    fn name_values(&self, ins: &Instruction) -> Result<Vec<(String, String)>, DockerfileError> {
        let words = split_words(&ins.args, self.escape);
        let keyword = &ins.keyword;
        let Some(first) = words.first() else {
            return Err(invalid(ins.line, format!("{keyword} needs name=value")));
        };
        if !first.contains('=') {
            let text = ins.args.trim();
            let Some(at) = text.find(char::is_whitespace) else {
                return Err(invalid(
                    ins.line,
                    format!("{keyword} {text} has no value: write {keyword} {text}=<value>"),
                ));
            };
            return Ok(vec![(
                text[..at].to_owned(),
                text[at..].trim_start().to_owned(),
            )]);
        }
        words
            .iter()
            .map(|word| match word.split_once('=') {
                Some(("", _)) => Err(invalid(
                    ins.line,
                    format!("{keyword} {word}: a name is missing before '='"),
                )),
                Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
                None => Err(invalid(
                    ins.line,
                    format!(
                        "{keyword}: {word:?} has no '='; write name=value (once one pair uses \
                         '=', all must)"
                    ),
                )),
            })
            .collect()
    }

    /// Expands names and values of `pairs`, all against the scope before the instruction.
    fn expand_pairs(
        &mut self,
        line: usize,
        pairs: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, DockerfileError> {
        let mut out = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let name = self.expand(line, &name)?;
            if name.is_empty() {
                return Err(invalid(line, "a variable name expands to nothing"));
            }
            let value = self.expand(line, &value)?;
            out.push((name, value));
        }
        Ok(out)
    }

    fn env(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let pairs = self.name_values(ins)?;
        let vars = self.expand_pairs(ins.line, pairs)?;
        for (name, value) in &vars {
            self.env.insert(name.clone(), value.clone());
        }
        self.push(ins, Op::Env { vars })
    }

    fn label(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let pairs = self.name_values(ins)?;
        let labels = self.expand_pairs(ins.line, pairs)?;
        self.labels.extend(labels);
        Ok(())
    }

    fn run(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        let line = ins.line;
        let (flags, command) = split_flags(&ins.args);
        if let Some(flag) = flags.first() {
            let (name, _) = flag_parts(flag);
            return Err(match name {
                "mount" | "network" | "security" | "device" => unsupported(
                    line,
                    format!(
                        "RUN --{name} is not supported: corral runs build steps as plain \
                         commands in the build sandbox"
                    ),
                ),
                _ => invalid(line, format!("unknown flag {flag} for RUN")),
            });
        }
        if command.is_empty() {
            return Err(invalid(line, "RUN needs a command"));
        }
        let build_args = self.run_args();
        if !ins.heredocs.is_empty() {
            let single =
                ins.heredocs.len() == 1 && heredoc_marker(command).ok().flatten().is_some();
            let op = if single {
                let body = ins.heredocs[0].body();
                if body.starts_with("#!") {
                    Op::RunScript {
                        script: body,
                        build_args,
                    }
                } else {
                    Op::Run {
                        argv: self.shell_wrap(body),
                        build_args,
                    }
                }
            } else {
                // The shell reads the heredocs itself: hand it the command with the bodies.
                let mut full = command.to_owned();
                for heredoc in &ins.heredocs {
                    full.push('\n');
                    full.push_str(&heredoc.content);
                    full.push_str(&heredoc.name);
                }
                Op::Run {
                    argv: self.shell_wrap(full),
                    build_args,
                }
            };
            return self.push(ins, op);
        }
        let argv = match command_form(command).map_err(|m| invalid(line, m))? {
            Form::Exec(argv) if argv.is_empty() => {
                return Err(invalid(line, "RUN [] names no command"));
            }
            Form::Exec(argv) => argv,
            Form::Shell(text) => self.shell_wrap(text),
        };
        self.push(ins, Op::Run { argv, build_args })
    }

    fn command(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let argv = match command_form(&ins.args).map_err(|m| invalid(ins.line, m))? {
            Form::Exec(argv) => argv,
            Form::Shell(text) => self.shell_wrap(text),
        };
        let op = if ins.keyword == "CMD" {
            Op::Cmd { argv }
        } else {
            Op::Entrypoint { argv }
        };
        self.push(ins, op)
    }

    fn shell(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        match command_form(&ins.args).map_err(|m| invalid(ins.line, m))? {
            Form::Exec(argv) if !argv.is_empty() => {
                self.shell = argv;
                Ok(())
            }
            Form::Exec(_) => Err(invalid(ins.line, "SHELL [] names no shell")),
            Form::Shell(_) => Err(invalid(
                ins.line,
                "SHELL must be written in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]",
            )),
        }
    }

    fn workdir(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let path = self.expand(ins.line, &ins.args)?;
        if path.is_empty() {
            return Err(invalid(
                ins.line,
                format!("WORKDIR {} expands to an empty path", ins.args),
            ));
        }
        let path = resolve(&self.workdir, &path);
        self.workdir = path.clone();
        self.push(ins, Op::Workdir { path })
    }

    fn user(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.no_flags(ins)?;
        let user = self.expand(ins.line, &ins.args)?;
        if user.is_empty() || user.contains(char::is_whitespace) {
            return Err(invalid(
                ins.line,
                format!(
                    "USER takes one user[:group], but {} expands to {user:?}",
                    ins.args
                ),
            ));
        }
        self.push(ins, Op::User { user })
    }

    fn copy(&mut self, ins: &Instruction, add: bool) -> Result<(), DockerfileError> {
        let line = ins.line;
        let kw = ins.keyword.as_str();
        let (flags, rest) = split_flags(&ins.args);
        let mut chown = None;
        let mut chmod = None;
        for flag in flags {
            let (name, value) = flag_parts(flag);
            match (name, value) {
                ("chown" | "chmod", None | Some("")) => {
                    return Err(invalid(
                        line,
                        format!("{kw} --{name} needs a value: write --{name}=<value>"),
                    ));
                }
                ("chown", Some(value)) => {
                    let owner = self.expand(line, value)?;
                    if owner.is_empty() {
                        return Err(invalid(
                            line,
                            format!("{kw} --chown={value} expands to nothing"),
                        ));
                    }
                    chown = Some(owner);
                }
                ("chmod", Some(value)) => {
                    let mode = self.expand(line, value)?;
                    chmod = Some(parse_mode(&mode).ok_or_else(|| {
                        invalid(
                            line,
                            format!("{kw} --chmod={mode} is not an octal mode such as 755 or 0644"),
                        )
                    })?);
                }
                ("link", None | Some("true" | "false")) => {}
                ("from", _) => {
                    return Err(unsupported(
                        line,
                        format!(
                            "{kw} --from is not supported: multi-stage builds are not supported, \
                             and corral copies only from the uploaded build context"
                        ),
                    ));
                }
                ("parents" | "exclude", _) => {
                    return Err(unsupported(line, format!("{kw} --{name} is not supported")));
                }
                ("checksum" | "keep-git-dir" | "unpack", _) if add => {
                    return Err(unsupported(
                        line,
                        format!(
                            "ADD --{name} is not supported: corral's ADD neither downloads nor \
                             unpacks"
                        ),
                    ));
                }
                _ => return Err(invalid(line, format!("unknown flag {flag} for {kw}"))),
            }
        }

        enum Arg<'h> {
            Word(String),
            Heredoc(&'h Heredoc),
        }
        let mut heredocs = ins.heredocs.iter();
        let args: Vec<Arg<'_>> = match command_form(rest).map_err(|m| invalid(line, m))? {
            Form::Exec(items) => items.into_iter().map(Arg::Word).collect(),
            Form::Shell(_) => {
                let mut args = Vec::new();
                for word in split_words(rest, self.escape) {
                    if heredoc_marker(&word)
                        .map_err(|m| invalid(line, m))?
                        .is_some()
                    {
                        let heredoc = heredocs
                            .next()
                            .ok_or_else(|| invalid(line, format!("heredoc {word} has no body")))?;
                        args.push(Arg::Heredoc(heredoc));
                    } else {
                        args.push(Arg::Word(word));
                    }
                }
                args
            }
        };
        let Some((dest, sources)) = args.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(invalid(
                line,
                format!("{kw} needs at least one source and a destination"),
            ));
        };
        let dest = match dest {
            Arg::Word(word) => self.expand(line, word)?,
            Arg::Heredoc(_) => {
                return Err(invalid(
                    line,
                    format!("the destination of {kw} cannot be a heredoc"),
                ));
            }
        };
        if dest.is_empty() {
            return Err(invalid(line, format!("the destination of {kw} is empty")));
        }
        let dest = resolve_dest(&self.workdir, &dest);
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(invalid(
                line,
                format!(
                    "{kw} with several sources needs a destination directory ending in '/', \
                     not {dest}"
                ),
            ));
        }

        let mut copy_sources = Vec::with_capacity(sources.len());
        for source in sources {
            match source {
                Arg::Heredoc(heredoc) => {
                    let mut content = heredoc.body();
                    if heredoc.expand {
                        content = self.expand_with(line, &content, false, true)?;
                    }
                    copy_sources.push(CopySource::Inline {
                        name: heredoc.name.clone(),
                        content,
                    });
                }
                Arg::Word(word) => {
                    let path = self.expand(line, word)?;
                    if is_url(&path) {
                        return Err(if add {
                            unsupported(
                                line,
                                format!(
                                    "ADD of a URL ({path}) is not supported: download it in a \
                                     RUN step (curl or wget) instead"
                                ),
                            )
                        } else {
                            invalid(
                                line,
                                format!("COPY takes paths in the build context, not URLs ({path})"),
                            )
                        });
                    }
                    if add && is_tar_archive(&path) {
                        return Err(unsupported(
                            line,
                            format!(
                                "ADD of the archive {path} is not supported: corral does not \
                                 unpack archives; COPY it and unpack it with RUN tar -xf"
                            ),
                        ));
                    }
                    if path.is_empty() {
                        return Err(invalid(line, format!("{kw} source {word} is empty")));
                    }
                    let Some(path) = context_path(&path) else {
                        return Err(invalid(
                            line,
                            format!("{kw} source {path} is outside the build context"),
                        ));
                    };
                    copy_sources.push(CopySource::Context(path));
                }
            }
        }
        self.push(
            ins,
            Op::Copy {
                sources: copy_sources,
                dest,
                chown,
                chmod,
            },
        )
    }

    fn finish(mut self) -> Result<Dockerfile, DockerfileError> {
        let Some((_, base, stage_name)) = self.from.take() else {
            return Err(DockerfileError::MissingFrom);
        };
        let unused: Vec<&str> = self
            .build_args
            .keys()
            .filter(|name| !self.used_build_args.contains(*name))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            self.warnings.push(format!(
                "build args not used by any ARG: {}",
                unused.join(", ")
            ));
        }
        Ok(Dockerfile {
            base,
            stage_name,
            steps: self.steps,
            labels: self.labels,
            warnings: self.warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_args() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ok(text: &str) -> Dockerfile {
        match parse(text, &no_args()) {
            Ok(parsed) => parsed,
            Err(e) => panic!("parse failed: {e}\n{text}"),
        }
    }

    fn err(text: &str) -> DockerfileError {
        match parse(text, &no_args()) {
            Ok(parsed) => panic!("parse succeeded: {parsed:?}\n{text}"),
            Err(e) => e,
        }
    }

    fn ops(parsed: &Dockerfile) -> Vec<Op> {
        parsed.steps.iter().map(|s| s.op.clone()).collect()
    }

    fn sv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sh(cmd: &str) -> Vec<String> {
        sv(&["/bin/sh", "-c", cmd])
    }

    fn run(cmd: &str) -> Op {
        Op::Run {
            argv: sh(cmd),
            build_args: vec![],
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn env(items: &[(&str, &str)]) -> Op {
        Op::Env { vars: pairs(items) }
    }

    fn ctx(path: &str) -> CopySource {
        CopySource::Context(path.to_owned())
    }

    /// What `Image.debian_slim("3.12").pip_install(["numpy"]).run_commands("echo a",
    /// ["sh","-c","echo b"]).env({"A":"x y"}).workdir("/app").entrypoint(["sleep","infinity"])`
    /// generates with SDK 0.226.1.
    const SDK_IMAGE: &str = "FROM python:3.12.10-slim-bookworm\n\
RUN apt-get update\n\
RUN apt-get install -y gcc gfortran build-essential\n\
RUN pip install --upgrade pip\n\
RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections\n\
RUN python -m pip install numpy\n\
RUN echo a\n\
RUN \"sh\" \"-c\" \"echo b\"\n\
ENV A='x y'\n\
WORKDIR /app\n\
ENTRYPOINT [\"sleep\", \"infinity\"]\n";

    #[test]
    fn sdk_generated_image() {
        let parsed = ok(SDK_IMAGE);
        assert_eq!(parsed.base, "python:3.12.10-slim-bookworm");
        assert_eq!(parsed.stage_name, None);
        assert_eq!(
            ops(&parsed),
            vec![
                run("apt-get update"),
                run("apt-get install -y gcc gfortran build-essential"),
                run("pip install --upgrade pip"),
                run(
                    "echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections"
                ),
                run("python -m pip install numpy"),
                run("echo a"),
                run("\"sh\" \"-c\" \"echo b\""),
                env(&[("A", "x y")]),
                Op::Workdir {
                    path: "/app".into()
                },
                Op::Entrypoint {
                    argv: sv(&["sleep", "infinity"])
                },
            ]
        );
        let lines: Vec<usize> = parsed.steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, (2..=11).collect::<Vec<_>>());
        assert_eq!(parsed.steps[7].text(), "ENV A='x y'");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    /// SDK output for quotes in values: `env({"B": "it's"})`, `workdir("/my dir")`,
    /// `add_local_file(...)`, `cmd(["a b"])`, `pip_install_from_requirements`.
    #[test]
    fn sdk_quoting_and_copies() {
        let parsed = ok("FROM alpine\n\
ENV B='it'\"'\"'s'\n\
WORKDIR '/my dir'\n\
COPY [\"home/u/proj/file.txt\", \"/remote/file.txt\"]\n\
COPY requirements.txt /.requirements.txt\n\
CMD [\"a b\"]\n");
        assert_eq!(
            ops(&parsed),
            vec![
                env(&[("B", "it's")]),
                Op::Workdir {
                    path: "/my dir".into()
                },
                Op::Copy {
                    sources: vec![ctx("home/u/proj/file.txt")],
                    dest: "/remote/file.txt".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Copy {
                    sources: vec![ctx("requirements.txt")],
                    dest: "/.requirements.txt".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Cmd { argv: sv(&["a b"]) },
            ]
        );
    }

    /// SDK 0.226.1 output for `Image.base("ubuntu:22.04").pip_install("requests",
    /// index_url=..., pre=True).add_local_file(f, "/app/").add_local_dir(d, "/app/src")
    /// .run_commands(["bash", "-c", "echo \"it's\" $HOME"]).env({"PATH": "/opt/x:$PATH",
    /// "Q": "a'b\"c"}).workdir("rel dir").dockerfile_commands(["RUN <<EOF\necho hi\nEOF",
    /// "USER 1000"]).cmd(["python", "-c", "print('hi')"])`.
    #[test]
    fn sdk_generated_variants() {
        let text = r#"FROM ubuntu:22.04
RUN python -m pip install requests --index-url https://x/simple --pre
COPY ["tmp/tmpu2odlbsg/req.txt", "/app/req.txt"]
COPY ["tmp/tmpu2odlbsg/src", "/app/src"]
RUN "bash" "-c" "echo \\\"it\'s\\\" $HOME"
ENV PATH='/opt/x:$PATH'
ENV Q='a'"'"'b"c'
WORKDIR 'rel dir'
RUN <<EOF
echo hi
EOF
USER 1000
CMD ["python", "-c", "print('hi')"]
"#;
        let parsed = ok(text);
        let copy = |src: &str, dest: &str| Op::Copy {
            sources: vec![ctx(src)],
            dest: dest.into(),
            chown: None,
            chmod: None,
        };
        assert_eq!(
            ops(&parsed),
            vec![
                run("python -m pip install requests --index-url https://x/simple --pre"),
                copy("tmp/tmpu2odlbsg/req.txt", "/app/req.txt"),
                copy("tmp/tmpu2odlbsg/src", "/app/src"),
                run(r#""bash" "-c" "echo \\\"it\'s\\\" $HOME""#),
                // Single quotes keep `$PATH` literal, in Docker as here.
                env(&[("PATH", "/opt/x:$PATH")]),
                env(&[("Q", "a'b\"c")]),
                Op::Workdir {
                    path: "/rel dir".into()
                },
                run("echo hi\n"),
                Op::User {
                    user: "1000".into()
                },
                Op::Cmd {
                    argv: sv(&["python", "-c", "print('hi')"])
                },
            ]
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn comments_blank_lines_continuations_and_case() {
        let text = [
            "# a comment",
            "",
            "from alpine:3.20 as base",
            "  # indented comment",
            "run apt-get update && \\",
            "    apt-get install -y \\  ",
            "# a comment inside the continuation",
            "",
            "      curl",
            "",
            "Env X=1",
        ]
        .join("\n");
        let parsed = ok(&text);
        assert_eq!(parsed.base, "alpine:3.20");
        assert_eq!(parsed.stage_name.as_deref(), Some("base"));
        assert_eq!(
            ops(&parsed),
            vec![
                run("apt-get update &&     apt-get install -y       curl"),
                env(&[("X", "1")]),
            ]
        );
        assert_eq!(parsed.steps[0].line, 5);
        assert_eq!(
            parsed.steps[0].text(),
            "run apt-get update &&     apt-get install -y       curl"
        );
        assert_eq!(parsed.steps[1].line, 11);
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(parsed.warnings[0].contains("empty continuation line"));
    }

    #[test]
    fn escaped_escape_at_end_is_not_a_continuation() {
        let parsed = ok("FROM a\nRUN echo foo\\\\\nRUN echo bar\n");
        assert_eq!(ops(&parsed), vec![run("echo foo\\\\"), run("echo bar")]);
    }

    #[test]
    fn crlf_line_endings() {
        let parsed = ok("FROM a\r\nRUN echo 1 \\\r\n  2\r\nENV K=v\r\n");
        assert_eq!(ops(&parsed), vec![run("echo 1   2"), env(&[("K", "v")])]);
    }

    #[test]
    fn escape_directive_switches_to_backtick() {
        let parsed = ok("# escape=`\n\
FROM a\n\
RUN dir c:\\ `\n  && echo x\n\
ENV P=C:\\path Q=`$HOME\n");
        assert_eq!(
            ops(&parsed),
            vec![
                run("dir c:\\   && echo x"),
                env(&[("P", "C:\\path"), ("Q", "$HOME")]),
            ]
        );
        // A directive after another line is an ordinary comment.
        let parsed = ok("FROM a\n# escape=`\nRUN a \\\n b\n");
        assert_eq!(ops(&parsed), vec![run("a  b")]);
        assert_eq!(err("# escape=x\nFROM a\n").line(), Some(1));
        assert!(
            ok("# syntax=docker/dockerfile:1\nFROM a\n")
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn env_quoting_rules() {
        let parsed = ok(r#"FROM a
ENV A=1 B="x \"y\" $A \q" C='lit $A \n' D=plain\ space E=""
ENV G=$A H=${A}x I="${B}"
ENV legacy hello   "world"  ok
"#);
        assert_eq!(
            ops(&parsed)[..],
            [
                env(&[
                    ("A", "1"),
                    // Same-instruction pairs do not see each other: A is unset here.
                    ("B", "x \"y\"  \\q"),
                    ("C", "lit $A \\n"),
                    ("D", "plain space"),
                    ("E", ""),
                ]),
                env(&[("G", "1"), ("H", "1x"), ("I", "x \"y\"  \\q")]),
                env(&[("legacy", "hello   world  ok")]),
            ][..]
        );
        // The unset $A of the first ENV is reported.
        assert!(
            parsed
                .warnings
                .iter()
                .any(|w| w.starts_with("line 2:") && w.contains("$A")),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn env_errors() {
        let e = err("FROM a\nENV A=1 B\n");
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("\"B\" has no '='"), "{e}");
        let e = err("FROM a\nENV lonely\n");
        assert!(e.to_string().contains("has no value"), "{e}");
        let e = err("FROM a\nENV A=\"open\n");
        assert!(e.to_string().contains("never closed"), "{e}");
        let e = err("FROM a\nENV =x\n");
        assert!(e.to_string().contains("name is missing"), "{e}");
    }

    #[test]
    fn arg_substitution_and_scoping() {
        let text = r#"ARG TAG=3.20
ARG REG
FROM ${REG:-docker.io/library}/alpine:$TAG
ARG TAG
ARG V=1.0
ARG NAME
ARG HOME_DIR=/home/$NAME
ENV VERSION=$V
WORKDIR $HOME_DIR
RUN echo $V $TAG
ENV V=from-env
RUN echo again
"#;
        let parsed = parse(
            text,
            &args(&[("NAME", "bob"), ("V", "2.0"), ("EXTRA", "x")]),
        )
        .expect("parses");
        assert_eq!(parsed.base, "docker.io/library/alpine:3.20");
        assert_eq!(
            ops(&parsed),
            vec![
                env(&[("VERSION", "2.0")]),
                Op::Workdir {
                    path: "/home/bob".into()
                },
                // RUN text is never expanded; the ARG values ride along as environment.
                Op::Run {
                    argv: sh("echo $V $TAG"),
                    build_args: pairs(&[
                        ("HOME_DIR", "/home/bob"),
                        ("NAME", "bob"),
                        ("TAG", "3.20"),
                        ("V", "2.0"),
                    ]),
                },
                env(&[("V", "from-env")]),
                // ENV wins over the ARG of the same name: V is no longer passed.
                Op::Run {
                    argv: sh("echo again"),
                    build_args: pairs(&[
                        ("HOME_DIR", "/home/bob"),
                        ("NAME", "bob"),
                        ("TAG", "3.20"),
                    ]),
                },
            ]
        );
        assert!(
            parsed
                .warnings
                .iter()
                .any(|w| w == "build args not used by any ARG: EXTRA"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn pre_from_args_are_invisible_in_the_stage_until_redeclared() {
        let parsed = ok("ARG D=/opt\nFROM a\nWORKDIR ${D:-/fallback}\nARG D\nWORKDIR $D/x\n");
        assert_eq!(
            ops(&parsed),
            vec![
                Op::Workdir {
                    path: "/fallback".into()
                },
                Op::Workdir {
                    path: "/opt/x".into()
                },
            ]
        );
    }

    #[test]
    fn substitution_modifiers() {
        let parsed = ok(r#"FROM a
ARG SET=val
ARG EMPTY=
ENV A=${SET:-d} B=${EMPTY:-d} C=${EMPTY-d} D=${NOPE-d} E=${SET:+alt} F=${EMPTY:+alt} G=${EMPTY+alt} H=${NOPE+alt} I=${SET:?boom} J=${NOPE:-${SET}-x} K=$ L=a$-b
"#);
        assert_eq!(
            ops(&parsed),
            vec![env(&[
                ("A", "val"),
                ("B", "d"),
                ("C", ""),
                ("D", "d"),
                ("E", "alt"),
                ("F", ""),
                ("G", "alt"),
                ("H", ""),
                ("I", "val"),
                ("J", "val-x"),
                ("K", "$"),
                ("L", "ab"),
            ])]
        );
        // Defaults do not warn about unset names.
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);

        let e = err("FROM a\nENV X=\"${NOPE:?please set NOPE}\"\n");
        assert!(e.to_string().contains("NOPE: please set NOPE"), "{e}");
        let e = err("FROM a\nARG E=\nENV X=${E:?}\n");
        assert!(
            e.to_string().contains("E: is not allowed to be empty"),
            "{e}"
        );
        let e = err("FROM a\nENV X=${PATH#*/}\n");
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = err("FROM a\nENV X=${}\n");
        assert!(e.to_string().contains("bad substitution"), "{e}");
        let e = err("FROM a\nENV X=${OPEN\n");
        assert!(e.to_string().contains("missing '}'"), "{e}");
    }

    #[test]
    fn base_image_env_and_workdir() {
        let base = BaseImage {
            env: pairs(&[("PATH", "/usr/bin:/bin")]),
            working_dir: Some("/srv".into()),
        };
        let parsed = parse_with_base(
            "FROM a\nENV PATH=/opt/bin:$PATH\nWORKDIR app\n",
            &no_args(),
            &base,
        )
        .expect("parses");
        assert_eq!(
            ops(&parsed),
            vec![
                env(&[("PATH", "/opt/bin:/usr/bin:/bin")]),
                Op::Workdir {
                    path: "/srv/app".into()
                },
            ]
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        // Without the base image the same text expands $PATH to nothing, with a warning.
        let parsed = ok("FROM a\nENV PATH=/opt/bin:$PATH\n");
        assert_eq!(ops(&parsed), vec![env(&[("PATH", "/opt/bin:")])]);
        assert_eq!(
            parsed.warnings,
            vec!["line 2: $PATH is not set, so it expands to an empty string".to_owned()]
        );
    }

    #[test]
    fn relative_workdir_and_copy_destinations() {
        let parsed = ok("FROM a\n\
WORKDIR app\n\
WORKDIR src/../lib/./x/\n\
WORKDIR ../..\n\
WORKDIR /abs//path\n\
COPY a.txt .\n\
COPY b.txt sub/\n\
COPY c.txt named.txt\n\
COPY d.txt /etc/\n");
        let got = ops(&parsed);
        assert_eq!(
            got[..4],
            [
                Op::Workdir {
                    path: "/app".into()
                },
                Op::Workdir {
                    path: "/app/lib/x".into()
                },
                Op::Workdir {
                    path: "/app".into()
                },
                Op::Workdir {
                    path: "/abs/path".into()
                },
            ]
        );
        let dests: Vec<&str> = got[4..]
            .iter()
            .map(|op| match op {
                Op::Copy { dest, .. } => dest.as_str(),
                other => panic!("not a copy: {other:?}"),
            })
            .collect();
        assert_eq!(
            dests,
            vec![
                "/abs/path/",
                "/abs/path/sub/",
                "/abs/path/named.txt",
                "/etc/"
            ]
        );
    }

    #[test]
    fn user_instruction() {
        let parsed = ok("FROM a\nARG UID=1000\nUSER app:${UID}\n");
        assert_eq!(
            ops(&parsed),
            vec![Op::User {
                user: "app:1000".into()
            }]
        );
        assert!(err("FROM a\nUSER a b\n").to_string().contains("one user"));
    }

    #[test]
    fn shell_changes_later_shell_forms() {
        let parsed = ok(r#"FROM a
RUN echo one
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN echo two | cat
RUN ["exec", "form"]
CMD echo three
ENTRYPOINT exec app
"#);
        let bash = |cmd: &str| sv(&["/bin/bash", "-o", "pipefail", "-c", cmd]);
        assert_eq!(
            ops(&parsed),
            vec![
                run("echo one"),
                Op::Run {
                    argv: bash("echo two | cat"),
                    build_args: vec![]
                },
                Op::Run {
                    argv: sv(&["exec", "form"]),
                    build_args: vec![]
                },
                Op::Cmd {
                    argv: bash("echo three")
                },
                Op::Entrypoint {
                    argv: bash("exec app")
                },
            ]
        );
        let e = err("FROM a\nSHELL /bin/bash -c\n");
        assert!(e.to_string().contains("JSON form"), "{e}");
    }

    #[test]
    fn cmd_and_entrypoint_forms() {
        let parsed = ok(
            "FROM a\nCMD [\"python\", \"-m\", \"http.server\"]\nCMD []\nENTRYPOINT [ \"tini\", \"--\" ]\nCMD sleep infinity\n",
        );
        assert_eq!(
            ops(&parsed),
            vec![
                Op::Cmd {
                    argv: sv(&["python", "-m", "http.server"])
                },
                Op::Cmd { argv: vec![] },
                Op::Entrypoint {
                    argv: sv(&["tini", "--"])
                },
                Op::Cmd {
                    argv: sh("sleep infinity")
                },
            ]
        );
    }

    #[test]
    fn a_shell_test_bracket_is_shell_form() {
        let parsed = ok(
            "FROM a\nRUN [ -f /etc/os-release ] && echo yes\nRUN [ \"$(uname -m)\" = x86_64 ]\nRUN [[ -d /x ]]\n",
        );
        assert_eq!(
            ops(&parsed),
            vec![
                run("[ -f /etc/os-release ] && echo yes"),
                run("[ \"$(uname -m)\" = x86_64 ]"),
                run("[[ -d /x ]]"),
            ]
        );
    }

    #[test]
    fn bad_json_forms_are_errors() {
        for text in [
            "FROM a\nCMD ['sleep', 'infinity']\n",
            "FROM a\nENTRYPOINT [\"a\" \"b\"]\n",
            "FROM a\nRUN [\"echo\", \"hi\",]\n",
            "FROM a\nCOPY [\"a\", \"/b\"\n",
        ] {
            let e = err(text);
            assert_eq!(e.line(), Some(2), "{text}");
            assert!(e.to_string().contains("not valid JSON"), "{e}");
        }
        let e = err("FROM a\nCMD [\"a\", 1]\n");
        assert!(e.to_string().contains("strings only"), "{e}");
    }

    #[test]
    fn copy_forms_and_flags() {
        let parsed = ok(r#"FROM a
ARG OWNER=app
WORKDIR /srv
COPY --chown=${OWNER}:staff --chmod=0755 --link src/ ./lib/ /srv/out/
COPY ["with space.txt", "$OWNER.cfg", "/etc/app/"]
COPY "quoted name.txt" ./x.txt
COPY ./ /ctx
ADD notes.md /doc/
"#);
        assert_eq!(
            ops(&parsed),
            vec![
                Op::Workdir {
                    path: "/srv".into()
                },
                Op::Copy {
                    sources: vec![ctx("src"), ctx("lib")],
                    dest: "/srv/out/".into(),
                    chown: Some("app:staff".into()),
                    chmod: Some(0o755),
                },
                Op::Copy {
                    sources: vec![ctx("with space.txt"), ctx("app.cfg")],
                    dest: "/etc/app/".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Copy {
                    sources: vec![ctx("quoted name.txt")],
                    dest: "/srv/x.txt".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Copy {
                    sources: vec![ctx(".")],
                    dest: "/ctx".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Copy {
                    sources: vec![ctx("notes.md")],
                    dest: "/doc/".into(),
                    chown: None,
                    chmod: None,
                },
            ]
        );
    }

    #[test]
    fn copy_errors() {
        let cases: [(&str, &str); 8] = [
            ("COPY a b /dest\n", "ending in '/'"),
            ("COPY onlyone\n", "at least one source"),
            ("COPY ../secret /x\n", "outside the build context"),
            ("COPY --chmod=rwx a /b\n", "octal mode"),
            ("COPY --chmod=17777 a /b\n", "octal mode"),
            ("COPY --chown a /b\n", "needs a value"),
            ("COPY --bogus a /b\n", "unknown flag --bogus"),
            ("COPY https://example.com/x /b\n", "not URLs"),
        ];
        for (body, needle) in cases {
            let e = err(&format!("FROM a\n{body}"));
            assert_eq!(e.line(), Some(2), "{body}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn add_urls_and_archives_are_unsupported() {
        for body in [
            "ADD https://example.com/tool.tgz /opt/",
            "ADD git@github.com:o/r.git /src",
            "ADD app.tar.gz /opt/",
            "ADD --checksum=sha256:00 x /y",
        ] {
            let e = err(&format!("FROM a\n{body}\n"));
            assert!(
                matches!(e, DockerfileError::Unsupported { line: 2, .. }),
                "{body}: {e:?}"
            );
        }
        let e = err("FROM a\nADD http://x/y /z\n");
        assert!(e.to_string().contains("RUN step"), "{e}");
    }

    #[test]
    fn run_heredocs() {
        let parsed = ok("FROM a\n\
RUN <<EOF\n\
apt-get update\n\
apt-get install -y curl\n\
EOF\n\
RUN <<'SCRIPT'\n\
#!/usr/bin/env python3\n\
print(\"hi $HOME\")\n\
SCRIPT\n\
RUN cat <<EOF > /etc/motd && cat <<-END >> /etc/motd\n\
hello\n\
EOF\n\
\tworld\n\
\tEND\n\
RUN <<-EOF\n\
\techo tabbed\n\
\tEOF\n\
ENV AFTER=1\n");
        assert_eq!(
            ops(&parsed),
            vec![
                run("apt-get update\napt-get install -y curl\n"),
                Op::RunScript {
                    script: "#!/usr/bin/env python3\nprint(\"hi $HOME\")\n".into(),
                    build_args: vec![],
                },
                run("cat <<EOF > /etc/motd && cat <<-END >> /etc/motd\nhello\nEOF\n\tworld\nEND"),
                run("echo tabbed\n"),
                env(&[("AFTER", "1")]),
            ]
        );
        let lines: Vec<usize> = parsed.steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 6, 10, 15, 18]);
        assert_eq!(parsed.steps[0].text(), "RUN <<EOF");
    }

    #[test]
    fn copy_heredocs() {
        let parsed = ok("FROM a\n\
ARG WHO=world\n\
COPY <<EOF /etc/greeting\n\
hello $WHO \\$HOME 'as is' \"too\"\n\
EOF\n\
COPY --chmod=755 <<'RAW' <<-TABS /opt/bin/\n\
echo $WHO\n\
RAW\n\
\tindented\n\
\tTABS\n");
        assert_eq!(
            ops(&parsed),
            vec![
                Op::Copy {
                    sources: vec![CopySource::Inline {
                        name: "EOF".into(),
                        content: "hello world $HOME 'as is' \"too\"\n".into(),
                    }],
                    dest: "/etc/greeting".into(),
                    chown: None,
                    chmod: None,
                },
                Op::Copy {
                    sources: vec![
                        CopySource::Inline {
                            name: "RAW".into(),
                            content: "echo $WHO\n".into(),
                        },
                        CopySource::Inline {
                            name: "TABS".into(),
                            content: "indented\n".into(),
                        },
                    ],
                    dest: "/opt/bin/".into(),
                    chown: None,
                    chmod: Some(0o755),
                },
            ]
        );
    }

    #[test]
    fn heredoc_errors_and_non_heredocs() {
        let e = err("FROM a\nRUN <<EOF\necho never closed\n");
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("not terminated"), "{e}");
        // Quoted, JSON-form and non-RUN/COPY/ADD `<<` are not heredocs.
        let parsed = ok("FROM a\nRUN echo \"<<EOF\"\nRUN [\"echo\", \"<<EOF\"]\nENV X=<<EOF\n");
        assert_eq!(
            ops(&parsed),
            vec![
                run("echo \"<<EOF\""),
                Op::Run {
                    argv: sv(&["echo", "<<EOF"]),
                    build_args: vec![]
                },
                env(&[("X", "<<EOF")]),
            ]
        );
    }

    #[test]
    fn ignored_instructions_warn_and_labels_are_kept() {
        let parsed = ok(r#"FROM a
ARG V=2
LABEL org.opencontainers.image.version="$V" description="a b"
LABEL legacy form value
EXPOSE 8080/tcp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD curl -f http://localhost/
ONBUILD RUN echo later
MAINTAINER someone
RUN true
"#);
        assert_eq!(
            parsed.labels,
            pairs(&[
                ("org.opencontainers.image.version", "2"),
                ("description", "a b"),
                ("legacy", "form value"),
            ])
        );
        assert_eq!(
            ops(&parsed),
            vec![Op::Run {
                argv: sh("true"),
                build_args: pairs(&[("V", "2")]),
            }]
        );
        let warned: Vec<&str> = parsed
            .warnings
            .iter()
            .map(|w| w.split(' ').nth(2).unwrap_or_default())
            .collect();
        assert_eq!(
            warned,
            vec![
                "EXPOSE",
                "VOLUME",
                "STOPSIGNAL",
                "HEALTHCHECK",
                "ONBUILD",
                "MAINTAINER"
            ]
        );
        assert!(parsed.warnings[0].starts_with("line 5: EXPOSE is ignored"));
    }

    #[test]
    fn unknown_instruction_names_it_and_its_line() {
        let e = err("FROM a\nRUN apt-get update &&\n    apt-get install -y curl\n");
        assert_eq!(e.line(), Some(3));
        let text = e.to_string();
        assert!(
            text.starts_with("Dockerfile line 3: unknown instruction apt-get"),
            "{text}"
        );
        assert!(text.contains("end that line with \\"), "{text}");
        let e = err("FROM a\nCOPYY a b\n");
        assert_eq!(
            e,
            DockerfileError::Invalid {
                line: 2,
                message: "unknown instruction COPYY (if this line continues the instruction \
                          above, end that line with \\)"
                    .into()
            }
        );
    }

    #[test]
    fn multi_stage_is_unsupported() {
        let e = err("FROM golang AS build\nRUN go build\nFROM alpine\n");
        assert!(
            matches!(e, DockerfileError::Unsupported { line: 3, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("multi-stage builds are not supported"),
            "{e}"
        );
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = err("FROM alpine\nCOPY --from=build /app /app\n");
        assert!(
            matches!(e, DockerfileError::Unsupported { line: 2, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("multi-stage builds are not supported"),
            "{e}"
        );
        let e = err("FROM --platform=linux/arm64 alpine\n");
        assert!(
            matches!(e, DockerfileError::Unsupported { line: 1, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("--platform"), "{e}");
    }

    #[test]
    fn missing_or_late_from() {
        assert_eq!(err(""), DockerfileError::MissingFrom);
        assert_eq!(
            err("# only a comment\n\nARG X=1\n"),
            DockerfileError::MissingFrom
        );
        let e = err("RUN echo hi\nFROM a\n");
        assert_eq!(e.line(), Some(1));
        assert!(e.to_string().contains("comes before FROM"), "{e}");
        let e = err("FROM\n");
        assert!(e.to_string().contains("FROM needs arguments"), "{e}");
        let e = err("FROM a b\n");
        assert!(e.to_string().contains("optional AS"), "{e}");
        let e = err("ARG IMG\nFROM $IMG\n");
        assert!(e.to_string().contains("does not name an image"), "{e}");
    }

    #[test]
    fn run_flags_are_unsupported() {
        for flag in [
            "--mount=type=cache,target=/root/.cache",
            "--network=none",
            "--security=insecure",
        ] {
            let e = err(&format!("FROM a\nRUN {flag} pip install x\n"));
            assert!(
                matches!(e, DockerfileError::Unsupported { line: 2, .. }),
                "{e:?}"
            );
            assert!(e.to_string().contains("is not supported"), "{e}");
        }
        let e = err("FROM a\nRUN --wat echo\n");
        assert!(
            matches!(e, DockerfileError::Invalid { line: 2, .. }),
            "{e:?}"
        );
        assert!(err("FROM a\nRUN []\n").to_string().contains("no command"));
    }

    #[test]
    fn expansion_bombs_and_deep_nesting_are_refused() {
        let mut text = String::from("FROM a\nENV A=0123456789abcdef0123456789abcdef\n");
        for _ in 0..40 {
            text.push_str("ENV A=$A$A$A$A\n");
        }
        let e = err(&text);
        assert!(e.to_string().contains("too much text"), "{e}");

        let depth = 10_000;
        let text = format!(
            "FROM a\nENV X={}x{}\n",
            "${N:-".repeat(depth),
            "}".repeat(depth)
        );
        let e = err(&text);
        assert!(e.to_string().contains("nested too deeply"), "{e}");
    }

    /// Every prefix of a Dockerfile dense in syntax (cut inside quotes, `${`, JSON, heredocs,
    /// continuations) parses to a value or an error, never a panic.
    #[test]
    fn truncated_input_never_panics() {
        let text = "# escape=\\\nARG A=\"x y\"\nFROM img:${A:-t} AS s\n\
ENV B='q' C=\"$A\\\"\" D=${A:+${B}}\nRUN [\"a\", \"b\"]\nRUN echo \\\n  x\n\
COPY --chown=u:g <<E1 <<-'E2' /d/\n$A\nE1\n\tz\n\tE2\nRUN <<EOF\n#!/bin/sh\nEOF\n\
WORKDIR ../w\nSHELL [\"bash\",\"-c\"]\nCMD echo é\n";
        let mut parsed_whole = false;
        for (at, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let result = parse(&text[..at], &args(&[("A", "1")]));
            if at == text.len() {
                parsed_whole = result.is_ok();
            }
        }
        assert!(parsed_whole, "{:?}", parse(text, &args(&[("A", "1")])));
    }

    #[test]
    fn error_display_carries_the_line() {
        let e = err("FROM a\n\nRUN --mount=type=secret,id=x cat /run/secrets/x\n");
        assert_eq!(
            e.to_string(),
            "Dockerfile line 3: RUN --mount is not supported: corral runs build steps as plain \
             commands in the build sandbox"
        );
    }
}
