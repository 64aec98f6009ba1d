"""Declarative image builds through the Daytona SDK against a real `corral serve`: the SDK's
`Image` objects and hand-written Dockerfile lines are built without Docker (RUN, ENV,
WORKDIR, USER, COPY heredocs, ENTRYPOINT/CMD) on a busybox image from a local registry,
with build logs, the snapshot and sandbox build states, failures, caching and a restart
in the middle of a build."""

import threading
import time
import uuid
import http.client
import os

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaError,
    Image,
)

from conftest import Server
from oci_helpers import Layout, Registry, busybox_rootfs, tools_or_skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tools_or_skip()
    base = tmp_path_factory.mktemp("oci-build")
    reg = Registry(base / "registry")
    lay = Layout(base / "layout")
    lay.new_base("base")
    lay.modify("base", "v1", rootfs, base)
    # Root by default, with an image env var and an entrypoint a build must not run.
    lay.config("v1", "--config.user", "0", "--config.env", "PATH=/bin", "--config.env", "BASE=yes",
               "--config.entrypoint", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "touch /tmp/base-ep; sleep 1000")
    lay.push("v1", f"{reg.host}/test/bb:1")
    server = Server()
    server.start()
    yield reg, server
    try:
        assert server.finish() == ([], [], [], [])
    finally:
        reg.stop()


def rootfs(root):
    busybox_rootfs(root)
    for applet in ("sleep", "id", "mkdir", "chown", "touch", "true", "test"):
        os.symlink("busybox", root / "bin" / applet)


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sdk_image(reg, marker):
    return (
        Image.base(f"{reg.host}/test/bb:1")
        .run_commands(f"echo {marker} > /built.txt", ["sh", "-c", "echo $BASE-$GREETING > /env.txt"])
        .env({"GREETING": "hello world"})
        .workdir("/app")
        .dockerfile_commands([
            "COPY <<EOF /app/conf/settings.txt\nline one\nline two\nEOF",
            "RUN echo 'builder:x:1234:1234::/home/builder:/bin/sh' >> /etc/passwd",
            "RUN mkdir -p /home/builder && chown 1234 /home/builder",
            "USER builder",
            "RUN id -u > /home/builder/uid.txt && echo $HOME > /home/builder/home.txt",
            "USER root",
            # Long enough for the SDK (which polls every second) to stream the log.
            "RUN sleep 2",
            "CMD [\"sleep\", \"1000\"]",
        ])
        # CMD (set above) stays after ENTRYPOINT: it becomes $0 $1 of the script.
        .entrypoint(["/bin/sh", "-c", "echo entry-$GREETING; exec $0 $1"])
    )


def check_built(sb, marker):
    r = sb.process.exec("cat /built.txt /env.txt; pwd; cat conf/settings.txt; "
                        "cat /home/builder/uid.txt /home/builder/home.txt; id -u")
    # The ENV comes after that RUN, so the RUN did not see it (as with Docker).
    assert r.result.split("\n")[:8] == [marker, "yes-", "/app", "line one", "line two",
                                        "1234", "/home/builder", "0"], r.result
    # The base image's entrypoint never ran (not in the build, not here); ours did.
    assert sb.process.exec("test -e /tmp/base-ep || echo none").result.strip() == "none"
    deadline = time.time() + 10
    while "entry-hello world" not in (sb.process.get_entrypoint_logs().stdout or ""):
        assert time.time() < deadline, "the built entrypoint did not run"
        time.sleep(0.2)
    ep = sb.process.get_entrypoint_session()
    assert "'sleep' '1000'" in ep.commands[0].command, ep.commands[0].command


def test_snapshot_built_from_an_sdk_image_with_logs(env):
    reg, server = env
    d = server.client()
    name, marker = uniq("built"), uniq("m")
    logs = []
    snap = d.snapshot.create(CreateSnapshotParams(name=name, image=sdk_image(reg, marker)),
                             on_logs=logs.append, timeout=180)
    assert snap.state == "active" and snap.size > 0
    text = "\n".join(logs)
    assert "Step 1/" in text and "RUN echo" in text and "Successfully built" in text, text
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
    try:
        check_built(sb, marker)
    finally:
        d.delete(sb, wait=True)
    # The whole log stays readable after the build.
    status, body = server.request("GET", f"/api/snapshots/{snap.id}/build-logs")
    assert status == 200 and "Successfully built" in body
    d.snapshot.delete(name)


def test_sandbox_from_an_image_is_built_once(env):
    reg, server = env
    d = server.client()
    marker = uniq("m")
    image = sdk_image(reg, marker)
    logs = []
    sb = d.create(CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=logs.append, timeout=180)
    try:
        assert sb.state == "started"
        check_built(sb, marker)
        assert any("Step 1/" in l for l in logs), logs
        # The same Dockerfile again: the built snapshot is reused, nothing is built.
        builds = server_log(server).count("building snapshot")
        t = time.monotonic()
        sb2 = d.create(CreateSandboxFromImageParams(image=image), timeout=60)
        try:
            assert sb2.snapshot == sb.snapshot
            assert server_log(server).count("building snapshot") == builds
            assert time.monotonic() - t < 5
            assert sb2.process.exec("cat /built.txt").result.strip() == marker
        finally:
            d.delete(sb2, wait=True)
    finally:
        d.delete(sb, wait=True)


def server_log(server):
    server.log.flush()
    return open(server.log.name, errors="replace").read()


def test_failures_are_build_failed_with_the_reason(env):
    reg, server = env
    d = server.client()
    failing = Image.base(f"{reg.host}/test/bb:1").run_commands("echo about to fail", "exit 3")
    name = uniq("fail")
    with pytest.raises(DaytonaError, match="non-zero code: 3"):
        d.snapshot.create(CreateSnapshotParams(name=name, image=failing), timeout=120)
    snap = d.snapshot.get(name)
    assert snap.state == "build_failed" and "exit 3" in snap.error_reason
    status, body = server.request("GET", f"/api/snapshots/{snap.id}/build-logs")
    assert "about to fail" in body and "ERROR" in body, body
    d.snapshot.delete(name)

    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromImageParams(image=Image.base(f"{reg.host}/test/bb:1")
                                              .dockerfile_commands(["USER nobody-here", "RUN true"])),
                 timeout=120)
    assert "nobody-here" in str(e.value)
    failed = [s for s in d.list() if s.state == "build_failed"]
    assert failed and "nobody-here" in failed[0].error_reason
    for s in failed:
        d.delete(s, wait=True)

    # Refused at once, before anything is recorded: multi-stage, ADD of a URL, uploaded context.
    for content, word in [
        (f"FROM {reg.host}/test/bb:1 AS a\nFROM {reg.host}/test/bb:1\nCOPY --from=a /x /x\n", "multi-stage"),
        (f"FROM {reg.host}/test/bb:1\nADD https://example.com/x /x\n", "URL"),
        (f"FROM {reg.host}/test/bb:1\nFROBNICATE x\n", "FROBNICATE"),
    ]:
        status, body = server.request("POST", "/api/snapshots",
                                      {"name": uniq("bad"), "buildInfo": {"dockerfileContent": content}})
        assert status == 400 and word.lower() in body["message"].lower(), body
    status, body = server.request("POST", "/api/sandbox", {"buildInfo": {
        "dockerfileContent": f"FROM {reg.host}/test/bb:1\nCOPY ctx/a /a\n", "contextHashes": ["abc"]}})
    assert status == 400 and "context" in body["message"], body
    assert [s for s in d.list()] == []


def test_logs_follow_a_running_build(env):
    reg, server = env
    d = server.client()
    name = uniq("slow")
    # One step whose output comes in two parts, 2 s apart.
    image = Image.base(f"{reg.host}/test/bb:1").run_commands("echo first && sleep 2 && echo second")
    status, body = server.request("POST", "/api/snapshots",
                                  {"name": name, "buildInfo": {"dockerfileContent": image.dockerfile()}})
    assert status == 200 and body["state"] == "pending", body
    # While it builds: delete is refused, and a create from it answers at once.
    status, refused = server.request("DELETE", f"/api/snapshots/{name}")
    assert status == 409, refused
    status, early = server.request("POST", "/api/sandbox", {"snapshot": name})
    assert status == 200 and early["state"] == "pending_build", early
    status, url = server.request("GET", f"/api/snapshots/{name}/build-logs-url")
    assert status == 200 and url["url"].endswith(f"/api/snapshots/{body['id']}/build-logs")
    status, bad = server.request("GET", f"/api/snapshots/{body['id']}/build-logs?follow=maybe")
    assert status == 400 and "follow" in bad["message"], bad
    # A streaming GET: chunks arrive while the build runs, and the answer ends with it.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/api/snapshots/{body['id']}/build-logs?follow=true",
                 headers={"Authorization": f"Bearer {server.key}"})
    resp = conn.getresponse()
    assert resp.status == 200
    chunks, stamps = [], []
    while True:
        c = resp.read1(65536)
        if not c:
            break
        chunks.append(c.decode())
        stamps.append(time.monotonic())
    text = "".join(chunks)
    assert "first" in text and "second" in text and "Successfully built" in text, text

    def seen(word):
        so_far = ""
        for c, t in zip(chunks, stamps):
            so_far += c
            if word in so_far:
                return t
    # The step's output streams while the step runs (its own lines, not the step's text).
    assert seen("\nsecond\n") - seen("\nfirst\n") > 1.0, chunks
    assert d.snapshot.get(name).state == "active"
    # The early sandbox started once the snapshot was ready.
    deadline = time.time() + 30
    while (sb := d.get(early["id"])).state != "started":
        assert sb.state in ("pending_build", "building_snapshot", "creating"), sb.state
        assert time.time() < deadline
        time.sleep(0.1)
    assert sb.process.exec("echo ok").result.strip() == "ok"
    d.delete(sb, wait=True)
    d.snapshot.delete(name)
    status, _ = server.request("GET", "/api/snapshots/nope/build-logs")
    assert status == 404
    status, _ = server.request("GET", "/api/sandbox/nope/build-logs-url")
    assert status == 404



def test_a_restart_during_a_build_resumes_it(env):
    reg, _ = env
    server = Server()
    server.start()
    try:
        d = server.client()
        image = Image.base(f"{reg.host}/test/bb:1").run_commands("sleep 3", "echo done > /done.txt")
        out = {}

        def create():
            try:
                out["sb"] = d.create(CreateSandboxFromImageParams(image=image), timeout=120)
            except Exception as e:  # the server goes away under it
                out["error"] = e

        t = threading.Thread(target=create, daemon=True)
        t.start()
        deadline = time.time() + 30
        while not [s for s in d.list() if s.state == "building_snapshot"]:
            assert time.time() < deadline, "never reached building_snapshot"
            time.sleep(0.1)
        sb_id = [s for s in d.list() if s.state == "building_snapshot"][0].id
        server.crash()
        t.join(timeout=60)
        server.start()
        d = server.client()
        deadline = time.time() + 120
        while (sb := d.get(sb_id)).state != "started":
            assert sb.state not in ("build_failed", "error"), sb.error_reason
            assert time.time() < deadline, sb.state
            time.sleep(0.3)
        assert sb.process.exec("cat /done.txt").result.strip() == "done"
        d.delete(sb, wait=True)
    finally:
        assert server.finish() == ([], [], [], [])
