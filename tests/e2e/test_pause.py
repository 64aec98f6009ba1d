"""Pause and resume with the cgroup freezer, wake on request (toolbox and previews),
auto-pause, the time to live (TTL), with the real SDKs (sync and async)."""

import asyncio
import concurrent.futures
import time
from pathlib import Path

import pytest
from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig, DaytonaError

from conftest import CGROUP_ROOT, Server, host_processes_with
from test_previews import fetch, start_app

FAST = {"CORRAL_LIFECYCLE_MINUTE_MS": "1000", "CORRAL_RECONCILE_SECONDS": "0.2"}

# Counts in memory (never on disk) and writes its count out: after a resume it must go on
# from where it was, in the same process.
COUNTER = "import itertools, os, time\n" \
          "for i in itertools.count():\n" \
          "    open('/tmp/count.tmp', 'w').write(f'{os.getpid()} {i}'); os.replace('/tmp/count.tmp', '/tmp/count')\n" \
          "    time.sleep(0.01)\n"


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def group(server, sandbox_id, controller):
    """The sandbox's cgroup dir for a v1 controller, or its v2 group."""
    v1 = CGROUP_ROOT / controller / server.cgroup_parent / sandbox_id
    return v1 if v1.is_dir() else CGROUP_ROOT / server.cgroup_parent / sandbox_id


def cpu_ns(server, sandbox_id):
    g = group(server, sandbox_id, "cpuacct")
    if (g / "cpuacct.usage").exists():
        return int((g / "cpuacct.usage").read_text())
    stat = dict(line.split() for line in (g / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) * 1000


def memory_bytes(server, sandbox_id):
    g = group(server, sandbox_id, "memory")
    f = g / "memory.usage_in_bytes"
    return int(f.read_text()) if f.exists() else int((g / "memory.current").read_text())


def frozen(server, sandbox_id):
    g = group(server, sandbox_id, "freezer")
    if (g / "freezer.state").exists():
        return (g / "freezer.state").read_text().strip() == "FROZEN"
    return "frozen 1" in (g / "cgroup.events").read_text()


def count(sb):
    pid, n = sb.process.exec("cat /tmp/count").result.split()
    return int(pid), int(n)


def start_counter(sb):
    sb.fs.upload_file(COUNTER.encode(), "/tmp/counter.py")
    sb.process.exec("nohup python3 /tmp/counter.py >/dev/null 2>&1 &")
    sb.process.exec("nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &")
    assert wait_for(lambda: sb.process.exec("test -s /tmp/count").exit_code == 0)


def test_pause_freezes_processes_and_start_resumes_the_same_ones(server, daytona):
    sb = daytona.create()
    try:
        start_counter(sb)
        pid, before = count(sb)
        t = time.time()
        sb.pause()
        pause_s = time.time() - t
        assert sb.state == "paused"
        assert daytona.get(sb.id).state == "paused"
        assert frozen(server, sb.id)
        # No CPU while paused, even with a busy loop inside; memory is kept.
        cpu0, mem0 = cpu_ns(server, sb.id), memory_bytes(server, sb.id)
        time.sleep(0.5)
        assert cpu_ns(server, sb.id) == cpu0, "a paused sandbox used CPU"
        assert memory_bytes(server, sb.id) >= mem0 * 0.9 > 0
        # Its processes are still there on the host.
        assert host_processes_with("/tmp/counter.py")
        t = time.time()
        sb.start()
        resume_s = time.time() - t
        assert sb.state == "started"
        assert not frozen(server, sb.id)
        time.sleep(0.2)
        pid2, after = count(sb)
        assert pid2 == pid, "the same process runs on"
        assert after > before, "its in-memory count went on"
        # Pausing twice is fine; a stop of a paused sandbox ends its processes.
        sb.pause()
        sb.pause()
        sb.stop()
        assert sb.state == "stopped"
        assert host_processes_with("/tmp/counter.py") == []
        with pytest.raises(DaytonaError, match="only a started sandbox can be paused"):
            sb.pause()
        print(f"\npause {pause_s * 1000:.1f} ms, resume {resume_s * 1000:.1f} ms (through the SDK)")
    finally:
        daytona.delete(sb)


def test_a_toolbox_call_wakes_a_paused_sandbox(server, daytona):
    sb = daytona.create()
    try:
        start_counter(sb)
        sb.pause()
        # No start: the exec itself resumes it, and is answered.
        t = time.time()
        r = sb.process.exec("echo woke")
        wake_s = time.time() - t
        assert r.exit_code == 0 and r.result.strip() == "woke"
        assert daytona.get(sb.id).state == "started"
        # Many calls at once on a paused sandbox: one resume, every call answered.
        sb.pause()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: sb.process.exec(f"echo {i}").result.strip(), range(16)))
        assert results == [str(i) for i in range(16)]
        assert daytona.get(sb.id).state == "started"
        print(f"\nexec on a paused sandbox: {wake_s * 1000:.1f} ms")
    finally:
        daytona.delete(sb)


def test_a_stopped_sandbox_wakes_only_when_it_opts_in(server, daytona):
    sb = daytona.create()
    other = daytona.create(CreateSandboxFromSnapshotParams(labels={"corral.dev/wake-on-request": "true"}))
    try:
        sb.stop()
        with pytest.raises(DaytonaError, match="wake-on-request"):
            sb.process.exec("true")
        assert daytona.get(sb.id).state == "stopped"
        other.stop()
        assert other.process.exec("echo up").result.strip() == "up"
        assert daytona.get(other.id).state == "started"
    finally:
        daytona.delete(sb)
        daytona.delete(other)


def test_a_preview_wakes_a_paused_sandbox_and_starts_a_stopped_one(server, daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(public=True))
    try:
        start_app(sb)
        link = sb.get_preview_link(8080)
        sb.pause()
        status, body = fetch(server, link.url)
        assert status == 200 and b"from the sandbox" in body
        assert daytona.get(sb.id).state == "started"
        # Stopped: previews start it by default (the app must then be started again by
        # whoever owns it: a fresh start runs no process of the old one).
        sb.stop()
        status, _ = fetch(server, link.url)
        assert status == 502
        assert daytona.get(sb.id).state == "started"
    finally:
        daytona.delete(sb)


def test_a_paused_sandbox_survives_a_server_restart_still_paused():
    srv = Server()
    srv.start()
    try:
        d = srv.client()
        sb = d.create()
        start_counter(sb)
        pid, before = count(sb)
        sb.pause()
        srv.crash()
        srv.start()
        d = srv.client()
        assert d.get(sb.id).state == "paused"
        assert frozen(srv, sb.id)
        # The toolbox call wakes it; the same process counts on.
        time.sleep(0.1)
        again = d.get(sb.id)
        pid2, after = count(again)
        assert (pid2, after >= before) == (pid, True)
        assert d.get(sb.id).state == "started"
        assert not frozen(srv, sb.id)
        # Pause, then a graceful stop of the server: still paused after.
        again.pause()
        srv.stop()
        srv.start()
        d = srv.client()
        assert d.get(sb.id).state == "paused"
        d.delete(d.get(sb.id))
    finally:
        assert srv.finish() == ([], [], [], [])


def test_auto_pause_and_ttl():
    srv = Server(env=FAST)
    srv.start()
    try:
        d = srv.client()
        sb = d.create(CreateSandboxFromSnapshotParams(auto_pause_interval=1, auto_stop_interval=0))
        assert sb.auto_pause_interval == 1
        assert wait_for(lambda: d.get(sb.id).state == "paused", 10)
        assert frozen(srv, sb.id)
        assert sb.process.exec("echo back").result.strip() == "back"
        sb.set_auto_pause_interval(0)
        assert d.get(sb.id).auto_pause_interval == 0
        with pytest.raises(DaytonaError):
            sb.set_auto_pause_interval(-1)

        # TTL: deleted whatever its state (here: paused, then stopped).
        short = d.create(CreateSandboxFromSnapshotParams(ttl_minutes=5, auto_stop_interval=0))
        assert short.auto_destroy_at is not None
        short.pause()
        kept = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
        assert kept.auto_destroy_at is None
        kept.set_ttl(4)
        assert d.get(kept.id).auto_destroy_at is not None
        kept.stop()
        cleared = d.create(CreateSandboxFromSnapshotParams(ttl_minutes=2, auto_stop_interval=0))
        cleared.set_ttl(0)
        assert d.get(cleared.id).auto_destroy_at is None
        ids = {s.id for s in d.list()}
        assert {short.id, kept.id, cleared.id} <= ids

        def gone(i):
            try:
                d.get(i)
                return False
            except DaytonaError:
                return True
        assert wait_for(lambda: gone(short.id) and gone(kept.id), 15)
        assert not gone(cleared.id) and not gone(sb.id)
        with pytest.raises(DaytonaError):
            cleared.set_ttl(-1)
        for s in (sb, cleared):
            d.delete(s)
    finally:
        assert srv.finish() == ([], [], [], [])


def test_async_sdk_pause_resume_ttl(server):
    async def run():
        async with AsyncDaytona(DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")) as d:
            sb = await d.create()
            try:
                await sb.pause()
                assert sb.state == "paused"
                r = await sb.process.exec("echo async")
                assert r.result.strip() == "async"
                await sb.pause()
                await sb.start()
                assert sb.state == "started"
                await sb.set_ttl(60)
                await sb.refresh_data()
                assert sb.auto_destroy_at is not None
                await sb.set_auto_pause_interval(30)
                await sb.refresh_data()
                assert sb.auto_pause_interval == 30
            finally:
                await d.delete(sb)
    asyncio.run(run())


def test_pause_refused_where_it_cannot_apply(server, daytona):
    sb = daytona.create()
    try:
        sb.stop()
        with pytest.raises(DaytonaError, match="only a started sandbox can be paused"):
            sb.pause()
        status, body = server.request("POST", "/api/sandbox/no-such-sandbox/pause")
        assert status == 404, body
        status, body = server.request("POST", f"/api/sandbox/{sb.id}/ttl/abc")
        assert status == 400 and "minutes" in body["message"], body
    finally:
        daytona.delete(sb)


def test_ssh_to_a_paused_sandbox_resumes_it(server, daytona):
    from test_ssh import run_ssh

    sb = daytona.create()
    try:
        access = sb.create_ssh_access()
        sb.pause()
        r = run_ssh(access, "echo over-ssh")
        assert r.returncode == 0 and r.stdout.strip() == b"over-ssh", r
        assert daytona.get(sb.id).state == "started"
    finally:
        daytona.delete(sb)
