"""Helpers for image tests: a real local registry (Debian's `docker-registry`) and OCI
images built with `umoci` from busybox-static, pushed with `skopeo`.

Nothing here talks to the network beyond 127.0.0.1.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

TOOLS = ("docker-registry", "umoci", "skopeo")
BUSYBOX = "/bin/busybox"


def tools_or_skip():
    """Skip when the tools are missing, unless CORRAL_E2E_STRICT is set (then fail)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not os.path.exists(BUSYBOX):
        missing.append(BUSYBOX + " (busybox-static)")
    if missing:
        msg = f"missing {', '.join(missing)} (apt-get install docker-registry umoci skopeo busybox-static)"
        if os.environ.get("CORRAL_E2E_STRICT"):
            pytest.fail(msg)
        pytest.skip(msg)


def run(*args, **kw):
    """Runs a command, failing with its output on error."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A `docker-registry serve` on 127.0.0.1 with filesystem storage in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).read()
                break
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("registry did not start:\n" + self.log_path.read_text())
                time.sleep(0.1)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def blob_gets(self) -> int:
        """GETs of blobs served so far (from the access log)."""
        return sum(1 for l in self.log().splitlines() if '"GET /v2/' in l and "/blobs/sha256:" in l)

    def blob_data(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Layout:
    """An OCI image layout built with umoci."""

    def __init__(self, path: Path):
        self.path = path
        run("umoci", "init", "--layout", path)

    def new_base(self, tag: str):
        run("umoci", "new", "--image", f"{self.path}:{tag}")

    def modify(self, src_tag: str, dst_tag: str, change, work: Path):
        """Unpacks `src_tag`, calls change(rootfs), repacks as `dst_tag` (one new layer)."""
        bundle = work / f"bundle-{dst_tag}"
        run("umoci", "unpack", "--image", f"{self.path}:{src_tag}", bundle)
        change(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{self.path}:{dst_tag}", bundle)
        shutil.rmtree(bundle)

    def config(self, tag: str, *opts):
        run("umoci", "config", "--image", f"{self.path}:{tag}", *opts)

    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs/sha256" / digest.split(":", 1)[1]).read_bytes()

    def descriptor(self, tag: str) -> dict:
        for m in self.index()["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return m
        raise KeyError(tag)

    def manifest(self, tag: str) -> dict:
        return json.loads(self.blob(self.descriptor(tag)["digest"]))

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def add_index(self, tag: str, platforms: dict):
        """Adds a multi-arch index under `tag`: {tag_of_manifest: (os, arch)}."""
        manifests = []
        for t, (os_, arch) in platforms.items():
            d = dict(self.descriptor(t))
            d.pop("annotations", None)
            d["platform"] = {"os": os_, "architecture": arch}
            manifests.append(d)
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        ).encode()
        digest = self.add_blob(data)
        idx = self.index()
        idx["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        (self.path / "index.json").write_text(json.dumps(idx))

    def push(self, tag: str, dest: str, all_platforms=False):
        args = ["skopeo", "copy", "--dest-tls-verify=false"]
        if all_platforms:
            args.append("--all")
        run(*args, f"oci:{self.path}:{tag}", f"docker://{dest}")


def busybox_rootfs(rootfs: Path):
    """Puts busybox-static in an empty rootfs with a few applets and files."""
    for d in ("bin", "etc", "work", "tmp"):
        (rootfs / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/work:/bin/sh\n")
    (rootfs / "etc/gone").write_text("deleted in layer 2\n")
    owned = rootfs / "work/owned"
    owned.write_text("owned by 1234:5678\n")
    os.chown(owned, 1234, 5678)
