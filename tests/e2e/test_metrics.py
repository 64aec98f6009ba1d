"""Metrics history with the real SDKs: `GET /api/config` (public, no analytics URL, so the SDK
falls back to corral's route) and `sandbox.get_metrics()` over figures the server sampled
every second: CPU of a burner, memory of an allocation, disk of a written file, network of
datagrams to the sandbox's own gateway; kept across a server restart, gone with the sandbox."""

import asyncio
import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from daytona import AsyncDaytona, DaytonaConfig

from conftest import REPO, Server

TS = REPO / "tests/ts"
MIB = 1 << 20


def wait_for(what, check, timeout=60.0, step=0.5):
    deadline = time.time() + timeout
    while True:
        v = check()
        if v:
            return v
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def raw_series(server, sandbox_id, names, since):
    now = datetime.now(timezone.utc) + timedelta(seconds=5)
    q = "&".join(f"metricNames={n}" for n in names)
    status, body = server.request(
        "GET", f"/api/sandbox/{sandbox_id}/telemetry/metrics?from={quote(since.isoformat())}"
        f"&to={quote(now.isoformat())}&{q}")
    assert status == 200, body
    return {s["metricName"]: s["dataPoints"] for s in body["series"]}


@pytest.fixture(scope="module")
def fast():
    s = Server(env={"CORRAL_METRICS_INTERVAL_SECONDS": "1"})
    s.start()
    yield s
    leftovers = s.finish()
    assert leftovers == ([], [], [], []), f"left behind: {leftovers}"


def test_config_is_public_and_has_no_analytics_url(fast):
    status, body = fast.request("GET", "/api/config", auth=False)
    assert status == 200, body
    assert "analyticsApiUrl" not in body
    assert body["defaultSnapshot"] == "host"
    assert body["proxyToolboxUrl"] == f"{fast.url}/toolbox"
    # The SDK validates the whole model.
    from daytona_api_client import DaytonaConfiguration
    DaytonaConfiguration.from_dict(body)


def test_metrics_history_cpu_memory_disk_network_restart_delete(fast):
    d = fast.client()
    sb = d.create()
    history = fast.data_dir / "metrics" / f"{sb.id}.bin"
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    # A burner for 20 s and 200 MiB touched and held.
    sb.process.exec("nohup timeout 20 sh -c 'while :; do :; done' >/dev/null 2>&1 &")
    sb.process.exec("nohup python3 -c \"import time; b = b'\\x01' * (200 << 20); time.sleep(60)\" "
                    ">/dev/null 2>&1 &")

    def busy():
        m = sb.get_metrics()
        return m if len(m) >= 3 and max(x.cpu_used_pct for x in m) > 0 \
            and max(x.mem_used for x in m) >= 200 * MIB else None
    samples = wait_for("CPU and memory in the history", busy, timeout=30)
    last = samples[-1]
    assert last.cpu_count >= 1
    assert last.mem_total >= 200 * MIB
    assert last.disk_total == sb.disk << 30
    assert all(a.timestamp < b.timestamp for a, b in zip(samples, samples[1:]))
    # Sampled about every second.
    span = (samples[-1].timestamp - samples[0].timestamp).total_seconds()
    assert len(samples) >= 2 and span > 0

    # Disk: a 64 MiB file (synced: btrfs accounts it at its next commit).
    before_disk = max(x.disk_used for x in samples)
    sb.process.exec("head -c 67108864 /dev/urandom > /home/daytona/big && sync")
    wait_for("the written file in disk usage",
             lambda: max(x.disk_used for x in sb.get_metrics()) >= before_disk + 60 * MIB, timeout=60)

    # Network: datagrams to the sandbox's own gateway (the host end of its link; nothing
    # leaves the host).
    tx = "corral.sandbox.network.transmit"
    before_tx = max((p["value"] for p in raw_series(fast, sb.id, [tx], since)[tx]), default=0)
    gw = sb.process.exec("awk '$2 == \"00000000\" { print $3 }' /proc/net/route").result.strip()
    assert len(gw) == 8, gw
    gateway = ".".join(str(int(gw[i:i + 2], 16)) for i in (6, 4, 2, 0))
    sent = sb.process.exec(
        "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"[s.sendto(bytes(1000), ('{gateway}', 9)) for _ in range(10)]\"", timeout=20)
    assert sent.exit_code == 0, sent.result
    wait_for("datagrams in the network counters",
             lambda: max(p["value"] for p in raw_series(fast, sb.id, [tx], since)[tx]) >= before_tx + 5000,
             timeout=20)

    # The async SDK sees the same history.
    async def from_async():
        async with AsyncDaytona(DaytonaConfig(api_key=fast.key, api_url=f"{fast.url}/api")) as ad:
            asb = await ad.get(sb.id)
            return await asb.get_metrics()
    async_samples = asyncio.run(from_async())
    assert max(x.cpu_used_pct for x in async_samples) > 0
    assert max(x.mem_used for x in async_samples) >= 200 * MIB

    # A server restart keeps the history.
    kept = sb.get_metrics()
    fast.stop()
    fast.start()
    d = fast.client()
    sb = d.get(sb.id)
    after = sb.get_metrics()
    old = {x.timestamp for x in kept}
    assert old & {x.timestamp for x in after}, "history lost across the restart"
    assert max(x.mem_used for x in after) >= 200 * MIB
    # ...and sampling goes on.
    wait_for("new samples after the restart", lambda: sb.get_metrics()[-1].timestamp > max(old), timeout=15)

    # Deleted: the history file goes with it (it existed: the positive control).
    assert history.exists()
    d.delete(sb, wait=True)
    assert not history.exists()


def test_typescript_sdk_get_metrics(fast):
    if shutil.which("node") is None or not (TS / "node_modules/@daytonaio/sdk").exists():
        msg = "node or tests/ts/node_modules missing (scripts/test.sh installs them with npm ci)"
        if os.environ.get("CORRAL_E2E_STRICT"):
            pytest.fail(msg)
        pytest.skip(msg)
    env = dict(os.environ, CORRAL_API_URL=f"{fast.url}/api", CORRAL_API_KEY=fast.key)
    p = subprocess.run(["node", "--test", "--test-reporter=tap", "metrics.test.mjs"], cwd=TS, env=env,
                       capture_output=True, text=True, timeout=120)
    report = p.stdout + p.stderr
    assert p.returncode == 0, report
    assert "# fail 0" in report and "# pass 1" in report, report
