"""Helpers for image tests: a real local registry (Debian's `docker-registry`), optionally
over TLS and with htpasswd or token authentication (the token server is here, in Python),
and OCI images built with `umoci` from busybox-static, pushed with `skopeo`.

Nothing here talks to the network beyond 127.0.0.1.
"""

import base64
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
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
    """A `docker-registry serve` on 127.0.0.1 with filesystem storage in `root`.

    `hostname` names it in references (`host` is `hostname:port`); `tls` is a
    (certificate, key) pair to serve HTTPS with (a certificate the host trusts, see the
    `trusted_cert` fixture); `htpasswd` ({user: password}) or `token` (a `TokenServer`)
    turn authentication on."""

    def __init__(self, root: Path, hostname="127.0.0.1", tls=None, htpasswd=None, token=None):
        assert not (htpasswd and token), "one kind of authentication"
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.port = free_port()
        self.host = f"{hostname}:{self.port}"
        self.scheme = "https" if tls else "http"
        self.log_path = root / "registry.log"
        http_cfg = f"http:\n  addr: 127.0.0.1:{self.port}\n"
        if tls:
            cert, key = tls
            http_cfg += f"  tls:\n    certificate: {cert}\n    key: {key}\n"
        auth_cfg = ""
        if htpasswd:
            if shutil.which("htpasswd") is None:
                raise RuntimeError("htpasswd missing (apt-get install apache2-utils)")
            lines = [run("htpasswd", "-Bbn", user, password).strip() for user, password in htpasswd.items()]
            path = root / "htpasswd"
            path.write_text("\n".join(lines) + "\n")
            auth_cfg = f"auth:\n  htpasswd:\n    realm: corral-e2e\n    path: {path}\n"
        if token:
            auth_cfg = (
                f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.service}\n"
                f"    issuer: {token.issuer}\n    rootcertbundle: {token.signer_cert}\n"
            )
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            + http_cfg
            + auth_cfg
        )
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        # Only whether it answers: whether its certificate is trusted is for the tests.
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.scheme}://127.0.0.1:{self.port}/v2/", timeout=1,
                                       context=context).read()
                break
            except urllib.error.HTTPError as e:
                if e.code == 401 and (htpasswd or token):
                    break
                raise
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

    def push(self, tag: str, dest: str, all_platforms=False, creds=None, tls_verify=False):
        """Copies `tag` to the registry reference `dest`. `creds` is "user:password";
        `tls_verify` makes skopeo speak HTTPS only, checking the certificate against the
        host's trust store (otherwise it accepts any certificate or plain HTTP)."""
        args = ["skopeo", "copy", f"--dest-tls-verify={'true' if tls_verify else 'false'}"]
        if creds:
            args.append(f"--dest-creds={creds}")
        if all_platforms:
            args.append("--all")
        run(*args, f"oci:{self.path}:{tag}", f"docker://{dest}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token server for a registry with `auth.token` (the Bearer flow of the distribution
    spec), over HTTPS with `tls` (certificate, key) else plain HTTP, on 127.0.0.1.

    `GET /token?service=…&scope=…` with Basic credentials of one of `users` answers a JWT
    granting the scopes asked for; without credentials, one granting nothing (as public
    registries do for anonymous pulls); with wrong ones, 401. Tokens are RS256, signed with
    the `openssl` CLI by a throwaway key whose self-signed certificate travels in the `x5c`
    header and is the registry's `rootcertbundle`. Every request is recorded in `requests`
    as {"user", "service", "scope", "account", "granted"}."""

    def __init__(self, root: Path, users: dict, tls=None, hostname="localhost"):
        root.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.service = "corral-e2e-registry"
        self.issuer = "corral-e2e-token-issuer"
        self.signer_key = root / "signer.key"
        self.signer_cert = root / "signer.pem"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.signer_key,
            "-out", self.signer_cert, "-days", "1", "-subj", "/CN=corral e2e token signer")
        der = ssl.PEM_cert_to_DER_cert(self.signer_cert.read_text())
        self._x5c = [base64.b64encode(der).decode()]
        self.requests = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner._handle(self)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.realm = f"{scheme}://{hostname}:{self.port}/token"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, req):
        url = urllib.parse.urlparse(req.path)
        query = urllib.parse.parse_qs(url.query)
        user = None
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if user not in self.users or self.users[user] != password:
                self._record(user, query, granted=False)
                return self._reply(req, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
        if url.path != "/token":
            return self._reply(req, 404, {"errors": [{"code": "NOT_FOUND"}]})
        access = []
        if user is not None:
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self._record(user, query, granted=bool(access))
        token = self.token(user or "", query.get("service", [""])[0], access)
        self._reply(req, 200, {"token": token, "access_token": token, "expires_in": 300})

    def _record(self, user, query, granted):
        with self._lock:
            self.requests.append({
                "user": user,
                "service": query.get("service", [None])[0],
                "scope": " ".join(query.get("scope", [])),
                "account": query.get("account", [None])[0],
                "granted": granted,
            })

    @staticmethod
    def _reply(req, status, body):
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def token(self, subject: str, audience: str, access: list) -> str:
        """A signed JWT with the claims the registry checks."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        claims = {"iss": self.issuer, "sub": subject, "aud": audience, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(16), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        p = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.signer_key)],
                           input=signing_input.encode(), capture_output=True, check=True)
        return f"{signing_input}.{b64url(p.stdout)}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


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


def root_image(base: Path, repo: str, rootfs=None):
    """Starts a registry under `base` holding `repo:1`, a busybox image (or `rootfs(root)`'s)
    that runs as root with PATH=/bin. Returns the registry (stop it) and the reference."""
    reg = Registry(base / "registry")
    lay = Layout(base / "layout")
    lay.new_base("base")
    lay.modify("base", "v1", rootfs or busybox_rootfs, base)
    lay.config("v1", "--config.user", "0", "--config.env", "PATH=/bin")
    ref = f"{reg.host}/{repo}:1"
    lay.push("v1", ref)
    return reg, ref
