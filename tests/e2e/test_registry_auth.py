"""Private registries: pulls over HTTPS from a real `docker-registry` whose certificate comes
from a CA only the host's trust store knows (the `trusted_cert` fixture), with htpasswd
(Basic) or token (Bearer) authentication, credentials from a Docker-style `config.json`
given to `corral serve` by CORRAL_REGISTRY_AUTH_FILE. Driven by the Daytona SDK; also the
`corral image pull --auth-file` command. Plain-HTTP loopback registries are covered by
test_images_pull.py and test_images.py."""

import base64
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid

import pytest
from daytona import CreateSandboxFromImageParams, CreateSnapshotParams, DaytonaError

from conftest import Server
from oci_helpers import Layout, Registry, TokenServer, busybox_rootfs, run, tools_or_skip

CORRAL = os.environ.get("CORRAL_BIN", "target/release/corral")
REPO = "test/bb:1"


@pytest.fixture(scope="module")
def env(trusted_cert, tmp_path_factory):
    """An image pushed to two HTTPS registries on localhost: one with htpasswd (alice), one
    with token auth (bob, through a token server also on HTTPS)."""
    tools_or_skip()
    if shutil.which("htpasswd") is None:
        msg = "htpasswd missing (apt-get install apache2-utils)"
        if os.environ.get("CORRAL_E2E_STRICT"):
            pytest.fail(msg)
        pytest.skip(msg)
    base = tmp_path_factory.mktemp("oci-auth")
    lay = Layout(base / "layout")
    lay.new_base("base")
    lay.modify("base", "v1", busybox_rootfs, base)
    lay.config("v1", "--config.env", "PATH=/bin", "--config.env", "MARK=private-image")
    users = {"alice": "pw-" + secrets.token_hex(8), "bob": "pw-" + secrets.token_hex(8)}
    basic = Registry(base / "basic", hostname="localhost", tls=trusted_cert, htpasswd={"alice": users["alice"]})
    tokens = TokenServer(base / "tokens", {"bob": users["bob"]}, tls=trusted_cert)
    bearer = Registry(base / "bearer", hostname="localhost", tls=trusted_cert, token=tokens)
    try:
        lay.push("v1", f"{basic.host}/{REPO}", creds=f"alice:{users['alice']}", tls_verify=True)
        lay.push("v1", f"{bearer.host}/{REPO}", creds=f"bob:{users['bob']}", tls_verify=True)
        yield {"basic": basic, "bearer": bearer, "tokens": tokens, "users": users, "base": base,
               "layout": lay}
    finally:
        basic.stop()
        bearer.stop()
        tokens.stop()


def auth_file(path, entries):
    """A Docker config.json: {registry: (user, password)}."""
    auths = {host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in entries.items()}
    path.write_text(json.dumps({"auths": auths}))
    return path


@pytest.fixture
def start(tmp_path):
    """Starts `corral serve` with the given credentials file (None: no credentials at all,
    not even ~/.docker/config.json) and proves at the end that nothing was left behind."""
    servers = []

    def start_server(config):
        docker_config = tmp_path / f"docker-config-{len(servers)}"
        docker_config.mkdir()
        env = {"DOCKER_CONFIG": str(docker_config)}
        if config is not None:
            env["CORRAL_REGISTRY_AUTH_FILE"] = str(config)
        s = Server(env=env)
        servers.append(s)
        s.start()
        return s

    yield start_server
    for s in servers:
        log = s.log.name
        leftovers = s.finish()
        assert leftovers == ([], [], [], []), f"left behind: {leftovers} (log {log})"


def server_log(server) -> str:
    server.log.flush()
    with open(server.log.name, errors="replace") as f:
        return f.read()


def test_https_registry_with_htpasswd_pulls_with_credentials_from_config(env, start, tmp_path):
    basic = env["basic"]
    config = auth_file(tmp_path / "config.json", {basic.host: ("alice", env["users"]["alice"])})
    server = start(config)
    d = server.client()
    sb = d.create(CreateSandboxFromImageParams(image=f"{basic.host}/{REPO}"), timeout=120)
    try:
        r = sb.process.exec("echo $MARK; ls /bin/busybox")
        assert r.exit_code == 0 and r.result.split() == ["private-image", "/bin/busybox"], r.result
    finally:
        d.delete(sb, wait=True)
    log = basic.log()
    # The registry served the blobs to alice over TLS, and corral never tried plain HTTP.
    assert any("/blobs/sha256:" in l and "alice" in l for l in log.splitlines()), log[-3000:]
    assert "plain HTTP" not in server_log(server)


def test_htpasswd_registry_without_or_with_wrong_credentials_is_a_clear_error(env, start, tmp_path):
    basic = env["basic"]
    ref = f"{basic.host}/{REPO}"
    anonymous = start(None)
    d = anonymous.client()
    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromImageParams(image=ref), timeout=60)
    assert "unauthorized" in str(e.value) and "no credentials" in str(e.value), e.value
    failed = [s for s in d.list() if s.state != "destroyed"]
    assert len(failed) == 1 and f"Sandbox {failed[0].id} entered error state" in str(e.value), (failed, e.value)
    # The SDK raised on seeing `build_failed`; the record says so (read again for a while:
    # a state that moved back would show here, with the server's log to tell why).
    deadline = time.monotonic() + 10
    while failed[0].state != "build_failed" and time.monotonic() < deadline:
        time.sleep(0.5)
        failed[0] = d.get(failed[0].id)
    assert failed[0].state == "build_failed", (failed[0], server_log(anonymous)[-4000:])
    assert "no credentials configured" in failed[0].error_reason, failed[0].error_reason
    d.delete(failed[0], wait=True)

    wrong = start(auth_file(tmp_path / "config.json", {basic.host: ("alice", "not-her-password")}))
    d = wrong.client()
    name = "priv-" + uuid.uuid4().hex[:8]
    with pytest.raises(DaytonaError) as e:
        d.snapshot.create(CreateSnapshotParams(name=name, image=ref), timeout=60)
    assert "credentials of alice were refused" in str(e.value), e.value
    snap = d.snapshot.get(name)
    assert snap.state == "error" and "unauthorized" in snap.error_reason, snap
    d.snapshot.delete(snap)


def test_token_registry_over_https_pulls_with_a_bearer_token(env, start, tmp_path):
    bearer, tokens = env["bearer"], env["tokens"]
    config = auth_file(tmp_path / "config.json", {bearer.host: ("bob", env["users"]["bob"])})
    server = start(config)
    d = server.client()
    tokens.requests.clear()
    name = "tok-" + uuid.uuid4().hex[:8]
    snap = d.snapshot.create(CreateSnapshotParams(name=name, image=f"{bearer.host}/{REPO}"), timeout=120)
    assert snap.state == "active", snap
    sb = d.create(CreateSandboxFromImageParams(image=f"{bearer.host}/{REPO}"), timeout=120)
    try:
        assert sb.process.exec("echo $MARK").result.strip() == "private-image"
    finally:
        d.delete(sb, wait=True)
    d.snapshot.delete(name)
    # corral asked the token server, as bob, for pull access to exactly this repository, and
    # one token served the whole pull (cached per registry and scope).
    assert tokens.requests, "no token requested"
    assert all(
        r == {"user": "bob", "service": tokens.service, "scope": "repository:test/bb:pull",
              "account": "bob", "granted": True}
        for r in tokens.requests
    ), tokens.requests
    assert len(tokens.requests) == 1, tokens.requests
    assert "plain HTTP" not in server_log(server)


def test_token_registry_without_or_with_wrong_credentials_is_a_clear_error(env, start, tmp_path):
    bearer, tokens = env["bearer"], env["tokens"]
    ref = f"{bearer.host}/{REPO}"
    tokens.requests.clear()
    anonymous = start(None)
    d = anonymous.client()
    name = "anon-" + uuid.uuid4().hex[:8]
    with pytest.raises(DaytonaError) as e:
        d.snapshot.create(CreateSnapshotParams(name=name, image=ref), timeout=60)
    # An anonymous token grants nothing: the registry still says unauthorized.
    assert "unauthorized" in str(e.value) and "no credentials" in str(e.value), e.value
    assert [(r["user"], r["granted"]) for r in tokens.requests] == [(None, False)], tokens.requests
    d.snapshot.delete(d.snapshot.get(name))

    tokens.requests.clear()
    wrong = start(auth_file(tmp_path / "config.json", {bearer.host: ("bob", "not-his-password")}))
    d = wrong.client()
    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromImageParams(image=ref), timeout=60)
    assert "credentials of bob were refused" in str(e.value), e.value
    assert [(r["user"], r["granted"]) for r in tokens.requests] == [("bob", False)], tokens.requests
    failed = [s for s in d.list() if s.state != "destroyed"]
    assert [s.state for s in failed] == ["build_failed"] and "unauthorized" in failed[0].error_reason, failed
    d.delete(failed[0], wait=True)


def corral_pull(data, ref, *args):
    return subprocess.run([CORRAL, "image", "pull", ref, "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=300)


def test_image_pull_command_uses_the_auth_file_and_explains_untrusted_certificates(env, tmp_path):
    basic = env["basic"]
    ref = f"{basic.host}/{REPO}"
    config = auth_file(tmp_path / "config.json", {basic.host: ("alice", env["users"]["alice"])})
    p = corral_pull(tmp_path / "data", ref, "--auth-file", config)
    assert p.returncode == 0 and f"pulled {ref} sha256:" in p.stdout, p.stderr
    p = corral_pull(tmp_path / "data2", ref, "--auth-file", tmp_path / "absent.json")
    assert p.returncode != 0 and "unauthorized" in p.stderr, p.stderr

    # A loopback registry whose certificate comes from a CA nobody trusts: HTTPS fails,
    # plain HTTP is refused by the TLS port, and the error says why.
    d = tmp_path / "untrusted"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "1",
        "-subj", "/CN=untrusted e2e CA")
    run("openssl", "req", *ec, "-keyout", d / "key.pem", "-out", d / "req.csr", "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", d / "req.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-out", d / "cert.pem", "-days", "1", "-extfile", d / "ext")
    untrusted = Registry(d / "registry", hostname="localhost", tls=(d / "cert.pem", d / "key.pem"))
    try:
        env["layout"].push("v1", f"{untrusted.host}/{REPO}")
        p = corral_pull(tmp_path / "data3", f"{untrusted.host}/{REPO}")
    finally:
        untrusted.stop()
    assert p.returncode != 0, p.stdout
    assert "HTTPS failed" in p.stderr and "UnknownIssuer" in p.stderr, p.stderr
