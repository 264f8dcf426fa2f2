"""Serving latency: a 6×8 page from ~300 candidates, in-process and over HTTP (`bentoml serve`).

Figures: the page built in-process (fast precomputed path vs. ``assemble_rows`` per request); one
client over HTTP (p50, p99); open-loop load at a fixed offered rate (default 50 req/s for 30 s:
p50, p99, errors; latency counted from the scheduled send time, so a stalled server is not hidden);
the highest offered rate of a ladder at which p99 < 100 ms with no errors and at most 1 % shed; and
overload runs far above it (default 300 req/s, about 2x the sustainable rate on 2 cores): accepted
(200) requests' p50/p99, the 503s the service sheds (each must carry Retry-After) and any other
failure.  The load generator's own CPU share is reported (it shares the cores with the server).
Run:

    python -m bench.serving [--workers 1 2] [--rate 50 --seconds 30] [--ladder 50,100,150,200]
                            [--overload 200,300] [--max-in-flight 4 0] [--skip-one-client]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import yaml

from bench.common import save, table

ROOT = Path(__file__).resolve().parents[1]
KEEP_ALIVE = False  # --keep-alive: open-loop requests reuse connections


def make_bundle(work: Path) -> tuple[Path, pd.DataFrame]:
    """A small simulated world (1,200 items, ~300 candidates per user) and a trained policy bundle."""
    from bartops.features.store import build_features, save_features
    from bartops.reward.model import save_model
    from bartops.reward.policy import write_policy_bundle
    from bartops.reward.train import train_reward_models
    from bartops.sim import World, sample_contexts, simulate
    from bartops.config import Params, PolicyParams, SimParams
    from bartops.sim.store import write_simulation

    sp = SimParams(impressions=30_000, users=600, artists=80, items=1200, genres=8, moods=4)
    world = World.generate(sp, seed=3)
    data = simulate(world, sp.impressions, 6, 8, 0.1, 0.1, seed=3)
    write_simulation(data, work / "data", "sim-seed3")
    params = Params.from_mapping({"seed": 3, "features": {"embedding_dim": 16},
                                  "reward": {"num_boost_round": 200, "baselines": []}})
    feats = build_features(work / "data", params)
    save_features(feats, work / "features")
    save_model(train_reward_models(feats, data.impressions, params).model, work / "model")
    bundle = write_policy_bundle(work / "model", work / "features", PolicyParams(), work / "bundle", "bench")
    return bundle, sample_contexts(world, 2000, np.random.default_rng(1))


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if len(xs) else float("nan")


def in_process(bundle: Path, ctx: pd.DataFrame, n: int = 400) -> list[dict]:
    from bartops.serving.engine import PageEngine

    eng = PageEngine.load(bundle)
    sizes = [len(eng.inputs(int(u), "ios", "SE", pd.Timestamp.now(tz="UTC"))[1]) for u in ctx["user_id"][:200]]
    rows = []
    for label, fast in (("in-process, precomputed blocks + inplace_predict", True),
                        ("in-process, assemble_rows + scorer per request", False)):
        eng.fast_path = fast
        times = []
        for i, r in enumerate(ctx.head(n).itertuples()):
            t0 = time.perf_counter()
            eng.build(int(r.user_id), str(r.platform), str(r.region), f"b{i}", i)
            times.append(time.perf_counter() - t0)
        rows.append({"case": label, "p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "errors": 0,
                     "candidates_median": float(np.median(sizes))})
    return rows


class Server:
    def __init__(self, env: dict, port: int = 0) -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a fixed port may be in TIME_WAIT
            s.bind(("127.0.0.1", port))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["BARTOPS_SERVING_LOGS"]).parent / "server.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve",
                                      "bartops.serving.service:HomePage", "--port", str(self.port)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def bodies(ctx: pd.DataFrame) -> list[dict]:
    return [{"user_id": int(r.user_id), "platform": str(r.platform), "region": str(r.region)} for r in ctx.itertuples()]


def one_client(url: str, reqs: list[dict], n: int = 300) -> dict:
    times, errors = [], 0
    with httpx.Client(base_url=url, timeout=10) as c:
        for b in reqs[:20]:
            c.post("/home", json=b)
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post("/home", json=reqs[i % len(reqs)])
            times.append(time.perf_counter() - t0)
            errors += r.status_code != 200
    return {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "errors": errors}


class RawClient:
    """Keep-alive HTTP/1.1 POSTs over asyncio streams, one connection per request in flight.

    A few times cheaper per request than httpx, so the load generator, which shares the cores with
    the server, takes less of them at high offered rates (httpx took ~0.7 core at 300 req/s).
    """

    def __init__(self, url: str, keep_alive: bool = False) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.keep_alive = host, int(port), keep_alive
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The most recently used idle connection, else a new one; connections idle over 2 s are closed
        (the server closes idle ones after 5 s: reusing one as it does so would fail the request)."""
        now = time.perf_counter()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < 2 and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, dict[bytes, bytes]]:
        """(status, lower-cased headers) of one POST; the body is read (kept as ``x-bench-body`` unless 200)."""
        reader, writer = await self._connection()
        try:
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nConnection: %s\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(),
                                                             b"keep-alive" if self.keep_alive else b"close", len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = dict((k.lower(), v) for k, _, v in (x.partition(b": ") for x in lines[1:] if x))
            body = await reader.readexactly(int(headers[b"content-length"]))  # no chunked responses here
        except BaseException:
            writer.close()
            raise
        if not self.keep_alive or headers.get(b"connection", b"").lower() == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.perf_counter()))
        status = int(lines[0].split()[1])
        if status != 200:
            headers[b"x-bench-body"] = body[:200]
        return status, headers

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def _open_loop(url: str, reqs: list[dict], rate: float, seconds: float, keep_alive: bool = False) -> dict:
    """Open-loop load at ``rate``: accepted (200) latency, 503s (shed, with Retry-After) and other failures."""
    n = int(rate * seconds)
    payloads = [json.dumps(r).encode() for r in reqs]
    lat, shed_lat, shed, errors, no_retry_after = [], [], 0, 0, 0
    error_kinds: dict[str, int] = {}  # status code or exception name -> count
    shed_kinds: dict[str, int] = {}  # 503s by the first words of their error
    client = RawClient(url, keep_alive)
    start = time.perf_counter() + 0.2

    async def one(i: int):
        nonlocal shed, errors, no_retry_after
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        try:
            code, headers = await asyncio.wait_for(client.post("/home", payloads[i % len(payloads)]), 10)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, KeyError, ValueError) as exc:
            code, headers = type(exc).__name__, {}
        took = time.perf_counter() - due  # from the scheduled time: no coordinated omission
        if code == 200:
            lat.append(took)
        elif code == 503:
            shed += 1
            shed_lat.append(took)
            no_retry_after += b"retry-after" not in headers
            try:  # "overloaded: ..." (shed) or "model is loading" (a worker not warm yet)
                why = json.loads(headers[b"x-bench-body"])["error"].split(":")[0]
            except (KeyError, ValueError, TypeError):
                why = "unknown"
            shed_kinds[why] = shed_kinds.get(why, 0) + 1
        else:
            errors += 1
            error_kinds[str(code)] = error_kinds.get(str(code), 0) + 1

    load_before = os.getloadavg()[0]  # other work on the shared cores shows here
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    client.close()
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "accepted": len(lat), "shed_503": shed,
            "shed_p99_ms": pct(shed_lat, 99), "shed_without_retry_after": no_retry_after, "errors": errors,
            "error_kinds": error_kinds, "shed_kinds": shed_kinds, "requests": n, "achieved_rps": n / wall, "accepted_rps": len(lat) / wall, "loadgen_cpu_share": cpu / wall,
            "loadavg_1min_before": load_before}


def open_loop(url: str, reqs: list[dict], rate: float, seconds: float) -> dict:
    return asyncio.run(_open_loop(url, reqs, rate, seconds, KEEP_ALIVE))


def restart_check(url: str, reqs: list[dict], rate: float = 50, seconds: float = 20) -> dict:
    """Kill one worker (SIGKILL) 3 s into steady load: what the clients see while it restarts and warms up."""
    import threading

    victim = httpx.get(url + "/version", timeout=10).json()["worker"]
    threading.Timer(3.0, os.kill, (victim, signal.SIGKILL)).start()
    r = open_loop(url, reqs, rate, seconds)
    workers = {httpx.get(url + "/version", timeout=10).json()["worker"] for _ in range(40)}
    return {**r, "killed_worker": victim, "workers_after": sorted(workers), "restarted": victim not in workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--ladder", default="50,100,150,200")
    ap.add_argument("--ladder-seconds", type=float, default=10)
    ap.add_argument("--overload", default="200,300", help="offered rates (comma-separated) well above capacity")
    ap.add_argument("--overload-seconds", type=float, default=20)
    ap.add_argument("--max-in-flight", type=int, nargs="+", default=[None],
                    help="serving.max_in_flight values, a server each (0: no shedding; default: params.yaml's)")
    ap.add_argument("--shed-target-ms", type=float, default=None, help="serving.shed_target_ms (default: params.yaml's)")
    ap.add_argument("--restart-check", action="store_true", help="kill a worker under load (after the ladder)")
    ap.add_argument("--keep-alive", action="store_true",
                    help="open-loop requests reuse connections (default: a new connection each)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--name", default="serving", help="results file bench/results/<name>.json")
    ap.add_argument("--skip-one-client", action="store_true", help="skip the one-client and fixed-rate cases")
    args = ap.parse_args()
    global KEEP_ALIVE
    KEEP_ALIVE = args.keep_alive
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bundle, ctx = make_bundle(work)
    rows = in_process(bundle, ctx)
    reqs = bodies(ctx)
    ladder = [float(x) for x in args.ladder.split(",") if x]
    overload = [float(x) for x in args.overload.split(",") if x]
    for workers, bound in itertools.product(args.workers, args.max_in_flight):
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["serving"] = {**params.get("serving", {}), "workers": workers}
        if bound is not None:
            params["serving"]["max_in_flight"] = bound
        if args.shed_target_ms is not None:
            params["serving"]["shed_target_ms"] = args.shed_target_ms
        max_in_flight = params["serving"].get("max_in_flight", "default")
        if bound == 0:  # no shedding: what the service did before it had a bound
            params["serving"].update(max_in_flight=10**6, shed_target_ms=1e12)
            max_in_flight = "off"
        pfile = work / f"params-{workers}-{max_in_flight}.yaml"
        pfile.write_text(yaml.safe_dump(params))
        env = {**os.environ, "BARTOPS_BUNDLE": str(bundle), "BARTOPS_PARAMS": str(pfile),
               "BARTOPS_SERVING_LOGS": str(work / f"logs-{workers}-{max_in_flight}"),
               "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
        srv = Server(env, args.port)
        try:
            if not args.skip_one_client:
                rows.append({"case": f"HTTP one client, {workers} worker(s)", **one_client(srv.url, reqs)})
                r = open_loop(srv.url, reqs, args.rate, args.seconds)
                rows.append({"case": f"HTTP open loop {args.rate:g} req/s × {args.seconds:g} s, {workers} worker(s)", **r})
            else:
                one_client(srv.url, reqs, n=50)  # warm the connections and caches
            best = None
            for rate in ladder:
                r = open_loop(srv.url, reqs, rate, args.ladder_seconds)
                rows.append({"case": f"ladder {rate:g} req/s × {args.ladder_seconds:g} s, {workers} worker(s), "
                                     f"max_in_flight {max_in_flight}", **r})
                if r["p99_ms"] < 100 and r["errors"] == 0 and r["shed_503"] <= 0.01 * r["requests"]:
                    best = rate
                else:
                    break
            rows.append({"case": f"highest rate with p99 < 100 ms, ≤ 1 % shed, {workers} worker(s), "
                                 f"max_in_flight {max_in_flight}", "rate": best})
            if args.restart_check:
                r = restart_check(srv.url, reqs)
                rows.append({"case": f"a worker killed 3 s into 50 req/s × 20 s, {workers} worker(s)", **r})
            for rate in overload:
                r = open_loop(srv.url, reqs, rate, args.overload_seconds)
                floor = bool(r["p99_ms"] < 100 and r["errors"] == 0 and r["shed_without_retry_after"] == 0)
                rows.append({"case": f"overload {rate:g} req/s × {args.overload_seconds:g} s, {workers} worker(s), "
                                     f"max_in_flight {max_in_flight}", **r, "floor_met": floor})
        finally:
            srv.stop()
    cols = ["case", "p50_ms", "p99_ms", "accepted", "shed_503", "errors", "achieved_rps", "accepted_rps",
            "loadgen_cpu_share", "rate", "floor_met"]
    norm = [{c: r.get(c, "") for c in cols} for r in rows]
    print(table(norm))
    print("saved", save(args.name, {"rows": rows, "args": vars(args)}))


if __name__ == "__main__":
    main()
