"""The living loop, two rounds on a small world, against the real stack a user starts.

In a fresh project copy: `bartops simulate`, a Prefect server and the deployment runner (`bartops up`),
the first round (`python -m flows.retrain --auto-approve`, then `bartops registry bootstrap`), the
BentoML service following the registry, and `python -m flows.loop --rounds 2`: simulated listeners
over HTTP, the ingest and retrain deployments, the gate, the swap.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bartops.loop.record import read_rounds
from bartops.ops import processes
from bartops.ops.stack import services
from bartops.registry import Registry
from project_copy import copy_project

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_two_rounds_of_the_loop_on_a_small_world(tmp_path):
    project = copy_project(tmp_path / "project",
                           ops={"prefect_port": free_port(), "service_port": free_port(), "run_dir": "build/run"},
                           serving={"log_rotate_seconds": 2, "workers": 1},
                           reward={"baselines": []})
    params = yaml.safe_load((project / "params.yaml").read_text())
    defs = services(params["ops"], project)
    run_dir = project / params["ops"]["run_dir"]
    api = defs["deployments"].env["PREFECT_API_URL"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_API_URL": api}
    for key in ("BARTOPS_PARAMS", "BARTOPS_REGISTRY", "BARTOPS_BUNDLE", "BARTOPS_MODEL_TAG", "BARTOPS_SERVING_LOGS"):
        env.pop(key, None)
    run(["bartops", "simulate"], project, env, 600)
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.chdir(project)  # services resolve flows, params and data from the project root
    os.environ.clear()
    os.environ.update(env)
    try:
        processes.start(defs["prefect"], run_dir, timeout=240)
        processes.start(defs["deployments"], run_dir, timeout=240)
        run([sys.executable, "-m", "flows.retrain", "--auto-approve", "--no-package"], project, env, 1200)
        run(["bartops", "registry", "bootstrap"], project, env, 120)
        processes.start(defs["service"], run_dir, timeout=240)
        run([sys.executable, "-m", "flows.loop", "--rounds", "2", "--page-views", "150"], project, env, 2400)
    finally:
        for name in ("service", "deployments", "prefect"):
            processes.stop(name, run_dir)
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)

    rounds = read_rounds(project / "build" / "loop" / "rounds.csv")
    assert [r.round for r in rounds] == [1, 2], f"rounds recorded: {[r.round for r in rounds]}"
    registry = Registry(project / "registry")
    for r in rounds:
        counts = (r.served, r.logged, r.joined, r.accepted)
        assert r.served > 0 and len(set(counts)) == 1, f"round {r.round}: served/logged/joined/accepted {counts}"
        assert r.page_views == 150 and r.failed_requests == 0, \
            f"round {r.round}: {r.page_views} pages, {r.failed_requests} failed requests"
        assert 0 < r.logging_value < r.oracle_value and 0 < r.oracle_share <= 1, \
            f"round {r.round}: truth out of range (logging {r.logging_value}, oracle {r.oracle_value}, " \
            f"share {r.oracle_share})"
        assert r.online_rate_lo <= r.online_rate <= r.online_rate_hi, f"round {r.round}: interval {r}"
        assert r.decision in ("promote", "reject") and r.candidate_version, \
            f"round {r.round}: no gate decision on a candidate ({r.decision!r}, {r.candidate_version!r})"
        gate = registry.show(r.candidate_version)["gate"]
        assert gate["decision"] == r.decision, f"round {r.round}: gate.json says {gate['decision']}, loop {r.decision}"
        assert not math.isnan(r.dr_lift) and r.dr_lift_lo <= r.dr_lift <= r.dr_lift_hi, f"round {r.round}: DR {r}"
    first, second = rounds
    expected_live = first.candidate_version if first.decision == "promote" else first.live_version
    assert second.live_version == expected_live, \
        f"round 2 was served by {second.live_version}, expected {expected_live} after round 1's {first.decision}"
    assert registry.production() == (second.candidate_version if second.decision == "promote" else expected_live)
