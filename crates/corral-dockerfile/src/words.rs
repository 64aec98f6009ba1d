//! Words: splitting, flags, heredoc markers, JSON forms.

/// Splits at unquoted whitespace, keeping quotes and escapes in the words (they are removed
/// later, when each word is expanded). An escape or quote left open runs to the end.
pub(crate) fn split_words(text: &str, escape: char) -> Vec<String> {
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
pub(crate) fn split_flags(args: &str) -> (Vec<&str>, &str) {
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
pub(crate) fn flag_parts(flag: &str) -> (&str, Option<&str>) {
    let body = flag.trim_start_matches('-');
    match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    }
}

pub(crate) struct Marker {
    pub(crate) name: String,
    pub(crate) expand: bool,
    pub(crate) chomp: bool,
}

/// A heredoc marker word: `[fd]<<[-]NAME`, NAME possibly quoted (then its body is not expanded).
pub(crate) fn heredoc_marker(word: &str) -> Result<Option<Marker>, String> {
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
pub(crate) enum Form {
    /// JSON (exec) form.
    Exec(Vec<String>),
    /// Shell form: the text as written.
    Shell(String),
}

/// JSON form when the text is a JSON array of strings. Text that is not valid JSON is shell
/// form, as in Docker (`RUN [ -f /x ] && ...` and `RUN [[ ... ]]` are shell commands), unless
/// it plainly meant to be JSON (`[` right before a quote, or a comma-separated list in
/// brackets): then an error.
pub(crate) fn command_form(text: &str) -> Result<Form, String> {
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
