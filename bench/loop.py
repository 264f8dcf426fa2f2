"""The living loop as a user runs it, in a fresh copy of the project: what each round learns and costs.

    python -m bench.loop [--rounds 5] [--page-views 4000] [--keep]

In a temporary copy of the tracked project with free ports: `bartops simulate`, a Prefect server and
the deployment runner (`bartops up prefect deployments`), the first round (`python -m flows.retrain
--auto-approve`, then `bartops registry bootstrap`: what `make demo` does), the BentoML service, then
`python -m flows.loop`: simulated listeners over HTTP, the ingest and retrain deployments, the gate and
the swap, round after round.  Prints one row per round (true value and share of the oracle, online
rate, the gate's decision with DR's lift against the true lift, the card accounting, where the time
went) and saves bench/results/loop.json.
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
from dataclasses import asdict
from pathlib import Path

import yaml

from bartops.config import load_params
from bartops.loop.record import RoundRecord, read_rounds
from bartops.ops import processes
from bartops.ops.stack import services
from bench.common import copy_tracked_files, save, table

BIN = Path(sys.executable).parent
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
         "BENTOML_DO_NOT_TRACK": "True", "GX_ANALYTICS_ENABLED": "False",
         "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_free_ports(project: Path) -> dict:
    """Point the copy's ``ops:`` at free ports (so it runs beside `make demo`); returns its params."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["ops"].update(prefect_port=free_port(), service_port=free_port(), dashboard_port=free_port())
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> float:
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.monotonic() - t0


def loop_in_copy(project: Path, rounds: int, page_views: int, seed: int = 0,
                 timeout: float = 7200) -> tuple[list[RoundRecord], dict[str, float]]:
    """Simulate, start the stack, run the first round, then ``rounds`` loop rounds; always stops the stack.

    Returns the round records and the seconds of the set-up steps."""
    params = load_params(project / "params.yaml")
    defs = services(params.ops, project)
    run_dir = project / params.ops.run_dir
    env = {**os.environ, **QUIET, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PREFECT_API_URL": defs["deployments"].env["PREFECT_API_URL"]}
    for key in ("BARTOPS_PARAMS", "BARTOPS_REGISTRY", "BARTOPS_BUNDLE", "BARTOPS_MODEL_TAG", "BARTOPS_SERVING_LOGS"):
        env.pop(key, None)
    setup: dict[str, float] = {"simulate": _run(["bartops", "simulate"], project, env, 1800)}
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.chdir(project)  # the services resolve flows, params and data from the project root
    os.environ.clear()
    os.environ.update(env)
    try:
        t0 = time.monotonic()
        processes.start(defs["prefect"], run_dir, timeout=240)
        processes.start(defs["deployments"], run_dir, timeout=240)
        setup["prefect_and_deployments"] = time.monotonic() - t0
        setup["first_round"] = _run([sys.executable, "-m", "flows.retrain", "--auto-approve", "--no-package"],
                                    project, env, timeout)
        _run(["bartops", "registry", "bootstrap"], project, env, 120)
        t0 = time.monotonic()
        processes.start(defs["service"], run_dir, timeout=240)
        setup["service"] = time.monotonic() - t0
        setup["loop"] = _run([sys.executable, "-m", "flows.loop", "--rounds", str(rounds), "--page-views",
                              str(page_views), "--seed", str(seed)], project, env, timeout)
    finally:
        for name in ("service", "deployments", "prefect"):
            processes.stop(name, run_dir)
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)
    return read_rounds(project / params.paths.build / "loop" / "rounds.csv"), setup


def summary_rows(records: list[RoundRecord]) -> list[dict]:
    """The table printed per round."""
    return [{"round": r.round, "live": r.live_version, "pages": r.page_views,
             "true value": f"{r.true_value:.3f} ± {r.true_value_se:.3f}", "of oracle": round(r.oracle_share, 3),
             "logging/oracle": round(r.logging_value / r.oracle_value, 3),
             "online": f"{r.online_rate:.2f} [{r.online_rate_lo:.2f}, {r.online_rate_hi:.2f}]",
             "decision": r.decision, "DR lift": f"{r.dr_lift:+.3f} [{r.dr_lift_lo:+.3f}, {r.dr_lift_hi:+.3f}]",
             "true lift": f"{r.true_lift:+.3f}",
             "served=logged=joined=accepted": f"{r.served}={r.logged}={r.joined}={r.accepted}",
             "failed": r.failed_requests, "shed (retried)": r.shed_requests} for r in records]


def time_rows(records: list[RoundRecord]) -> list[dict]:
    """Where each round's time went (seconds) and the listeners' /home latency."""
    return [{"round": r.round, "swap wait": r.swap_seconds, "traffic": r.traffic_seconds, "truth": r.truth_seconds,
             "ingest": r.ingest_seconds, "retrain": r.retrain_seconds, "total": r.seconds,
             "/home p50 ms": r.page_p50_ms, "/home p99 ms": r.page_p99_ms} for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--page-views", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the project copy (its path is printed)")
    args = ap.parse_args()
    project = Path(tempfile.mkdtemp(prefix="bartops-loop-")) / "project"
    copy_tracked_files(project)
    use_free_ports(project)
    print(f"project copy: {project}", flush=True)
    try:
        records, setup = loop_in_copy(project, args.rounds, args.page_views, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(project.parent, ignore_errors=True)
    print(table(summary_rows(records)))
    print()
    print(table(time_rows(records)))
    print(f"\nset-up seconds: {', '.join(f'{k} {v:.0f}' for k, v in setup.items())}")
    print(f"saved {save('loop', {'rounds': [asdict(r) for r in records], 'setup_seconds': setup, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
