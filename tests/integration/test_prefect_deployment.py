"""`prefect deployment run 'retrain/nightly'` against a real local Prefect server, the way a user
runs it: `bartops up prefect deployments` in a fresh project copy, then the CLI run with --watch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bartops.config import load_params
from bartops.ops import processes
from bartops.ops.stack import services
from project_copy import copy_project

BIN = Path(sys.executable).parent


READ_RUNS = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        runs = [(flows[r.flow_id], r.state_type.value) for r in await client.read_flow_runs()]
        artifacts = [a.key for a in await client.read_artifacts() if a.key]
    print(json.dumps({"runs": runs, "artifacts": artifacts}))

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Project copy with simulated data, a Prefect server and the deployment runner on free ports."""
    project = copy_project(tmp_path_factory.mktemp("project"),
                           ops={"prefect_port": free_port(), "run_dir": "build/run"})
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(["bartops", "simulate"], cwd=project, env=env, check=True, capture_output=True)
    ops = load_params(project / "params.yaml").ops
    defs = services(ops, project)
    run_dir = project / ops.run_dir
    old_cwd = Path.cwd()
    os.chdir(project)  # the runner resolves flow entrypoints and params paths from here
    os.environ["BARTOPS_PARAMS"] = str(project / "params.yaml")
    try:
        processes.start(defs["prefect"], run_dir, timeout=240)
        processes.start(defs["deployments"], run_dir, timeout=240)
        yield project, defs["deployments"].env["PREFECT_API_URL"]
    finally:
        for name in ("deployments", "prefect"):
            processes.stop(name, run_dir)
        os.environ.pop("BARTOPS_PARAMS", None)
        os.chdir(old_cwd)


def test_nightly_deployment_runs_the_whole_round(stack):
    project, api = stack
    env = {**os.environ, "PREFECT_API_URL": api, "PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run(["prefect", "deployment", "run", "retrain/nightly", "--watch", "--watch-timeout", "900"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=1000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Completed" in res.stdout

    probe = subprocess.run([sys.executable, "-c", READ_RUNS], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    runs, keys = result["runs"], set(result["artifacts"])
    names = {name for name, _ in runs}
    assert {"retrain", "validate-logs", "build-features", "train-reward-model", "evaluate-and-gate"} <= names
    steps = {"retrain", "validate-logs", "build-features", "train-reward-model", "evaluate-and-gate", "package-service"}
    ran = [(name, state) for name, state in runs if name in steps and state != "SCHEDULED"]  # cron runs wait
    assert ran and all(state == "COMPLETED" for _, state in ran), runs
    assert {"validation-report", "reward-model-metrics", "retrain-summary"} <= keys
    assert (project / "build" / "bundle" / "policy.json").exists()
