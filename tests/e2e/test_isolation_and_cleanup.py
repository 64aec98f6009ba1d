"""Sandboxes cannot see each other or the host, and leave nothing behind."""

from conftest import host_processes_with


def test_two_sandboxes_cannot_see_each_others_files_or_processes(daytona):
    a = daytona.create()
    b = daytona.create()
    try:
        a.process.exec("echo secret-a > /home/daytona/a.txt; echo t > /tmp/a-tmp")
        a.process.exec("sleep 612.5 > /dev/null 2>&1 &")
        assert a.process.exec("cat /home/daytona/a.txt").result == "secret-a\n"
        assert b.process.exec("ls -A /home/daytona /tmp").result.split() == ["/home/daytona:", "/tmp:"]
        assert b.process.exec("cat /home/daytona/a.txt").exit_code != 0
        # Process trees are separate: b sees only its own init and the command.
        assert "612.5" not in b.process.exec("ps -eo args").result
        assert "612.5" in a.process.exec("ps -eo args").result
        assert b.process.exec("ps -e --no-headers | wc -l").result.strip() in {"3", "4"}
        # Hostnames are their own.
        assert b.process.exec("hostname").result.strip() == b.id
        # No path leads from b into a's tree.
        r = b.process.exec(f"ls / /proc | grep -c {a.id} ; find / -xdev -name a.txt 2>/dev/null | wc -l")
        assert r.result.split() == ["0", "0"]
    finally:
        daytona.delete(a)
        daytona.delete(b)
    assert host_processes_with("sleep 612.5") == []


def test_sandbox_sees_no_host_secrets_or_data(server, sandbox):
    r = sandbox.process.exec("cat /etc/shadow; ls /root; ls /work; ls /home", )
    assert "root:" not in r.result
    r = sandbox.process.exec(f"ls {server.data_dir} 2>&1; cat /proc/1/cmdline | tr '\\0' ' '")
    assert "No such file" in r.result
    assert "corral-agent" in r.result
    # Loopback only, no other interfaces.
    r = sandbox.process.exec("ls /sys/class/net")
    assert r.result.split() == ["lo"]


def test_many_cycles_leave_nothing_behind(server, daytona):
    before = (server.cgroups(), server.mounts(), server.child_processes(), server.sandbox_dirs())
    for i in range(24):
        sb = daytona.create()
        assert sb.process.exec(f"echo {i}; sleep 333.{i} >/dev/null 2>&1 &").result == f"{i}\n"
        daytona.delete(sb)
    after = (server.cgroups(), server.mounts(), server.child_processes(), server.sandbox_dirs())
    assert after == before
    assert host_processes_with("sleep 333.") == []
    assert list((server.data_dir / "run").iterdir()) == []
