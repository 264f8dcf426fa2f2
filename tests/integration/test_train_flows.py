"""The build-features and train-reward-model flows on a real Prefect API, and the CLI commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bartops.reward.policy import load_policy_bundle
from bartops.sim import sample_contexts

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def workspace(small_data_dir, tmp_path) -> Path:
    """params.yaml with paths into tmp_path; the small batch already accepted into impressions/."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = 3
    params["paths"] = {**params["paths"], "data": str(small_data_dir), "impressions": str(tmp_path / "impressions"),
                       "build": str(tmp_path / "build")}
    params["reward"] = {**params["reward"], "num_boost_round": 60}
    (tmp_path / "impressions").mkdir()
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", tmp_path / "impressions")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_flows_build_features_and_train_a_loadable_bundle(prefect_api, workspace, small_sim):
    from flows.build_features import build_features_flow
    from flows.train_reward_model import train_reward_model_flow

    params_file = str(workspace / "params.yaml")
    summary = build_features_flow(params_file=params_file)
    manifest = json.loads((workspace / "build" / "features" / "manifest.json").read_text())
    assert summary.version == manifest["version"] and summary.items == len(small_sim.world.items), summary

    report = train_reward_model_flow(params_file=params_file)
    build = workspace / "build"
    metrics = json.loads((build / "reports" / "reward_metrics.json").read_text())
    assert set(metrics["models"]) == {"xgboost-weighted", "xgboost-unweighted", "logistic", "popularity"}
    assert metrics["features_version"] == manifest["version"] and report.version == metrics["version"]
    assert (build / "baselines" / "xgboost-unweighted" / "model.ubj").exists()
    policy, features = load_policy_bundle(build / "bundle")
    assert policy.version == report.version and features.version == manifest["version"]
    ctx = sample_contexts(small_sim.world, 5, np.random.default_rng(0))
    scores = policy.scorer(ctx, features.candidates_for(ctx))
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    lineage = json.loads((build / "bundle" / "lineage.json").read_text())
    assert lineage["data_version"] == metrics["data_version"] and lineage["features_version"] == manifest["version"]


def test_cli_features_and_train(workspace):
    from bartops.cli import app

    runner = CliRunner()
    params_file = str(workspace / "params.yaml")
    res = runner.invoke(app, ["features", "--params", params_file])
    assert res.exit_code == 0, res.output
    assert "feature snapshot" in res.output
    res = runner.invoke(app, ["train", "--params", params_file, "--out", str(workspace / "out")])
    assert res.exit_code == 0, res.output
    assert "xgboost-weighted" in res.output and (workspace / "out" / "bundle" / "policy.json").exists()
    empty = workspace / "no-batches"
    empty.mkdir()
    res = runner.invoke(app, ["train", "--params", params_file, "--impressions", str(empty)])
    assert res.exit_code == 1 and "no impression batches" in res.output
