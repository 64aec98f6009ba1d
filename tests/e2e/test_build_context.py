"""Declarative builds that COPY from an uploaded build context, against a real `corral serve`:
the SDK's `Image.add_local_dir`/`add_local_file`, `dockerfile_commands(context_dir=)` and
`Image.from_dockerfile` produce the Dockerfile and the local sources; each source is archived
and hashed exactly as the SDK's `ObjectStorage` does and placed where an upload lands
(`<data>/object-storage/corral-build-context/corral/<md5>/context.tar`: the S3 upload route
is tested on its own), then the build is asked for with `buildInfo.contextHashes`. Sandboxes
from the result are checked for files, modes, owners (`--chown`), symlinks, hard links, a
glob COPY and a directory COPY; missing context is a 400 `BUILD_CONTEXT_MISSING`."""

import os
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, Image
from daytona._sync.object_storage import ObjectStorage

from conftest import Server
from oci_helpers import busybox_rootfs, root_image, tools_or_skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tools_or_skip()
    reg, image = root_image(tmp_path_factory.mktemp("oci-ctx"), "test/ctx", rootfs)
    server = Server()
    server.start()
    yield image, server
    try:
        assert server.finish() == ([], [], [], [])
    finally:
        reg.stop()


def rootfs(root):
    busybox_rootfs(root)
    for applet in ("sleep", "stat", "readlink", "test", "ls", "mkdir"):
        if not (root / "bin" / applet).exists():
            os.symlink("busybox", root / "bin" / applet)
    with open(root / "etc/passwd", "a") as f:
        f.write("app:x:1500:1600::/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nstaff:x:50:\napp:x:1600:\n")


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def upload(server, image):
    """Archives and hashes each local source of `image` as the SDK does before a build, and
    puts the archive where an upload to the context store lands. Returns the hashes."""
    storage = ObjectStorage.__new__(ObjectStorage)  # only its hashing, no S3 client
    hashes = []
    for ctx in image._context_list:
        source = os.path.normpath(ctx.source_path)
        digest = storage._compute_hash_for_path_md5(source, ctx.archive_path)
        dest = server.data_dir / "object-storage/corral-build-context/corral" / digest / "context.tar"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(source, arcname=ctx.archive_path)
        hashes.append(digest)
    return hashes


def build(server, name, dockerfile, hashes, timeout=180):
    """Asks for a snapshot built from `dockerfile` with the uploaded context; waits for the
    build's end and returns the snapshot JSON."""
    status, body = server.request("POST", "/api/snapshots", {
        "name": name, "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": hashes}})
    assert status == 200, body
    deadline = time.time() + timeout
    while True:
        status, snap = server.request("GET", f"/api/snapshots/{name}")
        assert status == 200, snap
        if snap["state"] not in ("pending", "building"):
            return snap
        assert time.time() < deadline, snap
        time.sleep(0.3)


def build_log(server, snap):
    return server.request("GET", f"/api/snapshots/{snap['id']}/build-logs")[1]


def wait_started(d, sandbox_id, timeout=180):
    deadline = time.time() + timeout
    while (sb := d.get(sandbox_id)).state != "started":
        assert sb.state not in ("build_failed", "error"), sb.error_reason
        assert time.time() < deadline, sb.state
        time.sleep(0.3)
    return sb


def server_log(server):
    server.log.flush()
    return open(server.log.name, errors="replace").read()


def sh(sb, cmd):
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, (cmd, r.result)
    return r.result.strip()


@pytest.fixture()
def sources(tmp_path):
    """An app directory, a single file and a build-context directory on the "client"."""
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "main.py").write_text("print('hi')\n")
    (app / "run.sh").write_text("#!/bin/sh\necho run\n")
    (app / "run.sh").chmod(0o755)
    (app / "sub").chmod(0o755)
    (app / "sub/data.txt").write_text("data\n")
    (app / "sub/data.txt").chmod(0o600)
    # Owned by someone else on the client: the sandbox's copy is root's all the same.
    os.chown(app / "sub/data.txt", 4321, 4321)
    os.symlink("main.py", app / "link")
    os.link(app / "main.py", app / "hard.py")
    app.chmod(0o750)
    single = tmp_path / "f.txt"
    single.write_text("single file\n")
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf/a.ini").write_text("a=1\n")
    (ctx / "conf/b.ini").write_text("b=2\n")
    (ctx / "x.txt").write_text("x\n")
    (ctx / "y.txt").write_text("y\n")
    return app, single, ctx


def test_sdk_local_sources_are_copied_with_docker_rules(env, sources):
    image_ref, server = env
    app, single, ctx = sources
    d = server.client()
    image = (
        Image.base(image_ref)
        .add_local_dir(app, "/app")
        .add_local_file(single, "/etc/f.txt")
        .dockerfile_commands([
            "COPY --chown=app:staff --chmod=640 conf/ /conf/",
            "COPY *.txt /texts/",
            "COPY conf/a.ini /single.ini",
            "COPY --chown=1234 conf /owned",
            "RUN mkdir /into",
            # An existing directory named without a slash: the file goes into it.
            "COPY conf/b.ini /into",
        ], context_dir=ctx)
    )
    hashes = upload(server, image)
    name = uniq("ctx")
    snap = build(server, name, image.dockerfile(), hashes)
    assert snap["state"] == "active", (snap, build_log(server, snap))
    assert "Build context:" in build_log(server, snap)
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=60)
    try:
        # A directory's contents, its own mode on the new /app, modes of each file, root
        # owners whatever the client's were.
        assert sh(sb, "stat -c '%a %u:%g %n' /app /app/main.py /app/run.sh /app/sub /app/sub/data.txt") \
            .splitlines() == ["750 0:0 /app", "644 0:0 /app/main.py", "755 0:0 /app/run.sh",
                              "755 0:0 /app/sub", "600 0:0 /app/sub/data.txt"]
        assert sh(sb, "readlink /app/link") == "main.py"
        assert sh(sb, "cat /app/link") == "print('hi')"
        # The hard link stays one: two names of one file.
        assert sh(sb, "stat -c '%h %i' /app/hard.py") == sh(sb, "stat -c '%h %i' /app/main.py")
        assert sh(sb, "stat -c %h /app/main.py") == "2"
        assert sh(sb, "/app/run.sh") == "run"
        assert sh(sb, "cat /etc/f.txt") == "single file"
        # --chown by names, --chmod on files and directories.
        assert sh(sb, "stat -c '%a %U:%G %n' /conf /conf/a.ini /conf/b.ini").splitlines() == [
            "640 app:staff /conf", "640 app:staff /conf/a.ini", "640 app:staff /conf/b.ini"]
        assert sh(sb, "cat /texts/x.txt /texts/y.txt") == "x\ny"
        assert sh(sb, "cat /single.ini") == "a=1"
        # A uid alone: the same number as gid, as Docker does.
        assert sh(sb, "stat -c '%u:%g' /owned /owned/a.ini").splitlines() == ["1234:1234", "1234:1234"]
        assert sh(sb, "cat /into/b.ini") == "b=2"
    finally:
        d.delete(sb, wait=True)
    d.snapshot.delete(name)


def test_a_users_dockerfile_with_its_context(env, tmp_path):
    image_ref, server = env
    d = server.client()
    proj = tmp_path / "proj"
    (proj / "src/pkg").mkdir(parents=True)
    (proj / "src/pkg/mod.py").write_text("X = 1\n")
    (proj / "src/tool").write_text("#!/bin/sh\necho tool\n")
    (proj / "src/tool").chmod(0o755)
    (proj / "README.md").write_text("readme\n")
    (proj / "Dockerfile").write_text(
        f"FROM {image_ref}\n"
        "WORKDIR /srv\n"
        "COPY src/ ./\n"
        "COPY [\"README.md\", \"/doc/\"]\n"
        "ADD src/tool /usr/local/bin/tool\n"
    )
    image = Image.from_dockerfile(proj / "Dockerfile")
    hashes = upload(server, image)
    # `src/` and `README.md` (the SDK uploads COPY sources only: ADD's is inside `src/`).
    assert len(hashes) == 2
    dockerfile = image.dockerfile()

    # A sandbox straight from the Dockerfile and its context: built in the background.
    def create():
        status, body = server.request("POST", "/api/sandbox", {
            "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": hashes}})
        assert status == 200, body
        return body

    first = create()
    assert first["state"] == "pending_build", first
    sb = wait_started(d, first["id"])
    try:
        assert sh(sb, "cat /srv/pkg/mod.py /doc/README.md") == "X = 1\nreadme"
        assert sh(sb, "/usr/local/bin/tool") == "tool"
        assert sh(sb, "stat -c %a /usr/local/bin/tool") == "755"
        # Same Dockerfile, same context (in another order): the same build, reused.
        builds = server_log(server).count("building snapshot")
        hashes.reverse()
        again = create()
        assert again["snapshot"] == first["snapshot"], again
        sb_again = wait_started(d, again["id"], timeout=30)
        assert sh(sb_again, "cat /doc/README.md") == "readme"
        assert server_log(server).count("building snapshot") == builds
        d.delete(sb_again, wait=True)
        # Same Dockerfile, other context: another build.
        (proj / "README.md").write_text("changed\n")
        other = upload(server, Image.from_dockerfile(proj / "Dockerfile"))
        assert other != hashes
        status, body = server.request("POST", "/api/sandbox", {
            "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": list(reversed(other))}})
        assert status == 200 and body["snapshot"] != first["snapshot"], body
        sb2 = wait_started(d, body["id"])
        assert sh(sb2, "cat /doc/README.md") == "changed"
        d.delete(sb2, wait=True)
    finally:
        d.delete(sb, wait=True)


def test_copy_failures_and_missing_context(env, sources):
    image_ref, server = env
    app, single, ctx = sources
    d = server.client()
    # A small file, then a big one: the agent refuses the first while the rest still streams.
    (ctx / "big").mkdir()
    (ctx / "big/a").write_text("a\n")
    with open(ctx / "big/z.bin", "wb") as f:
        f.truncate(32 << 20)
    image = Image.base(image_ref).dockerfile_commands(["COPY *.txt /texts/", "COPY big /big"],
                                                      context_dir=ctx)
    hashes = upload(server, image)
    base = f"FROM {image_ref}\n"
    for line, word in [
        # A pattern matching several files needs a directory destination.
        ("COPY *.txt /texts\n", "matches several files"),
        ("RUN mkdir -p /big/a\nCOPY big /big\n", "/big/a is a directory and cannot be replaced"),
        ("COPY nothere.txt /x\n", "COPY source nothere.txt not found in the build context (uploaded: "),
    ]:
        name = uniq("bad")
        snap = build(server, name, base + line, hashes)
        assert snap["state"] == "build_failed" and word in snap["errorReason"], snap
        if "uploaded" in word:
            assert "x.txt" in snap["errorReason"] and "y.txt" in snap["errorReason"], snap
        assert word in build_log(server, snap)
        d.snapshot.delete(name)

    # Context that was never uploaded: refused at once, nothing recorded.
    missing = "0123456789abcdef0123456789abcdef"
    for path, body in [
        ("/api/snapshots", {"name": uniq("miss"), "buildInfo": {
            "dockerfileContent": base + "COPY a /a\n", "contextHashes": hashes + [missing]}}),
        ("/api/sandbox", {"buildInfo": {
            "dockerfileContent": base + "COPY a /a\n", "contextHashes": [missing]}}),
        ("/api/sandbox", {"buildInfo": {
            "dockerfileContent": base + "COPY a /a\n", "contextHashes": ["../../etc"]}}),
    ]:
        status, answer = server.request("POST", path, body)
        assert status == 400 and answer["code"] == "BUILD_CONTEXT_MISSING", answer
        bad = body["buildInfo"]["contextHashes"][-1]
        assert bad in answer["message"] and "upload it first" in answer["message"], answer
    assert [s for s in d.list()] == []
    assert not [s for s in d.snapshot.list().items if s.name.startswith("miss-")]
