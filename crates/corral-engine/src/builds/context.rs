//! The uploaded build context of a declarative build, and `COPY` from it with Docker's rules.
//!
//! The SDK uploads each local source as its own tar (`context.tar` under its hash); all the
//! archives of a build together are one build context: the union of their entries. They are
//! read on the host as data only (never unpacked here): [`Index::read`] lists every entry
//! with where its data lies, [`Index::find`] resolves a `COPY` source (a path, `.`, or a glob
//! pattern as Go's `filepath.Match` has them) to what it names, [`Index::plan`] decides where
//! each entry goes (`dest`, `dest/<name>`, or a directory's contents into `dest`), and
//! [`Index::write_batch`] writes one batch as a new tar stream, which the build sandbox's agent
//! unpacks (`POST /corral/untar`).
//!
//! Owners in the archives are ignored (files are root's, or `--chown`'s); modes, mtimes,
//! symlinks and hard links are kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// How many symlinks a source may go through.
const MAX_LINKS: usize = 40;
/// How many names an error message lists.
const MAX_LISTED: usize = 8;

/// What is wrong with a build context or a `COPY` from it.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read build context {hash}: {source}")]
    Read { hash: String, source: io::Error },
    #[error("build context {hash} holds an entry {name:?} whose name {why}")]
    BadName {
        hash: String,
        name: String,
        why: &'static str,
    },
    #[error("COPY source {src} not found in the build context (uploaded: {uploaded})")]
    NotFound { src: String, uploaded: String },
    #[error(
        "COPY source {src} matches several files ({found}): the destination must be a \
         directory ending in '/', not {dest}"
    )]
    SeveralNeedDir {
        src: String,
        found: String,
        dest: String,
    },
    #[error("COPY source {src} is not a valid pattern: {why}")]
    BadPattern { src: String, why: String },
    #[error("COPY source {src} goes through too many symlinks")]
    TooManyLinks { src: String },
    #[error("sending the build context to the build sandbox failed: {0}")]
    Stream(io::Error),
}

/// One uploaded archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub hash: String,
    pub path: PathBuf,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file whose data is `size` bytes at `offset` of its archive.
    File {
        offset: u64,
        size: u64,
    },
    Dir,
    /// A symlink and its target, as stored.
    Symlink(PathBuf),
    /// A hard link to the file entry at this index (of the same archive, earlier).
    HardLink(usize),
}

/// One entry of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Which archive it is in.
    pub archive: usize,
    /// Normalised: no `./`, no leading or trailing `/`; empty for the context root.
    pub name: String,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: u64,
}

/// What a `COPY` source names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The path in the context (symlinks followed); empty for the whole context.
    pub path: String,
    /// A directory (its contents are copied) or a file.
    pub dir: bool,
    /// The name it is copied under into a destination directory.
    pub name: String,
}

/// One unpack request: entries (by index) and their names below `dir` (`.` for `dir`
/// itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub dir: String,
    pub items: Vec<(usize, String)>,
}

/// Every entry of a build context's archives.
#[derive(Debug, Default)]
pub struct Index {
    archives: Vec<Archive>,
    entries: Vec<Entry>,
    /// Entries by name, in archive order (a later archive's entry wins).
    by_name: BTreeMap<String, Vec<usize>>,
    /// Every directory, listed or implied by a deeper name (the root excluded).
    dirs: BTreeSet<String>,
}

/// `name` normalised, or why it is refused.
fn normalise(name: &str) -> Result<String, &'static str> {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err("climbs out with '..'"),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The parent of a normalised name (`""` for a top-level one).
fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The last part of a normalised name.
fn base(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, b)| b)
}

/// `dir` joined with `name` (`dir` may end in `/`).
fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether a source is a pattern (Go's `filepath.Match` meta characters).
fn is_pattern(source: &str) -> bool {
    source.contains(['*', '?', '['])
}

/// A Go `filepath.Match` pattern as a globset one (used with `*` and `?` not matching `/`),
/// or why it is malformed as Go would find it. Go has `\\` escapes (in classes too), `[^...]`
/// for negation and no alternations or `**`; globset reads `{a,b}`, `**`, `[!...]` and a
/// leading `]` or trailing `-` in a class its own way, so everything is rewritten.
fn go_pattern(pattern: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                while chars.next_if_eq(&'*').is_some() {}
                out.push('*');
            }
            '?' => out.push('?'),
            '\\' => push_literal(&mut out, chars.next().ok_or("it ends in '\\'")?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut members: Vec<(char, char)> = Vec::new();
                loop {
                    let c = chars.next().ok_or("a '[' has no ']'")?;
                    if c == ']' && !members.is_empty() {
                        break;
                    }
                    let lo = class_char(c, &mut chars)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        let c = chars.next().ok_or("a '[' has no ']'")?;
                        class_char(c, &mut chars)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err("a range in '[...]' is reversed");
                    }
                    members.push((lo, hi));
                }
                push_class(&mut out, negated, members);
            }
            c => push_literal(&mut out, c),
        }
    }
    Ok(out)
}

/// A character in a Go class: `\\` escapes; a bare `-` or `]` is malformed (Go's rule).
fn class_char(
    c: char,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<char, &'static str> {
    match c {
        '\\' => chars.next().ok_or("a '[' has no ']'"),
        '-' | ']' => Err("a '-' or ']' in '[...]' must be escaped with '\\'"),
        c => Ok(c),
    }
}

fn push_literal(out: &mut String, c: char) {
    if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!' | ',') {
        out.push('\\');
    }
    out.push(c);
}

/// A class in globset's syntax, which has no escapes: a `]` member goes first, a `-` last,
/// and a `!` never first (it would negate).
fn push_class(out: &mut String, negated: bool, members: Vec<(char, char)>) {
    let mut parts: Vec<(char, char)> = Vec::new();
    for (lo, hi) in members {
        // Ranges are split so their ends are never `]`, `-` or a leading `!`.
        let mut lo = lo;
        for special in ['!', '-', ']'] {
            if lo == special && hi > lo {
                parts.push((special, special));
                lo = char::from_u32(u32::from(lo) + 1).unwrap_or(lo);
            }
        }
        let mut hi = hi;
        for special in [']', '-'] {
            if hi == special && lo < hi {
                parts.push((special, special));
                hi = char::from_u32(u32::from(hi) - 1).unwrap_or(hi);
            }
        }
        parts.push((lo, hi));
    }
    let rank = |&(lo, hi): &(char, char)| match (lo, hi) {
        (']', ']') => 0,
        ('-', '-') => 3,
        ('!', '!') => 2,
        _ => 1,
    };
    parts.sort_by_key(|p| (rank(p), *p));
    parts.dedup();
    if let [(lo, hi)] = parts[..]
        && !negated
        && lo == hi
    {
        push_literal(out, lo);
        return;
    }
    // `!` first (with only `-` besides) would negate: `-` leads instead, which globset also
    // takes as a member.
    if !negated && parts.first().is_some_and(|p| *p == ('!', '!')) {
        parts.rotate_left(1);
    }
    out.push('[');
    if negated {
        out.push('!');
    }
    for (lo, hi) in parts {
        out.push(lo);
        if hi != lo {
            out.push('-');
            out.push(hi);
        }
    }
    out.push(']');
}

fn list(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(MAX_LISTED).map(String::as_str).collect();
    if shown.is_empty() {
        shown.push("nothing");
    }
    let mut text = shown.join(", ");
    if names.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
    }
    text
}

impl Index {
    /// Lists the entries of `archives` (headers only: file data is skipped by seeking).
    pub fn read(archives: Vec<Archive>) -> Result<Self, ContextError> {
        let mut index = Self::default();
        for (n, a) in archives.iter().enumerate() {
            let read_err = |source: io::Error| ContextError::Read {
                hash: a.hash.clone(),
                source,
            };
            let file = File::open(&a.path).map_err(read_err)?;
            // Regular files of this archive by name, for its hard links.
            let mut files: HashMap<String, usize> = HashMap::new();
            let mut archive = tar::Archive::new(file);
            for entry in archive.entries_with_seek().map_err(read_err)? {
                let entry = entry.map_err(read_err)?;
                let header = entry.header();
                let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
                    ContextError::BadName {
                        hash: a.hash.clone(),
                        name: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        why: "is not UTF-8",
                    }
                })?;
                let bad = |why| ContextError::BadName {
                    hash: a.hash.clone(),
                    name: raw.clone(),
                    why,
                };
                let name = normalise(&raw).map_err(bad)?;
                let kind = match header.entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                    tar::EntryType::Directory => Kind::Dir,
                    tar::EntryType::Symlink => match entry.link_name_bytes() {
                        Some(t) if !t.is_empty() => {
                            use std::os::unix::ffi::OsStrExt as _;
                            Kind::Symlink(PathBuf::from(std::ffi::OsStr::from_bytes(&t)))
                        }
                        _ => return Err(bad("is a symlink without a target")),
                    },
                    tar::EntryType::Link => {
                        let target = entry
                            .link_name_bytes()
                            .map(|t| String::from_utf8_lossy(&t).into_owned())
                            .unwrap_or_default();
                        let target = normalise(&target).map_err(bad)?;
                        match files.get(&target) {
                            Some(&i) => Kind::HardLink(i),
                            None => {
                                return Err(bad(
                                    "is a hard link to something that is not an earlier file \
                                     of its archive",
                                ));
                            }
                        }
                    }
                    // Devices, fifos, global headers: nothing a COPY copies.
                    other => {
                        tracing::debug!(hash = %a.hash, name = %raw, kind = ?other, "skipping a build context entry");
                        continue;
                    }
                };
                if name.is_empty() && kind != Kind::Dir {
                    return Err(bad("names the context root but is not a directory"));
                }
                let i = index.entries.len();
                match &kind {
                    Kind::File { .. } => {
                        files.insert(name.clone(), i);
                    }
                    Kind::HardLink(target) => {
                        files.insert(name.clone(), *target);
                    }
                    _ => {}
                }
                index.push(Entry {
                    archive: n,
                    name,
                    kind,
                    mode: header.mode().unwrap_or(0o644) & 0o7777,
                    mtime: header.mtime().unwrap_or(0),
                });
            }
        }
        index.archives = archives;
        Ok(index)
    }

    fn push(&mut self, e: Entry) {
        let mut p = parent(&e.name);
        while !p.is_empty() && self.dirs.insert(p.to_owned()) {
            p = parent(p);
        }
        if e.kind == Kind::Dir && !e.name.is_empty() {
            self.dirs.insert(e.name.clone());
        }
        self.by_name
            .entry(e.name.clone())
            .or_default()
            .push(self.entries.len());
        self.entries.push(e);
    }

    /// The names uploaded, for messages: each archive's top entries (those whose parent
    /// it does not list; what the SDK names its upload by).
    fn uploaded(&self) -> String {
        let mut roots: Vec<String> = Vec::new();
        for n in 0..self.archives.len().max(1) {
            let names: BTreeSet<&str> = self
                .entries
                .iter()
                .filter(|e| e.archive == n && !e.name.is_empty())
                .map(|e| e.name.as_str())
                .collect();
            for name in &names {
                let p = parent(name);
                if (p.is_empty() || !names.contains(p)) && !roots.iter().any(|r| r == name) {
                    roots.push((*name).to_owned());
                }
            }
        }
        list(&roots)
    }

    /// The entry (a later archive's first) a name stands for, other than a directory.
    fn last(&self, name: &str) -> Option<&Entry> {
        self.by_name
            .get(name)
            .and_then(|v| v.last())
            .and_then(|&i| self.entries.get(i))
    }

    /// What the context path `name` is, symlinks followed; `None` when it is not there.
    fn resolve(&self, source: &str, name: &str) -> Result<Option<Match>, ContextError> {
        let mut path = name.to_owned();
        for _ in 0..MAX_LINKS {
            if path.is_empty() || self.dirs.contains(&path) {
                return Ok(Some(Match {
                    path,
                    dir: true,
                    name: base(name).to_owned(),
                }));
            }
            let Some(e) = self.last(&path) else {
                return Ok(None);
            };
            match &e.kind {
                Kind::Symlink(target) => {
                    let t = target.to_string_lossy();
                    // As Docker resolves it: within the context, whose root `/` is.
                    let joined = if t.starts_with('/') {
                        t.into_owned()
                    } else {
                        format!("{}/{t}", parent(&path))
                    };
                    let mut parts: Vec<&str> = Vec::new();
                    for p in joined.split('/') {
                        match p {
                            "" | "." => {}
                            ".." => {
                                parts.pop();
                            }
                            p => parts.push(p),
                        }
                    }
                    path = parts.join("/");
                }
                _ => {
                    return Ok(Some(Match {
                        path,
                        dir: false,
                        name: base(name).to_owned(),
                    }));
                }
            }
        }
        Err(ContextError::TooManyLinks {
            src: source.to_owned(),
        })
    }

    /// What a `COPY` source (as the parser gives it: normalised, `.` for the whole context)
    /// names: one match, or several for a pattern.
    pub fn find(&self, source: &str) -> Result<Vec<Match>, ContextError> {
        let not_found = || ContextError::NotFound {
            src: source.to_owned(),
            uploaded: self.uploaded(),
        };
        let name = normalise(source).map_err(|_| not_found())?;
        if !is_pattern(&name) {
            return self
                .resolve(source, &name)?
                .map(|m| vec![m])
                .ok_or_else(not_found);
        }
        let bad = |why: String| ContextError::BadPattern {
            src: source.to_owned(),
            why,
        };
        let pattern = go_pattern(&name).map_err(|why| bad(why.to_owned()))?;
        let glob = globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| bad(e.kind().to_string()))?
            .compile_matcher();
        let names: BTreeSet<&str> = self
            .by_name
            .keys()
            .map(String::as_str)
            .chain(self.dirs.iter().map(String::as_str))
            .filter(|n| !n.is_empty() && glob.is_match(n))
            .collect();
        let mut found = Vec::new();
        for n in names {
            if let Some(m) = self.resolve(source, n)? {
                found.push(m);
            }
        }
        if found.is_empty() {
            return Err(not_found());
        }
        Ok(found)
    }

    /// Where the entries `matches` stand for go, for a `COPY` to `dest` (absolute; it ends
    /// in `/` when it names a directory). `dest_is_dir`: whether `dest` is a directory in
    /// the sandbox already (a file then goes into it).
    pub fn plan(
        &self,
        source: &str,
        matches: &[Match],
        dest: &str,
        dest_is_dir: bool,
    ) -> Result<Vec<Batch>, ContextError> {
        if matches.len() > 1 && !dest.ends_with('/') {
            let names: Vec<String> = matches
                .iter()
                .map(|m| {
                    if m.path.is_empty() {
                        ".".to_owned()
                    } else {
                        m.path.clone()
                    }
                })
                .collect();
            return Err(ContextError::SeveralNeedDir {
                src: source.to_owned(),
                found: list(&names),
                dest: dest.to_owned(),
            });
        }
        let mut batches = Vec::new();
        for m in matches {
            if m.dir {
                let dir = match dest.trim_end_matches('/') {
                    "" => "/".to_owned(),
                    d => d.to_owned(),
                };
                let prefix = format!("{}/", m.path);
                let items = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let rest = if m.path.is_empty() {
                            e.name.as_str()
                        } else if e.name == m.path {
                            ""
                        } else {
                            e.name.strip_prefix(&prefix)?
                        };
                        if rest.is_empty() {
                            // The directory itself: its metadata, for a new `dest`.
                            return (e.kind == Kind::Dir).then(|| (i, ".".to_owned()));
                        }
                        Some((i, rest.to_owned()))
                    })
                    .collect();
                batches.push(Batch { dir, items });
            } else {
                let target = if dest.ends_with('/') || dest_is_dir {
                    join(dest, &m.name)
                } else {
                    dest.to_owned()
                };
                let (dir, name) = match target.rsplit_once('/') {
                    Some(("", n)) => ("/".to_owned(), n.to_owned()),
                    Some((d, n)) => (d.to_owned(), n.to_owned()),
                    None => ("/".to_owned(), target.clone()),
                };
                let Some(&i) = self.by_name.get(&m.path).and_then(|v| v.last()) else {
                    continue;
                };
                batches.push(Batch {
                    dir,
                    items: vec![(i, name)],
                });
            }
        }
        Ok(batches)
    }

    /// Writes `batch` as a tar stream to `out`: owners root, modes and mtimes as uploaded;
    /// a hard link whose file is not in the batch becomes a copy of it.
    pub fn write_batch(&self, batch: &Batch, out: impl Write) -> Result<(), ContextError> {
        let mut files: Vec<Option<File>> = self.archives.iter().map(|_| None).collect();
        // File entries written so far, and their names in the stream.
        let mut written: HashMap<usize, String> = HashMap::new();
        let mut builder = tar::Builder::new(out);
        for (i, name) in &batch.items {
            let Some(e) = self.entries.get(*i) else {
                continue;
            };
            let Some(a) = self.archives.get(e.archive) else {
                continue;
            };
            // The writer fails with `BrokenPipe` only; anything else is the archive's.
            let io_err = |source: io::Error| {
                if source.kind() == io::ErrorKind::BrokenPipe {
                    ContextError::Stream(source)
                } else {
                    ContextError::Read {
                        hash: a.hash.clone(),
                        source,
                    }
                }
            };
            let mut header = tar::Header::new_gnu();
            header.set_mode(e.mode);
            header.set_mtime(e.mtime);
            header.set_uid(0);
            header.set_gid(0);
            let data = match &e.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, name, io::empty())
                        .map_err(io_err)?;
                    continue;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, name, target)
                        .map_err(io_err)?;
                    continue;
                }
                Kind::HardLink(target) => {
                    if let Some(linked) = written.get(target) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        builder
                            .append_link(&mut header, name, linked)
                            .map_err(io_err)?;
                        continue;
                    }
                    *target
                }
                Kind::File { .. } => *i,
            };
            let Some(Entry {
                kind: Kind::File { offset, size },
                ..
            }) = self.entries.get(data)
            else {
                continue;
            };
            let Some(slot) = files.get_mut(e.archive) else {
                continue;
            };
            let file = match slot {
                Some(f) => f,
                None => slot.insert(File::open(&a.path).map_err(io_err)?),
            };
            file.seek(SeekFrom::Start(*offset)).map_err(io_err)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(*size);
            let reader = Exact {
                inner: file.take(*size),
                left: *size,
            };
            builder
                .append_data(&mut header, name, reader)
                .map_err(io_err)?;
            written.insert(data, name.clone());
        }
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(ContextError::Stream)
    }

    /// The number of entries (for the log).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Reads exactly `left` bytes, or fails: a truncated archive must not yield a short entry.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            ));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// A `Write` into a channel of chunks (the body of a streamed request): blocks while the
/// channel is full; fails once the receiver is gone.
#[derive(Debug)]
pub struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 256 << 10;

    pub fn new(tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, io::Error>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(Self::CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::CHUNK));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the build sandbox stopped reading",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests;
