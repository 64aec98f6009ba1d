"""The warm pool: creates of the default shape claim a started sandbox; others start cold;
nothing of a claimed sandbox returns to the pool; pooled sandboxes never outlive the server."""

import re
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams

from conftest import Server


def metric(server, name):
    _, text = server.request("GET", "/metrics", auth=False)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_pool(server, n, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric(server, "corral_pool_ready") >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the pool did not fill")


@pytest.fixture(scope="module")
def pooled():
    s = Server(env={"CORRAL_POOL_SIZE": "2"})
    s.start()
    yield s
    assert s.finish() == ([], [], [], [])


def test_default_creates_claim_from_the_pool(pooled):
    wait_pool(pooled, 2)
    d = pooled.client()
    before = metric(pooled, 'corral_sandbox_create_total{path="pool"}')
    sb = d.create(CreateSandboxFromSnapshotParams(labels={"who": "a"}))
    assert metric(pooled, 'corral_sandbox_create_total{path="pool"}') == before + 1
    assert sb.state == "started" and sb.labels["who"] == "a"
    assert sb.process.exec("hostname; id -un").result.split() == [sb.id, "daytona"]
    assert sb.process.code_run("print(6*7)").result.strip() == "42"
    sb.process.exec("echo mine > /home/daytona/secret")
    d.delete(sb)
    # The next claimed sandbox is another one, with nothing of the first.
    wait_pool(pooled, 2)
    other = d.create()
    assert other.id != sb.id
    assert other.process.exec("ls -A /home/daytona").result == ""
    d.delete(other)


def test_other_shapes_start_cold_and_get_their_settings(pooled):
    d = pooled.client()
    before = metric(pooled, 'corral_sandbox_create_total{path="cold"}')
    sb = d.create(CreateSandboxFromSnapshotParams(env_vars={"X": "1"}, os_user="root"))
    assert metric(pooled, 'corral_sandbox_create_total{path="cold"}') == before + 1
    assert sb.process.exec("echo $X; id -u").result.split() == ["1", "0"]
    d.delete(sb)


def test_named_pooled_sandbox(pooled):
    wait_pool(pooled, 1)
    d = pooled.client()
    sb = d.create(CreateSandboxFromSnapshotParams(name="from-pool"))
    assert d.get("from-pool").id == sb.id
    with pytest.raises(Exception):
        d.create(CreateSandboxFromSnapshotParams(name="from-pool"))
    d.delete(sb)


def test_crash_with_a_full_pool_leaves_nothing_after_restart():
    s = Server(env={"CORRAL_POOL_SIZE": "2"})
    s.start()
    try:
        wait_pool(s, 2)
        assert len(s.sandbox_inits()) == 2
        s.crash()
        s.start()
        wait_pool(s, 2)
        # The two orphans were removed; two fresh pooled sandboxes run.
        assert len(s.sandbox_inits()) == 2
    finally:
        assert s.finish() == ([], [], [], [])
