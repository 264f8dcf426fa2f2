"""`bartops up` after `bartops down`: the deployment runner is started again although Prefect's database
still lists its deployments (they outlive their runner); `bartops check`'s Prefect verdict follows it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bartops.config import load_params
from bartops.ops import processes
from bartops.ops.smoke import check_prefect
from bartops.ops.stack import prefect_api_url, services
from project_copy import copy_project

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_restarts_after_a_stop(tmp_path, monkeypatch):
    project = copy_project(tmp_path / "project", ops={"prefect_port": free_port(), "run_dir": "build/run"})
    ops = load_params(project / "params.yaml").ops
    defs, run_dir, api = services(ops, project), project / ops.run_dir, prefect_api_url(ops)
    runner = defs["deployments"]
    monkeypatch.chdir(project)  # `python -m flows.deployments` resolves from here
    monkeypatch.setenv("BARTOPS_PARAMS", str(project / "params.yaml"))
    try:
        processes.start(defs["prefect"], run_dir, timeout=240)
        processes.start(runner, run_dir, timeout=240)
        assert processes.running("deployments", run_dir) and check_prefect(api).ok

        for name in ("deployments", "prefect"):  # `make stop`
            processes.stop(name, run_dir)
        processes.start(defs["prefect"], run_dir, timeout=240)
        # registered but served by nobody (a stopped runner pauses its deployments): not up, and the check says so
        assert processes.healthy(runner.health_url) and not processes.is_up(runner, run_dir)
        verdict = check_prefect(api)
        assert not verdict.ok and "paused True" in verdict.detail, verdict.detail

        processes.start(runner, run_dir, timeout=240)  # `make demo` again
        assert processes.running("deployments", run_dir)
        assert check_prefect(api).ok, check_prefect(api).detail
    finally:
        for name in ("deployments", "prefect"):
            processes.stop(name, run_dir)
    assert not any(processes.running(n, run_dir) for n in ("deployments", "prefect"))
    assert Path(run_dir / "deployments.log").exists()
