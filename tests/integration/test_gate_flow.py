"""The evaluate-and-gate flow on a real Prefect API: a trained candidate, the human approval pause
(timeout and an empty answer reject; an approval promotes), gate.json for the dashboard, and the
``bartops evaluate`` CLI (reports, no registry side effects)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bartops.gate import GateDecision, GateOutcome
from bartops.registry import Registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(small_data_dir, tmp_path_factory) -> Path:
    """Paths into a temp dir, the small batch accepted, features and a trained candidate bundle; gate
    rules loosened so that the candidate reaches the approval step (the rules have unit tests)."""
    from bartops.config import Params
    from bartops.features.store import build_features, save_features
    from bartops.reward.pipeline import run_training

    tmp = tmp_path_factory.mktemp("gate")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = 3
    params["paths"] = {**params["paths"], "data": str(small_data_dir), "impressions": str(tmp / "impressions"),
                       "build": str(tmp / "build"), "registry": str(tmp / "registry")}
    params["reward"] = {**params["reward"], "num_boost_round": 40}
    params["ope"] = {**params["ope"], "n_boot": 200, "marginal_samples": 20}
    params["gate"] = {**params["gate"], "margin": -100.0, "min_ess": 0, "max_ece": 1.0, "min_support_share": 0.0,
                      "explanation_tolerance": 100.0, "human_approval": True, "approval_timeout_s": 3}
    (tmp / "impressions").mkdir()
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", tmp / "impressions")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    build = tmp / "build"
    typed = Params.from_mapping(params)
    save_features(build_features(small_data_dir, typed, typed.paths.impressions), build / "features")
    run_training(build / "features", tmp / "impressions", build / "model", typed,
                 metrics_path=build / "reports" / "reward_metrics.json", baselines_dir=build / "baselines",
                 bundle_dir=build / "bundle")
    return tmp


def _copy_bundle(ws: Path, name: str) -> str:
    """A copy of the trained bundle under a new version name (one registry version per test)."""
    dst = ws / "bundles" / name
    shutil.copytree(ws / "build" / "bundle", dst)
    pol = json.loads((dst / "policy.json").read_text())
    (dst / "policy.json").write_text(json.dumps({**pol, "version": name}))
    return str(dst)


def test_cli_evaluate_writes_reports_without_registry_side_effects(workspace):
    from bartops.cli import app

    out = workspace / "cli-reports"
    res = CliRunner().invoke(app, ["evaluate", "--params", str(workspace / "params.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ope = json.loads((out / "ope.json").read_text())
    assert ope["decision"] in ("promote", "reject") and {r["rule"] for r in ope["rules"]} >= {"lift", "ess", "support"}
    lines = (out / "policy_value.csv").read_text().splitlines()
    assert lines[0] == "estimator,policy,value,lower,upper" and len(lines) == 1 + 9
    assert not (workspace / "registry").exists()


def test_approval_timeout_rejects(prefect_api, workspace):
    from flows.evaluate_and_gate import evaluate_and_gate

    out = evaluate_and_gate(bundle_dir=_copy_bundle(workspace, "timeout"), params_path=str(workspace / "params.yaml"))
    assert out.promoted is False and out.decision == "reject" and "approval" in out.failed, out
    assert out.summary.startswith("reject:") and "\n" not in out.summary, out.summary
    gate = Registry(workspace / "registry").show("timeout")["gate"]
    assert gate["status"] == "decided" and gate["approval"]["approved"] is False and "no answer" in gate["approval"]["comment"]
    assert gate["ope"]["diagnostics"]["candidate"]["weight_histogram"]["counts"]
    assert gate["validation"] and gate["validation"][0]["passed"] is True
    typed = GateDecision.from_dict(gate)  # the dashboard's and the CLI's reading of what the flow wrote
    assert typed.review_status == "rejected" and typed.headline() is not None, typed.review_status
    assert Registry(workspace / "registry").production() is None


def _run_and_answer(workspace, version: str, run_input: dict) -> tuple[GateOutcome, dict]:
    """Run the flow in a thread, wait for gate.json to say awaiting_approval, resume with ``run_input``."""
    from prefect.flow_runs import resume_flow_run

    from flows.evaluate_and_gate import evaluate_and_gate

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["gate"]["approval_timeout_s"] = 120
    pfile = workspace / f"params-{version}.yaml"
    pfile.write_text(yaml.safe_dump(params))
    result: dict = {}
    bundle = _copy_bundle(workspace, version)
    t = threading.Thread(target=lambda: result.update(
        outcome=evaluate_and_gate(bundle_dir=bundle, params_path=str(pfile))))
    t.start()
    reg = Registry(workspace / "registry")
    waiting = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and waiting is None:
        gate_path = workspace / "registry" / "versions" / version / "gate.json"
        if gate_path.exists():
            g = json.loads(gate_path.read_text())
            if g.get("status") == "awaiting_approval":
                waiting = g
        time.sleep(0.5)
    assert waiting is not None and waiting["flow_run_id"], "the flow never recorded awaiting_approval"
    time.sleep(1.0)  # let the pause reach the API
    resume_flow_run(waiting["flow_run_id"], run_input=run_input)
    t.join(timeout=120)
    assert "outcome" in result, f"the flow for {version} did not return within 120 s after the answer"
    return result["outcome"], reg.show(version)["gate"]


def test_resume_with_empty_answer_rejects(prefect_api, workspace):
    out, gate = _run_and_answer(workspace, "empty-answer", {})
    assert out.promoted is False and "approval" in out.failed, out
    assert gate["status"] == "decided" and gate["approval"]["approved"] is False


def test_approval_promotes(prefect_api, workspace):
    out, gate = _run_and_answer(workspace, "approved", {"approved": True, "reviewer": "ana", "comment": "ok"})
    assert out.promoted is True and out.production == "approved", out
    assert gate["approval"] == {"approved": True, "reviewer": "ana", "comment": "ok"} and gate["status"] == "decided"
    assert Registry(workspace / "registry").production() == "approved"


def test_the_production_version_is_not_gated_again(prefect_api, workspace):
    """Training the same data again yields the production version itself: nothing to decide, evidence kept."""
    from flows.evaluate_and_gate import evaluate_and_gate

    reg = Registry(workspace / "registry")
    bundle = _copy_bundle(workspace, "already-live")
    reg.register(bundle, "already-live")
    reg.record_decision("already-live", {"decision": "promote", "summary": "promote: the first evidence"})
    reg.promote("already-live", "test: live before the round")
    before = (workspace / "registry" / "versions" / "already-live" / "gate.json").read_text()
    events = len(reg.history())
    out = evaluate_and_gate(bundle_dir=bundle, params_path=str(workspace / "params.yaml"), auto_approve=True)
    assert out.decision == "already-production" and out.promoted is False and out.production == "already-live", out
    assert (workspace / "registry" / "versions" / "already-live" / "gate.json").read_text() == before
    assert reg.production() == "already-live" and len(reg.history()) == events


def test_retrain_round_in_process_returns_its_typed_result(prefect_api, small_data_dir, tmp_path):
    """The parent flow on a fresh project: the batch validated, features, a candidate, the gate; its state
    carries a RetrainResult (packaging skipped here: test_prefect_deployment runs it)."""
    from flows.retrain import RetrainResult, retrain

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = 3
    params["paths"] = {**params["paths"], "data": str(small_data_dir), "incoming": str(tmp_path / "incoming"),
                       "impressions": str(tmp_path / "impressions"), "quarantine": str(tmp_path / "quarantine"),
                       "build": str(tmp_path / "build"), "registry": str(tmp_path / "registry")}
    params["reward"] = {**params["reward"], "num_boost_round": 40}
    params["ope"] = {**params["ope"], "n_boot": 200, "marginal_samples": 20}
    (tmp_path / "incoming").mkdir()
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", tmp_path / "incoming")
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    state = retrain(params_file=str(pfile), auto_approve=True, package=False, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, RetrainResult) and result.packaged is None, result
    gate = Registry(tmp_path / "registry").show(result.gate.version)["gate"]
    assert result.gate.decision == gate["decision"] and result.gate.promoted == (gate["decision"] == "promote"), \
        (result.gate, gate["decision"])
    assert state.message == f"candidate {result.gate.version} {'promoted' if result.gate.promoted else 'not promoted'}"
