"""A sandbox's root plants links in its own files so that corral, which prepares a sandbox's
files from the host as host root, would write, read, create or chown host files: on restart
(stop + start), fork, recover, archive + start, and snapshots of a running sandbox on plain
disks while it swaps a directory for a link. Every attempt must leave the host's marker files
exactly as they were, and the sandbox keeps working (or is refused with a clear message)."""

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaError,
    SessionExecuteRequest,
)

from conftest import Server
from oci_helpers import root_image, tools_or_skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SECRET = "corral-host-marker-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def srv():
    server = Server()
    server.start()
    yield server
    assert server.finish() == ([], [], [], [])


@pytest.fixture
def host_dir(tmp_path):
    """A host directory holding a marker file; returns (dir, snapshot function)."""
    d = tmp_path / "host"
    d.mkdir()
    (d / "marker").write_text(SECRET + "\n")
    os.chmod(d / "marker", 0o600)

    def state():
        out = {}
        for p in sorted(d.rglob("*")):
            st = p.lstat()
            content = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(d))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
        return out

    return d, state


def relative_to_root(target: Path) -> str:
    """A relative link target that climbs from any depth under the data dir to `/`."""
    return "../" * 40 + str(target).lstrip("/")


def exec_ok(sb, cmd):
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, (cmd, r.result)
    return r.result


def plant_etc_links(sb, target):
    exec_ok(sb, f"for f in hosts hostname resolv.conf; do rm -f /etc/$f; ln -s '{target}' /etc/$f; done")
    assert exec_ok(sb, "readlink /etc/hosts").strip() == target


def assert_etc_regular(sb):
    r = exec_ok(sb, "for f in hosts hostname; do [ -L /etc/$f ] && echo LINK $f; done; cat /etc/hosts /etc/hostname")
    assert "LINK" not in r and "localhost" in r and sb.id in r, r


def sandbox_init(server, sb):
    for pid in server.sandbox_inits():
        if sb.id in Path(f"/proc/{pid}/cgroup").read_text():
            return pid
    raise AssertionError(f"no init for {sb.id}")


def wait_for(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_restart_does_not_write_through_planted_etc_links(srv, host_dir, form):
    d, state = host_dir
    before = state()
    target = str(d / "marker") if form == "absolute" else relative_to_root(d / "marker")
    client = srv.client()
    sb = client.create(CreateSandboxFromSnapshotParams(os_user="root"), timeout=60)
    try:
        plant_etc_links(sb, target)
        sb.stop()
        sb.start()
        assert state() == before
        assert_etc_regular(sb)
    finally:
        client.delete(sb, wait=True)
    assert state() == before


def test_fork_and_recover_do_not_write_through_planted_etc_links(srv, host_dir):
    d, state = host_dir
    before = state()
    client = srv.client()
    sb = client.create(CreateSandboxFromSnapshotParams(os_user="root"), timeout=60)
    fork = None
    try:
        plant_etc_links(sb, str(d / "marker"))
        fork = sb._experimental_fork()
        assert state() == before
        assert_etc_regular(fork)
        # Recover: the sandbox's init dies, the sandbox is in error, recover starts it again.
        os.kill(sandbox_init(srv, sb), signal.SIGKILL)
        assert wait_for(lambda: client.get(sb.id).state == "error", 10)
        sb.refresh_data()
        sb.recover()
        assert state() == before
        assert_etc_regular(sb)
    finally:
        for s in (fork, sb):
            if s is not None:
                client.delete(s, wait=True)
    assert state() == before


def test_archive_and_restore_keep_links_as_links(srv, host_dir):
    d, state = host_dir
    before = state()
    client = srv.client()
    sb = client.create(CreateSandboxFromSnapshotParams(os_user="root"), timeout=60)
    try:
        exec_ok(sb, f"mkdir -p /root/p && ln -s '{d}' /root/p/hostdir && ln -s '{d}/marker' /root/p/m "
                    "&& echo mine > /root/p/own")
        plant_etc_links(sb, str(d / "marker"))
        sb.stop()
        sb.archive()
        sb.start()
        assert state() == before
        assert_etc_regular(sb)
        r = exec_ok(sb, "readlink /root/p/hostdir /root/p/m; cat /root/p/own; cat /root/p/m 2>&1 || true")
        assert r.splitlines()[:3] == [str(d), f"{d}/marker", "mine"], r
        assert SECRET not in r
    finally:
        client.delete(sb, wait=True)
    assert state() == before


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tools_or_skip()
    reg, ref = root_image(tmp_path_factory.mktemp("oci-hostwrites"), "test/hostwrites")
    yield ref
    reg.stop()


def test_image_sandbox_with_etc_linked_to_a_host_dir_is_refused(srv, host_dir, image):
    d, state = host_dir
    before = state()
    client = srv.client()
    sb = client.create(CreateSandboxFromImageParams(image=image), timeout=120)
    try:
        assert exec_ok(sb, "busybox id -u").strip() == "0"
        # Positive control: the sandbox's own /etc files are corral's.
        assert sb.id in exec_ok(sb, "cat /etc/hostname")
        exec_ok(sb, f"busybox rm -rf /etc && busybox ln -s '{d}' /etc")
        sb.stop()
        with pytest.raises(DaytonaError) as e:
            sb.start()
        assert "link" in str(e.value), e.value
        assert state() == before, "corral created files in the host directory"
    finally:
        client.delete(sb, wait=True)
    assert state() == before


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_home_under_a_linked_dir_is_not_created_on_the_host(srv, host_dir, image, form):
    d, state = host_dir
    before = state()
    target = str(d) if form == "absolute" else relative_to_root(d)
    client = srv.client()
    sb = client.create(CreateSandboxFromImageParams(image=image), timeout=120)
    try:
        exec_ok(sb, f"busybox ln -s '{target}' /evil && echo 'root:x:0:0:root:/evil/home/sub:/bin/sh' > /etc/passwd")
        sb.stop()
        try:
            sb.start()
        except DaytonaError:
            pass  # refusing is fine; touching the host is not
        assert state() == before, "corral created a home directory on the host"
    finally:
        client.delete(sb, wait=True)
    assert state() == before


def test_snapshots_of_a_sandbox_swapping_dirs_for_links_never_copy_host_files(host_dir):
    """Plain disks copy a running sandbox's files for a snapshot; the sandbox swaps a directory
    for a link to a host directory as fast as it can meanwhile."""
    d, state = host_dir
    (d / "marker2").write_text(SECRET + "\n")
    before = state()
    server = Server(env={"CORRAL_DISK_QUOTA": "off"})
    server.start()
    try:
        client = server.client()
        sb = client.create(CreateSandboxFromSnapshotParams(os_user="root"), timeout=60)
        # Twenty directories, each swapped for a link to the host directory and back in a
        # tight loop (python: no process per step), while ten snapshots copy them.
        exec_ok(sb, "for j in $(seq 20); do mkdir -p /root/w/d$j && for i in 1 2 3; do "
                    "echo own-$i > /root/w/d$j/marker$i; done; done")
        swap = (
            "import os\n"
            "os.chdir('/root/w')\n"
            "while True:\n"
            "    for j in range(1, 21):\n"
            "        os.rename(f'd{j}', f'r{j}'); os.symlink(HOST, f'd{j}')\n"
            "    for j in range(1, 21):\n"
            "        os.unlink(f'd{j}'); os.rename(f'r{j}', f'd{j}')\n"
        ).replace("HOST", repr(str(d)))
        sb.fs.upload_file(swap.encode(), "/root/swap.py")
        sb.process.create_session("swap")
        sb.process.execute_session_command("swap", SessionExecuteRequest(
            command="python3 /root/swap.py", run_async=True))
        names = []
        for i in range(10):
            name = f"swap-{uuid.uuid4().hex[:8]}"
            sb._experimental_create_snapshot(name)
            names.append(name)
        layers = server.data_dir / "commits" / "layers"
        own, leaked = 0, []
        for root, dirs, files in os.walk(layers):  # never follows links
            for f in files:
                p = Path(root) / f
                if p.is_symlink() or not p.is_file():
                    continue
                body = p.read_bytes()
                own += body.startswith(b"own-")
                if SECRET.encode() in body:
                    leaked.append(str(p))
        assert own > 0, "positive control: the sandbox's own files are in the snapshots"
        assert leaked == [], leaked
        assert state() == before
        client.delete(sb, wait=True)
        for name in names:
            client.snapshot.delete(client.snapshot.get(name))
    finally:
        assert server.finish() == ([], [], [], [])
    assert state() == before
