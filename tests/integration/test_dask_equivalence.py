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
- OPE estimates from per-partition sums equal the local ones to floating-point precision;
- a Prefect flow runs its task on the cluster with DaskTaskRunner and its task runs are recorded by
  the session's Prefect API (a worker that had started its own temporary API would record them there).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 60


@pytest.fixture(scope="module")
def settings():
    from bartops.scale.cluster import ScaleSettings

    return ScaleSettings(backend="dask", workers=2, threads_per_worker=1, memory_limit="2GiB", partition_rows=8000)


@pytest.fixture(scope="module")
def client(settings):
    from bartops.scale.cluster import close_client, dask_client

    c = dask_client(settings)
    yield c
    close_client(c)


@pytest.fixture(scope="module")
def params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["reward"]["num_boost_round"] = ROUNDS
    return p


@pytest.fixture(scope="module")
def features(small_data_dir, params):
    from bartops.features.store import build_features

    return build_features(small_data_dir, params, small_data_dir / "incoming")


@pytest.fixture(scope="module")
def parts(small_data_dir, settings):
    from bartops.scale.partitions import page_partitions

    return page_partitions(small_data_dir / "incoming", settings.partition_rows)


def test_training_rows_equal_and_stacked_predictions_close(client, features, parts, params, small_data_dir):
    from bartops.features.logstats import load_impressions, time_split
    from bartops.reward.train import (RewardParams, classification_metrics, ips_weights, train_reward_models,
                                      training_rows)
    from bartops.scale import train as st

    imp, _ = load_impressions(small_data_dir / "incoming")
    rp = RewardParams.from_dict(params["reward"])
    assert rp.stack == "logistic"  # the default params: stacked trees
    train = time_split(imp["timestamp"], rp.validation_fraction)
    rows = training_rows(features, imp, train, rp.response_folds)
    y = imp["reward"].to_numpy()
    local = train_reward_models(features, imp, {**params, "reward": {**params["reward"], "baselines": []}}).model

    result = st.train_reward_model_dask(client, features, parts, params)
    cut = pd.Timestamp(result.split["validation_from"])
    assert cut == pd.to_datetime(imp["timestamp"], utc=True)[~train].min()
    assert result.split["train_rows"] == int(train.sum()) and result.split["validation_rows"] == int((~train).sum())
    w = ips_weights(imp["propensity"].to_numpy()[train], rp.clip, rp.normalize)
    assert result.split["max_weight"] == pytest.approx(w.max(), rel=1e-12)

    tables = st.dask_response_tables(client, features.explanations, parts, cut, rp.response_folds)
    got = client.gather(client.map(st.partition_rows, parts, features=st._broadcast(client, features), cut=cut,
                                   tables=st._broadcast(client, tables), folds=rp.response_folds, pure=False))
    at = pd.Index(np.concatenate([g["impression_id"] for g in got])).get_indexer(imp["impression_id"].astype(str))
    np.testing.assert_allclose(np.vstack([g["rows"] for g in got])[at], rows, rtol=1e-6, atol=1e-6)

    # the stacked logistic regression: fitted on the same rows (fewer than stack_rows) in another order
    futures, shapes = st._row_futures(client, st._broadcast(client, features), parts, cut, tables, rp.response_folds)
    sample_rows, sample_y = st.stack_sample(client, futures, shapes, 5000, int(params["seed"]))
    in_order = [g for g in got if g["train"].any()]
    keep = np.sort(np.random.default_rng([int(params["seed"]), 17]).choice(int(train.sum()), 5000, replace=False))
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
    from bartops.features.store import SNAPSHOT_ARRAYS, SNAPSHOT_TABLES
    from bartops.scale.features import build_features_dask
    from bartops.scale.partitions import user_partitions

    assert len(user_partitions(small_data_dir / "history.parquet", 8000)) >= 4  # several history partitions
    dist = build_features_dask(client, small_data_dir, params, small_data_dir / "incoming", partition_rows=8000)
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


def test_ope_partitioned_equals_local(client, small_sim, small_data_dir, parts):
    from bartops.features.candidates import candidates_for_requests
    from bartops.ope.estimators import IPS, SNIPS, evaluate_many
    from bartops.ope.slate import logged_pages
    from bartops.scale.ope import evaluate_many_partitioned, partition_prefix_data, partition_statistics, slot_strata
    from bartops.scale.partitions import read_partition
    from bartops.sim.simulate import logging_policy

    w = small_sim.world
    log = logging_policy(w, small_sim.history, 6, 8, 0.1, 0.1)
    target = dataclasses.replace(log, epsilon_head=0.0, epsilon_fill=0.0, version="greedy")
    cand_table = small_sim.candidates

    def candidates(ctx):
        return candidates_for_requests(cand_table, ctx["user_id"].to_numpy())

    logs = pd.read_parquet(small_data_dir / "incoming" / "sim-seed3.parquet")
    strata = np.unique(slot_strata(logs["shelf"], logs["position"], 8))
    ests = [IPS(), SNIPS(), IPS(clip=50.0, name="ips-clipped")]

    def stats_of(part):
        d, ids = partition_prefix_data(read_partition(part), w.explanations, target, candidates, strata)
        return partition_statistics(ests, d, ids)

    dist = evaluate_many_partitioned(ests, client.gather(client.map(stats_of, parts, pure=False)), n_boot=300, seed=1)
    whole, _ = partition_prefix_data(logs, w.explanations, target, candidates, strata)
    lp = logged_pages(logs, w.explanations)
    assert whole.n_groups == lp.n_pages
    local = evaluate_many(ests, whole, n_boot=300, seed=1)
    for name, a in local.items():
        b = dist[name]
        assert (b.value, b.ci_low, b.ci_high, b.n_rows, b.n_groups) == (a.value, a.ci_low, a.ci_high, a.n_rows,
                                                                         a.n_groups), name
        assert b.ess == pytest.approx(a.ess, rel=1e-12) and b.max_weight == a.max_weight
    assert 0 < local["snips"].value < 8  # streams per page of a 48-card page: a sane estimate


def test_flow_runs_tasks_on_dask_against_the_session_api(prefect_api, client, features, small_data_dir, tmp_path,
                                                         params):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    from bartops.features.store import save_features
    from bartops.reward.model import load_model
    from bartops.scale.cluster import ScaleSettings, task_runner, worker_environment
    from flows.train_reward_model import train_reward_model_flow

    p = {**params, "reward": {**params["reward"], "num_boost_round": 10},
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
    assert report["backend"] == "dask" and report["split"]["partitions"] == 4
    model = load_model(tmp_path / "build" / "model")
    assert model.params.get("backend") == "dask"

    async def task_runs():
        async with get_client() as c:
            return await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
                state.state_details.flow_run_id])))

    import asyncio

    runs = asyncio.run(task_runs())
    assert [r.name.split("-")[0] for r in runs] == ["train_and_save"] and runs[0].state.is_completed()


def _corrupt(src: Path, dst: Path) -> Path:
    """The batch with bad propensities, a few impression ids repeated in other pages, and an explored
    share far from ε: failures of row, page/cross-partition and batch-level checks."""
    df = pd.read_parquet(src)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(df), 60, replace=False)
    df.loc[rows[:20], "propensity"] = 0.0
    df.loc[rows[20:40], "impression_id"] = df["impression_id"].to_numpy()[rows[40:60]]
    df.loc[rng.random(len(df)) < 0.05, "explored"] = True
    dst.mkdir(parents=True, exist_ok=True)
    df.to_parquet(dst / "bad.parquet", index=False)
    return dst / "bad.parquet"


def test_validation_same_verdict_and_counts(client, small_data_dir, params, parts, tmp_path):
    from bartops.scale.validate import validate_partitioned
    from bartops.validation import validate_batch

    now = pd.Timestamp("2026-11-02T00:00:00Z")
    good = small_data_dir / "incoming" / "sim-seed3.parquet"
    bad = _corrupt(good, tmp_path / "bad")
    for batch, passed in ((good, True), (bad, False)):
        local = validate_batch(batch, small_data_dir, params, now=now)
        dist = validate_partitioned(client, batch, small_data_dir, params, 8000, now=now)
        assert local.passed is passed and dist.passed is passed
        assert dist.suites["impressions"]["partitions"] == 4
        assert (dist.rows, dist.pages) == (local.rows, local.pages)
        a = {(o.suite, o.check): (o.success, o.unexpected_count) for o in local.expectations}
        b = {(o.suite, o.check): (o.success, o.unexpected_count) for o in dist.expectations}
        assert a == b
    failed = {o.check for o in dist.failed}
    assert {"propensity_range", "impression_id_unique", "explored_share"} <= failed


def test_pipeline_commands_honour_the_dask_setting(small_data_dir, tmp_path):
    """`BARTOPS_DASK_SCHEDULER=dask bartops features` then `bartops train` (what `dvc repro` runs), in a
    project copy: the snapshot and the stacked model come from the Dask paths and the bundle loads."""
    import json
    import subprocess
    import sys

    from project_copy import copy_project

    from bartops.reward.model import load_model
    from bartops.reward.policy import load_policy_bundle

    project = copy_project(tmp_path, scale={"partition_rows": 8000, "memory_limit": "2GiB"})
    (project / "data").mkdir(exist_ok=True)
    for name in ("items", "users", "explanations", "history"):
        shutil.copy(small_data_dir / f"{name}.parquet", project / "data")
    (project / "build" / "impressions").mkdir(parents=True)
    shutil.copy(small_data_dir / "incoming" / "sim-seed3.parquet", project / "build" / "impressions")
    env = {**os.environ, "BARTOPS_DASK_SCHEDULER": "dask"}
    for step in ("features", "train"):
        run = subprocess.run([sys.executable, "-m", "bartops.cli", step], cwd=project, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"bartops {step}: {run.stdout}\n{run.stderr}"
    report = json.loads((project / "build" / "reports" / "reward_metrics.json").read_text())
    assert report["backend"] == "dask" and report["split"]["partitions"] == 4 and report["features_response_current"]
    model = load_model(project / "build" / "model")
    assert model.params["backend"] == "dask" and model.margin is not None  # stacked, as params.yaml says
    policy, features = load_policy_bundle(project / "build" / "bundle")
    assert features.params["response_source"]["rows"] > 0 and len(features.candidates) > 0
    assert policy is not None
