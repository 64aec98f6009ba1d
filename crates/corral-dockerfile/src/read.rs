//! Reading: lines into instructions (directives, comments, continuations, heredoc bodies).

use std::collections::BTreeSet;

use crate::words::{Form, command_form, heredoc_marker, split_flags, split_words};
use crate::{DockerfileError, invalid};

/// One instruction as read, before evaluation.
#[derive(Debug)]
pub(crate) struct Instruction {
    pub(crate) line: usize,
    /// The instruction word as written.
    pub(crate) word: String,
    /// Upper-cased `word`.
    pub(crate) keyword: String,
    /// Everything after the instruction word, trimmed (flags included).
    pub(crate) args: String,
    /// The whole logical line, trimmed.
    pub(crate) text: String,
    pub(crate) heredocs: Vec<Heredoc>,
}

#[derive(Debug)]
pub(crate) struct Heredoc {
    pub(crate) name: String,
    /// The delimiter was unquoted: the body's variables expand (COPY only).
    pub(crate) expand: bool,
    /// `<<-`: leading tabs are stripped from the body's lines.
    pub(crate) chomp: bool,
    /// The body lines, each with its line ending.
    pub(crate) content: String,
}

impl Heredoc {
    pub(crate) fn body(&self) -> String {
        if self.chomp {
            strip_leading_tabs(&self.content)
        } else {
            self.content.clone()
        }
    }
}

#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) escape: char,
    pub(crate) instructions: Vec<Instruction>,
    pub(crate) warnings: Vec<String>,
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

pub(crate) fn read(content: &str) -> Result<Source, DockerfileError> {
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
