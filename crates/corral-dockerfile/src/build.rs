//! Evaluation: instructions into steps.

use std::collections::{BTreeMap, BTreeSet};

use crate::expand::{Expander, Scope, TOO_LARGE};
use crate::paths::*;
use crate::read::{Heredoc, Instruction};
use crate::words::*;
use crate::{
    BaseImage, CopySource, DEFAULT_SHELL, Dockerfile, DockerfileError, MAX_OUTPUT_BYTES, Op, Step,
    invalid, unsupported,
};

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

pub(crate) struct Builder<'a> {
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
    pub(crate) warnings: Vec<String>,
    /// Bytes the parse may still produce.
    budget: usize,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(
        build_args: &'a BTreeMap<String, String>,
        base: &BaseImage,
        escape: char,
    ) -> Self {
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

    pub(crate) fn instruction(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
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

    pub(crate) fn finish(mut self) -> Result<Dockerfile, DockerfileError> {
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
