"""Volumes (`/api/volumes` and `volumes=[VolumeMount(...)]` on create), through the real
Daytona SDK against `corral serve`: persistence across sandboxes, sharing, subpaths, the
symlink escape, ownership, delete-in-use refusal, and no leftovers on the host."""

import uuid

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    VolumeMount,
)

from conftest import Server


def sh(sb, cmd):
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, (cmd, r.result)
    return r.result.strip()


def name(prefix="vol"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def vol_dir(server, vid):
    """A volume's host directory: a subvolume in the btrfs disk pool, else a plain dir."""
    in_pool = server.data_dir / "disk" / ".volumes" / vid
    return in_pool if in_pool.exists() else server.data_dir / "volumes" / vid


def with_volumes(*mounts):
    return CreateSandboxFromSnapshotParams(volumes=list(mounts))


@pytest.fixture(scope="module")
def srv():
    s = Server()
    s.start()
    yield s
    leftovers = s.finish()
    assert leftovers == ([], [], [], []), f"left behind: {leftovers}"


@pytest.fixture(scope="module")
def d(srv):
    return srv.client()


def test_create_get_by_name_list_and_delete(srv, d):
    n = name()
    v = d.volume.create(n)
    assert v.name == n and v.state == "ready" and v.id
    assert v.organization_id and v.created_at and v.error_reason is None
    assert vol_dir(srv, v.id).is_dir()
    assert d.volume.get(n).id == v.id
    status, body = srv.request("GET", f"/api/volumes/{v.id}")
    assert status == 200 and body["name"] == n and body["state"] == "ready"
    assert v.id in [x.id for x in d.volume.list()]
    # get(create=True): a 404 by name, then a create.
    n2 = name()
    with pytest.raises(DaytonaNotFoundError):
        d.volume.get(n2)
    v2 = d.volume.get(n2, create=True)
    assert v2.name == n2 and v2.state == "ready"
    assert d.volume.get(n2, create=True).id == v2.id
    # A taken name is a conflict.
    with pytest.raises(DaytonaConflictError, match="already exists"):
        d.volume.create(n)
    d.volume.delete(v2)
    assert not vol_dir(srv, v2.id).exists()
    assert v2.id not in [x.id for x in d.volume.list()]
    status, body = srv.request("GET", "/api/volumes?includeDeleted=true")
    assert status == 200
    assert [x["state"] for x in body if x["id"] == v2.id] == ["deleted"]
    with pytest.raises(DaytonaNotFoundError):
        d.volume.get(n2)
    status, body = srv.request("GET", f"/api/volumes/{uuid.uuid4()}")
    assert status == 404 and "not found" in body["message"]
    # The name is free again.
    v3 = d.volume.create(n2)
    assert v3.id != v2.id
    d.volume.delete(v3)
    d.volume.delete(v)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 256, "sp ace", "semi;colon"])
def test_bad_names_are_400(srv, d, bad):
    status, body = srv.request("POST", "/api/volumes", {"name": bad})
    assert status == 400, body
    assert "volume name" in body["message"]


def test_bad_create_body_is_400(srv):
    status, body = srv.request("POST", "/api/volumes", {"nom": "x"})
    assert status == 400 and body["statusCode"] == 400


def test_data_persists_across_sandboxes_and_belongs_to_the_user(srv, d):
    v = d.volume.create(name())
    sb1 = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/home/daytona/data")))
    assert [m.mount_path for m in d.get(sb1.id).volumes] == ["/home/daytona/data"]
    sh(sb1, "echo kept > /home/daytona/data/f.txt && mkdir /home/daytona/data/sub")
    assert sh(sb1, "stat -c %U /home/daytona/data/f.txt /home/daytona/data/sub /home/daytona/data") \
        .split() == ["daytona"] * 3
    # nosuid,nodev on the mount.
    opts = sh(sb1, "grep ' /home/daytona/data ' /proc/mounts")
    assert "nosuid" in opts and "nodev" in opts
    d.delete(sb1)
    # The data outlives the sandbox; the volume is found by name too.
    sb2 = d.create(with_volumes(VolumeMount(volume_id=v.name, mount_path="/mnt/v")))
    assert sh(sb2, "cat /mnt/v/f.txt") == "kept"
    d.delete(sb2)
    d.volume.delete(v)
    assert not vol_dir(srv, v.id).exists()


def test_two_running_sandboxes_share_a_volume(srv, d):
    v = d.volume.create(name())
    a = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/shared")))
    b = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data/shared")))
    sh(a, "echo from-a > /shared/msg")
    assert sh(b, "cat /data/shared/msg") == "from-a"
    sh(b, "echo from-b >> /data/shared/msg")
    assert sh(a, "cat /shared/msg").split() == ["from-a", "from-b"]
    d.delete(a)
    d.delete(b)
    d.volume.delete(v)


def test_subpath_shows_only_that_dir(srv, d):
    v = d.volume.create(name())
    full = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/vol")))
    sh(full, "mkdir -p /vol/proj/src && echo inside > /vol/proj/src/a && echo top > /vol/top")
    sub = d.create(with_volumes(
        VolumeMount(volume_id=v.id, mount_path="/work", subpath="proj"),
        VolumeMount(volume_id=v.id, mount_path="/fresh", subpath="new/deeper"),
    ))
    assert sh(sub, "ls -A /work") == "src"
    assert sh(sub, "cat /work/src/a") == "inside"
    assert sub.process.exec("cat /work/../top").exit_code != 0
    assert sh(sub, "ls -A /fresh") == ""
    # A missing subpath is created, owned by the sandbox user, and visible in the volume.
    sh(sub, "touch /fresh/x")
    assert sh(full, "stat -c %U /vol/new /vol/new/deeper /vol/new/deeper/x").split() == ["daytona"] * 3
    d.delete(full)
    d.delete(sub)
    d.volume.delete(v)


@pytest.mark.parametrize("subpath,why", [
    ("../..", "subpath"),
    ("a/../../b", "subpath"),
    ("/etc", "relative"),
])
def test_escaping_subpaths_are_refused(srv, d, subpath, why):
    v = d.volume.get("escape-tests", create=True)
    with pytest.raises(DaytonaBadRequestError, match=why):
        d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/x", subpath=subpath)))


@pytest.mark.parametrize("path", ["/proc", "/proc/sys", "/sys", "/dev", "/", "relative",
                                  "/.corral", "/.corral/agent", "/a/../b"])
def test_bad_mount_paths_are_refused(srv, d, path):
    v = d.volume.get("escape-tests", create=True)
    with pytest.raises(DaytonaBadRequestError, match="mountPath"):
        d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path=path)))


def test_bad_mount_lists_are_refused(srv, d):
    v = d.volume.get("escape-tests", create=True)
    before = {s.id for s in d.list()}
    with pytest.raises(DaytonaBadRequestError, match="two volumes"):
        d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/a"),
                              VolumeMount(volume_id=v.id, mount_path="/a/")))
    with pytest.raises(DaytonaNotFoundError, match="Volume"):
        d.create(with_volumes(VolumeMount(volume_id="no-such-volume", mount_path="/a")))
    status, body = srv.request("POST", "/api/sandbox", {"volumes": [{"mountPath": "/a"}]})
    assert status == 400, body
    status, body = srv.request("POST", "/api/sandbox", {
        "volumes": [{"volumeId": v.id, "mountPath": f"/m{i}"} for i in range(17)]})
    assert status == 400 and "at most" in body["message"]
    # Nothing of the refused creates stays around.
    assert {s.id for s in d.list()} <= before


def test_planted_symlink_does_not_expose_the_host(srv, d):
    v = d.volume.create(name())
    a = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/vol")))
    sh(a, "ln -s /etc /vol/sub && ln -s / /vol/rootlink && mkdir /vol/ok && ln -s /etc /vol/ok/inner")
    d.delete(a)
    for sub in ["sub", "rootlink", "ok/inner", "ok/inner/shadow"]:
        with pytest.raises(DaytonaBadRequestError, match="symlink"):
            d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/x", subpath=sub)))
    # The host's files stay untouched and nothing was created through the link.
    assert not (vol_dir(srv, v.id) / "sub").resolve().joinpath("ok").exists()
    host_hostname = open("/etc/hostname").read()
    c = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/vol")))
    # Within its own sandbox, /vol/sub points at the sandbox's /etc, not the host's.
    sh(c, "ln -sfn /etc /vol/sub2")
    assert sh(c, "cat /vol/sub2/hostname") == c.id
    assert sh(c, "cat /vol/sub2/hostname") != host_hostname.strip()
    d.delete(c)
    d.volume.delete(v)


def test_symlinked_mount_point_stays_inside_the_sandbox(srv, d):
    v = d.volume.create(name())
    marker = f"corral-vol-{uuid.uuid4().hex[:8]}"
    sb = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path=f"/home/daytona/m/{marker}")))
    sh(sb, f"touch /home/daytona/m/{marker}/seen")
    # The user swaps the mount point's parent for a symlink to /etc, then restarts.
    sh(sb, "mv /home/daytona/m /home/daytona/old && ln -s /etc /home/daytona/m")
    d.stop(sb)
    d.start(sb)
    # The mount followed the link inside the sandbox's own tree only.
    assert sh(sb, f"ls /etc/{marker}") == "seen"
    assert not __import__("os").path.exists(f"/etc/{marker}")
    d.delete(sb)
    d.volume.delete(v)


def test_deleting_a_volume_in_use_is_refused_and_keeps_data(srv, d):
    v = d.volume.create(name())
    sb = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")))
    sh(sb, "echo precious > /data/p")
    with pytest.raises(DaytonaConflictError, match=f"in use by sandbox {sb.id}"):
        d.volume.delete(v)
    assert d.volume.get(v.name).state == "ready"
    assert sh(sb, "cat /data/p") == "precious"
    # Stopped still counts as in use.
    d.stop(sb)
    with pytest.raises(DaytonaConflictError):
        d.volume.delete(v)
    d.start(sb)
    assert sh(sb, "cat /data/p") == "precious"
    d.delete(sb)
    assert (vol_dir(srv, v.id) / "p").read_text() == "precious\n"
    d.volume.delete(v)
    assert not vol_dir(srv, v.id).exists()
    # A deleted volume cannot be mounted.
    with pytest.raises(DaytonaError):
        d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")))


def test_warm_pool_does_not_serve_volume_creates():
    s = Server(env={"CORRAL_POOL_SIZE": "1"})
    s.start()
    try:
        d = s.client()
        v = d.volume.create(name())
        sb = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")))
        sh(sb, "test -d /data && touch /data/x")
        assert (vol_dir(s, v.id) / "x").exists()
        d.delete(sb)
        d.volume.delete(v)
    finally:
        leftovers = s.finish()
    assert leftovers[:2] == ([], [])


def test_volumes_come_back_after_archive_and_restart(srv, d):
    v = d.volume.create(name())
    sb = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data", subpath="a/b")))
    sh(sb, "echo one > /data/f")
    d.stop(sb)
    sb.archive()
    assert d.get(sb.id).state == "archived"
    d.start(sb)
    assert sh(sb, "cat /data/f") == "one"
    assert (vol_dir(srv, v.id) / "a" / "b" / "f").read_text() == "one\n"
    d.delete(sb)
    d.volume.delete(v)


def test_volumes_and_mounts_survive_a_server_restart():
    s = Server()
    s.start()
    try:
        d = s.client()
        v = d.volume.create(name())
        sb = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")))
        sh(sb, "echo before > /data/f")
        d.stop(sb)
        s.stop()
        s.start()
        d = s.client()
        assert d.volume.get(v.name).id == v.id
        sb = d.get(sb.id)
        assert [(m.volume_id, m.mount_path) for m in sb.volumes] == [(v.id, "/data")]
        d.start(sb)
        assert sh(sb, "cat /data/f") == "before"
        with pytest.raises(DaytonaConflictError):
            d.volume.delete(v)
        d.delete(sb)
        d.volume.delete(v)
        assert v.id not in [x.id for x in d.volume.list()]
    finally:
        leftovers = s.finish()
    assert leftovers == ([], [], [], [])


def test_volume_size_limit():
    """With the btrfs disk pool each volume is a subvolume with a size limit
    (--volume-size-mib): writes past it fail inside with EDQUOT, for every sandbox mounting
    it, and the host's disk is untouched; freeing space makes room again."""
    s = Server(env={"CORRAL_VOLUME_SIZE_MIB": "64"})
    s.start()
    try:
        d = s.client()
        v = d.volume.create(name("quota"))
        assert (s.data_dir / "disk" / ".volumes" / v.id).is_dir(), "volume not in the disk pool"
        a = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")), timeout=60)
        b = d.create(with_volumes(VolumeMount(volume_id=v.id, mount_path="/data")), timeout=60)
        r = a.process.exec("dd if=/dev/zero of=/data/big bs=1M count=100 conv=fsync 2>&1; echo rc=$?")
        assert "Disk quota exceeded" in r.result and "rc=0" not in r.result, r.result
        size = int(sh(a, "stat -c %s /data/big"))
        assert 32 << 20 <= size <= 64 << 20, size
        # The other sandbox shares the same limit.
        r = b.process.exec("dd if=/dev/zero of=/data/more bs=1M count=64 conv=fsync 2>&1; echo rc=$?")
        assert "Disk quota exceeded" in r.result, r.result
        sh(a, "rm -f /data/big /data/more && sync")
        # Freed space counts again (btrfs accounts it at the next commit).
        for _ in range(50):
            r = b.process.exec("dd if=/dev/zero of=/data/small bs=1M count=8 conv=fsync 2>&1; echo rc=$?")
            if "rc=0" in r.result:
                break
            b.process.exec("sync; sleep 0.2")
        assert "rc=0" in r.result, r.result
        for sb in (a, b):
            d.delete(sb, wait=True)
        d.volume.delete(v)
        assert not (s.data_dir / "disk" / ".volumes" / v.id).exists()
    finally:
        assert s.finish() == ([], [], [], [])
