"""Snapshots of running sandboxes (`sandbox._experimental_create_snapshot`) and forks
(`sandbox._experimental_fork`), through the Daytona SDK against a real `corral serve`:
point-in-time copies, isolation both ways, chains of snapshots with deletions, snapshot
lifetime (in use, deleted, layers removed), bad input, a restart, and plain-directory disks."""

import time
import uuid

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, SessionExecuteRequest

from conftest import Server

# The issue names the SDK's `_experimental_*` spellings, which are deprecated aliases of
# `create_snapshot` / `fork`: both are used below.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def commit_layers(server):
    """Snapshot layer dirs on the host (btrfs pool or plain)."""
    found = []
    for d in [server.data_dir / "disk" / ".commits", server.data_dir / "commits" / "layers"]:
        if d.is_dir():
            found += sorted(p.name for p in d.iterdir())
    return found


@pytest.fixture(scope="module")
def srv():
    server = Server()
    server.start()
    yield server
    assert server.finish() == ([], [], [], [])


def read(sb, path):
    r = sb.process.exec(f"cat {path} 2>&1 || echo MISSING")
    return r.result.strip()


def test_snapshot_of_a_running_sandbox(srv):
    d = srv.client()
    sb = d.create(CreateSandboxFromSnapshotParams(labels={"team": "a"}), timeout=60)
    created = []
    name = uniq("snap")
    try:
        sb.fs.create_folder("/home/daytona/proj", "755")
        sb.fs.upload_file(b"v1\n", "/home/daytona/proj/state.txt")
        sb.process.exec("dd if=/dev/urandom of=/home/daytona/proj/blob bs=1M count=8 status=none")
        digest = sb.process.exec("sha256sum /home/daytona/proj/blob").result.split()[0]
        # A process that must survive the snapshot.
        sb.process.create_session("bg")
        sb.process.execute_session_command("bg", SessionExecuteRequest(command="sleep 1000", run_async=True))
        before = sb.process.exec("pgrep -x sleep").result.split()
        assert before, "background process not running"

        sb._experimental_create_snapshot(name)
        sb.refresh_data()
        assert sb.state == "started"
        assert sb.process.exec("pgrep -x sleep").result.split() == before, "processes must keep running"
        # Writes after the snapshot are not in it.
        sb.fs.upload_file(b"v2\n", "/home/daytona/proj/state.txt")

        snap = d.snapshot.get(name)
        assert snap.state == "active"
        assert snap.size and snap.size * (1 << 30) >= 8 << 20, snap.size

        a = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
        created.append(a)
        b = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
        created.append(b)
        assert a.snapshot == name
        assert read(a, "/home/daytona/proj/state.txt") == "v1"
        assert a.process.exec("sha256sum /home/daytona/proj/blob").result.split()[0] == digest
        # Same user as the source, its own hostname, fresh processes.
        assert a.process.exec("id -un").result.strip() == "daytona"
        assert a.process.exec("hostname").result.strip() == a.id
        assert a.process.exec("pgrep -x sleep || echo none").result.strip() == "none"
        # Sandboxes from one snapshot do not see each other's writes, nor the source's.
        a.fs.upload_file(b"from-a\n", "/home/daytona/proj/state.txt")
        assert read(b, "/home/daytona/proj/state.txt") == "v1"
        assert read(sb, "/home/daytona/proj/state.txt") == "v2"
        # Host programs still work in them (the host image is below the snapshot).
        assert a.process.exec("python3 -c 'print(6*7)'").result.strip() == "42"

        # In use: refused, naming the sandboxes.
        with pytest.raises(DaytonaError) as e:
            d.snapshot.delete(snap)
        assert "in use" in str(e.value)
    finally:
        for s in created:
            d.delete(s, wait=True)
        d.delete(sb, wait=True)
    assert commit_layers(srv), "the snapshot's layer is on disk while the snapshot exists"
    d.snapshot.delete(d.snapshot.get(name))
    with pytest.raises(DaytonaError):
        d.snapshot.get(name)
    assert commit_layers(srv) == []


def test_a_chain_of_snapshots_with_deletions(srv):
    d = srv.client()
    first, second = uniq("chain1"), uniq("chain2")
    sb = d.create(timeout=60)
    try:
        sb.process.exec("mkdir -p ~/w/dir && echo keep > ~/w/keep && echo gone > ~/w/gone && echo x > ~/w/dir/f")
        sb._experimental_create_snapshot(first)
    finally:
        d.delete(sb, wait=True)
    mid = d.create(CreateSandboxFromSnapshotParams(snapshot=first), timeout=60)
    try:
        # Deleting and replacing files of the layer below: whiteouts and opaque dirs.
        mid.process.exec("rm ~/w/gone && rm -r ~/w/dir && mkdir ~/w/dir && echo y > ~/w/dir/g && echo changed > ~/w/keep")
        mid._experimental_create_snapshot(second)
    finally:
        d.delete(mid, wait=True)
    # The first snapshot can go: the second still needs its layer, which stays.
    d.snapshot.delete(d.snapshot.get(first))
    assert len(commit_layers(srv)) == 2
    top = d.create(CreateSandboxFromSnapshotParams(snapshot=second), timeout=60)
    try:
        r = top.process.exec("cat ~/w/keep; ls ~/w; ls ~/w/dir")
        assert r.result.split() == ["changed", "dir", "keep", "g"], r.result
    finally:
        d.delete(top, wait=True)
    d.snapshot.delete(d.snapshot.get(second))
    assert commit_layers(srv) == []


def test_a_snapshot_can_go_while_its_sandboxes_are_being_deleted(srv):
    """The TypeScript SDK's delete does not wait: deleting the snapshot right after its
    sandboxes is accepted, and their teardown removes the layer once nothing mounts it."""
    d = srv.client()
    name = uniq("going")
    sb = d.create(timeout=60)
    try:
        sb.process.exec("echo data > ~/f")
        sb._experimental_create_snapshot(name)
    finally:
        d.delete(sb, wait=True)
    users = [d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60) for _ in range(2)]
    assert read(users[0], "~/f") == "data"
    # Still in use: refused.
    with pytest.raises(DaytonaError, match="in use"):
        d.snapshot.delete(d.snapshot.get(name))
    for u in users:
        d.delete(u)  # no wait
    d.snapshot.delete(d.snapshot.get(name))
    deadline = time.time() + 30
    while list(d.list()) or commit_layers(srv):
        assert time.time() < deadline, (list(d.list()), commit_layers(srv))
        time.sleep(0.1)


def test_fork_is_a_copy_on_write_sibling(srv):
    d = srv.client()
    sb = d.create(CreateSandboxFromSnapshotParams(labels={"role": "src"}, env_vars={"GREETING": "hi"}), timeout=60)
    fork = None
    try:
        sb.process.exec("mkdir -p ~/repo && echo base > ~/repo/file && dd if=/dev/zero of=~/repo/big bs=1M count=4 status=none")
        sb.process.create_session("bg")
        sb.process.execute_session_command("bg", SessionExecuteRequest(command="sleep 1000", run_async=True))
        name = uniq("fork")
        fork = sb.fork(name=name)
        assert fork.state == "started"
        assert fork.name == name and fork.id != sb.id
        assert fork.labels.get("role") == "src"
        assert fork.process.exec("echo $GREETING").result.strip() == "hi"
        assert read(fork, "~/repo/file") == "base"
        assert fork.process.exec("stat -c %s ~/repo/big").result.strip() == str(4 << 20)
        assert fork.process.exec("hostname").result.strip() == fork.id
        assert fork.process.exec("pgrep -x sleep || echo none").result.strip() == "none"
        # The source kept running, with its processes.
        sb.refresh_data()
        assert sb.state == "started"
        assert sb.process.exec("pgrep -x sleep").result.strip()
        # Neither writes into the other.
        fork.fs.upload_file(b"fork\n", "/home/daytona/repo/file")
        sb.fs.upload_file(b"source\n", "/home/daytona/repo/file")
        sb.process.exec("echo new > ~/repo/only-in-source")
        assert read(fork, "~/repo/file") == "fork"
        assert read(sb, "~/repo/file") == "source"
        assert read(fork, "~/repo/only-in-source").endswith("MISSING")
        # A fork is a sandbox like any other: stop/start keeps its files; forks of forks work.
        fork.stop()
        fork.start()
        assert read(fork, "~/repo/file") == "fork"
        grandchild = fork._experimental_fork()
        try:
            assert read(grandchild, "~/repo/file") == "fork"
        finally:
            d.delete(grandchild, wait=True)
        # Deleting the source leaves the fork whole.
        d.delete(sb, wait=True)
        sb = None
        assert read(fork, "~/repo/file") == "fork"
    finally:
        if fork:
            d.delete(fork, wait=True)
        if sb:
            d.delete(sb, wait=True)


def test_fork_of_a_stopped_sandbox_and_refusals(srv):
    d = srv.client()
    sb = d.create(timeout=60)
    try:
        sb.process.exec("echo kept > ~/f")
        sb.stop()
        fork = sb._experimental_fork()
        try:
            assert fork.state == "started"
            assert read(fork, "~/f") == "kept"
        finally:
            d.delete(fork, wait=True)
        sb.refresh_data()
        assert sb.state == "stopped"

        # Bad input answers 4xx in Daytona's shape.
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot", {"name": ""})
        assert status == 400 and "name" in body["message"], body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot", {"name": "host"})
        assert status == 409, body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot",
                                   {"name": uniq("m"), "includeMemory": True})
        assert status == 400 and "memory" in body["message"], body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot", {"nme": "x"})
        assert status == 400, body
        status, body = srv.request("POST", "/api/sandbox/nope/fork", {})
        assert status == 404, body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/fork", {"name": sb.name})
        assert status == 409, body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/fork", {"name": "bad name!"})
        assert status == 400, body

        taken = uniq("taken")
        sb.create_snapshot(taken)
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot", {"name": taken})
        assert status == 409, body
        d.snapshot.delete(d.snapshot.get(taken))

        # An archived sandbox's files are packed away: refused with a clear message.
        sb.archive()
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/fork", {})
        assert status == 409 and "archived" in body["message"], body
        status, body = srv.request("POST", f"/api/sandbox/{sb.id}/snapshot", {"name": uniq("a")})
        assert status == 409 and "archived" in body["message"], body
        # A snapshot's image reference cannot be used as an image name.
        status, body = srv.request("POST", "/api/snapshots",
                                   {"name": uniq("x"), "imageName": "corral-snapshot:abc"})
        assert status == 400, body
    finally:
        d.delete(sb, wait=True)
    assert commit_layers(srv) == []


@pytest.mark.parametrize("disk", ["btrfs", "off"])
def test_snapshots_and_forks_survive_a_restart(disk):
    server = Server(env={"CORRAL_DISK_QUOTA": "off"} if disk == "off" else None)
    server.start()
    try:
        d = server.client()
        sb = d.create(timeout=60)
        sb.process.exec("mkdir -p ~/p && echo one > ~/p/a && ln -s a ~/p/link && chmod 600 ~/p/a")
        name = uniq("restart")
        sb._experimental_create_snapshot(name)
        fork = sb._experimental_fork()
        t0 = time.monotonic()
        server.crash()
        server.start()
        d = server.client()
        assert d.snapshot.get(name).state == "active"
        fork = d.get(fork.id)
        assert fork.state == "started"
        assert read(fork, "~/p/link") == "one"
        again = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
        r = again.process.exec("cat ~/p/link; stat -c %a ~/p/a; readlink ~/p/link")
        assert r.result.split() == ["one", "600", "a"], r.result
        assert time.monotonic() - t0 < 60
        for s in (again, fork, sb):
            d.delete(s, wait=True)
        d.snapshot.delete(d.snapshot.get(name))
        assert commit_layers(server) == []
    finally:
        assert server.finish() == ([], [], [], [])


def test_run_as_grants_nothing(srv):
    """The agent binary's `run-as` mode (used by builds, as root) cannot raise the default
    user's privileges: setuid/setgid fail without them."""
    d = srv.client()
    sb = d.create(timeout=60)
    try:
        r = sb.process.exec("/.corral/agent run-as root -- id -u; echo rc=$?")
        assert "rc=126" in r.result and "\n0\n" not in f"\n{r.result}", r.result
        assert "Operation not permitted" in r.result or "not permitted" in r.result, r.result
        # Running as oneself is allowed and changes nothing.
        r = sb.process.exec("/.corral/agent run-as daytona -- id -u")
        assert r.result.strip() == sb.process.exec("id -u").result.strip()
    finally:
        d.delete(sb, wait=True)
