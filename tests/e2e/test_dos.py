"""Unauthenticated clients cannot hold the server (issue 14, parts 3 and 5): slow-loris
connections are capped per address and closed by the header timeout, keep-alive, streams
and WebSockets are not cut by it, and Socket.IO sockets must authenticate in time.

Loopback only: floods come from 127.0.0.2 (the whole 127/8 is loopback), /health and the
SDK from 127.0.0.1. Every wait is bounded; bounds only detect hangs."""

import json
import os
import re
import socket
import ssl
import time

import pytest
import websocket  # websocket-client, installed with the SDK

from conftest import Server, openssl

PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(s):
    """Whether the server closed `s` (EOF or reset), without blocking."""
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_until(what, within, step=0.1):
    """Polls `what()` until true or `within` seconds passed; returns its last value."""
    deadline = time.monotonic() + within
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def metric(server, name, labels):
    status, text = server.request("GET", "/metrics", auth=False)
    assert status == 200
    key = re.escape(f"{name}{{{labels}}}" if labels else name)
    m = re.search(rf"^{key} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def partial(port, source="127.0.0.2"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    s.sendall(PARTIAL_HEAD)
    return s


def get_on(s, path="/health"):
    """A GET on an open socket; returns the status line (the body is small)."""
    s.setblocking(True)
    s.settimeout(10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"closed instead of answering: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        body += s.recv(4096)
    return head.split(b"\r\n", 1)[0].decode()


def ws_open(port, key=None):
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/socket.io/?EIO=4&transport=websocket",
                                     timeout=10)
    assert ws.recv().startswith("0{")
    if key:
        ws.send("40" + json.dumps({"token": key}))
        assert ws.recv().startswith("40{")
    return ws


def ws_closed(ws):
    try:
        ws.settimeout(0.05)
        frame = ws.recv()
        return frame == ""  # close frame read
    except websocket.WebSocketTimeoutException:
        return False
    except (websocket.WebSocketConnectionClosedException, OSError):
        return True


@pytest.fixture
def make_server():
    servers = []

    def make(env):
        s = Server(env={"CORRAL_NETWORK": "none", "CORRAL_DISK_QUOTA": "off", **env})
        s.start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        leftovers = s.finish()
        assert leftovers == ([], [], [], []), f"left behind: {leftovers}"


def test_slow_loris_flood_is_capped_per_address_and_timed_out(make_server):
    cap, flood, header_timeout = 500, 2000, 25
    server = make_server({"CORRAL_MAX_CONNECTIONS_PER_ADDRESS": str(cap),
                          "CORRAL_HEADER_TIMEOUT_SECONDS": str(header_timeout)})
    pid = server.proc.pid
    before = fds(pid)
    socks = []
    try:
        for _ in range(flood):
            socks.append(partial(server.port))
        opened = time.monotonic()
        # The newest over the cap are closed at once; the first `cap` are held.
        refused = socks[cap:]
        assert wait_until(lambda: all(closed_by_server(s) for s in refused), 15), \
            f"{sum(not closed_by_server(s) for s in refused)} over the cap still open"
        assert not any(closed_by_server(s) for s in socks[:cap]), "held connections were cut early"
        during = fds(pid)
        # Positive control of the flood: it holds `cap` fds; without a cap it held all 2000.
        # (`before` may count a connection or two of the start-up checks that closed since.)
        assert before + cap - 10 <= during <= before + cap + 20, (before, during)
        assert metric(server, "corral_connections_refused_total", 'reason="per_address"') == flood - cap

        # Other addresses are served meanwhile: /health and an authenticated SDK round trip.
        assert server.request("GET", "/health", auth=False)[0] == 200
        d = server.client()
        sb = d.create()
        assert sb.process.exec("echo served").result.strip() == "served"
        d.delete(sb, wait=True)
        assert not any(closed_by_server(s) for s in socks[:cap])

        # The header timeout closes the held ones; their fds are given back.
        assert wait_until(lambda: all(closed_by_server(s) for s in socks[:cap]), header_timeout + 30), \
            "held connections outlived the header timeout"
        took = time.monotonic() - opened
        assert wait_until(lambda: fds(pid) <= before + 5, 10), (before, fds(pid))
        assert metric(server, "corral_connections_timed_out_total", 'waiting_for="header"') >= cap
        print(f"fds before {before}, during {during}, after {fds(pid)}; "
              f"held ones closed {took:.1f} s after the flood (header timeout {header_timeout} s)")
    finally:
        for s in socks:
            s.close()


def test_timeouts_spare_keep_alive_tls_heads_and_websockets(make_server, tmp_path):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost",
            cwd=tmp_path)
    server = make_server({"CORRAL_HEADER_TIMEOUT_SECONDS": "1", "CORRAL_IDLE_TIMEOUT_SECONDS": "4",
                          "CORRAL_TLS_CERT": str(tmp_path / "cert.pem"),
                          "CORRAL_TLS_KEY": str(tmp_path / "key.pem")})
    port = server.port
    opened = []

    def track(s):
        opened.append(s)
        return s

    try:
        check_timeouts(server, track)
    finally:
        for s in opened:
            s.close()


def check_timeouts(server, track):
    port = server.port
    # Plain and TLS: silent, partial-head and handshake-only connections are closed.
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    silent = track(socket.create_connection(("127.0.0.1", port), timeout=10))
    plain = track(partial(port, "127.0.0.1"))
    tls_silent = track(tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)))
    tls_partial = track(tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)))
    tls_partial.sendall(PARTIAL_HEAD)
    for name, s in [("silent", silent), ("partial", plain)]:
        assert wait_until(lambda: closed_by_server(s), 10), f"{name} connection kept open"
    for name, s in [("TLS silent", tls_silent), ("TLS partial", tls_partial)]:
        s.settimeout(10)
        try:
            got = s.recv(4096)
        except (ssl.SSLError, OSError):
            got = b""
        assert got == b"", f"{name}: {got!r}"

    # Keep-alive: idle longer than the header timeout, shorter than the idle one, still served.
    ka = track(socket.create_connection(("127.0.0.1", port), timeout=10))
    assert get_on(ka) == "HTTP/1.1 200 OK"
    time.sleep(2)
    assert get_on(ka) == "HTTP/1.1 200 OK"
    assert wait_until(lambda: closed_by_server(ka), 15), "idle keep-alive never closed"

    # An authenticated event stream silent past both timeouts still delivers events.
    ws = track(ws_open(port, key=server.key))
    time.sleep(6)
    d = server.client()
    sb = d.create()
    try:
        deadline = time.monotonic() + 30
        frames = []
        while not any(f.startswith('42["sandbox.created"') for f in frames):
            assert time.monotonic() < deadline, frames
            frames.append(ws.recv())
    finally:
        d.delete(sb, wait=True)


def test_unauthenticated_event_streams_have_a_deadline_and_a_cap(make_server):
    cap = 5
    server = make_server({"CORRAL_EVENTS_AUTH_TIMEOUT_SECONDS": "2",
                          "CORRAL_MAX_UNAUTHENTICATED_EVENT_STREAMS": str(cap)})
    authenticated = ws_open(server.port, key=server.key)  # takes no place
    waiting = [ws_open(server.port) for _ in range(cap)]
    try:
        check_deadline_and_cap(server, authenticated, waiting)
    finally:
        for w in waiting + [authenticated]:
            w.close()


def check_deadline_and_cap(server, authenticated, waiting):
    # Over the cap: refused before the upgrade, in Daytona's error shape.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_open(server.port)
    assert refused.value.status_code == 503
    body = json.loads(refused.value.resp_body)
    assert body["code"] == "TOO_MANY_UNAUTHENTICATED_STREAMS" and body["statusCode"] == 503
    assert metric(server, "corral_event_streams_refused_total", "") == 1

    # The deadline closes the ones that never authenticate...
    assert wait_until(lambda: all(ws_closed(w) for w in waiting), 15), "unauthenticated sockets kept open"
    # ...not the authenticated one (positive control): it still answers a ping.
    authenticated.settimeout(10)
    authenticated.send("2")
    assert authenticated.recv() == "3"
    # Their places are given back.
    ws_open(server.port).close()
