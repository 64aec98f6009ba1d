//! The production launch: listener on fd 3 and config on fd 4, as the runtime passes them.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Starts the agent with `listener` as fd 3 and `config` as fd 4 (either may be absent).
fn spawn_with_fds(listener: Option<RawFd>, config: Option<RawFd>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral-agent"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl/dup2/close/close_range, which are async-signal-safe, run between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the sources out of the way first: a source already numbered 3 or 4 would
            // otherwise be clobbered, or dup2'ed onto itself and keep FD_CLOEXEC.
            let mut moved = [-1; 2];
            for (slot, from) in moved.iter_mut().zip([listener, config]) {
                if let Some(fd) = from {
                    *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            for (from, to) in moved.into_iter().zip([3, 4]) {
                if from < 0 {
                    // Not open (EBADF) is the state we want.
                    libc::close(to);
                } else if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Like the runtime, pass nothing else (whatever this test process inherited).
            if libc::syscall(libc::SYS_close_range, 5, libc::c_uint::MAX, 0) != 0 {
                for fd in 5..1024 {
                    libc::close(fd);
                }
            }
            Ok(())
        })
    };
    cmd
}

fn post(socket: &std::path::Path, path: &str, body: &Value) -> Value {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (_, body) = raw.split_once("\r\n\r\n").expect("headers");
    serde_json::from_str(body).expect("json body")
}

/// The ids commands run as: nobody when we are root (to check the identity switch), else ours.
fn sandbox_ids(dir: &std::path::Path) -> (u32, u32, bool) {
    let meta = fs::metadata(dir).expect("stat");
    if meta.uid() == 0 {
        (65534, 65534, true)
    } else {
        (meta.uid(), meta.gid(), false)
    }
}

/// Starts the agent the production way, in `dir`, running commands as `uid`/`gid`.
fn start_inherited(dir: &std::path::Path, uid: u32, gid: u32) -> (std::path::PathBuf, Child) {
    let config_path = dir.join("config.json");
    fs::write(
        &config_path,
        json!({
            "sandbox_id": "sb", "user": "u", "uid": uid, "gid": gid,
            "home": "/", "work_dir": "/",
            "env": {"PATH": "/usr/bin:/bin"},
        })
        .to_string(),
    )
    .expect("config");
    let config = File::open(&config_path).expect("open config");
    let socket = dir.join("agent.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let child = spawn_with_fds(Some(listener.as_raw_fd()), Some(config.as_raw_fd()))
        .spawn()
        .expect("spawn");
    (socket, child)
}

#[test]
fn serves_on_inherited_fds_and_runs_as_the_configured_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (uid, gid, _) = sandbox_ids(dir.path());
    let (socket, mut child) = start_inherited(dir.path(), uid, gid);
    let body = post(
        &socket,
        "/process/execute",
        &json!({"command": "id -u; id -g; id -G; ls -l /proc/self/fd | grep socket | wc -l"}),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["exitCode"], 0, "{body}");
    assert_eq!(
        body["result"],
        format!("{uid}\n{gid}\n{gid}\n0\n"),
        "identity, groups, or a leaked listener"
    );
}

#[test]
fn the_python_fork_server_runs_as_the_configured_user() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (uid, gid, root) = sandbox_ids(dir.path());
    let (socket, mut child) = start_inherited(dir.path(), uid, gid);
    let code = "import os\n\
        ppid = os.getppid()\n\
        status = dict(l.split(':', 1) for l in open('/proc/%d/status' % ppid).read().splitlines())\n\
        server = 'python fork server' in open('/proc/%d/cmdline' % ppid).read()\n\
        print(os.getuid(), os.getgid(), status['Uid'].split(), status['Gid'].split(), server)\n\
        print(sorted(os.listdir('/proc/self/fd')), os.getgroups())";
    let body = post(
        &socket,
        "/process/code-run",
        &json!({"code": code, "language": "python"}),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["exitCode"], 0, "{body}");
    let result = body["result"].as_str().unwrap_or_default();
    let (first, second) = result.split_once('\n').unwrap_or_default();
    let (u, g) = (format!("'{uid}'"), format!("'{gid}'"));
    assert_eq!(
        first,
        format!("{uid} {gid} [{u}, {u}, {u}, {u}] [{g}, {g}, {g}, {g}] True"),
        "the run or its fork server has the wrong ids: {result}"
    );
    // Only the listing's own fd beyond stdio: nothing of the agent's or the server's leaks.
    let expected = if root {
        format!("['0', '1', '2', '3'] [{gid}]\n")
    } else {
        "['0', '1', '2', '3'] ".to_owned()
    };
    assert!(second.starts_with(&expected), "{result}");
}

#[test]
fn missing_fds_are_a_clear_error() {
    let mut child = spawn_with_fds(None, None).spawn().expect("spawn");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    assert!(stderr.contains("file descriptor 4"), "{stderr}");
}
