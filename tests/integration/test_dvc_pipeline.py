"""`dvc repro` on a fresh copy of the project: rebuilds everything, then is a no-op, then re-runs
only what a changed parameter touches; `dvc exp run -S` works.  Real DVC, real stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from project_copy import copy_project

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the tracked project with small parameters, its data simulated and added."""
    dest = copy_project(tmp_path_factory.mktemp("project"))
    run(["git", "init", "-q"], dest)
    run(["bartops", "simulate"], dest)
    run(["dvc", "add", "data", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "fresh"], dest)
    return dest


def test_repro_builds_everything_then_does_nothing_then_reruns_only_what_changed(project):
    out = run(["dvc", "repro"], project)
    for stage in ("validate", "features", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert (project / "build" / "bundle" / "policy.json").exists()
    assert (project / "build" / "reports" / "reward_metrics.json").exists()
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "repro"], project)

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["reward"]["num_boost_round"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], project)
    assert "Running stage 'train'" in changed
    assert "Running stage 'validate'" not in changed and "Running stage 'features'" not in changed
    params["gate"]["min_ess"] = params["gate"]["min_ess"] + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    gate_only = run(["dvc", "repro"], project)
    assert "Running stage 'evaluate'" in gate_only
    assert "Running stage 'train'" not in gate_only
    metrics = run(["dvc", "metrics", "show"], project)
    assert "reward_metrics.json" in metrics and "ope.json" in metrics
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert "calibration.csv" in plots and "policy_value.csv" in plots


def test_a_code_change_makes_the_evaluation_stale(project):
    """Evaluation builds pages with ``policy/``: editing it must make ``evaluate`` (and the rest) stale."""
    run(["dvc", "repro"], project)
    assert json.loads(run(["dvc", "status", "--json", "evaluate"], project).strip() or "{}") == {}, \
        "evaluate is stale right after dvc repro"
    page = project / "src" / "bartops" / "policy" / "page.py"
    original = page.read_text()
    page.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(run(["dvc", "status", "--json", "evaluate"], project))
    finally:
        page.write_text(original)
    changed = {path for entry in status.get("evaluate", []) if isinstance(entry, dict)
               for path in (entry.get("changed deps") or {})}
    assert "src/bartops" in changed, f"editing policy/page.py left evaluate up to date: dvc status {status}"


def test_experiment_with_a_set_parameter(project):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "before exp", "--allow-empty"], project)
    out = run(["dvc", "exp", "run", "-S", "reward.clip=5"], project)
    assert "Ran experiment" in out or "Experiment" in out
    table = run(["dvc", "exp", "show", "--csv"], project)
    assert "reward.clip" in table
