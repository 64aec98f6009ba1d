//! Expansion: Docker's word processing (quote removal and variable substitution).

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::str::Chars;

use crate::MAX_NESTING;

/// The variables visible to an expansion: ENV first, then ARG.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) args: &'a BTreeMap<String, String>,
}

impl<'a> Scope<'a> {
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        let env: &'a BTreeMap<String, String> = self.env;
        let args: &'a BTreeMap<String, String> = self.args;
        env.get(name).or_else(|| args.get(name)).map(String::as_str)
    }
}

pub(crate) struct Expander<'a> {
    pub(crate) scope: Scope<'a>,
    pub(crate) escape: char,
    /// Heredoc bodies: quotes stay as written and the escape only protects `$` and itself.
    pub(crate) raw: bool,
    /// Most bytes one expansion may produce.
    pub(crate) limit: usize,
    /// Names of unset variables that expanded to nothing.
    pub(crate) unset: BTreeSet<String>,
}

pub(crate) const TOO_LARGE: &str = "the Dockerfile expands to too much text";

impl Expander<'_> {
    pub(crate) fn expand(&mut self, word: &str) -> Result<String, String> {
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
