"""A second server must not touch the first one's sandboxes: it refuses to start on any host
resource (data dir, cgroup parent, interface prefix, overlapping network) another holds."""

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server

# A refused start takes milliseconds; a server that did start gets this long to do damage
# (its start-up cleanup runs before it is ready) before the test stops it.
START_WAIT = 15


@pytest.fixture(scope="module")
def first():
    """Server A with one running sandbox."""
    a = Server()
    a.start()
    sb = a.client().create()
    sb.process.exec("sleep 4242.5 >/dev/null 2>&1 &")
    a.sandbox = sb
    yield a
    assert a.finish() == ([], [], [], []), "A left something behind"


def attempt(b: Server):
    """Runs `corral serve` for B; returns (exit code or None if it started, its output)."""
    argv, env = b.command()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    b.proc = proc
    try:
        out, _ = proc.communicate(timeout=START_WAIT)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        # It serves: stop it as a user would (SIGTERM), which is when a server removes its
        # nftables table.
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        return None, out.decode(errors="replace")


def discard(b: Server, a: Server):
    """Removes B's scratch files; what B shares with A stays."""
    if b.proc and b.proc.poll() is None:
        b.proc.kill()
        b.proc.wait(timeout=10)
    if b.data_dir != a.data_dir:
        subprocess.run(["umount", "-l", str(b.data_dir / "disk")], stderr=subprocess.DEVNULL)
        shutil.rmtree(b.data_dir, ignore_errors=True)
    if b.cgroup_parent != a.cgroup_parent:
        b.remove_cgroup_parent()
    b.log.close()
    os.unlink(b.log.name)


def a_is_intact(a: Server, inits):
    """A's sandbox runs with the same init, answers exec, and A's table is in place."""
    assert a.sandbox_inits() == inits, "A's sandbox was killed"
    assert a.sandbox.process.exec("echo alive").result == "alive\n"
    assert "4242.5" in a.sandbox.process.exec("ps -eo args").result
    assert a.nft_table(), "A's nftables table is gone"


def use_data_dir(b: Server, d: Path):
    b.data_dir.rmdir()
    b.data_dir = d


def overlapping(cidr: str) -> str:
    """A /24 inside `cidr` (overlaps it, and nothing another server could hold)."""
    net = ipaddress.ip_network(cidr)
    return str(next(net.subnets(new_prefix=24)))


# What B shares with A, what the refusal must name, and the flag it points to.
CASES = {
    "cgroup-parent": (lambda a, b: setattr(b, "cgroup_parent", a.cgroup_parent),
                      lambda a: f'cgroup parent "{a.cgroup_parent}"', "--cgroup-parent"),
    "net-prefix": (lambda a, b: b.extra_env.update(CORRAL_NET_PREFIX=a.net_prefix),
                   lambda a: f'prefix "{a.net_prefix}"', "--net-prefix"),
    "overlapping-cidr": (lambda a, b: b.extra_env.update(CORRAL_NET_CIDR=overlapping(a.net_cidr)),
                         lambda a: f"overlaps the sandbox network {a.net_cidr}", "--net-cidr"),
    "data-dir": (lambda a, b: use_data_dir(b, a.data_dir),
                 lambda a: f"data dir {a.data_dir} is in use", "--data-dir"),
}


@pytest.mark.parametrize("shared", list(CASES))
def test_second_server_sharing_a_resource_is_refused_and_the_first_keeps_its_sandbox(first, shared):
    a = first
    inits = a.sandbox_inits()
    assert len(inits) == 1
    share, named, flag = CASES[shared]
    b = Server()
    share(a, b)
    b_data_existed = b.data_dir == a.data_dir
    try:
        code, out = attempt(b)
        assert code is not None, f"B started sharing the {shared} with A:\n{out}"
        assert code != 0, out
        assert named(a) in out, out
        assert f"pid {a.proc.pid}" in out and f"127.0.0.1:{a.port}" in out, out
        assert flag in out, out
        a_is_intact(a, inits)
        # B touched nothing of its own either: no database, cgroup parent or table.
        if not b_data_existed:
            assert list(b.data_dir.iterdir()) == []
        if b.cgroup_parent != a.cgroup_parent:
            assert b.cgroups() == [] and not (Path("/sys/fs/cgroup/pids") / b.cgroup_parent).exists()
        if b.extra_env["CORRAL_NET_PREFIX"] != a.net_prefix:
            assert not b.nft_table()
    finally:
        discard(b, a)


def test_second_server_with_its_own_resources_starts_beside_the_first(first):
    """Positive control: the refusals above are about sharing, nothing else."""
    a = first
    inits = a.sandbox_inits()
    b = Server()
    b.start()
    try:
        assert b.client().create().process.exec("echo b").result == "b\n"
        a_is_intact(a, inits)
    finally:
        assert b.finish() == ([], [], [], [])
    a_is_intact(a, inits)


def test_second_server_cannot_remove_the_firsts_nft_table(first):
    """B on A's interface prefix used to start, and its stop deleted A's table."""
    a = first
    inits = a.sandbox_inits()
    b = Server(env={"CORRAL_NET_PREFIX": a.net_prefix})
    try:
        code, out = attempt(b)
        assert code is not None and code != 0, f"B started on A's prefix:\n{out}"
        # Even after B is gone.
        time.sleep(0.5)
        a_is_intact(a, inits)
        status, _ = a.request("GET", "/health", auth=False)
        assert status == 200
    finally:
        discard(b, a)


def test_the_other_way_round_values_are_free_once_the_first_is_gone():
    a = Server()
    a.start()
    b = Server()
    # B takes every value of A's except its data dir and port.
    b.cgroup_parent = a.cgroup_parent
    b.net_prefix, b.net_cidr = a.net_prefix, a.net_cidr
    b.extra_env.update(CORRAL_NET_PREFIX=a.net_prefix, CORRAL_NET_CIDR=a.net_cidr)
    b._chosen = False
    try:
        sb = a.client().create()
        inits = a.sandbox_inits()
        assert a.stop() == 0
        # A stopped, but its sandbox lives on in the cgroup parent and the network slot:
        # B would remove it as a leftover, so B still refuses, naming it.
        code, out = attempt(b)
        assert code is not None and code != 0, f"B started over A's running sandbox:\n{out}"
        assert sb.id in out and str(a.data_dir) in out and "not running" in out, out
        assert a.sandbox_inits() == inits
        # A comes back (its locks were not kept by the sandbox it started) and adopts it.
        a.start()
        d = a.client()
        assert d.get(sb.id).process.exec("echo adopted").result == "adopted\n"
        d.delete(sb, wait=True)
        assert a.stop() == 0
        # Now nothing holds the values: B starts on them and works.
        b.start()
        assert b.client().create().process.exec("echo b").result == "b\n"
        # And A, the other way round, is refused while B runs.
        code, out = attempt(a)
        assert code is not None and code != 0, out
        assert f"pid {b.proc.pid}" in out, out
    finally:
        # Running servers first (a stopped one may need their values to start again).
        leftovers = []
        for s in sorted([a, b], key=lambda s: not (s.proc and s.proc.poll() is None)):
            if not (s.proc and s.proc.poll() is None):
                s.start()
            leftovers.append(s.finish())
    assert leftovers == [([], [], [], [])] * 2
