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
mod tests {
    use super::*;

    /// A test entry: name, type, data or link target, mode.
    type Spec<'a> = (&'a str, tar::EntryType, &'a str, u32);
    use tar::EntryType as E;

    /// Writes an archive with these raw names (no normalisation by the `tar` crate).
    fn write_archive(path: &std::path::Path, entries: &[Spec<'_>]) {
        let mut out = Vec::new();
        for (name, kind, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_uid(1000);
            h.set_gid(1000);
            let size = if *kind == E::Regular { data.len() } else { 0 };
            h.set_size(size as u64);
            if matches!(kind, E::Symlink | E::Link) {
                h.set_link_name(data).expect("link name");
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            if *kind == E::Regular {
                out.extend_from_slice(data.as_bytes());
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        std::fs::write(path, out).expect("write archive");
    }

    /// An index of archives given as entry lists; the temp dir must outlive it.
    fn index(archives: &[&[Spec<'_>]]) -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut list = Vec::new();
        for (n, entries) in archives.iter().enumerate() {
            let path = dir.path().join(format!("{n}.tar"));
            write_archive(&path, entries);
            list.push(Archive {
                hash: format!("{n:032x}"),
                path,
            });
        }
        let index = Index::read(list).expect("read");
        (dir, index)
    }

    /// The SDK's archives: `add_local_dir` of an app, `add_local_file` of a file.
    fn sdk() -> (tempfile::TempDir, Index) {
        index(&[
            &[
                ("tmp/p/app", E::Directory, "", 0o750),
                ("tmp/p/app/main.py", E::Regular, "print(1)", 0o644),
                ("tmp/p/app/run.sh", E::Regular, "#!/bin/sh", 0o755),
                ("tmp/p/app/lib", E::Directory, "", 0o755),
                ("tmp/p/app/lib/util.py", E::Regular, "x = 1", 0o600),
                ("tmp/p/app/current", E::Symlink, "lib", 0o777),
                ("tmp/p/app/again.py", E::Link, "tmp/p/app/main.py", 0o644),
            ],
            &[("./tmp/q/f.txt", E::Regular, "file", 0o640)],
        ])
    }

    /// (name in the batch, what it is) for each item, for comparisons.
    fn names(index: &Index, batches: &[Batch]) -> Vec<(String, String)> {
        batches
            .iter()
            .flat_map(|b| {
                b.items.iter().map(|(i, n)| {
                    let e = &index.entries[*i];
                    (b.dir.clone(), format!("{n} <- {}", e.name))
                })
            })
            .collect()
    }

    fn plan(index: &Index, source: &str, dest: &str, dest_is_dir: bool) -> Vec<(String, String)> {
        let m = index.find(source).expect(source);
        let b = index.plan(source, &m, dest, dest_is_dir).expect(dest);
        names(index, &b)
    }

    fn pair(dir: &str, item: &str) -> (String, String) {
        (dir.to_owned(), item.to_owned())
    }

    #[test]
    fn a_file_goes_to_dest_or_into_a_directory() {
        let (_d, ix) = sdk();
        assert_eq!(
            plan(&ix, "tmp/q/f.txt", "/etc/f.conf", false),
            [pair("/etc", "f.conf <- tmp/q/f.txt")]
        );
        assert_eq!(
            plan(&ix, "tmp/q/f.txt", "/opt/", false),
            [pair("/opt", "f.txt <- tmp/q/f.txt")]
        );
        // An existing directory in the sandbox, named without a slash.
        assert_eq!(
            plan(&ix, "tmp/q/f.txt", "/opt", true),
            [pair("/opt", "f.txt <- tmp/q/f.txt")]
        );
        assert_eq!(
            plan(&ix, "tmp/q/f.txt", "/", false),
            [pair("/", "f.txt <- tmp/q/f.txt")]
        );
    }

    #[test]
    fn a_directory_copies_its_contents() {
        let (_d, ix) = sdk();
        let want = [
            pair("/app", ". <- tmp/p/app"),
            pair("/app", "main.py <- tmp/p/app/main.py"),
            pair("/app", "run.sh <- tmp/p/app/run.sh"),
            pair("/app", "lib <- tmp/p/app/lib"),
            pair("/app", "lib/util.py <- tmp/p/app/lib/util.py"),
            pair("/app", "current <- tmp/p/app/current"),
            pair("/app", "again.py <- tmp/p/app/again.py"),
        ];
        assert_eq!(plan(&ix, "tmp/p/app", "/app", false), want);
        assert_eq!(plan(&ix, "tmp/p/app", "/app/", false), want);
        // A directory only implied by deeper names.
        assert_eq!(
            plan(&ix, "tmp/q", "/q", false),
            [pair("/q", "f.txt <- tmp/q/f.txt")]
        );
    }

    #[test]
    fn dot_is_the_whole_context_of_every_archive() {
        let (_d, ix) = sdk();
        let got = plan(&ix, ".", "/", false);
        assert_eq!(got.len(), 8);
        assert!(got.contains(&pair("/", "tmp/p/app/main.py <- tmp/p/app/main.py")));
        assert!(
            got.contains(&pair("/", "tmp/q/f.txt <- tmp/q/f.txt")),
            "{got:?}"
        );
        assert_eq!(
            plan(&ix, ".", "/srv/", false).first(),
            Some(&pair("/srv", "tmp/p/app <- tmp/p/app"))
        );
    }

    #[test]
    fn patterns_match_per_segment_as_go_does() {
        let (_d, ix) = sdk();
        assert_eq!(
            plan(&ix, "tmp/p/app/*.py", "/code/", false),
            [
                pair("/code", "again.py <- tmp/p/app/again.py"),
                pair("/code", "main.py <- tmp/p/app/main.py"),
            ]
        );
        // `*` stays within a segment.
        assert!(ix.find("tmp/*.py").is_err());
        assert!(ix.find("tmp/p/*/util.py").is_err());
        assert_eq!(
            plan(&ix, "tmp/*/app/lib/util.py", "/u.py", false),
            [pair("/", "u.py <- tmp/p/app/lib/util.py")]
        );
        // A matched directory copies its contents.
        assert_eq!(
            plan(&ix, "tmp/?", "/all/", false),
            [
                pair("/all", "app <- tmp/p/app"),
                pair("/all", "app/main.py <- tmp/p/app/main.py"),
                pair("/all", "app/run.sh <- tmp/p/app/run.sh"),
                pair("/all", "app/lib <- tmp/p/app/lib"),
                pair("/all", "app/lib/util.py <- tmp/p/app/lib/util.py"),
                pair("/all", "app/current <- tmp/p/app/current"),
                pair("/all", "app/again.py <- tmp/p/app/again.py"),
                pair("/all", "f.txt <- tmp/q/f.txt"),
            ]
        );
        assert_eq!(
            plan(&ix, "tmp/p/app/[mr]*", "/x/", false).len(),
            2,
            "main.py and run.sh"
        );
        assert_eq!(plan(&ix, "tmp/p/app/[^mr]*.py", "/x/", false).len(), 1);
        // Several matches need a directory destination.
        let m = ix.find("tmp/p/app/*.py").expect("find");
        let e = ix
            .plan("tmp/p/app/*.py", &m, "/code", true)
            .expect_err("several");
        let text = e.to_string();
        assert!(
            text.contains("matches several files") && text.contains("tmp/p/app/main.py"),
            "{text}"
        );
    }

    #[test]
    fn go_patterns_translate_to_globset() {
        let matches = |pattern: &str, name: &str| {
            let g = globset::GlobBuilder::new(&go_pattern(pattern).expect(pattern))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .expect(pattern)
                .compile_matcher();
            g.is_match(name)
        };
        assert!(matches("a**b", "axyb"));
        assert!(!matches("a**b", "ax/yb"), "** is not recursive in Go");
        assert!(matches("{a,b}", "{a,b}"));
        assert!(!matches("{a,b}", "a"), "no alternations in Go");
        assert!(matches("[^a]x", "bx") && !matches("[^a]x", "ax"));
        assert!(
            matches("[!]x", "!x") && !matches("[!]x", "bx"),
            "! is literal in Go"
        );
        assert!(matches("[\\]]", "]") && matches("[a\\-]", "-") && matches("[a\\-]", "a"));
        assert!(matches("[\\!\\-]", "!") && matches("[\\!\\-]", "-") && !matches("[\\!\\-]", "a"));
        assert!(matches("[a-c]", "b") && !matches("[a-c]", "d"));
        assert!(matches("\\*", "*") && !matches("\\*", "x"));
        for bad in ["[", "[]", "a\\", "[a-]", "[z-a]"] {
            assert!(go_pattern(bad).is_err(), "{bad}");
        }
        let (_d, ix) = sdk();
        let e = ix.find("tmp/[").expect_err("bad pattern").to_string();
        assert!(e.contains("not a valid pattern"), "{e}");
    }

    #[test]
    fn missing_sources_name_what_was_uploaded() {
        let (_d, ix) = sdk();
        let e = ix
            .find("tmp/p/nothere.txt")
            .expect_err("missing")
            .to_string();
        assert_eq!(
            e,
            "COPY source tmp/p/nothere.txt not found in the build context \
             (uploaded: tmp/p/app, tmp/q/f.txt)"
        );
        assert!(ix.find("nothing*").is_err());
        let (_d, empty) = index(&[]);
        let e = empty.find("a").expect_err("empty").to_string();
        assert!(e.ends_with("(uploaded: nothing)"), "{e}");
    }

    #[test]
    fn symlink_sources_are_followed_within_the_context() {
        let (_d, ix) = sdk();
        assert_eq!(
            plan(&ix, "tmp/p/app/current", "/l", false),
            [
                pair("/l", ". <- tmp/p/app/lib"),
                pair("/l", "util.py <- tmp/p/app/lib/util.py")
            ]
        );
        let (_d, ix) = index(&[&[
            ("data.txt", E::Regular, "d", 0o644),
            ("link", E::Symlink, "/data.txt", 0o777),
            ("loop", E::Symlink, "loop", 0o777),
            ("out", E::Symlink, "../../etc/passwd", 0o777),
        ]]);
        assert_eq!(
            plan(&ix, "link", "/x/", false),
            [pair("/x", "link <- data.txt")]
        );
        assert!(
            ix.find("loop")
                .is_err_and(|e| e.to_string().contains("symlinks"))
        );
        // `..` stops at the context's root, as in Docker: `etc/passwd` is not uploaded.
        assert!(
            ix.find("out")
                .is_err_and(|e| e.to_string().contains("not found"))
        );
    }

    #[test]
    fn unsafe_archive_names_are_refused() {
        for bad in ["../x", "a/../../x"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("a.tar");
            write_archive(&path, &[(bad, E::Regular, "x", 0o644)]);
            let e = Index::read(vec![Archive {
                hash: "h".into(),
                path,
            }])
            .expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
        // Leading slashes are dropped, as tar does.
        let (_d, ix) = index(&[&[("/abs/f", E::Regular, "x", 0o644)]]);
        assert!(ix.find("abs/f").is_ok());
    }

    /// The (name, type, data or link, mode, uid, mtime) of every entry of a written batch.
    fn written(index: &Index, batch: &Batch) -> Vec<(String, char, String, u32, u64, u64)> {
        let mut out = Vec::new();
        index.write_batch(batch, &mut out).expect("write");
        let mut archive = tar::Archive::new(&out[..]);
        let mut found = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let h = entry.header().clone();
            let kind = h.entry_type().as_byte() as char;
            let mut data = String::new();
            if let Some(l) = entry.link_name().expect("link") {
                data = l.to_string_lossy().into_owned();
            } else {
                entry.read_to_string(&mut data).expect("data");
            }
            found.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                kind,
                data,
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                h.mtime().expect("mtime"),
            ));
        }
        found
    }

    #[test]
    fn batches_are_written_as_tar_with_root_owners_and_links() {
        let (_d, ix) = sdk();
        let m = ix.find("tmp/p/app").expect("find");
        let b = ix.plan("tmp/p/app", &m, "/app", false).expect("plan");
        let got = written(&ix, &b[0]);
        let t = 1_700_000_000;
        assert_eq!(
            got,
            [
                (".".to_owned(), '5', String::new(), 0o750, 0, t),
                (
                    "main.py".to_owned(),
                    '0',
                    "print(1)".to_owned(),
                    0o644,
                    0,
                    t
                ),
                (
                    "run.sh".to_owned(),
                    '0',
                    "#!/bin/sh".to_owned(),
                    0o755,
                    0,
                    t
                ),
                ("lib".to_owned(), '5', String::new(), 0o755, 0, t),
                (
                    "lib/util.py".to_owned(),
                    '0',
                    "x = 1".to_owned(),
                    0o600,
                    0,
                    t
                ),
                ("current".to_owned(), '2', "lib".to_owned(), 0o777, 0, t),
                // Its file is in the batch: a hard link to it, by its new name.
                (
                    "again.py".to_owned(),
                    '1',
                    "main.py".to_owned(),
                    0o644,
                    0,
                    t
                ),
            ]
        );
        // Alone, the hard link is a copy of its file.
        let m = ix.find("tmp/p/app/again.py").expect("find");
        let b = ix
            .plan("tmp/p/app/again.py", &m, "/x/", false)
            .expect("plan");
        assert_eq!(
            written(&ix, &b[0]),
            [(
                "again.py".to_owned(),
                '0',
                "print(1)".to_owned(),
                0o644,
                0,
                t
            )]
        );
    }

    #[test]
    fn a_truncated_archive_fails_the_copy() {
        let (d, ix) = sdk();
        let path = d.path().join("1.tar");
        let bytes = std::fs::read(&path).expect("read");
        // Header and 2 bytes of the 4-byte file.
        std::fs::write(&path, &bytes[..514]).expect("truncate");
        let m = ix.find("tmp/q/f.txt").expect("find");
        let b = ix.plan("tmp/q/f.txt", &m, "/f", false).expect("plan");
        let e = ix.write_batch(&b[0], Vec::new()).expect_err("truncated");
        assert!(e.to_string().contains("ends inside a file"), "{e}");
    }

    #[test]
    fn chunks_reach_the_channel_until_it_closes() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut w = ChunkWriter::new(tx);
        w.write_all(b"hello").expect("write");
        w.flush().expect("flush");
        assert_eq!(
            rx.try_recv().ok().and_then(Result::ok),
            Some(b"hello".to_vec())
        );
        drop(rx);
        w.write_all(b"more").expect("buffered");
        let e = w.flush().expect_err("closed");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
