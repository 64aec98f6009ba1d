"""Image builds with local files, through the Daytona SDK against a real `corral serve`: the
SDK uploads `Image.add_local_file` / `add_local_dir` / `from_dockerfile` context to the
server's S3 endpoint (over HTTPS: its S3 client refuses plain HTTP, so the server gets a
certificate from a test CA that the system trusts while these tests run), and the build
copies it into the image."""

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSnapshotParams,
    DaytonaError,
    Image,
)
from daytona._sync.object_storage import ObjectStorage

from conftest import Server
from oci_helpers import root_image, tools_or_skip

@pytest.fixture(scope="module")
def env(tmp_path_factory, trusted_cert):
    tools_or_skip()
    reg, image = root_image(tmp_path_factory.mktemp("oci-upload"), "test/bb")
    cert, key = trusted_cert
    server = Server(env={"CORRAL_TLS_CERT": str(cert), "CORRAL_TLS_KEY": str(key)})
    server.start()
    yield image, server
    try:
        assert server.finish() == ([], [], [], [])
    finally:
        reg.stop()


def stored_contexts(server):
    root = server.data_dir / "object-storage" / "corral-build-context"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("context.tar"))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_local_files_and_dirs_are_uploaded_and_copied(env, tmp_path):
    image, server = env
    d = server.client()
    app = tmp_path / "app"
    (app / "pkg" / "deep").mkdir(parents=True)
    (app / "main.py").write_text("print('hello from the context')\n")
    (app / "pkg" / "deep" / "data.txt").write_text("deep data\n")
    (app / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (app / "run.sh").chmod(0o755)
    (app / "link").symlink_to("main.py")
    # Over 5 MiB: the SDK's S3 client uploads it in parts.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 123))
    conf = tmp_path / "settings.conf"
    conf.write_text("mode=test\n")

    before = stored_contexts(server)
    image = (Image.base(image)
             .add_local_dir(app, "/srv/app")
             .add_local_file(big, "/data/big.bin")
             .add_local_file(conf, "/etc/myapp/")
             .run_commands("cat /srv/app/pkg/deep/data.txt > /from-run.txt"))
    sb = d.create(CreateSandboxFromImageParams(image=image), timeout=240)
    try:
        assert sb.state == "started"
        r = sb.process.exec(
            "cat /srv/app/main.py /srv/app/pkg/deep/data.txt /from-run.txt /etc/myapp/settings.conf; "
            "/srv/app/run.sh; readlink /srv/app/link; stat -c '%a %u:%g' /srv/app/run.sh /srv/app/main.py; "
            "sha256sum /data/big.bin")
        lines = r.result.split("\n")
        assert lines[:8] == ["print('hello from the context')", "deep data", "deep data", "mode=test",
                             "ran", "main.py", "755 0:0", "644 0:0"], r.result
        assert lines[8].split()[0] == sha256(big), r.result
    finally:
        d.delete(sb, wait=True)
    # Three uploads (dir, big file, small file), each a tar under its content hash.
    after = stored_contexts(server)
    assert len(after) == len(before) + 3, (before, after)
    assert all(p.startswith("corral/") for p in after)


def test_unchanged_context_is_not_uploaded_again_and_changed_context_rebuilds(env, tmp_path):
    base, server = env
    d = server.client()
    f = tmp_path / "version.txt"
    f.write_text("one\n")

    def image():
        return Image.base(base).add_local_file(f, "/version.txt")

    name1 = "up-" + uuid.uuid4().hex[:8]
    d.snapshot.create(CreateSnapshotParams(name=name1, image=image()), timeout=180)
    stored = stored_contexts(server)
    mtimes = {p: (server.data_dir / "object-storage" / "corral-build-context" / p).stat().st_mtime_ns
              for p in stored}
    sb = d.create(CreateSandboxFromImageParams(image=image()), timeout=120)
    try:
        assert sb.process.exec("cat /version.txt").result.strip() == "one"
    finally:
        d.delete(sb, wait=True)
    # Same content: the SDK found it (HEAD) and uploaded nothing.
    assert stored_contexts(server) == stored
    assert all((server.data_dir / "object-storage" / "corral-build-context" / p).stat().st_mtime_ns == m
               for p, m in mtimes.items())

    # Same Dockerfile text, new content: a new upload and a new build, never the old one.
    f.write_text("two\n")
    assert image().dockerfile() == Image.base(base).add_local_file(f, "/version.txt").dockerfile()
    sb = d.create(CreateSandboxFromImageParams(image=image()), timeout=180)
    try:
        assert sb.process.exec("cat /version.txt").result.strip() == "two"
    finally:
        d.delete(sb, wait=True)
    assert len(stored_contexts(server)) == len(stored) + 1
    d.snapshot.delete(name1)


def test_from_dockerfile_copies_relative_to_its_directory(env, tmp_path):
    image, server = env
    d = server.client()
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "a.txt").write_text("A\n")
    (proj / "src" / "b.txt").write_text("B\n")
    (proj / "notes.md").write_text("notes\n")
    (proj / "Dockerfile").write_text(
        f"FROM {image}\n"
        "WORKDIR /work\n"
        "COPY src ./src\n"
        "COPY --chmod=600 notes.md /work/\n"
        "RUN cat src/a.txt src/b.txt > all.txt\n")
    sb = d.create(CreateSandboxFromImageParams(image=Image.from_dockerfile(proj / "Dockerfile")), timeout=180)
    try:
        r = sb.process.exec("cat /work/all.txt /work/notes.md; stat -c %a /work/notes.md; pwd")
        assert r.result.split("\n")[:5] == ["A", "B", "notes", "600", "/work"], r.result
    finally:
        d.delete(sb, wait=True)


def test_s3_requests_must_be_signed_with_the_issued_secret(env):
    _, server = env
    status, creds = server.request("GET", "/api/object-storage/push-access")
    assert status == 200, creds
    assert creds["storageUrl"] == f"https://127.0.0.1:{server.port}/object-storage", creds
    key = f"{creds['organizationId']}/{'0' * 32}/context.tar"
    good = ObjectStorage(creds["storageUrl"], creds["accessKey"], creds["secret"],
                         creds["sessionToken"], creds["bucket"], region=creds["region"])
    assert good._file_exists_in_s3(key) is False
    forged = ObjectStorage(creds["storageUrl"], creds["accessKey"], "not-the-secret",
                           creds["sessionToken"], creds["bucket"], region=creds["region"])
    with pytest.raises(Exception, match="(?i)signature|403|forbidden"):
        forged.store.put(key, b"forged")
    assert not (server.data_dir / "object-storage" / creds["bucket"] / key).exists()
    # Without a bearer key there are no credentials at all.
    status, body = server.request("GET", "/api/object-storage/push-access", auth=False)
    assert status == 401, body


def test_plain_http_server_explains_that_uploads_need_tls(server, tmp_path):
    """The session's server has no certificate: the SDK gets a clear error, not a TLS failure."""
    f = tmp_path / "x.txt"
    f.write_text("x\n")
    d = server.client()
    image = Image.base("busybox:latest").add_local_file(f, "/x.txt")
    with pytest.raises(DaytonaError, match="--tls-cert"):
        d.create(CreateSandboxFromImageParams(image=image), timeout=60)
    assert [s for s in d.list()] == []


def test_the_whole_sdk_works_over_https_on_the_same_port(env):
    """With a certificate, the API, the toolbox (HTTP and WebSocket) and the URLs handed out
    all use https when the client does; plain HTTP on the port still works."""
    _, server = env
    from daytona import Daytona, DaytonaConfig
    d = Daytona(DaytonaConfig(api_key=server.key, api_url=f"https://localhost:{server.port}/api"))
    sb = d.create(timeout=60)
    try:
        assert sb.toolbox_proxy_url.startswith(f"https://localhost:{server.port}/"), sb.toolbox_proxy_url
        assert sb.process.exec("echo over-tls").result.strip() == "over-tls"
        sb.fs.upload_file(b"tls bytes", "/tmp/t.bin")
        assert sb.fs.download_file("/tmp/t.bin") == b"tls bytes"
        # A PTY is a WebSocket through the toolbox proxy.
        pty = sb.process.create_pty_session(id="tls-pty")
        try:
            assert pty.is_connected()
            pty.send_input("echo pty-$((6*7))\nexit 4\n")
            out = bytearray()
            assert pty.wait(on_data=out.extend, timeout=15).exit_code == 4
            assert b"pty-42" in out, bytes(out)
        finally:
            pty.disconnect()
        # The same sandbox over plain HTTP on the same port.
        status, body = server.request("GET", f"/api/sandbox/{sb.id}")
        assert status == 200 and body["toolboxProxyUrl"].startswith("http://"), body
    finally:
        d.delete(sb, wait=True)
