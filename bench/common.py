"""Shared benchmark plumbing: machine description, medians, JSON results under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def copy_tracked_files(dest: Path, skip: tuple[str, ...] = ("data.dvc",)) -> Path:
    """Copy every file git tracks in the project into ``dest`` (a fresh project), except ``skip``."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if f not in skip and src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def simulate_batch(n: int, out: Path, seed: int = 11) -> Path:
    """Simulate ``n`` impressions with params.yaml's world into ``out`` once (cached); the batch path."""
    from dataclasses import replace

    from bartops.config import load_params
    from bartops.sim import World, simulate
    from bartops.sim.store import write_simulation

    batch = out / "incoming" / "bench.parquet"
    if batch.exists():
        return batch
    params = load_params(ROOT / "params.yaml")
    pol = params.policy
    world = World.generate(replace(params.sim, impressions=n), seed=seed)
    data = simulate(world, n, pol.shelves, pol.cards, pol.epsilon_head, pol.epsilon_fill, seed=seed)
    write_simulation(data, out, batch_name="bench")
    return batch


def machine() -> dict[str, Any]:
    """Cores, memory and the versions that matter for the figures."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for pkg in ("numpy", "pandas", "xgboost-cpu", "xgboost", "prefect", "great_expectations", "bentoml", "dvc"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """Median wall time of ``repeats`` calls, all the times, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    return path


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of dict rows."""
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
