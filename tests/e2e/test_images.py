"""Sandboxes from real OCI images and the snapshots API, through the Daytona SDK against a
real `corral serve`, with images built here (umoci, busybox-static) and served by a real
local registry (`docker-registry`) on 127.0.0.1."""

import socket
import time
import uuid

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaError,
)

from conftest import Server
from oci_helpers import Layout, Registry, busybox_rootfs, tools_or_skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tools_or_skip()
    base = tmp_path_factory.mktemp("oci-img")
    reg = Registry(base / "registry")
    lay = Layout(base / "layout")
    lay.new_base("base")
    lay.modify("base", "v1", busybox_rootfs, base)
    # A user from the image's passwd, its workdir and env.
    lay.config(
        "v1",
        "--config.env", "FOO=from-image",
        "--config.env", "PATH=/bin",
        "--config.workingdir", "/work",
        "--config.user", "1000:1000",
    )
    # The same files, run as root with an entrypoint.
    lay.config(
        "v1",
        "--tag", "ep",
        "--config.user", "0",
        "--config.entrypoint", "/bin/sh",
        "--config.cmd", "-c",
        "--config.cmd", "echo started > /tmp/ep; echo entry-log; sleep 1000",
    )
    lay.push("v1", f"{reg.host}/test/busybox:1")
    lay.push("ep", f"{reg.host}/test/ep:1")
    server = Server()
    server.start()
    yield reg, server
    try:
        assert server.finish() == ([], [], [], [])
    finally:
        reg.stop()


def test_snapshot_from_image_runs_busybox_with_image_config(env):
    reg, server = env
    d = server.client()
    name = "bb-" + uuid.uuid4().hex[:8]
    snap = d.snapshot.create(CreateSnapshotParams(name=name, image=f"{reg.host}/test/busybox:1"), timeout=120)
    assert snap.state == "active", snap
    assert snap.size and snap.size > 0
    assert d.snapshot.get(name).id == snap.id
    assert d.snapshot.get(snap.id).name == name

    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name, env_vars={"BAR": "req"}), timeout=60)
    try:
        assert sb.snapshot == name
        r = sb.process.exec("cat /etc/os-release 2>/dev/null || busybox uname -s")
        assert r.exit_code == 0 and "Linux" in r.result
        # Workdir, user, image env and request env.
        r = sb.process.exec("pwd; id -u; echo $FOO; echo $BAR; echo $PATH")
        assert r.result.split() == ["/work", "1000", "from-image", "req", "/bin"], r.result
        # No host files: busybox is the only program.
        r = sb.process.exec("test -e /usr/bin/python3 || test -e /usr/lib/os-release || echo image-only")
        assert r.result.strip() == "image-only"
        # Files persist across stop/start.
        sb.fs.upload_file(b"kept\n", "/work/note.txt")
        sb.stop()
        sb.start()
        assert sb.fs.download_file("/work/note.txt") == b"kept\n"
        # And across archive/restore (the sandbox stays bound to its image's layers).
        sb.stop()
        sb.archive()
        sb.start()
        assert sb.process.exec("id -u; cat /work/note.txt").result.split() == ["1000", "kept"]
        assert sb.process.exec("cat /work/note.txt").result.strip() == "kept"

        # In use: deleting the snapshot is refused.
        with pytest.raises(DaytonaError, match="in use"):
            d.snapshot.delete(name)
    finally:
        d.delete(sb, wait=True)
    layers = server.data_dir / "images/layers/sha256"
    assert any(layers.iterdir())
    d.snapshot.delete(name)
    with pytest.raises(DaytonaError):
        d.snapshot.get(name)
    # Its layers were garbage collected (no other snapshot uses the image).
    assert not any(layers.iterdir())


def test_sandbox_from_image_pulls_once_and_runs_entrypoint(env):
    reg, server = env
    d = server.client()
    ref = f"{reg.host}/test/ep:1"
    before = reg.blob_gets()
    logs = []
    sb = d.create(CreateSandboxFromImageParams(image=ref), timeout=120, on_snapshot_create_logs=logs.append)
    pulled = reg.blob_gets()
    assert pulled > before
    # The pull's progress reached the SDK's log callback.
    text = "\n".join(logs)
    assert f"Pulling image {ref}" in text and "MiB" in text and "Pulled" in text, logs
    try:
        assert sb.state == "started"
        assert sb.process.exec("id -u").result.strip() == "0"
        deadline = time.time() + 10
        while time.time() < deadline:
            r = sb.process.exec("cat /tmp/ep")
            if r.exit_code == 0:
                break
            time.sleep(0.2)
        assert r.result.strip() == "started"
        ep = sb.process.get_entrypoint_session()
        assert len(ep.commands) == 1 and "sleep 1000" in ep.commands[0].command
        logs = sb.process.get_entrypoint_logs()
        assert "entry-log" in logs.stdout

        # A second create from the same image uses the stored layers: no registry fetch.
        sb2 = d.create(CreateSandboxFromImageParams(image=ref), timeout=60)
        try:
            assert reg.blob_gets() == pulled
            assert sb2.process.exec("busybox echo ok").result.strip() == "ok"
        finally:
            d.delete(sb2, wait=True)
        # The image shows as a snapshot named after it.
        names = [s.name for s in d.snapshot.list(limit=100).items]
        assert ref in names and "host" in names
    finally:
        d.delete(sb, wait=True)


def test_snapshot_and_fork_of_an_image_sandbox_keep_the_image_config(env):
    reg, server = env
    d = server.client()
    base = "bbs-" + uuid.uuid4().hex[:8]
    d.snapshot.create(CreateSnapshotParams(name=base, image=f"{reg.host}/test/busybox:1"), timeout=120)
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=base), timeout=60)
    made = []
    saved = "bbs-saved-" + uuid.uuid4().hex[:8]
    try:
        sb.fs.upload_file(b"data\n", "/work/data.txt")
        sb.create_snapshot(saved)
        fork = sb.fork()
        made.append(fork)
        child = d.create(CreateSandboxFromSnapshotParams(snapshot=saved), timeout=60)
        made.append(child)
        for s in (fork, child):
            # The image's workdir, user and env; the source's files.
            r = s.process.exec("pwd; id -u; echo $FOO; cat /work/data.txt; busybox echo ok")
            assert r.result.split() == ["/work", "1000", "from-image", "data", "ok"], r.result
        # The image below the saved snapshot stays while the snapshot needs it.
        for s in made + [sb]:
            d.delete(s, wait=True)
        made, sb = [], None
        d.snapshot.delete(base)
        again = d.create(CreateSandboxFromSnapshotParams(snapshot=saved), timeout=60)
        made.append(again)
        assert again.process.exec("cat /work/data.txt").result.strip() == "data"
    finally:
        for s in made + ([sb] if sb else []):
            d.delete(s, wait=True)
    d.snapshot.delete(saved)
    assert not any((server.data_dir / "disk/.commits").iterdir())


def test_a_snapshot_entrypoint_replaces_the_image_one(env):
    reg, server = env
    d = server.client()
    name = "ep-" + uuid.uuid4().hex[:8]
    d.snapshot.create(CreateSnapshotParams(name=name, image=f"{reg.host}/test/ep:1",
                                           entrypoint=["/bin/sh", "-c", "echo own-entry; sleep 1000"]),
                      timeout=120)
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
    try:
        ep = sb.process.get_entrypoint_session()
        assert len(ep.commands) == 1 and "own-entry" in ep.commands[0].command, ep
        deadline = time.time() + 10
        while "own-entry" not in (sb.process.get_entrypoint_logs().stdout or ""):
            assert time.time() < deadline
            time.sleep(0.2)
        # The image's own entrypoint did not run.
        assert sb.process.exec("test -e /tmp/ep || echo absent").result.strip() == "absent"
    finally:
        d.delete(sb, wait=True)
    d.snapshot.delete(name)


def test_missing_image_and_bad_dockerfiles_are_clear_errors(env):
    reg, server = env
    d = server.client()
    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromImageParams(image=f"{reg.host}/test/nope:1"), timeout=60)
    assert "nope" in str(e.value)
    # As with Daytona, the sandbox stays, `build_failed` with the reason, until deleted.
    failed = [s for s in d.list() if s.state != "destroyed"]
    assert [s.state for s in failed] == ["build_failed"] and "nope" in failed[0].error_reason
    status, body = server.request("GET", f"/api/sandbox/{failed[0].id}/build-logs")
    assert "Pulling image" in body and "ERROR" in body, body
    d.delete(failed[0], wait=True)

    # A Dockerfile that does not parse is refused at once (builds are in test_builds.py).
    status, body = server.request(
        "POST", "/api/sandbox",
        {"buildInfo": {"dockerfileContent": f"FROM {reg.host}/test/busybox:1\nRUN --mount=type=cache,target=/x echo hi\n"}},
    )
    assert status == 400 and "--mount" in body["message"], body

    # A snapshot of a missing image ends in state error with a reason.
    with pytest.raises(DaytonaError, match="nope"):
        d.snapshot.create(CreateSnapshotParams(name="bad-" + uuid.uuid4().hex[:6], image=f"{reg.host}/test/nope:2"),
                          timeout=60)
    # Snapshot names are unique; unknown snapshots are 4xx.
    with pytest.raises(DaytonaError, match="not found"):
        d.create(CreateSandboxFromSnapshotParams(snapshot="no-such-snapshot"), timeout=30)


def test_snapshot_list_pages(env):
    reg, server = env
    d = server.client()
    names = [f"pg-{i}-" + uuid.uuid4().hex[:6] for i in range(3)]
    for n in names:
        d.snapshot.create(CreateSnapshotParams(name=n, image=f"{reg.host}/test/busybox:1"), timeout=120)
    with pytest.raises(DaytonaError, match="already exists"):
        d.snapshot.create(CreateSnapshotParams(name=names[0], image=f"{reg.host}/test/busybox:1"), timeout=30)
    total = d.snapshot.list().total
    p1 = d.snapshot.list(page=1, limit=2)
    p2 = d.snapshot.list(page=2, limit=2)
    assert p1.total == total and p1.total_pages == (total + 1) // 2
    assert len(p1.items) == 2 and p2.page == 2
    seen = [s.name for s in p1.items + p2.items]
    assert len(set(seen)) == len(seen)
    assert d.snapshot.activate(names[0]).state == "active"
    # The host default still works.
    sb = d.create()
    try:
        assert sb.snapshot == "host"
        assert sb.process.exec("echo hi").result.strip() == "hi"
    finally:
        d.delete(sb, wait=True)
    for n in names:
        d.snapshot.delete(n)
    assert "host" in [s.name for s in d.snapshot.list().items]


class SilentRegistry:
    """A TCP listener on loopback that accepts connections and never answers: a pull from it
    hangs until the server is stopped."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.closed = True
        # shutdown() first: a plain close() leaves the port accepting while another thread
        # is blocked in accept().
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_server_crash_during_pulls_loses_nothing():
    import threading
    silent = SilentRegistry()
    server = Server()
    server.start()
    try:
        d = server.client()
        name = "hang-" + uuid.uuid4().hex[:8]
        # The snapshot is recorded and its pull hangs in the background.
        status, body = server.request("POST", "/api/snapshots",
                                      {"name": name, "imageName": f"{silent.host}/x/y:1"})
        assert status == 200, body
        # A create from an image whose pull hangs: answered at once (`pending_build`); the
        # SDK waits for the start.
        outcome = {}

        def create():
            try:
                outcome["sb"] = d.create(CreateSandboxFromImageParams(image=f"{silent.host}/x/z:1"),
                                         timeout=60)
            except Exception as e:  # the server goes away under it
                outcome["error"] = e

        t = threading.Thread(target=create, daemon=True)
        t.start()
        deadline = time.time() + 10
        while not (waiting := [s for s in d.list() if s.state == "building_snapshot"]):
            assert time.time() < deadline, "the create never reached building_snapshot"
            time.sleep(0.05)
        sb_id = waiting[0].id
        assert d.snapshot.get(name).state in ("pending", "pulling")

        server.crash()
        t.join(timeout=30)
        assert "error" in outcome and "sb" not in outcome
        server.start()
        # Nothing was lost: the sandbox and both pulls resumed.
        assert d.get(sb_id).state in ("pending_build", "building_snapshot")
        assert d.snapshot.get(name).state in ("pending", "pulling")
        # With the registry gone the resumed pulls fail cleanly, with a reason.
        silent.close()
        deadline = time.time() + 30
        while (s := d.snapshot.get(name)).state != "error":
            assert time.time() < deadline, s.state
            time.sleep(0.2)
        assert s.error_reason
        while (sb := d.get(sb_id)).state != "build_failed":
            assert time.time() < deadline, sb.state
            time.sleep(0.2)
        assert "x/z:1" in sb.error_reason, sb.error_reason
        status, body = server.request("GET", f"/api/sandbox/{sb_id}/build-logs")
        assert status == 200 and "Pulling image" in body and "ERROR" in body, body
        d.delete(sb, wait=True)
        d.snapshot.delete(name)
    finally:
        silent.close()
        assert server.finish() == ([], [], [], [])
