"""Air-gapped hosts: images put in the store with `corral image import` are used through the
real SDK (snapshot create, a sandbox from that snapshot, an image create, a `FROM`-only
build) by a server that has no network at all.

The server runs in a network namespace this module makes, holding only `lo`: no route, no
DNS, no registry. The SDK reaches it through a small forwarder (a host loopback port whose
connections are opened from inside the namespace). The images are named after registries
that do not resolve (`registry.invalid:5000/…`) and in the docker.io short form; each flow
is also checked by digest. Positive control: creating a snapshot of, or a sandbox from, an
image that is NOT in the store fails with a clear 4xx, so the network really is out of
reach and nothing here can pass by reaching a registry."""

import ctypes
import json
import os
import secrets
import socket
import subprocess
import threading
import uuid

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaError,
    Image,
)

from conftest import Server
from oci_helpers import Layout, busybox_rootfs, run, tools_or_skip

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CORRAL = os.environ.get("CORRAL_BIN", "target/release/corral")
CLONE_NEWNET = 0x40000000
# Names no resolver knows (RFC 2606 `.invalid`), and a docker.io-style short name.
REGISTRY_REF = "registry.invalid:5000/airgap/app:1"
SHORT_REF = "corral-airgap/app:1"
MARKER = "imported-offline"


def sh(*cmd, check=True):
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True, timeout=60)


class NetnsForwarder:
    """Forwards `127.0.0.1:port` on the host to `127.0.0.1:port` inside network namespace
    `ns`: the listening socket is the host's, the connections to the server are made by a
    thread that joined the namespace (`setns` changes only the calling thread's)."""

    def __init__(self, ns: str, port: int):
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.ns_fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        self.conns = []
        self.closed = False
        self.joined = threading.Event()
        self.error = None
        threading.Thread(target=self._accept, daemon=True).start()
        assert self.joined.wait(10), "the forwarder thread did not start"
        assert self.error is None, self.error

    def _accept(self):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self.ns_fd, CLONE_NEWNET) != 0:
            self.error = f"setns: {os.strerror(ctypes.get_errno())}"
        self.joined.set()
        if self.error:
            return
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for c in self.conns:
            c.close()
        os.close(self.ns_fd)


class AirgappedServer(Server):
    """A `corral serve` (`--network none`) inside network namespace `ns` (only `lo`)."""

    def __init__(self, ns: str, work):
        super().__init__(env={"CORRAL_NETWORK": "none"})
        self.real_bin = os.path.abspath(self.bin)
        wrapper = work / "corral-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{ns} -- {self.real_bin} "$@"\n')
        wrapper.chmod(0o755)
        # `exec` all the way: the server's pid is the one `Server` started.
        self.bin = str(wrapper)
        self.forwarder = NetnsForwarder(ns, self.port)

    def image(self, *args):
        """`corral image …` on this server's data dir (on the host: no network needed)."""
        return sh(self.real_bin, "image", *args, "--data-dir", self.data_dir)

    def close(self):
        self.forwarder.close()


@pytest.fixture(scope="module")
def airgap(tmp_path_factory):
    tools_or_skip()
    work = tmp_path_factory.mktemp("airgap")
    lay = Layout(work / "layout")
    lay.new_base("base")

    def rootfs(root):
        busybox_rootfs(root)
        (root / "etc/airgap").write_text(MARKER + "\n")

    lay.modify("base", "v1", rootfs, work)
    lay.config("v1", "--config.user", "0", "--config.env", "PATH=/bin")
    digest = lay.descriptor("v1")["digest"]
    # A `docker save` archive naming the image the docker.io way, and an OCI archive.
    docker_save = work / "docker-save.tar"
    run("skopeo", "copy", f"oci:{lay.path}:v1", f"docker-archive:{docker_save}:{SHORT_REF}")
    oci_archive = work / "oci.tar"
    run("skopeo", "copy", f"oci:{lay.path}:v1", f"oci-archive:{oci_archive}:v1")

    ns = "cag" + secrets.token_hex(4)
    sh("ip", "netns", "add", ns)
    server = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Nothing but loopback, and no route anywhere else.
        links = sh("ip", "-n", ns, "-o", "link", "show").stdout
        assert [l.split(":")[1].strip() for l in links.splitlines()] == ["lo"], links
        v4 = sh("ip", "-n", ns, "-4", "route", "show").stdout
        v6 = sh("ip", "-n", ns, "-6", "route", "show").stdout
        assert not v4.strip() and all(" dev lo " in l for l in v6.splitlines()), (v4, v6)
        server = AirgappedServer(ns, work)
        # `imported <reference> <manifest digest> (…)`. The OCI archive keeps the layout's
        # manifest (the digest a registry would give); a `docker save` archive has none, so
        # corral makes one and prints its digest.
        out = server.image("import", docker_save).stdout.split()
        assert out[:2] == ["imported", f"docker.io/{SHORT_REF}"], out
        short_digest = out[2]
        out = server.image("import", oci_archive, "--name", REGISTRY_REF).stdout
        assert f"imported {REGISTRY_REF} {digest}" in out, out
        server.start()
        yield server, {"registry": digest, "short": short_digest}
        assert server.finish() == ([], [], [], [])
    finally:
        if server is not None:
            server.close()
            if server.proc and server.proc.poll() is None:
                server.crash()
        sh("ip", "netns", "del", ns, check=False)
    assert ns not in sh("ip", "netns", "list").stdout


def exec_ok(sb, cmd):
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, r.result
    return r.result.strip()


def test_snapshot_of_an_imported_image_needs_no_registry(airgap):
    server, digests = airgap
    d = server.client()
    made = []
    try:
        for ref in (REGISTRY_REF, f"registry.invalid:5000/airgap/app@{digests['registry']}", SHORT_REF,
                    f"corral-airgap/app:1@{digests['short']}"):
            name = "ag-" + uuid.uuid4().hex[:8]
            snap = d.snapshot.create(CreateSnapshotParams(name=name, image=ref), timeout=60)
            made.append(name)
            assert snap.state == "active", (ref, snap)
            sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
            try:
                assert exec_ok(sb, "cat /etc/airgap; id -u").split() == [MARKER, "0"], ref
            finally:
                d.delete(sb, wait=True)
        # A FROM-only Dockerfile given as a snapshot's build is the image itself.
        name = "ag-" + uuid.uuid4().hex[:8]
        snap = d.snapshot.create(CreateSnapshotParams(name=name, image=Image.base(REGISTRY_REF)), timeout=60)
        made.append(name)
        assert snap.state == "active", snap
    finally:
        for name in made:
            d.snapshot.delete(name)
    # Deleting the snapshots leaves the imported images in the store: they cannot be
    # fetched again here.
    listed = json.loads(server.image("list", "--json").stdout)
    assert sorted(i["reference"] for i in listed) == sorted([f"docker.io/{SHORT_REF}", REGISTRY_REF])


def test_image_creates_and_from_only_builds_of_imported_images_run(airgap):
    server, digests = airgap
    d = server.client()
    by_digest = f"registry.invalid:5000/airgap/app@{digests['registry']}"
    short_by_digest = f"docker.io/corral-airgap/app@{digests['short']}"
    for image, name in ((SHORT_REF, SHORT_REF), (REGISTRY_REF, REGISTRY_REF),
                        (Image.base(by_digest), by_digest), (Image.base(short_by_digest), short_by_digest)):
        # A stored image starts at once: no `pending_build`, no log to stream.
        logs = []
        sb = d.create(CreateSandboxFromImageParams(image=image), timeout=60,
                      on_snapshot_create_logs=logs.append)
        try:
            assert sb.state == "started" and not logs, (name, logs)
            assert exec_ok(sb, "cat /etc/airgap") == MARKER, name
        finally:
            d.delete(sb, wait=True)
        # The image's snapshot (named after it) went active from the store: nothing pulled.
        snap = d.snapshot.get(name)
        assert snap.state == "active", snap
        status, log = server.request("GET", f"/api/snapshots/{snap.id}/build-logs")
        assert status == 200 and f"Image {name} is in the image store: not pulled" in log, log
        assert "Pulling" not in log, log


def test_images_not_in_the_store_fail_clearly_without_a_network(airgap):
    """The positive control: the registry is truly out of reach."""
    server, _ = airgap
    d = server.client()
    for missing in ("registry.invalid:5000/airgap/missing:1", "corral-airgap/missing:1"):
        name = "agm-" + uuid.uuid4().hex[:8]
        with pytest.raises(DaytonaError) as e:
            d.snapshot.create(CreateSnapshotParams(name=name, image=missing), timeout=60)
        assert "missing" in str(e.value), e.value
        snap = d.snapshot.get(name)
        assert snap.state == "error" and "missing" in snap.error_reason, snap
        # The reason says the image is neither stored nor reachable.
        assert "not in the image store" in snap.error_reason, snap.error_reason
        # A create from the failed snapshot is a 400 that carries the reason.
        status, body = server.request("POST", "/api/sandbox", {"snapshot": name})
        assert status == 400 and "missing" in body["message"], (status, body)
        d.snapshot.delete(name)

        with pytest.raises(DaytonaError) as e:
            d.create(CreateSandboxFromImageParams(image=missing), timeout=60)
        assert "missing" in str(e.value), e.value
        failed = [s for s in d.list() if s.state == "build_failed"]
        assert len(failed) == 1 and "not in the image store" in failed[0].error_reason, failed
        d.delete(failed[0], wait=True)
        d.snapshot.delete(missing)
