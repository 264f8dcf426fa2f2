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
- the gate's evaluation on partitions equals the local one to floating-point precision given the
  same Monte-Carlo draws and reward model, and within their noise otherwise;
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
    from bartops.features.partitions import page_partitions

    return page_partitions(small_data_dir / "incoming", settings.partition_rows)


@pytest.fixture(scope="module")
def local_training(features, params, small_data_dir):
    """The local stacked candidate (no baselines) and the data version of the batch."""
    from bartops.features.logstats import load_impressions
    from bartops.reward.train import train_reward_models

    imp, version = load_impressions(small_data_dir / "incoming")
    return train_reward_models(features, imp, {**params, "reward": {**params["reward"], "baselines": []}},
                               data_version=version), version


def test_training_rows_equal_and_stacked_predictions_close(client, features, parts, params, small_data_dir,
                                                           local_training):
    from bartops.features.logstats import load_impressions, time_split
    from bartops.reward.train import (RewardParams, classification_metrics, fold_response_tables, ips_weights,
                                      training_rows)
    from bartops.scale import train as st

    imp, _ = load_impressions(small_data_dir / "incoming")
    rp = RewardParams.from_dict(params["reward"])
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
def eval_params(params) -> dict:
    """The gate's evaluation with fewer Monte-Carlo samples (its cost; the equivalences do not depend on it)."""
    return {**params, "ope": {**params["ope"], "n_boot": 200, "marginal_samples": 10, "target_samples": 2}}


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


@pytest.fixture(scope="module")
def greedy_reference(gate_bundle, eval_params, small_data_dir, parts, tmp_path_factory):
    """The greedy twin of the candidate (its pages are exact, no sampling), the partitions prepared in
    this process (the same functions and seeds as on the workers), and the local evaluation
    (``evaluate_policies`` as ``evaluate_bundle`` calls it) fed with those partitions' logging exposures."""
    import json

    from bartops.gate.evaluate import SIM_LOGGING_VERSION, evaluation_setup
    from bartops.ope.pipeline import EXAMINATION_ROWS, LoggingMarginals, evaluate_policies
    from bartops.ope.slate import logged_pages
    from bartops.scale import evaluate as se

    bundle = tmp_path_factory.mktemp("greedy") / "bundle"
    shutil.copytree(gate_bundle, bundle)
    pol = json.loads((bundle / "policy.json").read_text())
    (bundle / "policy.json").write_text(json.dumps({**pol, "epsilon_head": 0.0, "epsilon_fill": 0.0}))
    setup = evaluation_setup(bundle, eval_params, None, small_data_dir, SIM_LOGGING_VERSION)
    assert setup.holdout_from is not None and list(setup.targets) == ["candidate", "production"]
    logs = pd.read_parquet(small_data_dir / "incoming" / "sim-seed3.parquet")
    logs = logs[(pd.to_datetime(logs["timestamp"], utc=True) >= setup.holdout_from).to_numpy()].reset_index(drop=True)
    lp = logged_pages(logs, setup.features.explanations)
    scans = [se.scan_partition(p, setup.holdout_from) for p in parts]
    keep, sample, n = se.row_plan(scans, [0] * len(parts), None, setup.cfg.seed, EXAMINATION_ROWS)
    assert n == len(lp) <= EXAMINATION_ROWS  # κ's sample is every row, in the local order: the local κ
    loaded = [se.load_partition(p, setup, k, s) for p, k, s in zip(parts, keep, sample)]
    sample_frame = se.examination_sample([s.sample for s in loaded], [0] * len(parts))
    pd.testing.assert_frame_equal(sample_frame, logs)
    kappa = se.examination_profile(sample_frame, setup)
    states = [se.sample_partition(s, setup, kappa) for s in loaded]

    def key(x):
        return pd.MultiIndex.from_arrays([np.asarray(x.request_id)[x.page], x.shelf, x.position])

    at = pd.MultiIndex.from_tuples(sum((list(key(s.logs)) for s in states), [])).get_indexer(key(lp))
    assert (at >= 0).all() and len(at) == sum(len(s.logs) for s in states)
    marg = LoggingMarginals(kappa, np.concatenate([s.marginals.exposure for s in states])[at],
                            setup.logging_features.candidates_for(lp.contexts))
    policy, feats = setup.targets["candidate"]
    targets = {"candidate": (policy, feats.candidates_for(lp.contexts)), "production": None}
    local = evaluate_policies(lp, marg, targets, setup.cfg, setup.featurize, setup.kinds)
    return {"setup": setup, "states": states, "lp": lp, "kappa": kappa, "targets": targets, "local": local}


def _local_cross_fit(ref) -> dict:
    """``cross_fit`` as ``evaluate_policies`` runs it for the greedy candidate: inputs and predictions."""
    from bartops.ope.pipeline import sample_target_pages
    from bartops.ope.reward import cross_fit, page_folds
    from bartops.policy.page import CandidateSet

    lp, cfg, featurize = ref["lp"], ref["setup"].cfg, ref["setup"].featurize
    policy, cands = ref["targets"]["candidate"]
    tp = sample_target_pages(policy, lp, cands, cfg.target_samples, cfg.seed, ref["kappa"])
    assert tp.m == 1  # greedy: one exact page per context
    x_logged = featurize(lp.contexts, CandidateSet(lp.page, lp.item_id, lp.explanation, lp.n_pages,
                                                   np.ones(len(lp), bool)), lp.shelf, lp.position)
    x_t = featurize(lp.contexts, tp.cards, tp.shelf, tp.position)
    first = np.full(lp.n_pages, -1, np.int64)
    first[lp.page[::-1]] = np.arange(len(lp))[::-1]
    pl, pt = cross_fit(x_logged, lp.reward, lp.page, x_t, first[tp.cards.page], cfg.folds, cfg.seed)
    fold = page_folds(lp.n_pages, cfg.folds, cfg.seed)[lp.page]
    return {"x_logged": x_logged, "x_t": x_t, "pl": pl, "pt": pt, "fold": fold, "fold_t": fold[first[tp.cards.page]]}


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


def test_gate_evaluation_partitioned_equals_local_given_the_same_draws(greedy_reference):
    """The per-partition inputs and the reduction equal ``evaluate_policies`` to floating-point precision
    when they get the same κ, exposures, target pages and reward model (trained as ``cross_fit`` trains it)."""
    import xgboost as xgb

    from bartops.ope.reward import CROSS_FIT_ROUNDS, cross_fit_params, predict_folds
    from bartops.scale import evaluate as se

    ref, cf = greedy_reference, _local_cross_fit(greedy_reference)
    setup, states = ref["setup"], ref["states"]
    cfg = setup.cfg
    models = []
    for k in range(cfg.folds):  # cross_fit's boosters: the same rows in the same order, the same parameters
        train = cf["fold"] != k
        models.append(xgb.train(cross_fit_params(cfg.seed),
                                xgb.DMatrix(cf["x_logged"][train], label=ref["lp"].reward[train]),
                                num_boost_round=CROSS_FIT_ROUNDS))
    np.testing.assert_array_equal(predict_folds(models, cf["x_logged"], cf["fold"]), cf["pl"])
    np.testing.assert_array_equal(predict_folds(models, cf["x_t"], cf["fold_t"]), cf["pt"])
    summaries = [se.partition_summary(s) for s in states]
    folds = se.page_fold_assignment(summaries, cfg.folds, cfg.seed)

    def rows_sorted(x, y):
        a = np.hstack([x, np.asarray(y, np.float64)[:, None]])
        return a[np.lexsort(a.T[::-1])]

    for k in range(cfg.folds):  # what fit_fold_models gives xgboost.dask: cross_fit's training rows of fold k
        got = [(se._fold_part(s, f, k, "x"), se._fold_part(s, f, k, "y")) for s, f in zip(states, folds)]
        np.testing.assert_array_equal(rows_sorted(np.vstack([g[0] for g in got]), np.concatenate([g[1] for g in got])),
                                      rows_sorted(cf["x_logged"][cf["fold"] != k], ref["lp"].reward[cf["fold"] != k]))
    results = [se.finish_partition(s, setup, f, models) for s, f in zip(states, folds)]
    _assert_same_result(setup.reduce(results, ref["kappa"]), ref["local"])


def test_gate_evaluation_on_dask_equals_local_within_the_reward_model(client, parts, greedy_reference):
    """On the cluster: the workers draw the same Monte Carlo as this process (the same partition seeds), so
    κ and everything but DR equal the local evaluation given those draws; DR differs only through
    xgboost.dask's reward model, by at most what its prediction differences allow."""
    from bartops.ope.reward import predict_folds
    from bartops.scale import evaluate as se

    ref, cf = greedy_reference, _local_cross_fit(greedy_reference)
    ev = se.evaluate_partitions(client, parts, ref["setup"])
    local = ref["local"]
    assert (ev.n_rows, ev.n_pages) == (len(ref["lp"]), ref["lp"].n_pages)
    np.testing.assert_array_equal(ev.examination, ref["kappa"])
    _assert_same_result(ev.result, local, estimators=("ips", "snips"), candidate_per_kind=False)
    # the fold models differ from cross_fit's (xgboost.dask merges per-worker quantile sketches and
    # subsamples rows per worker; their training rows are cross_fit's, tested above): DR =
    # (Σ_target q̂ + Σ_rows min(w, dr_clip)·(r − q̂)) / pages moves by at most what the prediction
    # differences allow
    d_logged = np.abs(predict_folds(ev.models, cf["x_logged"], cf["fold"]) - cf["pl"])
    d_target = np.abs(predict_folds(ev.models, cf["x_t"], cf["fold_t"]) - cf["pt"])
    cand = local.diagnostics["candidate"].weights
    bound = (d_target.sum() + (np.minimum(cand, ref["setup"].cfg.dr_clip) * d_logged).sum()) / ref["lp"].n_pages
    for got, want in ((ev.result.estimates["candidate"]["dr"], local.estimates["candidate"]["dr"]),
                      (ev.result.differences["production"]["dr"], local.differences["production"]["dr"])):
        assert abs(got.value - want.value) <= bound + 1e-12, (got.value, want.value, bound)


def test_gate_evaluation_draws_the_local_pages(small_data_dir, tmp_path):
    """``ope.max_pages`` on partitions of two batch files: the same pages and rows as ``subsample_pages``
    on the concatenated batches after the cut (it draws from the pages in file order)."""
    from bartops.ope.pipeline import subsample_pages
    from bartops.scale import evaluate as se
    from bartops.features.partitions import page_partitions

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


def test_gate_evaluation_on_dask_within_monte_carlo_noise_of_local(client, gate_bundle, eval_params, small_data_dir):
    """`evaluate_bundle_dask` with the ε-greedy candidate against `evaluate_bundle`: κ and production
    (on-policy, no Monte Carlo) equal; the candidate's IPS and SNIPS are other Monte-Carlo draws of the
    local estimators (partition-seeded), so their difference from the local value is within a Student-t
    bound on the difference of two draws (α = 0.001, K − 1 degrees of freedom), from the spread of K
    replicate local draws."""
    from dataclasses import replace

    from scipy import stats

    from bartops.gate.evaluate import SIM_LOGGING_VERSION, evaluate_bundle, logging_policy_for
    from bartops.ope.pipeline import OPEConfig, evaluate_policies, logging_marginals
    from bartops.ope.slate import logged_pages
    from bartops.reward.policy import load_policy_bundle
    from bartops.scale.evaluate import evaluate_bundle_dask

    incoming = small_data_dir / "incoming"
    dist = evaluate_bundle_dask(client, gate_bundle, eval_params, None, incoming, small_data_dir, 8000)
    logs = pd.read_parquet(incoming / "sim-seed3.parquet")
    local = evaluate_bundle(gate_bundle, eval_params, None, logs, small_data_dir)
    # rows, pages, the cut, the config, production, logging version
    assert replace(dist, result=None, backend="local", partitions=1) == replace(local, result=None)
    assert dist.backend == "dask" and dist.partitions == 4
    for e in ("ips", "snips", "dr"):
        _assert_same(dist.result.estimates["production"][e], local.result.estimates["production"][e])
    assert dist.result.logging.examination == local.result.logging.examination

    # K replicate local draws of the Monte Carlo (logging exposures, sampled candidate pages), κ fixed
    cfg = replace(OPEConfig.from_dict(eval_params["ope"]), n_boot=10)
    cut = pd.Timestamp(local.holdout_from)
    logs = logs[(pd.to_datetime(logs["timestamp"], utc=True) >= cut).to_numpy()].reset_index(drop=True)
    candidate, features = load_policy_bundle(gate_bundle)
    lp = logged_pages(logs, features.explanations)
    logging, _ = logging_policy_for(SIM_LOGGING_VERSION, small_data_dir, None, eval_params["policy"])
    cands = features.candidates_for(lp.contexts)  # the logging policy's too (the simulator's policy)
    kappa = np.asarray(local.result.logging.examination)  # the local κ (to 1e-4: the spread is the same)
    K = 8
    reps = []
    for seed in range(1000, 1000 + K):
        c = replace(cfg, seed=seed)
        res = evaluate_policies(lp, logging_marginals(logging, lp, cands, c, kappa),
                                {"candidate": (candidate, cands), "production": None}, c)
        reps.append([res.estimates["candidate"][e].value for e in ("ips", "snips")])
    sd = np.std(np.asarray(reps), axis=0, ddof=1)
    t = stats.t.ppf(1 - 0.001 / 2, K - 1)
    for i, e in enumerate(("ips", "snips")):
        got = dist.result.estimates["candidate"][e].value
        want = local.result.estimates["candidate"][e].value
        assert abs(got - want) <= t * np.sqrt(2) * sd[i], (e, got, want, sd[i])


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
