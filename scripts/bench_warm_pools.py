#!/usr/bin/env python3
"""Create latency from a warm pool vs cold, against a real `corral serve` (run as root):

    CORRAL_BIN=target/release/corral /work/venv/bin/python scripts/bench_warm_pools.py [N]

Each pooled create names a sandbox and sets labels, timers, TTL and the public flag (all
applied on claim) and waits until the pool has a ready sandbox again, so every one is a
claim; the cold creates ask the same with 2 CPUs, a shape no pool serves. Prints p50/p90/max
of the create call (HTTP round trip) in milliseconds. Deletes everything it creates."""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/e2e"))
from conftest import Server  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    s = Server()
    s.start()
    try:
        _, pool = s.request("POST", "/api/warm-pools", {"snapshot": "host", "pool": 1})

        def ready():
            deadline = time.time() + 30
            while time.time() < deadline:
                _, pools = s.request("GET", "/api/warm-pools")
                if [p for p in pools if p["id"] == pool["id"]][0]["currentSize"] >= 1:
                    return
                time.sleep(0.02)
            raise RuntimeError("the pool did not refill")

        def create(i, extra):
            body = {"name": f"b{i}-{time.time_ns()}", "labels": {"run": "bench", "i": str(i)},
                    "autoStopInterval": 30, "ttlMinutes": 60, "public": True, **extra}
            t = time.perf_counter()
            status, sb = s.request("POST", "/api/sandbox", body)
            took = (time.perf_counter() - t) * 1000
            assert status == 200 and sb["state"] == "started", (status, sb)
            s.request("DELETE", f"/api/sandbox/{sb['id']}")
            return took

        warm, cold = [], []
        for i in range(n):
            ready()
            warm.append(create(i, {}))
            cold.append(create(i, {"cpu": 2}))
        s.request("DELETE", f"/api/warm-pools/{pool['id']}")
        for name, xs in [("pool (labels, name, timers, TTL, public)", warm), ("cold (same, 2 CPUs)", cold)]:
            print(f"{name}: n={len(xs)} p50={statistics.median(xs):.1f} ms "
                  f"p90={pct(xs, 0.9):.1f} ms max={max(xs):.1f} ms")
    finally:
        left = s.finish()
        print("leftovers:", left)


if __name__ == "__main__":
    main()
