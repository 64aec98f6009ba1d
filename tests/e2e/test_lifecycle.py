"""Stop, start, archive, recover, labels, timers, resize, and surviving the server."""

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, Resources

from conftest import CGROUP_ROOT, Server, host_processes_with


def wait_for(predicate, timeout=10.0, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_stop_ends_processes_and_start_keeps_files(server, daytona):
    sb = daytona.create()
    try:
        sb.process.exec("echo kept > /home/daytona/file.txt; sleep 444.4 >/dev/null 2>&1 &")
        # Looked for again briefly: a process caught mid-execve can show an empty cmdline.
        assert wait_for(lambda: host_processes_with("sleep 444.4"), 5)
        t = time.time()
        sb.stop()
        stop_s = time.time() - t
        assert sb.state == "stopped"
        assert daytona.get(sb.id).state == "stopped"
        assert host_processes_with("sleep 444.4") == []
        assert not [c for c in server.cgroups() if sb.id in c], "a stopped sandbox keeps no cgroup"
        with pytest.raises(DaytonaError):
            sb.process.exec("true")
        t = time.time()
        sb.start()
        start_s = time.time() - t
        assert sb.state == "started"
        assert sb.process.exec("cat /home/daytona/file.txt").result == "kept\n"
        print(f"stop {stop_s*1000:.1f} ms, start {start_s*1000:.1f} ms")
    finally:
        daytona.delete(sb)


def test_archive_frees_the_live_copy_and_start_restores_it(server, daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(os_user="root"))
    try:
        sb.process.exec("mkdir -p /root/data && head -c 2000000 /dev/urandom > /root/data/blob && "
                        "sha256sum /root/data/blob > /root/sum && rm /etc/issue && "
                        "mkdir -p /opt/x && echo hi > /opt/x/y && ln -s /opt/x/y /root/link")
        want = sb.process.exec("cat /root/sum").result
        sb.stop()
        t = time.time()
        sb.archive()
        archive_s = time.time() - t
        assert daytona.get(sb.id).state == "archived"
        assert not (server.data_dir / "sandboxes" / sb.id).exists()
        assert (server.data_dir / "archives" / f"{sb.id}.tar.zst").is_file()
        t = time.time()
        sb.start()
        restore_s = time.time() - t
        assert sb.state == "started"
        assert sb.process.exec("sha256sum /root/data/blob").result == want
        assert sb.process.exec("test -e /etc/issue; echo $?").result == "1\n", "a deletion survives the archive"
        assert sb.process.exec("cat /root/link").result == "hi\n"
        assert not (server.data_dir / "archives" / f"{sb.id}.tar.zst").exists()
        print(f"archive {archive_s*1000:.1f} ms, restore+start {restore_s*1000:.1f} ms (2 MB of files)")
    finally:
        daytona.delete(sb)


def test_archive_needs_a_stopped_sandbox(sandbox):
    with pytest.raises(DaytonaError):
        sandbox.archive()


def test_delete_from_any_state(daytona, server):
    a = daytona.create()
    a.stop()
    daytona.delete(a, wait=True)
    b = daytona.create()
    b.stop()
    b.archive()
    daytona.delete(b, wait=True)
    assert not (server.data_dir / "archives" / f"{b.id}.tar.zst").exists()
    for sb in (a, b):
        assert server.request("GET", f"/api/sandbox/{sb.id}")[0] == 404


def test_labels_are_replaced(sandbox, daytona):
    assert sandbox.set_labels({"x": "1"}) == {"x": "1"}
    assert daytona.get(sandbox.id).labels == {"x": "1"}


def test_interval_setters(sandbox, daytona):
    sandbox.set_autostop_interval(0)
    sandbox.set_auto_archive_interval(60)
    sandbox.set_auto_delete_interval(-1)
    got = daytona.get(sandbox.id)
    assert (got.auto_stop_interval, got.auto_archive_interval, got.auto_delete_interval) == (0, 60, -1)
    sandbox.set_autostop_interval(30)
    assert daytona.get(sandbox.id).auto_stop_interval == 30


def test_resize_changes_cgroup_limits(server, daytona):
    sb = daytona.create()
    try:
        sb.resize(Resources(cpu=2, memory=2))
        assert (sb.cpu, sb.memory) == (2, 2)
        group = CGROUP_ROOT / "cpu" / server.cgroup_parent / sb.id
        if group.exists():  # cgroup v1 (these machines)
            assert (group / "cpu.cfs_quota_us").read_text().strip() == "200000"
            mem = CGROUP_ROOT / "memory" / server.cgroup_parent / sb.id / "memory.limit_in_bytes"
            assert mem.read_text().strip() == str(2 << 30)
        with pytest.raises(DaytonaError):
            sb.resize(Resources(disk=5))  # disk needs a stopped sandbox
        sb.stop()
        sb.resize(Resources(disk=5))
        assert sb.disk == 5
        sb.start()
        assert daytona.get(sb.id).cpu == 2
    finally:
        daytona.delete(sb)


# --- timers and crashes: servers of their own, with one lifecycle "minute" = 1 s --------

FAST = {"CORRAL_LIFECYCLE_MINUTE_MS": "1000", "CORRAL_RECONCILE_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def fast_server():
    s = Server(env=FAST)
    s.start()
    yield s
    assert s.finish() == ([], [], [], [])


def test_auto_stop_after_idle_and_activity_keeps_it_running(fast_server):
    d = fast_server.client()
    idle = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    busy = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    deadline = time.time() + 2.5
    while time.time() < deadline:
        busy.process.exec("true")
        time.sleep(0.2)
    assert d.get(idle.id).state == "stopped"
    assert d.get(busy.id).state == "started"
    d.delete(idle)
    d.delete(busy)


def test_auto_delete_zero_deletes_on_stop(fast_server):
    d = fast_server.client()
    sb = d.create()
    sb.set_auto_delete_interval(0)
    sb.stop()
    assert fast_server.request("GET", f"/api/sandbox/{sb.id}")[0] == 404


def test_auto_archive_and_auto_delete_after_stopped(fast_server):
    d = fast_server.client()
    a = d.create()
    a.set_auto_archive_interval(1)
    a.stop()
    assert wait_for(lambda: d.get(a.id).state == "archived", 5)
    b = d.create()
    b.set_auto_delete_interval(1)
    b.stop()
    assert wait_for(lambda: fast_server.request("GET", f"/api/sandbox/{b.id}")[0] == 404, 5)
    d.delete(a)


def test_dead_init_is_reported_and_recover_starts_it_again(fast_server):
    d = fast_server.client()
    sb = d.create()
    sb.process.exec("echo still-here > /home/daytona/f")
    before = set(fast_server.sandbox_inits())
    victim = [p for p in before if Path(f"/proc/{p}/cgroup").read_text().find(sb.id) >= 0]
    assert len(victim) == 1
    os.kill(victim[0], signal.SIGKILL)
    assert wait_for(lambda: d.get(sb.id).state == "error", 5)
    assert "exited" in (d.get(sb.id).error_reason or "")
    sb.refresh_data()
    sb.recover()
    assert sb.state == "started"
    assert sb.process.exec("cat /home/daytona/f").result == "still-here\n"
    d.delete(sb)


def test_kill_9_of_the_server_keeps_sandboxes_and_restart_adopts_them():
    s = Server()
    s.start()
    try:
        d = s.client()
        kept = d.create()
        kept.process.exec("echo data > /home/daytona/d; sleep 555.5 >/dev/null 2>&1 &")
        gone = d.create()
        inits = s.sandbox_inits()
        assert len(inits) == 2
        s.crash()
        # Everything still runs without the server.
        assert all(Path(f"/proc/{p}").exists() for p in inits)
        assert host_processes_with("sleep 555.5")
        # Meanwhile `gone` is deleted from the records only (as if its delete was lost):
        # the restarted server must remove its leftovers.
        db = sqlite3.connect(s.data_dir / "corral.db")
        db.execute("DELETE FROM sandboxes WHERE id = ?", (gone.id,))
        db.commit()
        db.close()
        t = time.time()
        s.start()
        restart_s = time.time() - t
        d = s.client()
        again = d.get(kept.id)
        assert again.state == "started"
        assert again.process.exec("cat /home/daytona/d").result == "data\n"
        assert again.process.exec("ps -eo args").result.count("sleep 555.5") == 1
        assert not (s.data_dir / "sandboxes" / gone.id).exists()
        assert not [c for c in s.cgroups() if gone.id in c]
        assert len(s.sandbox_inits()) == 1
        # The adopted sandbox can be deleted cleanly (delete answers `destroying` at once; the
        # teardown follows in the background).
        d.delete(again)
        assert wait_for(lambda: host_processes_with("sleep 555.5") == [], 10)
        print(f"restart to ready {restart_s*1000:.0f} ms")
    finally:
        assert s.finish() == ([], [], [], [])


def test_sigterm_exits_0_and_leaves_sandboxes_running():
    s = Server()
    s.start()
    try:
        d = s.client()
        sb = d.create()
        inits = s.sandbox_inits()
        assert s.stop() == 0
        assert all(Path(f"/proc/{p}").exists() for p in inits)
        s.start()
        assert s.client().get(sb.id).process.exec("echo back").result == "back\n"
    finally:
        assert s.finish() == ([], [], [], [])


def test_sigterm_finishes_in_flight_requests():
    import threading

    s = Server()
    s.start()
    try:
        sb = s.client().create()
        out = {}

        def slow_exec():
            out["r"] = sb.process.exec("sleep 1.5; echo done")

        t = threading.Thread(target=slow_exec)
        t.start()
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        t.join(timeout=10)
        assert out["r"].result == "done\n"
        assert s.proc.wait(timeout=10) == 0
        s.start()
    finally:
        assert s.finish() == ([], [], [], [])
