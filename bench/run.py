"""The benchmark harness: run benchmarks as subprocesses, record them, write one Markdown summary.

    python -m bench.run [--suite peers|all] [--only NAME ...] [--timeout SECONDS]

Suite ``peers`` (the default, ``make bench``; about 50 minutes on 2 cores): policy quality against
Vowpal Wabbit (``vw_peer``), OPE against a NumPy reference (``ope_reference``), pipeline scaling at
100k/1M/5M impressions (``scaling``), simulator/page-construction speed (``sim_policy``) and serving
latency (``serving``).  Suite ``all`` adds ``reward_quality`` (its figures are in vw_peer),
``ope_accuracy`` (~13 min), ``validation`` and ``orchestration``.

Each benchmark runs as ``sys.executable -m bench.<name>`` with default arguments and telemetry off;
its output is echoed and kept.  A failing (non-zero exit) or timed-out benchmark is reported and the
others still run; the harness then exits non-zero.  After every benchmark it rewrites
``bench/results/SUMMARY.md`` (date, machine, and per benchmark the command, wall time, status and
the Markdown tables it printed) and ``bench/results/run.json``, both atomically; each benchmark
saves its own JSON beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "peers": ("vw_peer", "ope_reference", "scaling", "sim_policy", "serving"),
    "all": ("vw_peer", "ope_reference", "scaling", "sim_policy", "serving",
            "reward_quality", "ope_accuracy", "validation", "orchestration"),
}
QUIET_ENV = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
             "BENTOML_DO_NOT_TRACK": "True", "GX_ANALYTICS_ENABLED": "False",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def markdown_tables(output: str) -> list[str]:
    """The Markdown tables in a benchmark's output, each with the line just above it as caption."""
    lines = output.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            caption = lines[i - 1].strip() if i > 0 and lines[i - 1].strip() and not lines[i - 1].startswith("|") else ""
            blocks.append("\n".join(([caption, ""] if caption else []) + lines[i:j]))
            i = j
        else:
            i += 1
    return blocks


def run_benchmark(name: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.<name>`` in the project root, echo and keep its output, time it."""
    command = [sys.executable, "-m", f"bench.{name}"]
    env = {**os.environ, **QUIET_ENV}
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    output = []
    try:
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            output.append(line)
        proc.wait()
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    text = "".join(output)
    status = "timed out" if timed_out.is_set() else ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})")
    return {"name": name, "command": f"python -m bench.{name}", "wall_s": round(wall, 1), "status": status,
            "returncode": proc.returncode, "tables": markdown_tables(text), "output_tail": text[-4000:]}


def summary_markdown(run: dict[str, Any]) -> str:
    """SUMMARY.md: date, machine, then per benchmark its command, wall time, status and tables."""
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [f"# Benchmarks ({run['suite']})", "",
           f"- date: {run['when']}",
           f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}",
           f"- load average at start: {run['load_average']}",
           f"- versions: {versions}",
           f"- total wall time: {run['wall_s']:.0f} s; status: {run['status']}", "",
           "| benchmark | command | wall s | status |", "|---|---|---|---|"]
    out += [f"| {b['name']} | `{b['command']}` | {b['wall_s']:.0f} | {b['status']} |" for b in run["benchmarks"]]
    for b in run["benchmarks"]:
        out += ["", f"## {b['name']}", "", f"`{b['command']}` — {b['wall_s']:.0f} s, {b['status']}", ""]
        out += [t + "\n" for t in b["tables"]] or ["(no table printed)", ""]
        if b["status"] != "ok":
            out += ["Last output:", "", "```", b["output_tail"][-2000:], "```", ""]
    return "\n".join(out).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="peers")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (any of the 'all' suite)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before a benchmark is killed")
    args = ap.parse_args(argv)
    names = list(SUITES[args.suite])
    if args.only:
        unknown = [n for n in args.only if n not in SUITES["all"]]
        if unknown:
            ap.error(f"unknown benchmark(s) {unknown}; choose from {list(SUITES['all'])}")
        names = list(dict.fromkeys(args.only))
    RESULTS.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"suite": args.suite if not args.only else "only " + " ".join(names),
                           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
                           "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                           "benchmarks": [], "wall_s": 0.0, "status": "running"}
    t0 = time.perf_counter()
    for name in names:
        run["benchmarks"].append(run_benchmark(name, args.timeout))
        failed = [b["name"] for b in run["benchmarks"] if b["status"] != "ok"]
        done = len(run["benchmarks"]) == len(names)
        run["wall_s"] = time.perf_counter() - t0
        run["status"] = ("failed: " + ", ".join(failed)) if failed else ("ok" if done else "running")
        write_atomic(RESULTS / "run.json", json.dumps(run, indent=2))
        write_atomic(RESULTS / "SUMMARY.md", summary_markdown(run))
    print(f"\n{len(names)} benchmark(s) in {run['wall_s']:.0f} s: {run['status']}; "
          f"summary {RESULTS / 'SUMMARY.md'}", flush=True)
    return 0 if run["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
