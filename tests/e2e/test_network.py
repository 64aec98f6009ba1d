"""Sandbox networking through the real SDK: NAT egress, egress policies at create and at
runtime, and what no sandbox may ever reach (the host, other sandboxes, link-local
metadata addresses).

Every destination is a test host this module builds itself: network namespaces joined to
the host by veth pairs in 198.18.0.0/15 (the benchmarking range), routed from the host, plus
one namespace holding 169.254.169.254 as a stand-in metadata service. Each negative check
has a positive control (the host, or another sandbox, reaching the same place) so it cannot
pass by accident."""

import os
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.errors import DaytonaError

from conftest import Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

DNS_SERVER = textwrap.dedent('''
    import socket, struct, sys
    name, addr = sys.argv[1].encode(), socket.inet_aton(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[3], 53))
    while True:
        q, peer = s.recvfrom(512)
        tid, qd = q[:2], q[12:]
        end = qd.index(b"\\0") + 5
        labels, i = [], 0
        while qd[i]:
            labels.append(qd[i + 1:i + 1 + qd[i]]); i += 1 + qd[i]
        qtype = struct.unpack("!H", qd[i + 1:i + 3])[0]
        hit = b".".join(labels).lower() == name and qtype == 1
        flags = b"\\x81\\x80" if hit else b"\\x81\\x83"
        head = tid + flags + struct.pack("!HHHH", 1, 1 if hit else 0, 0, 0)
        ans = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + addr if hit else b""
        s.sendto(head + qd[:end] + ans, peer)
''')


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Outside:
    """Test hosts outside any sandbox, each in its own network namespace."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        self.net = 16 + secrets.randbelow(200)
        self.procs = []
        self.namespaces = []
        self.links = []
        self.routes = []
        try:
            self.build()
        except BaseException:
            self.close()
            raise

    def build(self):
        k = self.net
        # web A (also DNS), web B, and the metadata stand-in.
        self.a = self.host("a", f"198.18.{k}.1", f"198.18.{k}.2")
        self.b = self.host("b", f"198.18.{k}.5", f"198.18.{k}.6")
        self.meta_gw = self.host("m", f"198.18.{k}.9", f"198.18.{k}.10")
        sh("ip", "-n", self.ns("m"), "addr", "add", "169.254.169.254/32", "dev", "lo")
        sh("ip", "route", "add", "169.254.169.254/32", "via", f"198.18.{k}.10")
        self.routes.append("169.254.169.254/32")
        self.a_host = f"198.18.{k}.1"
        for name, ip in [("a", self.a), ("b", self.b), ("m", "169.254.169.254")]:
            self.serve_http(name, ip, f"hello from {name}")
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.ns("a"), sys.executable, "-c", DNS_SERVER,
             "web.corral.test", self.a, self.a]))
        self.wait_port(self.a, 8000)
        self.wait_port(self.b, 8000)
        self.wait_port("169.254.169.254", 8000)

    def ns(self, name):
        return f"cx{self.tag}{name}"

    def host(self, name, host_ip, ns_ip):
        ns, link = self.ns(name), f"cx{self.tag}{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(link)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", link)
        sh("ip", "link", "set", link, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host_ip)
        return ns_ip

    def serve_http(self, name, ip, text):
        d = f"/tmp/{self.ns(name)}-www"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/index.html", "w") as f:
            f.write(text)
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), sys.executable, "-m", "http.server", "8000",
             "--bind", ip, "--directory", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    @staticmethod
    def wait_port(ip, port):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection((ip, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"test host {ip}:{port} did not come up")

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for r in self.routes:
            sh("ip", "route", "del", r, check=False)
        for l in self.links:
            sh("ip", "link", "del", l, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for name in "abm":
            subprocess.run(["rm", "-rf", f"/tmp/{self.ns(name)}-www"])


@pytest.fixture(scope="module")
def outside():
    o = Outside()
    yield o
    o.close()
    left = sh("ip", "-o", "link", "show").stdout
    assert f"cx{o.tag}" not in left
    assert not [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith(f"cx{o.tag}")]


@pytest.fixture(scope="module")
def net_server(outside):
    s = Server(env={"CORRAL_DNS": outside.a})
    s.start()
    yield s
    assert s.finish() == ([], [], [], [])


@pytest.fixture(scope="module")
def d(net_server):
    return net_server.client()


PROBE = textwrap.dedent('''
    import socket, sys
    ip, port = sys.argv[1], int(sys.argv[2])
    try:
        socket.create_connection((ip, port), timeout=float(sys.argv[3])).close()
        print("CONNECTED")
    except ConnectionRefusedError:
        print("REFUSED")
    except socket.timeout:
        print("TIMEOUT")
    except OSError as e:
        print("ERROR", e.errno)
''')

FETCH = textwrap.dedent('''
    import sys, urllib.request
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())
    except Exception as e:
        print("FAILED", type(e).__name__)
''')


def put_helpers(sb):
    sb.fs.upload_file(PROBE.encode(), "/tmp/probe.py")
    sb.fs.upload_file(FETCH.encode(), "/tmp/fetch.py")


def probe(sb, ip, port, timeout=1.0):
    return sb.process.exec(f"python3 /tmp/probe.py {ip} {port} {timeout}").result.strip()


def fetch(sb, url, timeout=2.0):
    return sb.process.exec(f"python3 /tmp/fetch.py {url} {timeout}").result.strip()


def own_address(sb, towards="198.18.0.1"):
    code = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.connect(('{towards}', 9)); print(s.getsockname()[0])")
    return sb.process.exec(f'python3 -c "{code}"').result.strip()


@pytest.fixture
def sb(d):
    s = d.create()
    put_helpers(s)
    yield s
    d.delete(s, wait=True)


def test_default_egress_reaches_routed_hosts_through_nat(sb, outside):
    assert fetch(sb, f"http://{outside.a}:8000/") == "hello from a"
    assert fetch(sb, f"http://{outside.b}:8000/") == "hello from b"
    # The test host sees the host's address, not the sandbox's: NAT.
    addr = own_address(sb)
    assert addr.startswith("10.") and addr != outside.a_host


def test_dns_uses_the_configured_resolver(sb, outside):
    conf = sb.process.exec("cat /etc/resolv.conf").result
    assert f"nameserver {outside.a}" in conf
    code = "import socket; print(socket.gethostbyname('web.corral.test'))"
    assert sb.process.exec(f'python3 -c "{code}"').result.strip() == outside.a
    assert fetch(sb, "http://web.corral.test:8000/") == "hello from a"


def test_sandbox_never_reaches_the_host(sb, outside, net_server):
    # A listener on every host address; the host reaches it (control), the sandbox not.
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    try:
        # Every host address, except slot gateways of other corral servers (those come and go
        # as their slots are built and dropped); this sandbox's own gateway is added below.
        slot_link = re.compile(r"^(t[0-9a-f]{6}|crv|crbench)[0-9]+$")
        addrs = [l.split()[3].split("/")[0] for l in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines()
                 if not slot_link.match(l.split()[1])]
        gateway = sb.process.exec("awk '$2==\"00000000\"{print $3}' /proc/net/route").result.strip()
        gw = socket.inet_ntoa(bytes.fromhex(gateway)[::-1])
        targets = {a for a in addrs if not a.startswith("127.")} | {gw, outside.a_host}
        assert gw in [l.split()[3].split("/")[0] for l in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines()]
        for ip in sorted(targets):
            socket.create_connection((ip, port), timeout=1).close()
            assert probe(sb, ip, port) == "TIMEOUT", ip
            assert probe(sb, ip, net_server.port) == "TIMEOUT", ip
        # Its own loopback is its own: the server's port is not there.
        assert probe(sb, "127.0.0.1", net_server.port) == "REFUSED"
    finally:
        lst.close()


def test_no_link_local_metadata(sb):
    with socket.create_connection(("169.254.169.254", 8000), timeout=2):
        pass
    assert fetch(sb, "http://169.254.169.254:8000/") == "FAILED URLError"
    assert probe(sb, "169.254.169.254", 8000) == "TIMEOUT"


def test_no_sandbox_to_sandbox_traffic(d, sb, outside):
    other = d.create()
    try:
        put_helpers(other)
        other.process.exec("nohup python3 -m http.server 9000 --bind 0.0.0.0 >/dev/null 2>&1 &")
        other_ip = own_address(other)
        deadline = time.time() + 10
        while probe(other, other_ip, 9000) != "CONNECTED":  # control: it listens
            assert time.time() < deadline
            time.sleep(0.1)
        assert own_address(sb) != other_ip
        assert probe(sb, other_ip, 9000) == "TIMEOUT"
        # Nor to the other sandbox's gateway (a host address).
        gw = other_ip.rsplit(".", 1)[0] + "." + str(int(other_ip.rsplit(".", 1)[1]) - 1)
        assert probe(sb, gw, 9000) == "TIMEOUT"
    finally:
        d.delete(other, wait=True)


def test_block_all_at_create(d, outside):
    s = d.create(CreateSandboxFromSnapshotParams(network_block_all=True))
    try:
        assert s.network_block_all is True
        put_helpers(s)
        assert fetch(s, f"http://{outside.a}:8000/") == "FAILED URLError"
        code = "import socket; print(socket.gethostbyname('web.corral.test'))"
        r = s.process.exec(f'timeout 3 python3 -c "{code}" 2>&1')
        assert r.exit_code != 0 and outside.a not in r.result
        # Loopback inside still works.
        s.process.exec("nohup python3 -m http.server 9100 --bind 127.0.0.1 >/dev/null 2>&1 &")
        deadline = time.time() + 10
        while probe(s, "127.0.0.1", 9100) != "CONNECTED":
            assert time.time() < deadline
            time.sleep(0.1)
        # Survives stop and start.
        s.stop()
        s.start()
        assert fetch(s, f"http://{outside.a}:8000/") == "FAILED URLError"
    finally:
        d.delete(s, wait=True)


def test_allow_list_at_create(d, outside):
    s = d.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{outside.a}/32"))
    try:
        assert s.network_allow_list == f"{outside.a}/32"
        assert s.network_block_all is False
        put_helpers(s)
        assert fetch(s, f"http://{outside.a}:8000/") == "hello from a"
        assert fetch(s, f"http://{outside.b}:8000/") == "FAILED URLError"
        # The configured resolver stays usable under an allow list.
        code = "import socket; print(socket.gethostbyname('web.corral.test'))"
        assert s.process.exec(f'python3 -c "{code}"').result.strip() == outside.a
    finally:
        d.delete(s, wait=True)


def test_policy_changes_at_runtime(d, sb, outside):
    a, b = f"http://{outside.a}:8000/", f"http://{outside.b}:8000/"
    assert fetch(sb, a) == "hello from a"
    sb.update_network_settings(network_block_all=True)
    assert sb.network_block_all is True
    assert fetch(sb, a) == "FAILED URLError"
    assert d.get(sb.id).network_block_all is True

    sb.update_network_settings(network_allow_list=f"{outside.b}/32")
    assert (sb.network_block_all, sb.network_allow_list) == (False, f"{outside.b}/32")
    assert fetch(sb, a) == "FAILED URLError"
    assert fetch(sb, b) == "hello from b"

    sb.update_network_settings(network_allow_list=f"198.18.{outside.net}.0/24")
    assert fetch(sb, a) == "hello from a"
    assert fetch(sb, "http://169.254.169.254:8000/") == "FAILED URLError"

    sb.update_network_settings(network_block_all=False)
    assert (sb.network_block_all, sb.network_allow_list) == (False, None)
    assert fetch(sb, b) == "hello from b"


def test_bad_network_settings_are_refused(d, sb):
    for bad in ["nonsense", "10.0.0.0/33", "::1/128"]:
        with pytest.raises(DaytonaError) as e:
            sb.update_network_settings(network_allow_list=bad)
        assert "networkAllowList" in str(e.value)
    with pytest.raises(DaytonaError) as e:
        sb.update_network_settings(domain_allow_list="example.com")
    assert "domainAllowList" in str(e.value)
    with pytest.raises(DaytonaError):
        d.create(CreateSandboxFromSnapshotParams(network_allow_list="1.2.3.4/99"))
    assert sb.network_block_all is False and sb.network_allow_list is None


def test_policies_survive_a_server_crash(outside):
    s = Server(env={"CORRAL_DNS": outside.a})
    s.start()
    try:
        d = s.client()
        blocked = d.create(CreateSandboxFromSnapshotParams(network_block_all=True))
        open_sb = d.create()
        for x in (blocked, open_sb):
            put_helpers(x)
        s.crash()
        s.start()
        blocked, open_sb = d.get(blocked.id), d.get(open_sb.id)
        assert fetch(blocked, f"http://{outside.a}:8000/") == "FAILED URLError"
        assert fetch(open_sb, f"http://{outside.a}:8000/") == "hello from a"
        blocked.update_network_settings(network_block_all=False)
        assert fetch(blocked, f"http://{outside.a}:8000/") == "hello from a"
        open_sb.update_network_settings(network_block_all=True)
        assert fetch(open_sb, f"http://{outside.a}:8000/") == "FAILED URLError"
    finally:
        assert s.finish() == ([], [], [], [])


def test_network_none_keeps_loopback_only(outside):
    s = Server(env={"CORRAL_NETWORK": "none"})
    s.start()
    try:
        d = s.client()
        x = d.create()
        put_helpers(x)
        assert "FAILED" in fetch(x, f"http://{outside.a}:8000/")
        assert probe(x, outside.a, 8000) == "ERROR 101"  # ENETUNREACH: no route at all
        with pytest.raises(DaytonaError):
            x.update_network_settings(network_block_all=True)
    finally:
        assert s.finish() == ([], [], [], [])
