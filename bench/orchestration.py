"""Orchestration overhead: `dvc repro` and the Prefect `retrain` flow against the steps' own compute.

    python -m bench.orchestration [--impressions 1000000]

In a fresh copy of the project (tests/project_copy.py) with the default world and N impressions:
1. steps' own compute: validate, features, train, evaluate run in one warm process (imports done
   beforehand), each timed;
2. `dvc repro` from an empty build/;
3. `python -m flows.retrain --auto-approve --no-package` against a running local Prefect server
   (warm: server up, database created) and with no server (cold: Prefect's temporary API).
Reports each wall time and its ratio to the sum of step times.  Machine noted (2 cores, shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import save, table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS_SCRIPT = """
import sys, time, json
import great_expectations, xgboost, prefect  # imports are not the steps' compute
from typer.testing import CliRunner
from bartops.cli import app
runner, times = CliRunner(), {}
for name, args in [("validate", ["validate", "data/incoming", "--no-docs"]), ("features", ["features"]),
                   ("train", ["train"]), ("evaluate", ["evaluate"])]:
    t0 = time.perf_counter()
    res = runner.invoke(app, args)
    times[name] = time.perf_counter() - t0
    if res.exit_code != 0:
        print(res.output[-2000:], file=sys.stderr); raise SystemExit(f"{name} failed")
print(json.dumps(times))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": ".", **extra}
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, **extra: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=_env(**extra), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return elapsed, res.stdout


def _clean(project: Path) -> None:
    for d in ("build", "registry", "quarantine"):
        shutil.rmtree(project / d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from project_copy import copy_project

    work = Path(tempfile.mkdtemp(prefix="bartops-orch-"))
    project = copy_project(work)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sim"] = yaml.safe_load((ROOT / "params.yaml").read_text())["sim"] | {"impressions": args.impressions}
    params["reward"] = yaml.safe_load((ROOT / "params.yaml").read_text())["reward"]
    params["ope"] = yaml.safe_load((ROOT / "params.yaml").read_text())["ope"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        params["ops"]["prefect_port"] = s.getsockname()[1]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], project)
    _run(["bartops", "simulate"], project)
    _run(["dvc", "add", "data", "-q"], project)

    _, out = _run([sys.executable, "-c", STEPS_SCRIPT], project)
    steps = yaml.safe_load(out.strip().splitlines()[-1])
    step_sum = sum(steps.values())
    _clean(project)
    dvc_s, _ = _run(["dvc", "repro"], project)
    _clean(project)
    cold_s, _ = _run([sys.executable, "-m", "flows.retrain", "--auto-approve", "--no-package"], project,
                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
                     PREFECT_HOME=str(project / ".prefect-cold"))
    _clean(project)
    _run(["bartops", "up", "prefect"], project)
    api = f"http://127.0.0.1:{params['ops']['prefect_port']}/api"
    try:
        warm_s, _ = _run([sys.executable, "-m", "flows.retrain", "--auto-approve", "--no-package"], project,
                         PREFECT_API_URL=api)
    finally:
        _run(["bartops", "down"], project)
    rows = [{"what": f"step: {k}", "seconds": v, "ratio_to_steps": v / step_sum} for k, v in steps.items()]
    rows += [
        {"what": "sum of steps", "seconds": step_sum, "ratio_to_steps": 1.0},
        {"what": "dvc repro", "seconds": dvc_s, "ratio_to_steps": dvc_s / step_sum},
        {"what": "prefect retrain, running server", "seconds": warm_s, "ratio_to_steps": warm_s / step_sum},
        {"what": "prefect retrain, cold (ephemeral API)", "seconds": cold_s, "ratio_to_steps": cold_s / step_sum},
    ]
    print(f"{args.impressions:,} impressions")
    print(table(rows))
    print(f"saved {save('orchestration', {'impressions': args.impressions, 'rows': rows})}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
