"""Pipeline scaling: validate → features → train → evaluate at growing impression counts.

    python -m bench.scaling [--sizes 100000 1000000 5000000] [--keep DIR] [--timeout 3600]

For each size, in a fresh copy of the project (tracked files, default ``params.yaml``, temporary
folder unless ``--keep``), ``bartops simulate --impressions N`` writes the data (timed apart: data
generation, not pipeline), then each ``dvc.yaml`` stage command runs as its own subprocess, exactly
as ``dvc repro`` would run it. Per step: wall time, the kernel's peak RSS of the step (``wait4``
rusage: the largest single process of the step's tree, reaped descendants included) and a sampled
(0.2 s) sum of the live tree's RSS (catches concurrent children). Prints the table, the end-to-end
pipeline time per size, the dominant step and the growth between sizes, and checks the issue's
floor (5M impressions end to end within 24 GiB and 20 minutes on 2 cores). One run per size (the
5M run is long): the figures are single measurements, with the load average recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import copy_tracked_files

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("validate", "features", "train", "evaluate")
FLOOR = {"impressions": 5_000_000, "seconds": 20 * 60, "gib": 24.0}
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                 "BENTOML_DO_NOT_TRACK": "True", "GX_ANALYTICS_ENABLED": "False"}
PROJECT_ENV = ("BARTOPS_PARAMS", "BARTOPS_EXPECTATIONS", "BARTOPS_REGISTRY")  # would point outside the copy
KIB = 1024
GIB = 2**30


@dataclass
class StepRun:
    """One subprocess's cost: wall time, CPU time, peak memory, processes seen, load at its start."""

    step: str
    cmd: list[str]
    seconds: float
    user_s: float
    sys_s: float
    peak_gib: float        # wait4 ru_maxrss: largest single process of the tree (reaped descendants included)
    tree_peak_gib: float   # sampled sum of the live tree's RSS
    processes: int         # most processes seen in the tree at once
    returncode: int
    load_at_start: tuple[float, float, float]


class StepFailed(RuntimeError):
    """A pipeline step exited non-zero or ran past the timeout."""


def step_env() -> dict[str, str]:
    """The environment of every step: telemetry off, the venv first on PATH, no project overrides."""
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_ENV}
    env.update(TELEMETRY_OFF)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def copy_project(dest: Path) -> Path:
    """A fresh project: the tracked files with the default params; no data.dvc (the data is simulated)."""
    return copy_tracked_files(dest)


def stage_commands(project: Path) -> list[tuple[str, list[str]]]:
    """The ``dvc.yaml`` command of each pipeline step, in order, with ``bartops`` from this venv."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    missing = [s for s in STEPS if s not in stages]
    if missing:
        raise KeyError(f"dvc.yaml has no stage(s) {missing}")
    bartops = str(Path(sys.executable).parent / "bartops")
    out = []
    for step in STEPS:
        argv = shlex.split(stages[step]["cmd"])
        out.append((step, [bartops if argv[0] == "bartops" else argv[0], *argv[1:]]))
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(k) for k in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return kids


def _tree_rss(root: int) -> tuple[int, int]:
    """Summed RSS (bytes) and size of the live process tree under ``root``."""
    page = os.sysconf("SC_PAGE_SIZE")
    todo, total, n = [root], 0, 0
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * page
            n += 1
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo += _children(pid)
    return total, n


def measure(step: str, cmd: list[str], cwd: Path, env: dict[str, str], log_dir: Path,
            timeout: float, poll: float = 0.2) -> StepRun:
    """Run ``cmd`` to completion; its wall time, CPU time and peak memory (stdout/stderr to log_dir)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    with open(log_dir / f"{step}.out", "wb") as out, open(log_dir / f"{step}.err", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        tree_peak, most = 0, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, n = _tree_rss(proc.pid)
            tree_peak, most = max(tree_peak, rss), max(most, n)
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
                raise StepFailed(f"{step} ran past the {timeout:.0f} s timeout: {shlex.join(cmd)}")
            time.sleep(poll)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return StepRun(step, cmd, seconds, usage.ru_utime, usage.ru_stime, usage.ru_maxrss * KIB / GIB,
                   tree_peak / GIB, most, proc.returncode, load)


def _tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:] or "(no output)"


def run_checked(step: str, cmd: list[str], project: Path, env: dict[str, str], timeout: float) -> StepRun:
    """``measure`` that raises StepFailed with the step's stderr tail when it exits non-zero."""
    log_dir = project / "build" / "bench-logs"
    run = measure(step, cmd, project, env, log_dir, timeout)
    if run.returncode != 0:
        raise StepFailed(f"{step} exited {run.returncode} after {run.seconds:.0f} s: {shlex.join(cmd)}\n"
                         f"--- stderr tail ---\n{_tail(log_dir / f'{step}.err')}\n"
                         f"--- stdout tail ---\n{_tail(log_dir / f'{step}.out', 1000)}")
    return run


def run_size(n: int, project: Path, timeout: float) -> dict[str, Any]:
    """Simulate ``n`` impressions in ``project`` and run the four pipeline steps, measuring each."""
    copy_project(project)
    env = step_env()
    bartops = str(Path(sys.executable).parent / "bartops")
    sim = run_checked("simulate", [bartops, "simulate", "--impressions", str(n)], project, env, timeout)
    steps = [run_checked(step, cmd, project, env, timeout) for step, cmd in stage_commands(project)]
    report = json.loads((project / "build" / "reports" / "validation.json").read_text())
    pipeline_s = sum(s.seconds for s in steps)
    return {"impressions": n, "rows": int(report.get("rows", 0)), "simulate": asdict(sim),
            "steps": [asdict(s) for s in steps], "pipeline_s": pipeline_s,
            "pipeline_peak_gib": max(s.peak_gib for s in steps),
            "pipeline_tree_peak_gib": max(s.tree_peak_gib for s in steps),
            "dominant": max(steps, key=lambda s: s.seconds).step}


def step_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Size × step rows of the Markdown table (simulate listed apart from the pipeline)."""
    rows = []
    for r in results:
        for s in [r["simulate"], *r["steps"]]:
            in_pipeline = s["step"] != "simulate"
            rows.append({"impressions": f"{r['impressions']:,}", "step": s["step"] if in_pipeline else "(simulate)",
                         "seconds": s["seconds"], "cpu_s": s["user_s"] + s["sys_s"], "peak_GiB": s["peak_gib"],
                         "tree_peak_GiB": s["tree_peak_gib"],
                         "share": f"{s['seconds'] / r['pipeline_s']:.0%}" if in_pipeline else "-"})
    return rows


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per size: end-to-end pipeline cost, dominant step, the floor where it applies."""
    rows = []
    for r in results:
        floor = "-"
        if r["impressions"] >= FLOOR["impressions"]:
            ok = r["pipeline_s"] <= FLOOR["seconds"] and r["pipeline_peak_gib"] <= FLOOR["gib"]
            floor = "met" if ok else "MISSED"
        rows.append({"impressions": f"{r['impressions']:,}", "rows": f"{r['rows']:,}",
                     "pipeline_s": r["pipeline_s"], "pipeline_min": r["pipeline_s"] / 60,
                     "peak_GiB": r["pipeline_peak_gib"], "dominant": r["dominant"],
                     "simulate_s": r["simulate"]["seconds"], "floor_5M_20min_24GiB": floor})
    return rows


def growth_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios between consecutive sizes: of size, of pipeline time, of each step's time and peak memory."""
    rows = []
    for a, b in zip(results, results[1:]):
        row = {"from→to": f"{a['impressions']:,}→{b['impressions']:,}", "size×": b["impressions"] / a["impressions"],
               "pipeline_time×": b["pipeline_s"] / a["pipeline_s"]}
        for sa, sb in zip(a["steps"], b["steps"]):
            row[f"{sa['step']}_time×"] = sb["seconds"] / sa["seconds"]
        row["peak_mem×"] = b["pipeline_peak_gib"] / a["pipeline_peak_gib"]
        rows.append(row)
    return rows


def report(results: list[dict[str, Any]]) -> str:
    """The Markdown printed (and saved) for these results."""
    from bench.common import table

    parts = ["### Pipeline steps per size (one run each; peak = largest process, tree = sampled sum)",
             table(step_rows(results)), "", "### End to end (validate → evaluate)", table(summary_rows(results))]
    if len(results) > 1:
        parts += ["", "### Growth between sizes", table(growth_rows(results))]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    ap.add_argument("--keep", type=Path, help="keep each size's project under DIR/<size>/ (default: temporary)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before a step is killed")
    args = ap.parse_args()
    if any(n <= 0 for n in args.sizes):
        ap.error("--sizes must be positive")

    from bench.common import save

    load_start = os.getloadavg()
    results: list[dict[str, Any]] = []
    failure = None
    for n in sorted(args.sizes):
        if args.keep:
            project = (args.keep / str(n)).resolve()
            if project.exists():
                shutil.rmtree(project)
            project.mkdir(parents=True)
        else:
            project = Path(tempfile.mkdtemp(prefix=f"bartops-scaling-{n}-"))
        print(f"[{n:,} impressions] project {project}", flush=True)
        try:
            results.append(run_size(n, project, args.timeout))
            r = results[-1]
            print(f"  pipeline {r['pipeline_s']:.0f} s, peak {r['pipeline_peak_gib']:.2f} GiB, "
                  f"dominant {r['dominant']}; load {os.getloadavg()[0]:.2f}", flush=True)
        except StepFailed as exc:
            failure = f"{n:,} impressions: {exc}"
        finally:
            if not args.keep:
                shutil.rmtree(project, ignore_errors=True)
        if failure:
            break
    text = report(results) if results else ""
    print("\n" + text)
    path = save("scaling", {"sizes": sorted(args.sizes), "results": results, "failure": failure,
                            "floor": FLOOR, "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
                            "runs_per_size": 1, "markdown": text})
    print(f"\nsaved {path.relative_to(ROOT)}")
    if failure:
        sys.exit(f"scaling benchmark failed at {failure}")


if __name__ == "__main__":
    main()
