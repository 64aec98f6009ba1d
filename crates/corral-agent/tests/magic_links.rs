//! The file routes never follow a `/proc` magic link, against the real binary in dev mode.
//!
//! In a sandbox the agent is PID 1 and its stdout/stderr came from the host, so
//! `/proc/1/fd/1` was a host file. Here the agent is an ordinary process of the test: its
//! stderr is the marker file `agent.log` of its temp dir, which is also its working
//! directory. `/proc/self/...` and `/proc/<agent pid>/...` stand in for `/proc/1/...` (the
//! host's PID 1 is never touched by these tests). Every attempt must leave the marker's mode,
//! owner and content alone and answer a 4xx; ordinary symlinks must keep working.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::{Agent, Response, path_str};
use serde_json::json;

/// Mode, owner and content of a file.
fn state(path: &Path) -> (u32, u32, u32, String) {
    let m = fs::metadata(path).expect("stat marker");
    (
        m.mode(),
        m.uid(),
        m.gid(),
        fs::read_to_string(path).expect("read marker"),
    )
}

/// The marker is as it was (the agent may have appended log lines meanwhile) and holds no
/// trace of `marker`.
fn assert_untouched(path: &Path, before: &(u32, u32, u32, String), marker: &str) {
    let now = state(path);
    assert_eq!(
        (now.0, now.1, now.2),
        (before.0, before.1, before.2),
        "mode/owner of {}",
        path.display()
    );
    assert!(
        now.3.starts_with(&before.3) && !now.3.contains(marker),
        "content of {} changed: {:?}",
        path.display(),
        now.3
    );
}

fn assert_refused(r: &Response, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx, got {} {}",
        r.status,
        r.body
    );
    assert_eq!(r.json()["source"], "DAYTONA_DAEMON", "{what}: {}", r.body);
}

/// Refused as a magic link: a 400 that says so.
fn assert_magic(r: &Response, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.body);
    assert!(r.body.contains("magic link"), "{what}: {}", r.body);
}

fn q(path: &str) -> String {
    path.replace('%', "%25")
        .replace(' ', "%20")
        .replace('&', "%26")
        .replace('#', "%23")
}

/// A tar archive holding one file `name` with `data`.
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, data)
        .expect("tar entry");
    builder.into_inner().expect("tar")
}

#[test]
fn file_routes_refuse_magic_links_to_a_file() {
    let agent = Agent::start();
    let log = agent.dir.path().join("agent.log");
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || {
            fs::read_to_string(&log).is_ok_and(|l| l.contains("starting for sandbox"))
        }),
        "the agent's start-up line: {}",
        agent.log()
    );
    let before = state(&log);
    let marker = "corral-magic-marker";
    let pid = agent.pid();
    let links = [
        "/proc/self/fd/2".to_owned(),
        "/proc/thread-self/fd/2".to_owned(),
        format!("/proc/{pid}/fd/2"),
        format!("/proc/{pid}/cwd/agent.log"),
        format!("/proc/{pid}/root{}", path_str(&log)),
    ];
    for link in &links {
        let l = q(link);
        for query in ["mode=777", "owner=12345&group=12345"] {
            let r = agent.request(
                "POST",
                &format!("/files/permissions?path={l}&{query}"),
                None,
            );
            assert_magic(&r, &format!("permissions {query} on {link}"));
        }
        let r = agent.post(
            "/files/replace",
            json!({"files": [link], "pattern": "starting for sandbox", "newValue": marker}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()[0]["success"],
            false,
            "replace on {link}: {}",
            r.body
        );
        assert!(
            r.json()[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("magic link")),
            "replace on {link}: {}",
            r.body
        );
        let r = agent.multipart(
            &format!("/files/upload-v2?path={l}"),
            &[("file", Some("x"), marker.as_bytes())],
        );
        assert_magic(&r, &format!("upload-v2 to {link}"));
        let r = agent.multipart(
            "/files/bulk-upload",
            &[
                ("files[0].path", None, link.as_bytes()),
                ("files[0].file", Some("x"), marker.as_bytes()),
            ],
        );
        assert_eq!(r.status, 400, "bulk-upload to {link}: {}", r.body);
        assert!(r.body.contains("magic link"), "{}", r.body);
        let r = agent.request("GET", &format!("/files/download?path={l}"), None);
        assert_magic(&r, &format!("download of {link}"));
        let r = agent.post("/files/bulk-download", json!({"paths": [link]}));
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains("name=\"error\"") && r.body.contains("magic link"),
            "bulk-download of {link}: {}",
            r.body
        );
        assert!(!r.body.contains("starting for sandbox"), "{}", r.body);
        let r = agent.request("GET", &format!("/files/info?path={l}"), None);
        assert_magic(&r, &format!("info of {link}"));
        let r = agent.request(
            "GET",
            &format!("/files/find?path={l}&pattern=starting"),
            None,
        );
        assert_magic(&r, &format!("find in {link}"));
        let r = agent.request("DELETE", &format!("/files?path={l}"), None);
        assert_refused(&r, &format!("delete of {link}"));
        let dest = path_str(&agent.work_dir.join("moved"));
        let r = agent.request(
            "POST",
            &format!("/files/move?source={l}&destination={}", q(&dest)),
            None,
        );
        assert_refused(&r, &format!("move of {link}"));
        assert!(!agent.work_dir.join("moved").exists());
        assert_untouched(&log, &before, marker);
    }
    assert!(log.exists());
}

#[test]
fn file_routes_refuse_magic_links_to_a_directory() {
    let agent = Agent::start();
    let pid = agent.pid();
    let home = agent.dir.path();
    fs::write(home.join("victim"), "victim").expect("victim");
    let cwd = format!("/proc/{pid}/cwd");
    let in_cwd = |name: &str| q(&format!("{cwd}/{name}"));
    for r in [
        agent.request("GET", &format!("/files?path={}", q(&cwd)), None),
        agent.request(
            "GET",
            &format!("/files/search?path={}&pattern=*", q(&cwd)),
            None,
        ),
        agent.request(
            "GET",
            &format!("/files/find?path={}&pattern=victim", q(&cwd)),
            None,
        ),
        agent.request(
            "POST",
            &format!("/files/folder?path={}", in_cwd("newdir")),
            None,
        ),
        agent.multipart(
            &format!("/files/upload-v2?path={}", in_cwd("new.txt")),
            &[("file", Some("x"), b"x")],
        ),
        agent.request("DELETE", &format!("/files?path={}", in_cwd("victim")), None),
        agent.request(
            "POST",
            &format!(
                "/files/move?source={}&destination={}",
                in_cwd("victim"),
                q(&path_str(&agent.work_dir.join("v")))
            ),
            None,
        ),
        agent.request(
            "POST",
            &format!(
                "/files/move?source={}&destination={}",
                q(&path_str(&home.join("victim"))),
                in_cwd("renamed")
            ),
            None,
        ),
        agent.request_raw(
            "POST",
            &format!("/corral/untar?dest={}", in_cwd("untarred")),
            "application/x-tar",
            &tar_of("f", b"x"),
        ),
    ] {
        assert_magic(&r, "a route through /proc/<pid>/cwd");
    }
    for gone in ["newdir", "new.txt", "untarred", "renamed"] {
        assert!(!home.join(gone).exists(), "{gone} was created");
    }
    assert_eq!(
        fs::read_to_string(home.join("victim")).expect("victim"),
        "victim"
    );
    assert!(!agent.work_dir.join("v").exists());
    // A tar entry cannot go through a magic link either (a symlink in the archive to one).
    let dest = agent.work_dir.join("ctx");
    fs::create_dir(&dest).expect("ctx");
    symlink(&cwd, dest.join("link")).expect("symlink");
    let r = agent.request_raw(
        "POST",
        &format!("/corral/untar?dest={}", q(&path_str(&dest))),
        "application/x-tar",
        &tar_of("link/planted", b"x"),
    );
    assert_magic(&r, "untar through a symlink to a magic link");
    assert!(!home.join("planted").exists());
}

#[test]
fn ordinary_symlinks_keep_working() {
    let agent = Agent::start();
    let w = &agent.work_dir;
    fs::create_dir(w.join("real")).expect("real");
    fs::write(w.join("real/f.txt"), "hello TODO\n").expect("f");
    symlink(w.join("real"), w.join("dirlink")).expect("dirlink");
    symlink("real/f.txt", w.join("filelink")).expect("filelink");
    let p = |name: &str| q(&path_str(&w.join(name)));

    let r = agent.request(
        "POST",
        &format!("/files/permissions?path={}&mode=640", p("filelink")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mode = fs::metadata(w.join("real/f.txt")).expect("stat").mode();
    assert_eq!(mode & 0o777, 0o640);
    let r = agent.request("GET", &format!("/files/info?path={}", p("filelink")), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["size"], 11);
    let r = agent.request(
        "GET",
        &format!("/files/download?path={}", p("dirlink/f.txt")),
        None,
    );
    assert_eq!((r.status, r.body.as_str()), (200, "hello TODO\n"));
    let r = agent.post(
        "/files/replace",
        json!({"files": [path_str(&w.join("filelink"))], "pattern": "TODO", "newValue": "DONE"}),
    );
    assert_eq!(r.json()[0]["success"], true, "{}", r.body);
    assert_eq!(
        fs::read_to_string(w.join("real/f.txt")).expect("f"),
        "hello DONE\n"
    );
    let r = agent.multipart(
        &format!("/files/upload-v2?path={}", p("dirlink/up.txt")),
        &[("file", Some("up.txt"), b"uploaded")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        fs::read_to_string(w.join("real/up.txt")).expect("up"),
        "uploaded"
    );
    let r = agent.request(
        "POST",
        &format!("/files/folder?path={}", p("dirlink/sub/deeper")),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(w.join("real/sub/deeper").is_dir());
    let r = agent.request("GET", &format!("/files?path={}", p("dirlink")), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<String> = r
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["f.txt", "sub", "up.txt"]);
    let r = agent.request(
        "GET",
        &format!("/files/find?path={}&pattern=DONE", p("dirlink")),
        None,
    );
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.body);
    let r = agent.request(
        "POST",
        &format!(
            "/files/move?source={}&destination={}",
            p("dirlink/up.txt"),
            p("dirlink/moved.txt")
        ),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(w.join("real/moved.txt").exists());
    let r = agent.request(
        "DELETE",
        &format!("/files?path={}", p("dirlink/moved.txt")),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!w.join("real/moved.txt").exists());
    // Deleting the link removes the link, not the directory it points to.
    let r = agent.request("DELETE", &format!("/files?path={}", p("dirlink")), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(w.join("real/f.txt").exists() && !w.join("dirlink").exists());
    // A path ending in `..` names no entry: refused, never resolved to the directory above.
    let r = agent.request(
        "DELETE",
        &format!("/files?path={}&recursive=true", p("real/sub/..")),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(w.join("real/sub/deeper").is_dir());
    let _ = fs::set_permissions(w.join("real/f.txt"), fs::Permissions::from_mode(0o644));
}
