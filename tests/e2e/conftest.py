"""End-to-end fixtures: a real `corral serve` on a scratch data dir, driven by the real
Daytona SDK. Set CORRAL_BIN to choose the binary (default: target/release/corral)."""

import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from daytona import Daytona, DaytonaConfig, DaytonaError

REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running corral server and what it leaves on the host."""

    def __init__(self, env=None):
        self.bin = os.environ.get("CORRAL_BIN", str(REPO / "target/release/corral"))
        self.data_dir = Path(tempfile.mkdtemp(prefix="corral-e2e-", dir="/tmp"))
        self.port = free_port()
        # The SSH gateway's port: one per server, so parallel servers do not clash.
        self.ssh_port = free_port()
        self.key = "e2e_" + secrets.token_hex(16)
        # Each server gets its own cgroup parent, sandbox network and interface prefix
        # (several servers may run at once, from several pytest processes too: a server
        # refuses to start on another's), so leak checks can name exactly what this one
        # created. `start` picks others if a running server holds these.
        self._pick_host_resources()
        # Values a test sets itself are never replaced.
        self._chosen = not ({"CORRAL_NET_PREFIX", "CORRAL_NET_CIDR"} & set(env or {}))
        # The warm pool is off unless a test asks for it: leak checks compare the host
        # before and after, and a pool refilling in the background would blur them.
        self.extra_env = {"CORRAL_POOL_SIZE": "0", "CORRAL_NET_PREFIX": self.net_prefix,
                          "CORRAL_NET_CIDR": self.net_cidr, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "wb")
        self.proc = None

    def _pick_host_resources(self):
        self.cgroup_parent = "corral-e2e-" + secrets.token_hex(4)
        self.net_prefix = "t" + secrets.token_hex(3)
        self.net_cidr = f"10.{random.randrange(130, 250)}.0.0/16"

    def command(self):
        """The `corral serve` command line and environment of this server."""
        env = dict(os.environ, CORRAL_API_KEY=self.key, CORRAL_LOG="info", **self.extra_env)
        argv = [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
                "--cgroup-parent", self.cgroup_parent, "--ssh-port", str(self.ssh_port)]
        return argv, env

    def start(self):
        for _ in range(8):
            logged = os.path.getsize(self.log.name)
            try:
                return self._start()
            except RuntimeError:
                with open(self.log.name, "rb") as f:
                    f.seek(logged)
                    refused = b"in use by another corral server" in f.read()
                # A random network another server (e.g. another test run) holds: pick again,
                # unless this server ran before (a restart keeps its values).
                if not (refused and self._chosen and not getattr(self, "_started", False)):
                    raise
            self._pick_host_resources()
            self.extra_env.update(CORRAL_NET_PREFIX=self.net_prefix, CORRAL_NET_CIDR=self.net_cidr)
        raise RuntimeError(f"no free host resources for corral serve; log: {self.log.name}")

    def _start(self):
        argv, env = self.command()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                status, _ = self.request("GET", "/ready", auth=False)
                if status == 200:
                    self._started = True
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("corral serve did not become ready")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        return self.proc.returncode if self.proc else None

    def crash(self):
        """kill -9: no chance to clean up."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def finish(self):
        """Deletes every sandbox, stops, and returns what was left behind."""
        d = self.client()
        for sb in list(d.list()):
            d.delete(sb, wait=True)
        for snap in d.snapshot.list().items:
            if not snap.general:
                try:
                    d.snapshot.delete(snap)
                except DaytonaError:
                    pass  # e.g. still pulling; a leftover layer shows in `volumes` below
        kids = self.child_processes()
        # A graceful stop also destroys unclaimed warm-pool sandboxes; measure after it.
        self.stop()
        pool_size = int(self.extra_env.get("CORRAL_POOL_SIZE", "0"))
        leftovers = (self.cgroups(), self.mounts(), kids if pool_size == 0 else self.sandbox_inits(),
                     self.sandbox_dirs() + self.volumes() + self.network_leftovers())
        self.remove_cgroup_parent()
        # The disk pool is the server's, not a sandbox's: unmount it (its loop device is
        # auto-cleared) so the test leaves the host as it found it.
        subprocess.run(["umount", "-l", str(self.data_dir / "disk")], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if leftovers == ([], [], [], []):
            self.log.close()
            os.unlink(self.log.name)
        return leftovers

    def request(self, method, path, body=None, auth=True, headers=None, key=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Content-Type": "application/json"}
        if auth:
            h["Authorization"] = f"Bearer {key or self.key}"
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data.decode(errors="replace")

    def client(self, key=None) -> Daytona:
        return Daytona(DaytonaConfig(api_key=key or self.key, api_url=f"{self.url}/api"))

    # --- what a sandbox may leave behind on the host -------------------------------------
    def cgroups(self):
        found = []
        for ctrl in ["pids", "memory", "cpu", "cpuacct", "freezer", ""]:
            parent = CGROUP_ROOT / ctrl / self.cgroup_parent if ctrl else CGROUP_ROOT / self.cgroup_parent
            if parent.is_dir():
                found += [f"{ctrl}/{p.name}" for p in parent.iterdir() if p.is_dir()]
        return sorted(found)

    def mounts(self):
        """Mounts under the data dir, except the server's own btrfs disk pool."""
        pool = f" {self.data_dir}/disk "
        with open("/proc/mounts") as f:
            return [l for l in f if str(self.data_dir) in l and pool not in l]

    def volumes(self):
        """Per-sandbox btrfs volumes in the disk pool, and snapshot layers (every snapshot
        is deleted by then: see `finish`)."""
        d = self.data_dir / "disk"
        # Volumes (`.volumes`) outlive sandboxes by design.
        found = sorted(p.name for p in d.iterdir() if p.name not in (".commits", ".volumes")) if d.is_dir() else []
        for c in [d / ".commits", self.data_dir / "commits" / "layers"]:
            if c.is_dir():
                found += sorted(f"snapshot layer {p.name}" for p in c.iterdir())
        return found

    def sandbox_inits(self):
        """Host pids of sandbox inits (pid 1 in their own namespace) in this server's cgroups."""
        pids = set()
        for ctrl in ["pids", ""]:
            parent = CGROUP_ROOT / ctrl / self.cgroup_parent if ctrl else CGROUP_ROOT / self.cgroup_parent
            if not parent.is_dir():
                continue
            for group in parent.iterdir():
                if not group.is_dir():
                    continue
                for pid in (group / "cgroup.procs").read_text().split():
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    nspid = [l for l in status.splitlines() if l.startswith("NSpid:")]
                    if nspid and nspid[0].split()[-1] == "1":
                        pids.add(int(pid))
        return sorted(pids)

    def child_processes(self):
        """Processes whose parent is the server (each sandbox's init)."""
        kids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                kids.append(int(p.name))
        return kids

    def net_links(self):
        """Host-side interfaces of this server's network slots."""
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        names = [l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if ":" in l]
        return sorted(n for n in names if n.startswith(self.net_prefix))

    def nft_table(self):
        """This server's nftables table, if it exists."""
        r = subprocess.run(["nft", "list", "table", "inet", f"corral_{self.net_prefix}"],
                           capture_output=True, text=True)
        return r.returncode == 0

    def network_leftovers(self, wait=3.0):
        """Slot interfaces and the nftables table left after the server stopped. The kernel
        removes a dropped namespace's interfaces in the background: allow it a moment."""
        deadline = time.time() + wait
        while True:
            found = [f"link {n}" for n in self.net_links()]
            if self.nft_table():
                found.append(f"nft table corral_{self.net_prefix}")
            if not found or time.time() > deadline:
                return found
            time.sleep(0.1)

    def sandbox_dirs(self):
        d = self.data_dir / "sandboxes"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def remove_cgroup_parent(self):
        for ctrl in ["pids", "memory", "cpu", "cpuacct", "freezer", ""]:
            parent = CGROUP_ROOT / ctrl / self.cgroup_parent if ctrl else CGROUP_ROOT / self.cgroup_parent
            if parent.is_dir():
                parent.rmdir()


def host_processes_with(marker: str):
    """Host pids whose command line contains `marker`."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(p.name))
    return pids


SYSTEM_CAS = Path("/usr/local/share/ca-certificates")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def trusted_cert(tmp_path_factory):
    """A throwaway CA in the system trust store (removed afterwards) and a certificate it
    signed for 127.0.0.1 and localhost."""
    if shutil.which("openssl") is None or shutil.which("update-ca-certificates") is None:
        if os.environ.get("CORRAL_E2E_STRICT"):
            pytest.fail("openssl and update-ca-certificates are needed")
        pytest.skip("openssl or update-ca-certificates missing")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=corral e2e CA " + uuid.uuid4().hex[:8], cwd=d)
    openssl("req", *ec, "-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                           "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "cert.pem", "-days", "1", "-extfile", "ext", cwd=d)
    installed = SYSTEM_CAS / f"corral-e2e-{uuid.uuid4().hex[:8]}.crt"
    SYSTEM_CAS.mkdir(parents=True, exist_ok=True)
    shutil.copy(d / "ca.pem", installed)
    subprocess.run(["update-ca-certificates"], check=True, capture_output=True)
    try:
        yield d / "cert.pem", d / "key.pem"
    finally:
        installed.unlink()
        subprocess.run(["update-ca-certificates", "--fresh"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def server():
    s = Server()
    s.start()
    yield s
    # Delete whatever the tests left, then prove nothing outlives the sandboxes.
    leftovers = s.finish()
    assert leftovers == ([], [], [], []), f"left behind: {leftovers}"


@pytest.fixture(scope="session")
def daytona(server):
    return server.client()


@pytest.fixture
def sandbox(daytona):
    sb = daytona.create()
    yield sb
    # Waits until it is gone, so a next test's leak check does not see its teardown.
    daytona.delete(sb, wait=True)
