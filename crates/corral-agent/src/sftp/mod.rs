//! `corral-agent sftp-server`: the SFTP (version 3) server of the SSH gateway's `sftp`
//! subsystem. The agent starts it for `/corral/ssh` like any channel process: as the sandbox
//! user, confined, in the user's home, with the SFTP byte stream on stdin/stdout. So every
//! file operation is the sandbox user's own system call; the host never touches the files.
//!
//! The protocol (packets, framing) is `russh-sftp`'s; this module maps each request onto the
//! file system. Relative paths are relative to the home directory (the working directory).
//! Extensions: `posix-rename@openssh.com` (a rename that replaces the target; plain RENAME
//! refuses an existing target, as the protocol says).

mod fs;

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions, ReadDir};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use russh_sftp::protocol::{
    Attrs, Data, File as Entry, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use tokio::sync::oneshot;

use self::fs::{attrs, failure, lexical, long_name, req_path, set_attrs, status};

/// Open handles per session (files and directories).
const MAX_HANDLES: usize = 256;
/// The most bytes one READ answers with.
const MAX_READ: u32 = 256 * 1024;
/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// Serves SFTP on stdin/stdout until the client closes it.
pub fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-agent sftp-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let (done, finished) = oneshot::channel();
    rt.block_on(async move {
        let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        russh_sftp::server::run(stream, Server::new(cwd, done)).await;
        // The server task drops its handler (and so `done`) when the stream ends.
        let _ = finished.await;
    });
    // A read of stdin may still sit in a blocking thread: do not wait for it.
    rt.shutdown_background();
    ExitCode::SUCCESS
}

enum Open {
    File { file: File, path: PathBuf },
    Dir { dir: Option<ReadDir>, path: PathBuf },
}

/// One SFTP session.
pub struct Server {
    cwd: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
    _done: oneshot::Sender<()>,
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn io_err(e: io::Error) -> StatusReply {
    status(&e)
}

/// The two strings of an extended request's data (SSH wire strings).
fn two_strings(data: &[u8]) -> Option<(String, String)> {
    fn take(d: &[u8]) -> Option<(String, &[u8])> {
        let len = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
        let s = d.get(4..4 + len)?;
        Some((String::from_utf8(s.to_vec()).ok()?, &d[4 + len..]))
    }
    let (a, rest) = take(data)?;
    let (b, _) = take(rest)?;
    Some((a, b))
}

impl Server {
    fn new(cwd: PathBuf, done: oneshot::Sender<()>) -> Self {
        Self {
            cwd,
            handles: HashMap::new(),
            next: 0,
            _done: done,
        }
    }

    fn insert(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(failure(format!(
                "too many open handles (at most {MAX_HANDLES})"
            )));
        }
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        Ok(handle)
    }

    fn file(&self, handle: &str) -> Result<&File, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File { file, .. }) => Ok(file),
            Some(Open::Dir { .. }) => Err(failure("the handle is a directory")),
            None => Err(failure("no such handle")),
        }
    }

    fn do_rename(
        &self,
        id: u32,
        from: &str,
        to: &str,
        replace: bool,
    ) -> Result<Status, StatusReply> {
        let (from, to) = (req_path(from), req_path(to));
        if !replace && to.symlink_metadata().is_ok() {
            return Err(failure(format!("{} already exists", to.display())));
        }
        std::fs::rename(from, to).map_err(io_err)?;
        Ok(ok(id))
    }
}

impl Handler for Server {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        v.extensions.insert(POSIX_RENAME.into(), "1".into());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let write = pflags.intersects(OpenFlags::WRITE | OpenFlags::APPEND);
        let mut opts = OpenOptions::new();
        opts.read(pflags.contains(OpenFlags::READ) || !write)
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            opts.mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
        }
        if pflags.contains(OpenFlags::TRUNCATE) {
            opts.truncate(true);
        }
        let path = req_path(&filename).to_owned();
        let file = opts.open(&path).map_err(io_err)?;
        let handle = self.insert(Open::File { file, path })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(failure("no such handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let n = file.read_at(&mut data, offset).map_err(io_err)?;
        if n == 0 && !data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(n);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.file(&handle)?
            .write_all_at(&data, offset)
            .map_err(io_err)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = req_path(&path).symlink_metadata().map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = req_path(&path).metadata().map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let meta = match self.handles.get(&handle) {
            Some(Open::File { file, .. }) => file.metadata(),
            Some(Open::Dir { path, .. }) => path.metadata(),
            None => return Err(failure("no such handle")),
        }
        .map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        set_attrs(req_path(&path), None, &attrs)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        match self.handles.get(&handle) {
            Some(Open::File { file, path }) => set_attrs(path, Some(file), &attrs)?,
            Some(Open::Dir { path, .. }) => set_attrs(path, None, &attrs)?,
            None => return Err(failure("no such handle")),
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = req_path(&path).to_owned();
        let dir = std::fs::read_dir(&path).map_err(io_err)?;
        let handle = self.insert(Open::Dir {
            dir: Some(dir),
            path,
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { dir, .. }) = self.handles.get_mut(&handle) else {
            return Err(failure("no such directory handle"));
        };
        let Some(entries) = dir else {
            return Err(StatusCode::Eof.into());
        };
        let mut files = Vec::new();
        for entry in entries.by_ref() {
            let Ok(entry) = entry else { continue };
            // `DirEntry::metadata` does not follow symlinks (as `ls -l`).
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push(Entry {
                longname: long_name(&name, &meta),
                filename: name,
                attrs: attrs(&meta),
            });
            if files.len() >= DIR_BATCH {
                break;
            }
        }
        if files.is_empty() {
            *dir = None;
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        std::fs::remove_file(req_path(&filename)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        DirBuilder::new()
            .mode(attrs.permissions.map_or(0o777, |m| m & 0o7777))
            .create(req_path(&path))
            .map_err(io_err)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        std::fs::remove_dir(req_path(&path)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = req_path(&path);
        let real = match p.canonicalize() {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => lexical(&self.cwd, p),
            Err(e) => return Err(io_err(e)),
        };
        let name = real.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![Entry {
                longname: name.clone(),
                filename: name,
                attrs: FileAttributes::default(),
            }],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.do_rename(id, &oldpath, &newpath, false)
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = std::fs::read_link(req_path(&path)).map_err(io_err)?;
        let name = target.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![Entry {
                longname: name.clone(),
                filename: name,
                attrs: FileAttributes::default(),
            }],
        })
    }

    /// OpenSSH sends the target first and the link second (the reverse of the draft's
    /// field names, which `russh-sftp` follows); every common client does as OpenSSH.
    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        let (target, link) = (linkpath, targetpath);
        std::os::unix::fs::symlink(Path::new(&target), req_path(&link)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request != POSIX_RENAME {
            return Err(StatusCode::OpUnsupported.with_message(format!("{request} is not served")));
        }
        let (from, to) = two_strings(&data)
            .ok_or_else(|| StatusCode::BadMessage.with_message("bad posix-rename request"))?;
        self.do_rename(id, &from, &to, true).map(Packet::Status)
    }
}

#[cfg(test)]
mod tests;
