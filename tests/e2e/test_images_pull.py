"""OCI images without Docker: `corral image pull/import/list/inspect/rm` against a real
local registry (`docker-registry`) serving images built here with umoci and pushed with
skopeo. Checks unpacked layers (files, ownership, whiteouts — by mounting the layers with
overlayfs), the parsed config, caching, digest verification, multi-arch resolution,
archive import and garbage collection."""

import json
import os
import platform
import stat
import subprocess
import urllib.request
import uuid

import pytest

from oci_helpers import Layout, Registry, busybox_rootfs, run, tools_or_skip

CORRAL = os.environ.get("CORRAL_BIN", "target/release/corral")


def corral(data, *args, check=True):
    p = subprocess.run(
        [CORRAL, "image", *[str(a) for a in args], "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def inspect(data, ref):
    return json.loads(corral(data, "inspect", ref).stdout)


def layer_count(data):
    d = data / "images/layers/sha256"
    return len(os.listdir(d)) if d.exists() else 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tools_or_skip()
    base = tmp_path_factory.mktemp("oci")
    reg = Registry(base / "registry")
    lay = Layout(base / "layout")
    lay.new_base("base")
    lay.modify("base", "v1", busybox_rootfs, base)
    lay.config(
        "v1",
        "--config.env", "FOO=bar",
        "--config.workingdir", "/work",
        "--config.user", "1000:1000",
        "--config.entrypoint", "/bin/sh",
        "--config.cmd", "-c",
        "--config.cmd", "echo hello",
        "--config.exposedports", "8080/tcp",
    )

    def layer2(rootfs):
        os.unlink(rootfs / "etc/gone")
        (rootfs / "etc/new").write_text("added in layer 2\n")

    lay.modify("v1", "v2", layer2, base)
    # Two platform variants of v2 told apart by an env var, joined in an index.
    lay.config("v2", "--tag", "amd", "--architecture", "amd64", "--config.env", "ARCH_MARK=amd64")
    lay.config("v2", "--tag", "arm", "--architecture", "arm64", "--config.env", "ARCH_MARK=arm64")
    lay.add_index("multi", {"arm": ("linux", "arm64"), "amd": ("linux", "amd64")})

    def unique(rootfs):
        (rootfs / "unique").write_text(uuid.uuid4().hex * 1000)

    lay.modify("v1", "tampered", unique, base)
    lay.push("v1", f"{reg.host}/test/busybox:1")
    lay.push("v2", f"{reg.host}/test/busybox:2")
    lay.push("multi", f"{reg.host}/test/multi:1", all_platforms=True)
    lay.push("tampered", f"{reg.host}/test/tampered:1")
    yield reg, lay, base
    reg.stop()


def test_pull_unpacks_layers_with_whiteouts_ownership_and_config(env, tmp_path):
    reg, _, _ = env
    data = tmp_path / "data"
    ref = f"{reg.host}/test/busybox:2"
    p = corral(data, "pull", ref)
    assert f"pulled {ref} sha256:" in p.stdout
    img = inspect(data, ref)
    assert img["reference"] == ref
    assert len(img["layers"]) == 2
    low, up = (os.path.realpath(l) for l in img["layers"])
    assert low.startswith(str(data / "images/layers/sha256"))
    # Layer 1: busybox and friends, ownership kept.
    with open("/bin/busybox", "rb") as f:
        assert open(os.path.join(low, "bin/busybox"), "rb").read() == f.read()
    assert os.readlink(os.path.join(low, "bin/sh")) == "busybox"
    st = os.stat(os.path.join(low, "work/owned"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.path.isfile(os.path.join(low, "etc/gone"))
    # Layer 2: the deletion is an overlayfs whiteout (char device 0:0).
    wh = os.lstat(os.path.join(up, "etc/gone"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert open(os.path.join(up, "etc/new")).read() == "added in layer 2\n"
    assert not any(n.startswith(".wh.") for n in os.listdir(os.path.join(up, "etc")))
    # Config.
    cfg = img["config"]
    assert "FOO=bar" in cfg["env"]
    assert cfg["workingDir"] == "/work"
    assert cfg["user"] == "1000:1000"
    assert cfg["entrypoint"] == ["/bin/sh"]
    assert cfg["cmd"] == ["-c", "echo hello"]
    assert cfg["exposedPorts"] == ["8080/tcp"]
    assert img["size"] >= os.path.getsize("/bin/busybox")
    # The layers stack under overlayfs: the whiteout hides the file, busybox runs.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={up}:{low}", mnt)
    try:
        assert not (mnt / "etc/gone").exists()
        assert (mnt / "etc/new").exists()
        out = run("chroot", mnt, "/bin/sh", "-c", "echo from-image; cat /etc/new")
        assert out == "from-image\nadded in layer 2\n"
    finally:
        run("umount", mnt)
    listed = corral(data, "list", "--json").stdout
    assert [i["reference"] for i in json.loads(listed)] == [ref]


def test_second_pull_downloads_nothing(env, tmp_path):
    reg, _, _ = env
    data = tmp_path / "data"
    ref = f"{reg.host}/test/busybox:2"
    corral(data, "pull", ref)
    before = reg.blob_gets()
    p = corral(data, "pull", ref)
    assert "downloaded 0 bytes" in p.stdout
    assert p.stderr.count("cached") == 2
    assert reg.blob_gets() == before, "blobs fetched again"
    # A different tag sharing the bottom layer downloads only what it lacks.
    p = corral(data, "pull", f"{reg.host}/test/busybox:1")
    assert "cached" in p.stderr
    assert reg.blob_gets() == before + 1, "only the new config"


def test_tampered_blob_is_rejected_and_nothing_installed(env, tmp_path):
    reg, _, _ = env
    data = tmp_path / "data"
    ref = f"{reg.host}/test/tampered:1"
    req = urllib.request.Request(
        f"http://{reg.host}/v2/test/tampered/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    manifest = json.loads(urllib.request.urlopen(req).read())
    blob = reg.blob_data(manifest["layers"][-1]["digest"])
    original = blob.read_bytes()
    try:
        blob.write_bytes(bytes(b ^ 0x55 for b in original))
        p = corral(data, "pull", ref, check=False)
        assert p.returncode != 0
        assert "digest check failed" in p.stderr, p.stderr
        assert manifest["layers"][-1]["digest"] in p.stderr
        assert json.loads(corral(data, "list", "--json").stdout) == []
        assert layer_count(data) == 0, "a layer was installed"
        assert os.listdir(data / "images/tmp") == []
    finally:
        blob.write_bytes(original)
    corral(data, "pull", ref)
    assert layer_count(data) == 2


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the index's host entry is amd64")
def test_multi_arch_index_resolves_to_this_host(env, tmp_path):
    reg, lay, _ = env
    data = tmp_path / "data"
    ref = f"{reg.host}/test/multi:1"
    corral(data, "pull", ref)
    img = inspect(data, ref)
    assert img["config"]["architecture"] == "amd64"
    assert "ARCH_MARK=amd64" in img["config"]["env"]
    assert img["manifestDigest"] == lay.descriptor("amd")["digest"]


def test_import_docker_save_and_oci_archives(env, tmp_path):
    reg, lay, _ = env
    data = tmp_path / "data"
    ds = tmp_path / "docker.tar"
    run(
        "skopeo", "copy", "--src-tls-verify=false",
        f"docker://{reg.host}/test/busybox:2", f"docker-archive:{ds}:test/imported:1",
    )
    p = corral(data, "import", ds)
    assert "imported docker.io/test/imported:1" in p.stdout
    img = inspect(data, "test/imported:1")
    low, up = img["layers"]
    assert os.path.isfile(os.path.join(low, "bin/busybox"))
    assert stat.S_ISCHR(os.lstat(os.path.join(up, "etc/gone")).st_mode)
    assert img["config"]["workingDir"] == "/work"

    oa = tmp_path / "oci.tar"
    run("skopeo", "copy", f"oci:{lay.path}:v2", f"oci-archive:{oa}:v2")
    p = corral(data, "import", oa, check=False)
    assert p.returncode != 0 and "--name" in p.stderr
    corral(data, "import", oa, "--name", "local.test/oci:1")
    img2 = inspect(data, "local.test/oci:1")
    # Same layer content (same diff ids) as the docker-save import: shared, not duplicated.
    assert img2["layers"] == img["layers"]
    assert layer_count(data) == 2
    refs = [i["reference"] for i in json.loads(corral(data, "list", "--json").stdout)]
    assert refs == ["docker.io/test/imported:1", "local.test/oci:1"]

    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    p = corral(data, "import", bad, check=False)
    assert p.returncode != 0 and "importing" in p.stderr


def test_rm_and_gc_remove_only_unused_layers(env, tmp_path):
    reg, _, _ = env
    data = tmp_path / "data"
    corral(data, "pull", f"{reg.host}/test/busybox:1")
    corral(data, "pull", f"{reg.host}/test/busybox:2")
    assert layer_count(data) == 2
    p = corral(data, "rm", f"{reg.host}/test/busybox:2")
    assert "freed 1 layers" in p.stdout
    assert layer_count(data) == 1
    img = inspect(data, f"{reg.host}/test/busybox:1")
    assert os.path.isfile(os.path.join(img["layers"][0], "bin/busybox"))
    p = corral(data, "rm", f"{reg.host}/test/busybox:2", check=False)
    assert p.returncode != 0 and "not found" in p.stderr
    # A sandbox bound to the image keeps its layers, even once nothing names them.
    (data / "bound").mkdir(exist_ok=True)
    binding = {"reference": img["reference"], "layers": img["layers"],
               "diff_ids": img["config"]["diffIds"], "config": img["config"]}
    (data / "bound" / "sb-1.json").write_text(json.dumps(binding))
    p = corral(data, "rm", f"{reg.host}/test/busybox:1")
    assert "freed 0 layers" in p.stdout, p.stdout
    assert layer_count(data) == 1
    (data / "bound" / "sb-1.json").unlink()
    corral(data, "gc")
    assert layer_count(data) == 0
    assert json.loads(corral(data, "list", "--json").stdout) == []
