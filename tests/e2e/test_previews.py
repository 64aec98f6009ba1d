"""Preview URLs: an app inside the sandbox reached through `{port}-{id}.localhost:{server port}`,
private/public access, signed URLs, streaming, keep-alive, WebSockets, activity."""

import base64
import hashlib
import http.client
import os
import socket
import time
from urllib.parse import urlsplit

import pytest
import websocket  # websocket-client, a dependency of the SDK's environment
from daytona import CreateSandboxFromSnapshotParams

from conftest import Server

# A small app for inside the sandbox: python stdlib only (the sandbox sees the host's /usr).
APP = r'''
import base64, hashlib, json, socket, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_body(self, body, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/hello":
            info = {"hello": "from the sandbox", "host": self.headers.get("Host"),
                    "xfh": self.headers.get("X-Forwarded-Host"),
                    "xfp": self.headers.get("X-Forwarded-Proto"),
                    "xff": self.headers.get("X-Forwarded-For"),
                    "auth": self.headers.get("Authorization"),
                    "token": self.headers.get("X-Daytona-Preview-Token"),
                    "peer": self.client_address[0]}
            self.send_body(json.dumps(info).encode(), "application/json")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"chunk{i} sent at {time.time()}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(1.0)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/ws":
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            self.echo_frames()
            self.close_connection = True
        else:
            self.send_error(404)
    def read_exact(self, n):
        data = b""
        while len(data) < n:
            part = self.rfile.read(n - len(data))
            if not part:
                raise EOFError
            data += part
        return data
    def echo_frames(self):
        try:
            while True:
                b0, b1 = self.read_exact(2)
                op, n = b0 & 15, b1 & 127
                if n == 126: n = struct.unpack(">H", self.read_exact(2))[0]
                elif n == 127: n = struct.unpack(">Q", self.read_exact(8))[0]
                mask = self.read_exact(4) if b1 & 128 else b"\0\0\0\0"
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(self.read_exact(n)))
                if op == 8:
                    self.wfile.write(b"\x88\x00"); self.wfile.flush(); return
                if op in (1, 2):
                    out = b"echo:" + data
                    head = bytes([0x80 | op])
                    if len(out) < 126: head += bytes([len(out)])
                    elif len(out) < 65536: head += bytes([126]) + struct.pack(">H", len(out))
                    else: head += bytes([127]) + struct.pack(">Q", len(out))
                    self.wfile.write(head + out); self.wfile.flush()
        except EOFError:
            return
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.send_body(body, "application/octet-stream")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''

APP_PORT = 8080


def start_app(sb, port=APP_PORT):
    sb.fs.upload_file(APP.encode(), "/tmp/app.py")
    sb.process.exec(f"nohup python3 /tmp/app.py {port} >/tmp/app.log 2>&1 &")
    deadline = time.time() + 15
    while time.time() < deadline:
        r = sb.process.exec(
            f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1)\"")
        if r.exit_code == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the app did not start: " + sb.process.exec("cat /tmp/app.log").result)


def host_of(url):
    return urlsplit(url).netloc


def fetch(server, url, path="/hello", headers=None, method="GET", body=None, timeout=30):
    """Connects to the server itself and sends the preview URL's Host."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    h = {"Host": host_of(url), **(headers or {})}
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


@pytest.fixture(scope="module")
def app_sandbox(daytona):
    sb = daytona.create()
    start_app(sb)
    yield sb
    daytona.delete(sb)


def test_preview_url_shape(server, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    assert link.url == f"http://{APP_PORT}-{app_sandbox.id}.localhost:{server.port}"
    assert link.token.isalnum() and link.token == link.token.lower() and len(link.token) >= 26
    assert app_sandbox.get_preview_link(APP_PORT).token == link.token, "the token is stable"
    status, body = server.request("GET", f"/api/sandbox/{app_sandbox.id}/ports/0/preview-url")
    assert status == 400 and body["statusCode"] == 400
    status, _ = server.request("GET", f"/api/sandbox/{app_sandbox.id}/ports/70000/preview-url")
    assert status == 400
    status, _ = server.request("GET", "/api/sandbox/nope/ports/3000/preview-url")
    assert status == 404


def test_private_sandbox_needs_a_token_or_an_api_key(server, app_sandbox):
    import json
    link = app_sandbox.get_preview_link(APP_PORT)
    status, body = fetch(server, link.url)
    assert status == 401, body
    assert json.loads(body)["statusCode"] == 401
    assert fetch(server, link.url, headers={"X-Daytona-Preview-Token": "wrong"})[0] == 403
    assert fetch(server, link.url, headers={"Authorization": "Bearer wrong"})[0] == 403

    status, body = fetch(server, link.url, headers={"X-Daytona-Preview-Token": link.token})
    assert status == 200, body
    info = json.loads(body)
    assert info["hello"] == "from the sandbox"
    # The app sees the preview host (vite's allowedHosts checks it) and forwarding headers,
    # and neither the preview token nor the API key.
    assert info["host"] == host_of(link.url)
    assert info["xfh"] == host_of(link.url)
    assert info["xfp"] == "http"
    assert info["xff"] == "127.0.0.1"
    assert info["token"] is None
    assert info["peer"] == "127.0.0.1", "the app is reached on the sandbox's loopback"

    status, body = fetch(server, link.url, headers={"Authorization": f"Bearer {server.key}"})
    assert status == 200, body
    assert json.loads(body)["auth"] is None, "the API key is not passed into the sandbox"

    # Hosts are case-insensitive.
    upper = link.url.replace(app_sandbox.id, app_sandbox.id.upper())
    assert fetch(server, upper, headers={"X-Daytona-Preview-Token": link.token})[0] == 200


def test_public_switch(server, daytona, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    app_sandbox.set_public(True)
    try:
        assert daytona.get(app_sandbox.id).public is True
        status, body = fetch(server, link.url)
        assert status == 200 and b"from the sandbox" in body
        # An app's own Authorization passes through when it is not an API key.
        status, body = fetch(server, link.url, headers={"Authorization": "Basic dTpw"})
        assert status == 200 and b"Basic dTpw" in body
    finally:
        app_sandbox.set_public(False)
    assert daytona.get(app_sandbox.id).public is False
    assert fetch(server, link.url)[0] == 401
    status, _ = server.request("POST", f"/api/sandbox/{app_sandbox.id}/public/maybe")
    assert status == 400


def test_signed_urls_work_without_headers_expire_and_can_be_expired(server, app_sandbox):
    signed = app_sandbox.create_signed_preview_url(APP_PORT, expires_in_seconds=2)
    assert signed.port == APP_PORT and signed.sandbox_id == app_sandbox.id
    assert signed.url == f"http://{APP_PORT}-{signed.token}.localhost:{server.port}"
    assert signed.token.isalnum() and signed.token == signed.token.lower()
    assert len(f"{APP_PORT}-{signed.token}") <= 63
    status, body = fetch(server, signed.url)
    assert status == 200 and b"from the sandbox" in body
    # The token is for one port.
    other = signed.url.replace(f"{APP_PORT}-", "9999-")
    assert fetch(server, other)[0] == 403
    time.sleep(2.2)
    assert fetch(server, signed.url)[0] == 410

    default = app_sandbox.create_signed_preview_url(APP_PORT)
    assert fetch(server, default.url)[0] == 200
    app_sandbox.expire_signed_preview_url(APP_PORT, default.token)
    assert fetch(server, default.url)[0] == 410
    status, _ = server.request(
        "POST", f"/api/sandbox/{app_sandbox.id}/ports/{APP_PORT}/signed-preview-url/nosuchtoken/expire")
    assert status == 404
    status, _ = server.request(
        "GET", f"/api/sandbox/{app_sandbox.id}/ports/{APP_PORT}/signed-preview-url?expiresInSeconds=0")
    assert status == 400
    # An unknown label is a 404, not the API.
    assert fetch(server, f"http://{APP_PORT}-{'a' * 32}.localhost:{server.port}")[0] == 404


def test_closed_port_is_a_fast_502(server, app_sandbox):
    import json
    link = app_sandbox.get_preview_link(9)
    t = time.time()
    status, body = fetch(server, link.url, headers={"X-Daytona-Preview-Token": link.token})
    elapsed = time.time() - t
    assert status == 502
    err = json.loads(body)
    assert err["statusCode"] == 502 and "port 9" in err["message"]
    assert elapsed < 1.0


def test_keep_alive_two_requests_on_one_connection(server, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    h = {"Host": host_of(link.url), "X-Daytona-Preview-Token": link.token}
    socks = []
    for _ in range(2):
        conn.request("GET", "/hello", headers=h)
        resp = conn.getresponse()
        assert resp.status == 200
        assert b"from the sandbox" in resp.read()
        socks.append(conn.sock)
    assert socks[0] is socks[1] and socks[0] is not None, "the connection was reused"
    conn.close()


def test_streaming_response_arrives_chunk_by_chunk(server, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/stream", headers={"Host": host_of(link.url), "X-Daytona-Preview-Token": link.token})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()
    got_first = time.time()
    rest = resp.read().decode().splitlines()
    conn.close()
    assert first.startswith(b"chunk0")
    assert [l.split()[0] for l in rest] == ["chunk1", "chunk2"]
    last_sent = float(rest[-1].split()[-1])
    assert got_first < last_sent - 1.0, "the first chunk came before the last was sent"


def test_large_post_body_is_echoed(server, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    payload = os.urandom(20 << 20)
    status, body = fetch(server, link.url, path="/echo", method="POST", body=payload,
                         headers={"X-Daytona-Preview-Token": link.token,
                                  "Content-Type": "application/octet-stream"}, timeout=120)
    assert status == 200
    assert len(body) == len(payload)
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


def test_websocket_through_a_preview(server, app_sandbox):
    link = app_sandbox.get_preview_link(APP_PORT)
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/ws", host=host_of(link.url),
        header=[f"X-Daytona-Preview-Token: {link.token}"], timeout=10)
    try:
        ws.send("hi")
        assert ws.recv() == "echo:hi"
        big = "x" * 100_000
        ws.send(big)
        assert ws.recv() == "echo:" + big
    finally:
        ws.close()
    # Without credentials the upgrade is refused.
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws", host=host_of(link.url), timeout=10)
    assert e.value.status_code == 401


def test_stopped_sandbox_is_a_clear_error_when_it_opts_out_of_waking(server, daytona):
    import json
    # By default a preview starts a stopped sandbox (tests/e2e/test_pause.py); a sandbox
    # whose label opts out is refused with what to do.
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"corral.dev/wake-on-request": "false"}))
    try:
        link = sb.get_preview_link(APP_PORT)
        sb.stop()
        status, body = fetch(server, link.url, headers={"X-Daytona-Preview-Token": link.token})
        assert status == 409
        assert "stopped" in json.loads(body)["message"]
        assert daytona.get(sb.id).state == "stopped"
    finally:
        daytona.delete(sb, wait=True)
    # Deleted: its tokens are gone with it.
    assert fetch(server, link.url, headers={"X-Daytona-Preview-Token": link.token})[0] == 404


# --- a server of our own: activity with 1 s "minutes", and restarts ---------------------

FAST = {"CORRAL_LIFECYCLE_MINUTE_MS": "1000", "CORRAL_RECONCILE_SECONDS": "0.2"}


def test_preview_traffic_is_activity_and_tokens_survive_a_restart():
    s = Server(env=FAST)
    s.start()
    try:
        d = s.client()
        idle = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
        busy = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
        start_app(busy)
        link = busy.get_preview_link(APP_PORT)
        signed = busy.create_signed_preview_url(APP_PORT, expires_in_seconds=3600)
        deadline = time.time() + 2.5
        while time.time() < deadline:
            assert fetch(s, link.url, headers={"X-Daytona-Preview-Token": link.token})[0] == 200
            time.sleep(0.2)
        assert d.get(idle.id).state == "stopped"
        assert d.get(busy.id).state == "started"

        busy.set_autostop_interval(0)
        s.stop()
        s.start()
        d = s.client()
        sb = d.get(busy.id)
        assert sb.get_preview_link(APP_PORT).token == link.token
        assert fetch(s, link.url, headers={"X-Daytona-Preview-Token": link.token})[0] == 200
        assert fetch(s, signed.url)[0] == 200
    finally:
        leftovers = s.finish()
    assert leftovers == ([], [], [], [])
