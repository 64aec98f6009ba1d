#!/usr/bin/env python3
"""Figures for slow-loris and idle-WebSocket load on a `corral serve` (issue 14, parts 3, 5).

Starts a server (tests/e2e/conftest.py's `Server`, so run as root) and measures its open
file descriptors and RSS:

  loris: N connections from 127.0.0.2 that each send a partial request head and stop; the
         server's fds and RSS before, once they are open, and the time until the server has
         closed them all (bounded wait); /health from 127.0.0.1 meanwhile.
  ws:    N unauthenticated Socket.IO WebSockets (`/api/socket.io/`) from 127.0.0.3, each
         waiting after the open packet; RSS before, with them open, and after the client
         closed them (--rounds times).

Settings go to the server as environment variables (a binary that does not know them
ignores them), so the same run works against an older build:

  sudo python3 scripts/dos_figures.py --bin target/release/corral loris ws
  sudo python3 scripts/dos_figures.py --env CORRAL_MAX_CONNECTIONS_PER_ADDRESS=500 loris

Every wait is bounded; every connection goes to loopback."""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/e2e"))
from conftest import Server  # noqa: E402
# The flood's building blocks are the e2e test's own.
from test_dos import closed_by_server, fds, partial  # noqa: E402

WS_UPGRADE = (b"GET /api/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def health_ms(server):
    t = time.monotonic()
    try:
        status, _ = server.request("GET", "/health", auth=False)
    except OSError as e:
        return f"failed: {e}"
    return f"{status} in {(time.monotonic() - t) * 1000:.0f} ms"


def settle(pid, what, seconds=2.0):
    """Samples `what(pid)` until it stops changing for a moment (bounded)."""
    deadline = time.monotonic() + seconds
    last = what(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = what(pid)
        if now == last:
            return now
        last = now
    return last


def loris(server, n, wait):
    pid = server.proc.pid
    out = {"fds_before": fds(pid), "rss_kib_before": rss_kib(pid)}
    socks, failed = [], 0
    t0 = time.monotonic()
    for _ in range(n):
        try:
            socks.append(partial(server.port))
        except OSError:
            failed += 1
    out["open_seconds"] = round(time.monotonic() - t0, 2)
    out["connect_failures"] = failed
    time.sleep(0.5)
    out["fds_during"] = fds(pid)
    out["rss_kib_during"] = rss_kib(pid)
    out["closed_by_server_at_once"] = sum(closed_by_server(s) for s in socks)
    out["health_during"] = health_ms(server)
    open_ = [s for s in socks if not closed_by_server(s)]
    deadline = time.monotonic() + wait
    while open_ and time.monotonic() < deadline:
        time.sleep(0.25)
        open_ = [s for s in open_ if not closed_by_server(s)]
    out["seconds_until_all_closed"] = (round(time.monotonic() - t0, 1) if not open_
                                       else f"still {len(open_)} open after {wait} s")
    for s in socks:
        s.close()
    out["fds_after"] = settle(pid, fds)
    time.sleep(7)  # see `ws_round`
    out["rss_kib_after"] = rss_kib(pid)
    return out


def ws_open(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.3", 0))
    s.sendall(WS_UPGRADE)
    data = b""
    while b"sid" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError(f"closed: {data[:80]!r}")
        data += chunk
        if data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 101"):
            raise OSError(data.split(b"\r\n", 1)[0].decode())
    return s


def ws(server, n, rounds):
    pid = server.proc.pid
    out = {"rss_kib_before": settle(pid, rss_kib)}
    for r in range(1, rounds + 1):
        out[f"round{r}"] = ws_round(server, n, out["rss_kib_before"])
    return out


def ws_round(server, n, base):
    pid = server.proc.pid
    out = {}
    socks, refused = [], {}
    for _ in range(n):
        try:
            socks.append(ws_open(server.port))
        except OSError as e:
            refused[str(e)] = refused.get(str(e), 0) + 1
    out["open"] = len(socks)
    out["refused"] = refused
    out["rss_kib_open"] = settle(pid, rss_kib)
    if socks:
        out["kib_per_socket"] = round((out["rss_kib_open"] - base) / len(socks), 1)
    for s in socks:
        s.close()
    # The server looks for bursts of closed connections every 5 s (then gives memory back).
    time.sleep(7)
    out["rss_kib_after_close"] = rss_kib(pid)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=["loris", "ws"])
    ap.add_argument("--bin", help="corral binary (default: CORRAL_BIN or target/release/corral)")
    ap.add_argument("-n", type=int, default=2000, help="connections per part (default 2000)")
    ap.add_argument("--wait", type=float, default=90, help="longest wait for closes, s (default 90)")
    ap.add_argument("--rounds", type=int, default=1, help="ws: open and close N times (default 1)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = ap.parse_args()
    if args.bin:
        os.environ["CORRAL_BIN"] = str(Path(args.bin).resolve())
    env = dict(e.split("=", 1) for e in args.env)
    server = Server(env={"CORRAL_NETWORK": "none", "CORRAL_DISK_QUOTA": "off", **env})
    server.start()
    try:
        results = {"bin": server.bin, "env": env}
        for part in args.parts:
            results[part] = loris(server, args.n, args.wait) if part == "loris" else ws(server, args.n, args.rounds)
            print(json.dumps({part: results[part]}), file=sys.stderr, flush=True)
        print(json.dumps(results, indent=2))
    finally:
        leftovers = server.finish()
        if leftovers != ([], [], [], []):
            print(f"left behind: {leftovers}", file=sys.stderr)


if __name__ == "__main__":
    main()
