"""Warm pools through the SDK's `daytona.warm_pool` (sync and async): CRUD, validation,
claims personalised with the request, no state leaking from one claim to the next, shrink and
delete tearing pooled sandboxes down, and pools surviving a restart."""

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig
# The SDK's warm_pool service passes the generated client's errors through unwrapped.
from daytona_api_client.exceptions import BadRequestException, ConflictException, NotFoundException

from conftest import Server


def metric(server, name):
    _, text = server.request("GET", "/metrics", auth=False)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def wait_current(d, pool_id, n, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pools = [p for p in d.warm_pool.list() if p.id == pool_id]
        if pools and pools[0].current_size == n:
            return pools[0]
        time.sleep(0.1)
    raise AssertionError(f"pool {pool_id} did not reach {n}")


@pytest.fixture(scope="module")
def srv():
    s = Server()
    s.start()
    yield s
    assert s.finish() == ([], [], [], [])


def test_claim_is_personalised_and_nothing_leaks(srv):
    d = srv.client()
    pool = d.warm_pool.create("host", pool=1)
    assert (pool.snapshot, pool.pool, pool.target, pool.os_user) == ("host", 1, "us", "daytona")
    assert (pool.cpu, pool.mem, pool.disk, pool.env) == (1, 1, 3, {})
    try:
        wait_current(d, pool.id, 1)
        before = metric(srv, 'corral_sandbox_create_total{path="pool"}')
        first = d.create(CreateSandboxFromSnapshotParams(
            name="warm-a", labels={"who": "a"}, auto_stop_interval=7, public=True,
            network_block_all=True))
        assert metric(srv, 'corral_sandbox_create_total{path="pool"}') == before + 1
        assert first.name == "warm-a" and first.labels["who"] == "a"
        assert first.auto_stop_interval == 7 and first.public and first.network_block_all
        assert first.process.exec("hostname; id -un").result.split() == [first.id, "daytona"]
        # The policy is applied: no egress (bounded by the exec timeout either way).
        assert first.process.exec(
            "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 2)\" "
            "2>/dev/null && echo open || echo blocked", timeout=10).result.strip() == "blocked"
        # Leave files, env and a background process behind; the first sees them (control).
        first.process.exec("echo mine > /home/daytona/secret && echo mine > /tmp/secret "
                           "&& echo 'export LEAK=1' >> /home/daytona/.bashrc")
        first.process.create_session("s")
        first.process.execute_session_command("s", _cmd("export LEAK2=1"))
        first.process.exec("nohup sleep 31337 >/dev/null 2>&1 &")
        probe = ("cat /home/daytona/secret /tmp/secret 2>/dev/null; "
                 "cat /home/daytona/.bashrc 2>/dev/null | grep -c LEAK; pgrep -c -f 'sleep 31337'")
        assert first.process.exec(probe).result.split() == ["mine", "mine", "1", "1"]
        assert first.process.execute_session_command("s", _cmd("echo $LEAK2")).output.strip() == "1"
        d.delete(first, wait=True)
        wait_current(d, pool.id, 1)
        second = d.create(CreateSandboxFromSnapshotParams(labels={"who": "b"}))
        assert metric(srv, 'corral_sandbox_create_total{path="pool"}') == before + 2
        assert second.id != first.id
        assert second.process.exec(probe).result.split() == ["0", "0"]
        second.process.create_session("s")
        assert second.process.execute_session_command("s", _cmd("echo x$LEAK2")).output.strip() == "x"
        # Egress is open again for a claim without a policy.
        assert not second.network_block_all
        d.delete(second, wait=True)
    finally:
        d.warm_pool.delete(pool.id)


def _cmd(command):
    from daytona import SessionExecuteRequest
    return SessionExecuteRequest(command=command)


def test_other_shapes_and_env_take_the_cold_path(srv):
    d = srv.client()
    pool = d.warm_pool.create("host", pool=1)
    try:
        wait_current(d, pool.id, 1)
        cold = metric(srv, 'corral_sandbox_create_total{path="cold"}')
        sb = d.create(CreateSandboxFromSnapshotParams(env_vars={"X": "1"}))
        assert sb.process.exec("echo $X").result.strip() == "1"
        assert metric(srv, 'corral_sandbox_create_total{path="cold"}') == cold + 1
        d.delete(sb, wait=True)
    finally:
        d.warm_pool.delete(pool.id)


def test_resize_and_delete_tear_sandboxes_down(srv):
    d = srv.client()
    inits = len(srv.sandbox_inits())
    pool = d.warm_pool.create("host", pool=2)
    wait_current(d, pool.id, 2)
    assert len(srv.sandbox_inits()) == inits + 2
    up = d.warm_pool.update(pool.id, pool=1)
    assert up.pool == 1 and up.current_size == 1
    assert len(srv.sandbox_inits()) == inits + 1
    d.warm_pool.delete(pool.id)
    assert all(p.id != pool.id for p in d.warm_pool.list())
    assert len(srv.sandbox_inits()) == inits
    with pytest.raises(NotFoundException):
        d.warm_pool.delete(pool.id)
    with pytest.raises(NotFoundException):
        d.warm_pool.update(pool.id, pool=3)


def test_validation(srv):
    d = srv.client()
    with pytest.raises(BadRequestException, match="snapshot: Snapshot no-such-snapshot not found"):
        d.warm_pool.create("no-such-snapshot", pool=1)
    with pytest.raises(BadRequestException, match="target"):
        d.warm_pool.create("host", pool=1, target="eu")
    for body, field in [({"snapshot": "host", "pool": 0}, "pool"),
                        ({"snapshot": "host", "pool": 1000}, "pool"),
                        ({"snapshot": "host", "pool": "x"}, "pool"),
                        ({"snapshot": "host", "pool": 1, "cpu": 0}, "cpu"),
                        ({"snapshot": "host", "pool": 1, "nope": 1}, "nope")]:
        status, err = srv.request("POST", "/api/warm-pools", body)
        assert status == 400 and field in err["message"], (body, err)
    pool = d.warm_pool.create("host", pool=1)
    try:
        with pytest.raises(ConflictException):
            d.warm_pool.create("host", pool=1)  # the same snapshot and shape
    finally:
        d.warm_pool.delete(pool.id)


def test_async_sdk(srv):
    async def go():
        async with AsyncDaytona(DaytonaConfig(api_key=srv.key, api_url=f"{srv.url}/api")) as d:
            pool = await d.warm_pool.create("host", pool=1)
            try:
                assert any(p.id == pool.id for p in await d.warm_pool.list())
                up = await d.warm_pool.update(pool.id, pool=2)
                assert up.pool == 2
            finally:
                await d.warm_pool.delete(pool.id)
            assert all(p.id != pool.id for p in await d.warm_pool.list())
    asyncio.run(asyncio.wait_for(go(), 60))


def test_pools_survive_a_restart():
    s = Server()
    s.start()
    try:
        d = s.client()
        pool = d.warm_pool.create("host", pool=1)
        wait_current(d, pool.id, 1)
        s.stop()
        s.start()
        d = s.client()
        back = wait_current(d, pool.id, 1)
        assert back.pool == 1
        sb = d.create()
        assert sb.process.exec("echo ok").result.strip() == "ok"
        d.delete(sb, wait=True)
        d.warm_pool.delete(pool.id)
    finally:
        assert s.finish() == ([], [], [], [])


def test_typescript_sdk_warm_pool(srv):
    ts = Path(__file__).resolve().parents[1] / "ts"
    if shutil.which("node") is None or not (ts / "node_modules/@daytonaio/sdk").exists():
        msg = "node or tests/ts/node_modules missing (scripts/test.sh installs them with npm ci)"
        if os.environ.get("CORRAL_E2E_STRICT"):
            pytest.fail(msg)
        pytest.skip(msg)
    env = dict(os.environ, CORRAL_API_URL=f"{srv.url}/api", CORRAL_API_KEY=srv.key)
    p = subprocess.run(["node", "--test", "--test-reporter=tap", "warm_pools.test.mjs"], cwd=ts, env=env,
                       capture_output=True, text=True, timeout=120)
    report = p.stdout + p.stderr
    assert p.returncode == 0, report
    assert "# fail 0" in report and "# pass 1" in report, report
