"""Latency of /home while the service swaps versions: steady traffic, promote and roll back in turn.

    python -m bench.swap --url http://127.0.0.1:3000 --registry registry [--rate 50] [--swaps 4]

Needs a running service that follows ``--registry`` (``make demo``) and a second registered version
(after ``make loop``; else register one with ``bartops registry register build/bundle --version X``).
A paced client sends ``--rate`` requests per second; the registry is switched between production
and the other version ``--swaps`` times, each time waiting until every worker serves the new one.
Requests are split into those sent while some worker was loading a version (``/version``'s
``pending``, polled by a second client) and the rest.  Ends on the version it started with.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bartops.registry import Registry
from bench.common import save, table
from flows.loop import wait_for_version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--registry", default="registry")
    ap.add_argument("--other", default=None, help="the version to swap to (default: the newest non-production)")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--swaps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="the service's worker count")
    args = ap.parse_args()
    reg = Registry(Path(args.registry))
    start = reg.production()
    other = args.other or [v["version"] for v in reg.list() if v["version"] != start][-1]
    stop, loading_windows, results = threading.Event(), [], []

    def traffic() -> None:
        with httpx.Client(base_url=args.url, timeout=30) as client:
            t_next = time.monotonic()
            while not stop.is_set():
                t_next += 1.0 / args.rate
                t0 = time.monotonic()
                r = client.post("/home", json={"user_id": len(results) % 3000, "platform": "ios", "region": "SE"})
                results.append((t0, time.monotonic(), r.status_code))
                time.sleep(max(0.0, t_next - time.monotonic()))

    def watch() -> None:
        with httpx.Client(base_url=args.url, timeout=10) as client:
            while not stop.is_set():
                t = time.monotonic()
                if client.get("/version").json().get("pending"):
                    loading_windows.append(t)
                time.sleep(0.05)

    threads = [threading.Thread(target=traffic), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    swap_seconds = []
    try:
        time.sleep(5)
        for i in range(args.swaps):
            target = other if i % 2 == 0 else start
            reg.promote(target, f"bench.swap {i}") if target == other else reg.rollback(f"bench.swap {i}")
            swap_seconds.append(wait_for_version(args.url, target, args.workers, timeout=300))
            time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if reg.production() != start:
        reg.rollback("bench.swap: back to the start")
    loading = np.array(loading_windows)

    def near_load(t0: float, t1: float) -> bool:
        return bool(len(loading)) and bool(((loading >= t0 - 0.05) & (loading <= t1 + 0.05)).any())

    rows = []
    for label, keep in (("while a worker loads a version", True), ("otherwise", False)):
        ms = np.array([1e3 * (t1 - t0) for t0, t1, code in results if near_load(t0, t1) == keep])
        failed = sum(1 for t0, t1, code in results if near_load(t0, t1) == keep and code != 200)
        rows.append({"requests": label, "n": len(ms), "failed": failed,
                     "p50 ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
                     "p99 ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
                     "max ms": float(ms.max()) if len(ms) else float("nan")})
    print(table(rows))
    print(f"swap (promotion to every worker serving it), seconds: {', '.join(f'{s:.1f}' for s in swap_seconds)}")
    print(f"saved {save('swap', {'rows': rows, 'swap_seconds': swap_seconds, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
