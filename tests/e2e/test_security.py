"""Attempts to break out of a sandbox, each of which must fail. Run as the sandbox's root
user where that makes the attempt stronger."""

import os
import signal
import stat
import time
from pathlib import Path

import pytest
from conftest import Server
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, FileDownloadRequest

# Python snippets run inside the sandbox; each prints the errno name or "ok".
SYSCALL = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
"""


@pytest.fixture(scope="module")
def root_sb(daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(os_user="root"))
    yield sb
    daytona.delete(sb)


def py(sb, code):
    r = sb.process.code_run(SYSCALL + code)
    assert r.exit_code == 0, r.result
    return r.result.strip()


def test_capabilities_are_cut_to_the_default_set(root_sb):
    status = root_sb.process.exec("grep -E '^Cap(Bnd|Eff|Amb)' /proc/self/status").result
    caps = {line.split(":")[0]: int(line.split(":")[1], 16) for line in status.splitlines()}
    kept = sum(1 << c for c in [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31])
    assert caps["CapBnd"] == kept
    assert caps["CapEff"] & ~kept == 0
    assert caps["CapAmb"] == 0
    for cap in [2, 12, 13, 16, 17, 19, 21, 25, 27, 29, 34, 38, 39]:
        assert not caps["CapBnd"] & (1 << cap), cap


def test_no_new_privs_and_seccomp_are_on(sandbox):
    status = sandbox.process.exec("grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status").result
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status


def test_mount_and_namespace_creation_fail(root_sb):
    r = root_sb.process.exec("mount -t tmpfs x /mnt; echo rc=$?")
    assert "rc=0" not in r.result
    assert py(root_sb, "print(call(165, 0, 0, 0, 0, 0))") == "EPERM"  # mount(2)
    for flag in [0x00020000, 0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000]:
        assert py(root_sb, f"print(call(272, {flag}))") == "EPERM", hex(flag)  # unshare
    assert py(root_sb, "print(call(56, 0x10000000|17, 0, 0, 0, 0))") == "EPERM"  # clone NEWUSER
    assert py(root_sb, "print(call(435, 0, 0))") == "ENOSYS"  # clone3
    assert py(root_sb, "print(call(308, 0, 0))") == "EPERM"  # setns
    # Ordinary fork still works.
    assert root_sb.process.exec("sh -c 'echo child'").result == "child\n"


def test_ptrace_keyring_bpf_perf_and_modules_are_denied(root_sb):
    assert py(root_sb, "print(call(101, 16, 1, 0, 0))") == "EPERM"  # ptrace(ATTACH, pid 1)
    assert py(root_sb, "print(call(250, 0, 0, 0, 0, 0))") == "EPERM"  # keyctl
    assert py(root_sb, "print(call(321, 0, 0, 0))") == "EPERM"  # bpf
    assert py(root_sb, "print(call(298, 0, 0, 0, 0, 0))") == "EPERM"  # perf_event_open
    assert py(root_sb, "print(call(313, 0, 0, 0))") == "EPERM"  # finit_module
    assert py(root_sb, "print(call(169, 0, 0, 0, 0))") == "EPERM"  # reboot


def test_agent_cannot_be_killed_or_read(root_sb):
    root_sb.process.exec("kill -9 1; kill -STOP 1; kill -TERM 1")
    assert root_sb.process.exec("echo alive").result == "alive\n"
    r = root_sb.process.exec("cat /proc/1/environ; cat /proc/1/maps | head -1; ls /proc/1/fd")
    assert "PATH=" not in r.result and "corral-agent" not in r.result


def test_proc_and_sys_are_masked_and_read_only(root_sb):
    # Not every kernel has every file (no kcore here); whatever exists must read as empty and
    # be a mount point (masked), and the host's timer_list does have content.
    masked = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats"]
    r = root_sb.process.exec(" ; ".join(f"[ -e {p} ] && cat {p} | wc -c" for p in masked) + "; true")
    sizes = r.result.split()
    assert sizes and set(sizes) == {"0"}, r.result
    mountpoints = {line.split()[4] for line in root_sb.process.exec("cat /proc/self/mountinfo").result.splitlines()}
    assert "/proc/timer_list" in mountpoints and "/proc/keys" in mountpoints
    assert "/proc/sys" in mountpoints
    for path in ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/sys/kernel/mm/transparent_hugepage/enabled"]:
        r = root_sb.process.exec(f"echo x > {path}; echo rc=$?")
        assert "rc=0" not in r.result, path
    assert root_sb.process.exec("ls -A /sys/firmware | wc -l").result.strip() == "0"


def test_dev_is_minimal(sandbox):
    names = set(sandbox.process.exec("ls -A /dev").result.split())
    assert names == {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm",
                     "fd", "stdin", "stdout", "stderr"}


def test_cannot_raise_limits(root_sb):
    code = "import resource\ns, h = resource.getrlimit(resource.RLIMIT_NOFILE)\ntry:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (h + 1, h + 1)); print('raised')\nexcept (ValueError, OSError) as e: print('denied')"
    assert py(root_sb, code) == "denied"


def test_cannot_reach_the_server_or_host_network(server, root_sb):
    code = f"import socket\ns=socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {server.port})); print('connected')\nexcept OSError as e: print(type(e).__name__)"
    assert py(root_sb, code) != "connected"
    # Its own slot: loopback and one veth end, which root inside cannot reconfigure (the
    # egress rules live outside, in the host's nftables; see test_network.py).
    assert root_sb.process.exec("ls /sys/class/net").result.split() == ["eth0", "lo"]


def test_setuid_binaries_grant_nothing(sandbox):
    r = sandbox.process.exec("su -c id root </dev/null 2>&1; passwd -S root 2>&1; id -u")
    assert r.result.strip().endswith("1000")
    assert "uid=0" not in r.result


@pytest.fixture(scope="module", params=["root", "daytona"])
def any_user_sb(request, daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(os_user=request.param))
    yield sb
    daytona.delete(sb)


ATTEMPTS = {
    "read host secrets": "cat /etc/shadow /etc/gshadow",
    "read kernel log": "head -c 100 /dev/kmsg",
    "read kernel memory": "head -c 100 /dev/mem || head -c 100 /proc/kcore",
    "create a device node": "mknod /tmp/sda b 8 0",
    "mount proc again": "mkdir -p /tmp/p && mount -t proc proc /tmp/p",
    "unshare a user namespace": "unshare -U true",
    "unshare a mount namespace": "unshare -m true",
    "raw socket": "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'",
    "add a network link": "ip link add dummy0 type dummy",
    "change the sandbox's address": "ip addr add 10.0.0.9/32 dev eth0",
    "replace the default route": "ip route replace default dev eth0",
    "flush the firewall": "nft flush ruleset || iptables -F",
    "change the clock": "date -s '2001-01-01'",
    "write a kernel knob": "echo 1 > /proc/sys/net/ipv4/ip_forward",
    "write sysfs": "echo 1 > /sys/kernel/profiling",
    "load a module": "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); assert l.syscall(313, 0, 0, 0) == 0'",
    "ptrace PID 1": "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); assert l.syscall(101, 16, 1, 0, 0) == 0'",
    "reach the server data dir": "ls /tmp/corral-e2e-* /work /root/.cargo",
    "raise the file limit": "ulimit -n 10000000",
}


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_escape_attempt_fails(any_user_sb, name):
    r = any_user_sb.process.exec(f"{ATTEMPTS[name]} >/dev/null 2>&1; echo rc=$?")
    assert r.result.strip() != "rc=0", f"{name} succeeded as {any_user_sb.user}"


def test_sees_only_its_own_processes(any_user_sb):
    r = any_user_sb.process.exec("ls /proc | grep -c '^[0-9]'")
    assert int(r.result) <= 4, r.result


def agent_log_of(server, sb):
    """The host file the server keeps the sandbox agent's stdout/stderr in, once the agent's
    start-up line has reached it."""
    logs = [d / sb.id / "agent.log" for d in [server.data_dir / "disk", server.data_dir / "sandboxes"]]
    found = lambda: [p for p in logs if p.exists() and b"starting for sandbox" in p.read_bytes()]
    assert wait_for(found, 10), f"no agent.log for {sb.id} under {server.data_dir}"
    return found()[0]


def agent_pid_of(server, sb):
    """The host pid of the sandbox's agent (its PID 1)."""
    pids = [p for p in server.sandbox_inits() if sb.id in Path(f"/proc/{p}/cgroup").read_text()]
    assert len(pids) == 1, pids
    return pids[0]


def wait_for(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_file_routes_do_not_follow_magic_links_to_the_host(server, root_sb):
    """The agent is root and PID 1: `/proc/1/fd/1` (and `/proc/self/fd/1`, as the agent opens
    it) was the host file `<layer>/agent.log`. The toolbox file routes must not reach it (or
    anything else through a /proc magic link), nor may the agent's stdout be a host file."""
    pid = agent_pid_of(server, root_sb)
    for fd in [1, 2]:
        assert stat.S_ISFIFO(os.stat(f"/proc/{pid}/fd/{fd}").st_mode), os.readlink(f"/proc/{pid}/fd/{fd}")
    log = agent_log_of(server, root_sb)
    before = os.stat(log)
    content = log.read_bytes()
    marker = "corral-magic-link-marker"
    for link in ["/proc/1/fd/1", "/proc/self/fd/2", "/proc/1/root/proc/1/fd/1"]:
        with pytest.raises(DaytonaError):
            root_sb.fs.set_file_permissions(link, mode="777")
        with pytest.raises(DaytonaError):
            root_sb.fs.set_file_permissions(link, owner="daytona", group="daytona")
        results = root_sb.fs.replace_in_files([link], "starting for sandbox", marker)
        assert [r.success for r in results] == [False], results
        with pytest.raises(DaytonaError):
            root_sb.fs.upload_file(marker.encode(), link)
        with pytest.raises(DaytonaError):
            root_sb.fs.get_file_info(link)
        [r] = root_sb.fs.download_files([FileDownloadRequest(source=link)])
        assert r.error is not None and r.error_details.status_code == 400, (link, r)
    # Root inside the sandbox cannot reach it either (the agent is not dumpable).
    r = root_sb.process.exec("chmod 777 /proc/1/fd/1; echo x >> /proc/1/fd/1; echo rc=$?")
    assert "rc=0" not in r.result, r.result
    after = os.stat(log)
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    now = log.read_bytes()
    assert now.startswith(content) and marker.encode() not in now
    # Positive control: an ordinary symlink inside the sandbox is followed, as by Daytona's daemon.
    root_sb.process.exec("mkdir -p /tmp/real && echo 'starting for sandbox' > /tmp/real/f && ln -sfn /tmp/real /tmp/dirlink && ln -sf /tmp/real/f /tmp/filelink")
    root_sb.fs.set_file_permissions("/tmp/filelink", mode="640")
    assert root_sb.process.exec("stat -c %a /tmp/real/f").result.strip() == "640"
    assert [r.success for r in root_sb.fs.replace_in_files(["/tmp/filelink"], "starting for sandbox", marker)] == [True]
    assert root_sb.fs.download_file("/tmp/dirlink/f").decode().strip() == marker
    root_sb.fs.upload_file(b"through a link", "/tmp/dirlink/up")
    assert root_sb.process.exec("cat /tmp/real/up").result == "through a link"


def test_agent_log_pipe_survives_a_server_restart():
    """The server holds the read end of the agent's log pipe. While it is down the agent's
    log writes fail with EPIPE, which must not kill the agent nor the task that logged (here
    its SIGHUP handler); the restarted server adopts the sandbox and copies its log again."""
    s = Server()
    s.start()
    try:
        sb = s.client().create(CreateSandboxFromSnapshotParams(os_user="root"))
        pid = agent_pid_of(s, sb)
        log = agent_log_of(s, sb)
        sb.process.exec("kill -TERM 1")
        assert wait_for(lambda: b"received SIGTERM" in log.read_bytes(), 10), log.read_bytes()
        s.crash()
        # Make the agent log with nobody reading: wait until it has written (its write count
        # grows), then it must still be alive.
        def writes():
            io = Path(f"/proc/{pid}/io").read_text().splitlines()
            return int(next(l for l in io if l.startswith("syscw:")).split()[1])
        before = writes()
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: writes() > before, 10), "the agent did not try to log"
        time.sleep(0.2)
        assert Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        s.start()
        sb = s.client().get(sb.id)
        assert sb.state == "started"
        assert agent_pid_of(s, sb) == pid
        assert sb.process.exec("echo alive").result == "alive\n"
        # The same handler logs again, into the file again.
        sb.process.exec("kill -HUP 1")
        assert wait_for(lambda: b"received SIGHUP" in log.read_bytes(), 10), log.read_bytes()
    finally:
        assert s.finish() == ([], [], [], [])
