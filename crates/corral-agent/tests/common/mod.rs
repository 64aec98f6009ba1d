//! Test harness: runs the agent binary in dev mode and speaks raw HTTP/1.1 to it.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running agent with its own temp home and work dir; killed on drop.
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub home: PathBuf,
    pub work_dir: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&[], None)
    }

    /// Starts an agent with extra variables in its own environment and, when given, `path` as
    /// the sandbox's PATH (default: ours).
    pub fn start_with(agent_env: &[(&str, &str)], path: Option<&str>) -> Agent {
        Agent::spawn(agent_env, path, None)
    }

    /// Starts an agent whose stdout and stderr are `log` (default: the file `agent.log` in
    /// its directory, which is also its working directory).
    pub fn start_logging_to(log: std::os::fd::OwnedFd) -> Agent {
        Agent::spawn(&[], None, Some(log))
    }

    fn spawn(
        agent_env: &[(&str, &str)],
        path: Option<&str>,
        log: Option<std::os::fd::OwnedFd>,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let work_dir = dir.path().join("work");
        fs::create_dir_all(&home).expect("home");
        fs::create_dir_all(work_dir.join("sub")).expect("work dir");
        let meta = fs::metadata(dir.path()).expect("stat tempdir");
        let config = json!({
            "sandbox_id": "test-sandbox",
            "user": "tester",
            "uid": meta.uid(),
            "gid": meta.gid(),
            "home": home,
            "work_dir": work_dir,
            "env": {
                "PATH": path.map(str::to_owned).unwrap_or_else(|| {
                    std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
                }),
                "HOME": home,
                "FOO": "bar",
            },
        });
        let config_path = dir.path().join("config.json");
        fs::write(&config_path, config.to_string()).expect("write config");
        let socket = dir.path().join("agent.sock");
        let (stdout, stderr) = match log {
            Some(fd) => (
                Stdio::from(fd.try_clone().expect("dup log")),
                Stdio::from(fd),
            ),
            None => (
                Stdio::null(),
                Stdio::from(fs::File::create(dir.path().join("agent.log")).expect("log file")),
            ),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_corral-agent"))
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config_path)
            .envs(agent_env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the agent");
        let agent = Agent {
            child,
            dir,
            socket,
            home,
            work_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Sends one request on a fresh connection and reads the whole response.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut stream = self.send(method, path, body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        Response::parse(&raw)
    }

    /// Writes a request and returns the open connection without reading the answer.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> UnixStream {
        self.send_raw(
            method,
            path,
            "application/json",
            body.unwrap_or("").as_bytes(),
        )
    }

    /// Writes a request with any content type and body.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> UnixStream {
        let mut stream = UnixStream::connect(&self.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body).expect("write body");
        stream
    }

    /// Sends a request with any content type and body and reads the whole response.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Response {
        let mut stream = self.send_raw(method, path, content_type, body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        Response::parse(&raw)
    }

    /// Sends a `multipart/form-data` request whose parts are (field name, file name, data).
    pub fn multipart(&self, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
        let boundary = "corral-test-boundary-7d1f";
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let disposition = match file {
                Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
                None => format!("form-data; name=\"{name}\""),
            };
            body.extend_from_slice(
                format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut stream = self.send_raw(
            "POST",
            path,
            &format!("multipart/form-data; boundary={boundary}"),
            &body,
        );
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        Response::parse(&raw)
    }

    pub fn post(&self, path: &str, body: Value) -> Response {
        self.request("POST", path, Some(&body.to_string()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.trim(), 16).expect("hex size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Children of `parent` (pid, state letter), from /proc/<pid>/stat.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    all_pids()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) S ppid ..." — comm may contain spaces, so split after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// Waits up to `limit` for `cond`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills leftovers found by marker (best effort, by pid).
pub fn kill_marked(marker: &str) {
    for pid in processes_with(marker) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
