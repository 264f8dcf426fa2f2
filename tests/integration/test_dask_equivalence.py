"""The Dask path equals the local path on the same data (LocalCluster: 2 worker processes × 1 thread).

- the feature snapshot built from user-aligned history partitions equals the local one exactly
  (affinities, embeddings, clusters, similar items, candidate tables); of the logged response only
  ``expected`` (a sum of rates added across page partitions) may differ, by relative 1e-12 at most;
- training rows are equal; with the default params (``reward.stack: logistic``) the stacked logistic
  regression is fitted on the same rows (in partition order: its log-odds agree within 1e-9), and
  the stacked xgboost.dask model's predictions agree with the local model's within 0.03 absolute and
  0.003 on average (xgboost.dask merges per-worker quantile sketches, so histogram cut points and
  some splits move; measured on this world at 60 rounds: max 0.0067, mean 0.0007), with
  validation log loss within 1 %;
- ``bartops features`` and ``bartops train`` with ``BARTOPS_DASK_SCHEDULER=dask`` use these paths;
- the gate's evaluation is one code on every executor: on the same partitions in this process and on
  Dask every estimate but DR is equal (the same partition-seeded Monte Carlo), and DR too given the
  same fold models (Dask trains them with xgboost.dask on the same cards);
- a Prefect flow runs its task on the cluster with DaskTaskRunner and its task runs are recorded by
  the session's Prefect API (a worker that had started its own temporary API would record them there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bartops.config import Params

pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 60


@pytest.fixture(scope="module")
def settings():
    from bartops.config import ScaleSettings

    return ScaleSettings(backend="dask", workers=2, threads_per_worker=1, memory_limit="2GiB", partition_rows=8000)


@pytest.fixture(scope="module")
def client(settings):
    from bartops.scale.cluster import close_client, dask_client

    c = dask_client(settings)
    yield c
    close_client(c)


@pytest.fixture(scope="module")
def raw_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["reward"]["num_boost_round"] = ROUNDS
    return p


@pytest.fixture(scope="module")
def params(raw_params) -> Params:
    return Params.from_mapping(raw_params)


@pytest.fixture(scope="module")
def features(small_data_dir, params):
    from bartops.features.store import build_features

    return build_features(small_data_dir, params, small_data_dir / "incoming")


@pytest.fixture(scope="module")
def parts(small_data_dir, settings):
    from bartops.features.partitions import page_partitions

    return page_partitions(small_data_dir / "incoming", settings.partition_rows)


@pytest.fixture(scope="module")
def local_training(features, params, small_data_dir):
    """The local stacked candidate (no baselines) and the data version of the batch."""
    from bartops.features.logstats import load_impressions
    from bartops.reward.train import train_reward_models

    imp, version = load_impressions(small_data_dir / "incoming")
    return train_reward_models(features, imp, replace(params, reward=replace(params.reward, baselines=())),
                               data_version=version), version


def test_training_rows_equal_and_stacked_predictions_close(client, features, parts, params, small_data_dir,
                                                           local_training):
    from bartops.features.logstats import load_impressions, time_split
    from bartops.reward.train import classification_metrics, fold_response_tables, ips_weights, training_rows
    from bartops.scale import train as st

    imp, _ = load_impressions(small_data_dir / "incoming")
    rp = params.reward
    assert rp.stack == "logistic"  # the default params: stacked trees
    train = time_split(imp["timestamp"], rp.validation_fraction)
    rows = training_rows(features, imp, train, rp.response_folds)
    y = imp["reward"].to_numpy()
    local = local_training[0].model

    result = st.train_reward_model_dask(client, features, parts, params)
    cut = pd.Timestamp(result.split["validation_from"])
    assert cut == pd.to_datetime(imp["timestamp"], utc=True)[~train].min()
    assert result.split["train_rows"] == int(train.sum()) and result.split["validation_rows"] == int((~train).sum())
    w = ips_weights(imp["propensity"].to_numpy()[train], rp.clip, rp.normalize)
    assert result.split["max_weight"] == pytest.approx(w.max(), rel=1e-12)

    tables = fold_response_tables(features, imp, train, rp.response_folds)  # what the driver computes
    features_f, tables_f = client.scatter(features, broadcast=True), client.scatter(tables, broadcast=True)
    futures = client.map(st.partition_rows, parts, features=features_f, cut=cut, tables=tables_f,
                         folds=rp.response_folds, pure=False)
    got = client.gather(futures)
    at = pd.Index(np.concatenate([g["impression_id"] for g in got])).get_indexer(imp["impression_id"].astype(str))
    np.testing.assert_allclose(np.vstack([g["rows"] for g in got])[at], rows, rtol=1e-6, atol=1e-6)

    # the stacked logistic regression: fitted on the same rows (fewer than stack_rows) in another order
    shapes = [(int(g["train"].sum()), int((~g["train"]).sum())) for g in got]
    sample_rows, sample_y = st.stack_sample(client, futures, shapes, 5000, params.seed)
    in_order = [g for g in got if g["train"].any()]
    keep = np.sort(np.random.default_rng([params.seed, 17]).choice(int(train.sum()), 5000, replace=False))
    np.testing.assert_array_equal(sample_rows, np.vstack([g["rows"][g["train"]] for g in in_order])[keep])
    np.testing.assert_array_equal(sample_y, np.concatenate([g["reward"][g["train"]] for g in in_order])[keep])
    del futures
    va = rows[~train]
    assert result.model.margin is not None and local.margin is not None
    np.testing.assert_allclose(result.model.base_margin(va), local.base_margin(va), rtol=0, atol=1e-9)
    p_local, p_dask = local.predict_rows(va), result.model.predict_rows(va)
    diff = np.abs(p_local - p_dask)
    assert diff.max() < 0.03 and diff.mean() < 0.003, (diff.max(), diff.mean())
    ll_local = classification_metrics(y[~train], p_local)["log_loss"]
    assert result.metrics["models"][result.model.name]["log_loss"] == pytest.approx(ll_local, rel=0.01)


def test_features_on_dask_equal_local(client, features, small_data_dir, params):
    from bartops.features.partitions import user_partitions
    from bartops.features.store import SNAPSHOT_ARRAYS, SNAPSHOT_TABLES, build_features
    from bartops.scale import DaskExecutor

    assert len(user_partitions(small_data_dir / "history.parquet", 8000)) >= 4  # several history partitions
    dist = build_features(small_data_dir, params, small_data_dir / "incoming", DaskExecutor(client), partition_rows=8000)
    for name in SNAPSHOT_TABLES:
        if name != "user_kind":  # candidates, cold start, affinities, similar items, item stats: identical
            pd.testing.assert_frame_equal(getattr(dist, name), getattr(features, name), check_exact=True, obj=name)
    for name in SNAPSHOT_ARRAYS:  # embeddings and k-means clusters: identical
        np.testing.assert_array_equal(getattr(dist, name), getattr(features, name), err_msg=name)
    a, b = (f.user_kind.sort_values(["user_id", "kind"], ignore_index=True) for f in (dist, features))
    counts = ["user_id", "kind", "shows", "streams"]
    pd.testing.assert_frame_equal(a[counts], b[counts], check_dtype=False, check_exact=True)
    # expected = Σ cell rates over a user's rows, added across page partitions in another order
    np.testing.assert_allclose(a["expected"], b["expected"], rtol=1e-12, atol=0)
    assert dist.params == features.params and dist.params["response_source"]["rows"] > 0


# ---------------------------------------------------------------------- the gate's evaluation (bartops evaluate)
@pytest.fixture(scope="module")
def eval_params(params) -> Params:
    """The gate's evaluation with fewer Monte-Carlo samples (its cost; the equivalences do not depend on it)."""
    return replace(params, ope=replace(params.ope, n_boot=200, marginal_samples=10, target_samples=2))


@pytest.fixture(scope="module")
def gate_bundle(local_training, features, params, small_data_dir, tmp_path_factory) -> Path:
    """A candidate bundle of the local model (ε-greedy as params.yaml says), trained before the cut."""
    from bartops.features.store import save_features
    from bartops.reward.pipeline import write_training_outputs

    tmp = tmp_path_factory.mktemp("gate-bundle")
    save_features(features, tmp / "features")
    result, version = local_training
    write_training_outputs(result, features, version, tmp / "features", small_data_dir / "incoming", tmp / "model",
                           params, bundle_dir=tmp / "bundle")
    return tmp / "bundle"


def _assert_same(a, b, rel=1e-12):
    assert (a.value, a.ci_low, a.ci_high, a.se) == pytest.approx((b.value, b.ci_low, b.ci_high, b.se), rel=rel,
                                                                 abs=1e-12), a.estimator
    assert (a.n_rows, a.n_groups, a.max_weight) == (b.n_rows, b.n_groups, b.max_weight)
    assert a.ess == pytest.approx(b.ess, rel=1e-12)


def _assert_same_result(dist, local, estimators=("ips", "snips", "dr"), candidate_per_kind=True):
    """Everything ``evaluate_policies`` returns (a ``PolicyEvaluation``), to floating-point precision
    (``estimators`` of the candidate and its differences; the on-policy production has no model)."""
    for name in ("candidate", "production"):
        for e in (estimators if name == "candidate" else ("ips", "snips", "dr")):
            _assert_same(dist.estimates[name][e], local.estimates[name][e])
        a, b = dataclasses.asdict(dist.diagnostics[name]), dataclasses.asdict(local.diagnostics[name])
        np.testing.assert_array_equal(np.sort(a.pop("weights")), np.sort(b.pop("weights")))
        assert a.pop("policy") == b.pop("policy") and a.pop("target_samples") == b.pop("target_samples")
        assert a == pytest.approx(b, rel=1e-12), name
    for e in estimators:
        _assert_same(dist.differences["production"][e], local.differences["production"][e])
    a, b = dataclasses.asdict(dist.logging), dataclasses.asdict(local.logging)
    assert a.pop("examination") == b.pop("examination")
    assert a == pytest.approx(b, rel=1e-12)
    assert dist.per_kind.keys() == local.per_kind.keys()
    for k, row in local.per_kind.items():
        keys = [c for c in row if candidate_per_kind or c != "candidate"]
        assert {c: dist.per_kind[k][c] for c in keys} == pytest.approx({c: row[c] for c in keys}, rel=1e-12), k
    if candidate_per_kind:  # the per-kind intervals: the same page sums and resamples
        a, b = dist.kind_lifts["production"], local.kind_lifts["production"]
        assert a.keys() == b.keys()
        for k in b:
            assert a[k].measured == b[k].measured and a[k].reason == b[k].reason, (k, a[k], b[k])
            got = [a[k].candidate, a[k].production, a[k].lift, a[k].ci_low, a[k].ci_high]
            want = [b[k].candidate, b[k].production, b[k].lift, b[k].ci_low, b[k].ci_high]
            assert got == pytest.approx(want, rel=1e-9, nan_ok=True), (k, got, want)


def test_gate_evaluation_the_same_on_every_executor(client, gate_bundle, eval_params, small_data_dir):
    """``evaluate_bundle`` on the same partitions in this process and on Dask: the same code and the same
    partition-seeded Monte Carlo, so κ, production and the candidate's IPS and SNIPS (values, intervals,
    diagnostics) are equal; DR differs only through the fold models (``xgboost.dask``: merged per-worker
    quantile sketches, per-worker subsampling): given Dask's fold models the in-process evaluation equals
    Dask's in every estimate, and Dask trains each fold's model on the cards the in-process one uses."""
    from dataclasses import replace

    from bartops.features.partitions import IN_PROCESS, page_partitions
    from bartops.gate import evaluation as se
    from bartops.gate.evaluate import SIM_LOGGING_VERSION, evaluate_bundle, evaluation_setup
    from bartops.scale import DaskExecutor
    from bartops.scale.evaluate import dask_fold_models, fold_cards

    incoming = small_data_dir / "incoming"
    dist = evaluate_bundle(gate_bundle, eval_params, None, incoming, small_data_dir, DaskExecutor(client), 8000,
                           dask_fold_models)
    here = evaluate_bundle(gate_bundle, eval_params, None, incoming, small_data_dir, IN_PROCESS, 8000)
    assert replace(dist, result=None, backend="local") == replace(here, result=None)
    assert dist.backend == "dask" and dist.partitions == 4
    assert dist.result.logging == here.result.logging  # κ, supported share, smallest exposure
    _assert_same_result(dist.result, here.result, estimators=("ips", "snips"), candidate_per_kind=False)

    # DR given Dask's fold models: every estimate equal
    setup = evaluation_setup(gate_bundle, eval_params, None, small_data_dir, SIM_LOGGING_VERSION)
    parts = page_partitions(incoming, 8000)
    models = se.evaluate_partitions(DaskExecutor(client), parts, setup, fit_folds=dask_fold_models).models
    same = se.evaluate_partitions(IN_PROCESS, parts, setup, fit_folds=lambda *args: models)
    _assert_same_result(same.result, dist.result)

    # Dask's fold k model is trained on the cards the in-process one is trained on: the other folds' cards
    scans = [se.scan_partition(p, setup.holdout_from) for p in parts]
    keep, sample, _ = se.row_plan(scans, [0] * len(parts), None, setup.cfg.seed, 10**9)
    states = [se.load_partition(p, setup, k, s) for p, k, s in zip(parts, keep, sample)]
    folds = se.page_fold_assignment([se.partition_summary(s) for s in states], setup.cfg.folds, setup.cfg.seed)
    rows = [se.fold_rows(s, f) for s, f in zip(states, folds)]
    x, y, fold = (np.concatenate([r[i] for r in rows]) for i in range(3))

    def sorted_rows(a, b):
        both = np.hstack([a, np.asarray(b, np.float64)[:, None]])
        return both[np.lexsort(both.T[::-1])]

    for k in range(setup.cfg.folds):
        got = [(fold_cards(s, f, k, "x"), fold_cards(s, f, k, "y")) for s, f in zip(states, folds)]
        np.testing.assert_array_equal(sorted_rows(np.vstack([g[0] for g in got]), np.concatenate([g[1] for g in got])),
                                      sorted_rows(x[fold != k], y[fold != k]))


def test_gate_evaluation_draws_the_local_pages(small_data_dir, tmp_path):
    """``ope.max_pages`` on partitions of two batch files: the same pages and rows as ``subsample_pages``
    on the concatenated batches after the cut (it draws from the pages in file order)."""
    from bartops.features.partitions import page_partitions
    from bartops.gate import evaluation as se
    from bartops.ope.pipeline import subsample_pages

    logs = pd.read_parquet(small_data_dir / "incoming" / "sim-seed3.parquet")
    half = len(logs) // 2
    for name, rows in (("a", logs.iloc[:half]), ("b", logs.iloc[half:])):
        rows.to_parquet(tmp_path / f"{name}.parquet", index=False)
    cut = pd.to_datetime(logs["timestamp"], utc=True).quantile(0.7)
    after = logs[(pd.to_datetime(logs["timestamp"], utc=True) >= cut).to_numpy()]
    want = subsample_pages(after, 60, 5)
    parts = page_partitions(tmp_path, 4000)
    scans = [se.scan_partition(p, cut) for p in parts]
    keep, sample, n = se.row_plan(scans, [int(p.file.endswith("b.parquet")) for p in parts], 60, 5, 10**9)
    assert len(parts) == 8 and n == len(want)
    assert sorted(np.concatenate(keep)) == sorted(want["request_id"].astype(str).unique())
    assert sum(len(s) for s in sample) == n  # below estimate_examination's rows: every row


def test_flow_runs_tasks_on_dask_against_the_session_api(prefect_api, client, features, small_data_dir, tmp_path,
                                                         raw_params):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    from bartops.features.store import save_features
    from bartops.reward.model import load_model
    from bartops.scale.cluster import task_runner, worker_environment
    from bartops.config import ScaleSettings
    from flows.train_reward_model import train_reward_model_flow

    p = {**raw_params, "reward": {**raw_params["reward"], "num_boost_round": 10},
         "scale": {"backend": "dask", "workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB",
                   "partition_rows": 8000}}
    impressions = tmp_path / "impressions"
    impressions.mkdir()
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", impressions)
    save_features(features, tmp_path / "features")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(p))
    api = PREFECT_API_URL.value()
    assert api and worker_environment()["PREFECT_API_URL"] == api

    runner = task_runner(ScaleSettings(**p["scale"]))
    assert type(runner).__name__ == "DaskTaskRunner"
    flow = train_reward_model_flow.with_options(task_runner=runner)
    state = flow(features_dir=str(tmp_path / "features"), impressions_dir=str(impressions),
                 out_dir=str(tmp_path / "build"), params_file=str(params_file), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.backend == "dask" and report.split["partitions"] == 4
    model = load_model(tmp_path / "build" / "model")
    assert model.params.get("backend") == "dask"

    async def task_runs():
        async with get_client() as c:
            return await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
                state.state_details.flow_run_id])))

    import asyncio

    runs = asyncio.run(task_runs())
    assert [r.name.split("-")[0] for r in runs] == ["train_and_save"] and runs[0].state.is_completed()


def test_pipeline_commands_honour_the_dask_setting(small_data_dir, tmp_path):
    """`BARTOPS_DASK_SCHEDULER=dask bartops features`, `bartops train` and `bartops evaluate` (what `dvc
    repro` runs), in a project copy: the snapshot and the stacked model come from the Dask paths, the
    bundle loads, and the gate's evaluation runs on the partitions and writes its reports."""
    import json
    import subprocess
    import sys

    from project_copy import copy_project

    from bartops.reward.model import load_model
    from bartops.reward.policy import load_policy_bundle

    project = copy_project(tmp_path, scale={"partition_rows": 8000, "memory_limit": "2GiB"},
                           ope={"marginal_samples": 10, "target_samples": 2})
    (project / "data").mkdir(exist_ok=True)
    for name in ("items", "users", "explanations", "history"):
        shutil.copy(small_data_dir / f"{name}.parquet", project / "data")
    (project / "build" / "impressions").mkdir(parents=True)
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", project / "build" / "impressions")
    env = {**os.environ, "BARTOPS_DASK_SCHEDULER": "dask"}
    for step in ("features", "train", "evaluate"):
        run = subprocess.run([sys.executable, "-m", "bartops.cli", step], cwd=project, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"bartops {step}: {run.stdout}\n{run.stderr}"
    assert "evaluated on dask: 4 page-aligned partitions" in run.stdout
    ope = json.loads((project / "build" / "reports" / "ope.json").read_text())
    assert ope["decision"] in ("promote", "reject") and ope["logs"]["rows"] > 0 and len(ope["table"]) == 9
    report = json.loads((project / "build" / "reports" / "reward_metrics.json").read_text())
    assert report["backend"] == "dask" and report["split"]["partitions"] == 4 and report["features_response_current"]
    model = load_model(project / "build" / "model")
    assert model.params["backend"] == "dask" and model.margin is not None  # stacked, as params.yaml says
    policy, features = load_policy_bundle(project / "build" / "bundle")
    assert features.params["response_source"]["rows"] > 0 and len(features.candidates) > 0
    assert policy is not None
