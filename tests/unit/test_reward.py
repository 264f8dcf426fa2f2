"""Reward models: counterfactual training, policy quality against the simulator's truth, persistence."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from bartops.features.assemble import FEATURE_NAMES, assemble_rows
from bartops.features.store import build_features_from_frames, save_features
from bartops.config import FeatureParams, Params, PolicyParams, RewardParams
from bartops.policy.page import PagePolicy, build_pages
from bartops.reward.model import SchemaMismatchError, load_model, save_model
from bartops.reward.policy import candidate_policy, load_policy_bundle, model_scorer, write_policy_bundle
from bartops.reward.train import (
    check_training_set, expected_calibration_error, ips_weights, time_split, train_reward_models,
)
from bartops.sim import sample_contexts
from bartops.sim.simulate import page_value

POLICY = PolicyParams(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
PARAMS = {"seed": 3, "policy": asdict(POLICY),
          "reward": {"num_boost_round": 150, "xgboost": {"max_depth": 4, "eta": 0.1, "min_child_weight": 20}}}


@pytest.fixture(scope="module")
def feats(small_sim):
    w = small_sim.world
    return build_features_from_frames(w.items, w.users, small_sim.history, FeatureParams(embedding_dim=12, clusters=12),
                                      seed=3, explanations=w.explanations)


@pytest.fixture(scope="module")
def trained(feats, small_sim):
    return train_reward_models(feats, small_sim.impressions, Params.from_mapping(PARAMS), data_version="test")


def _page_values(world, policy, ctx, cands, seed=0):
    pages = build_pages(policy, ctx, cands, np.random.default_rng(seed))
    return page_value(world, ctx, cands, pages)


def test_weighted_policy_beats_random_and_popularity_in_true_value(small_sim, feats, trained):
    world = small_sim.world
    ctx = sample_contexts(world, 600, np.random.default_rng(11))
    cands = feats.candidates_for(ctx)
    greedy = replace(POLICY, epsilon_head=0.0, epsilon_fill=0.0)
    v_model = _page_values(world, candidate_policy(trained.model, feats, greedy), ctx, cands)
    v_pop = _page_values(world, candidate_policy(trained.baselines["popularity"], feats, greedy), ctx, cands)
    random_policy = PagePolicy(lambda c, k: np.zeros(len(k)), 6, 8, 1.0, 1.0)
    v_rand = _page_values(world, random_policy, ctx, cands, seed=1)
    # true values per page (exact given the pages); paired differences over the same contexts,
    # required to exceed 3 standard errors of their mean
    for other in (v_pop, v_rand):
        d = v_model - other
        assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(len(d)), (v_model.mean(), other.mean())


def test_metrics_cover_every_model_and_kind(small_sim, trained):
    m = trained.metrics["models"]
    assert set(m) == {"xgboost-weighted", "xgboost-unweighted", "logistic", "popularity"}
    for name, r in m.items():
        assert 0 < r["log_loss"] < 1 and 0.5 < r["auc"] < 1 and 0 <= r["ece"] < 0.1, (name, r)
        assert set(r["by_kind"]) <= {"artist", "genre", "mood", "region", "new"} and len(r["by_kind"]) >= 4
    split = trained.split
    assert split["train_rows"] + split["validation_rows"] == len(small_sim.impressions)
    assert split["validation_rows"] > 0.15 * len(small_sim.impressions)
    assert 0 < split["ess_fraction"] < 1


def test_saved_model_reproduces_predictions_exactly(small_sim, feats, trained, tmp_path):
    ctx = sample_contexts(small_sim.world, 50, np.random.default_rng(2))
    cands = feats.candidates_for(ctx)
    before = trained.model.predict(feats, ctx, cands, shelf=2, position=3)
    save_model(trained.model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(before, loaded.predict(feats, ctx, cands, shelf=2, position=3))
    assert loaded.metrics["validation"]["auc"] == trained.model.metrics["validation"]["auc"]
    schema = json.loads((tmp_path / "m" / "schema.json").read_text())
    schema["feature_names"] = schema["feature_names"][:-1] + ["loudness"]
    (tmp_path / "m" / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(SchemaMismatchError, match="feature schema"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.ubj missing"):
        load_model(tmp_path / "empty")


def test_stacked_model_carries_its_logistic_margin_and_reloads_exactly(small_sim, feats, tmp_path):
    """Trees on the logistic log-odds: the margin is saved beside model.ubj and applied on predict."""
    params = {**PARAMS, "reward": {**PARAMS["reward"], "stack": "logistic", "stack_rows": 5000,
                                   "baselines": ["xgboost-unweighted"]}}
    result = train_reward_models(feats, small_sim.impressions, Params.from_mapping(params))
    model = result.model
    assert model.margin is not None and result.baselines["xgboost-unweighted"].margin is model.margin
    ctx = sample_contexts(small_sim.world, 50, np.random.default_rng(2))
    cands = feats.candidates_for(ctx)
    before = model.predict(feats, ctx, cands, shelf=1, position=2)
    rows = assemble_rows(feats, ctx, cands, 1, 2)
    # the trees alone (no base margin) predict something else: the margin is part of the model
    assert not np.allclose(before, model.booster.inplace_predict(rows, validate_features=False))
    save_model(model, tmp_path / "m")
    assert np.array_equal(before, load_model(tmp_path / "m").predict(feats, ctx, cands, shelf=1, position=2))
    (tmp_path / "m" / "margin.json").unlink()
    with pytest.raises(FileNotFoundError, match="margin.json"):
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="reward.stack"):
        RewardParams.from_dict({"stack": "linear"})


def test_policy_bundle_roundtrip(small_sim, feats, trained, tmp_path):
    save_model(trained.model, tmp_path / "model")
    save_features(feats, tmp_path / "features")
    out = write_policy_bundle(tmp_path / "model", tmp_path / "features", POLICY, tmp_path / "bundle", "v-test")
    for part in ("model/model.ubj", "model/schema.json", "features/manifest.json", "policy.json",
                 "metrics.json", "gate.json", "lineage.json"):
        assert (out / part).exists(), part
    assert json.loads((out / "policy.json").read_text()) == {"version": "v-test", **asdict(POLICY)}
    policy, f2 = load_policy_bundle(out)
    assert policy.version == "v-test" and policy.epsilon_head == 0.1
    ctx = sample_contexts(small_sim.world, 20, np.random.default_rng(4))
    cands = f2.candidates_for(ctx)
    assert np.array_equal(policy.scorer(ctx, cands), model_scorer(trained.model, feats)(ctx, cands))
    with pytest.raises(ValueError, match="epsilon_head"):
        write_policy_bundle(tmp_path / "model", tmp_path / "features", replace(POLICY, epsilon_head=2),
                            tmp_path / "b2", "v2")
    assert not (tmp_path / "b2").exists()
    (out / "policy.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks policy.json"):
        load_policy_bundle(out)
    # a snapshot whose logged-response prior differs from the model's training: no silent skew
    other = feats.with_user_kind(feats.user_kind)
    other.params = {**other.params, "response_prior": 7.0}
    save_features(other, tmp_path / "features7")
    with pytest.raises(ValueError, match="response_prior"):
        write_policy_bundle(tmp_path / "model", tmp_path / "features7", POLICY, tmp_path / "b7", "v7")


def test_bad_training_sets_get_clear_errors(small_sim, feats):
    imp = small_sim.impressions
    with pytest.raises(ValueError, match="empty"):
        train_reward_models(feats, imp.iloc[0:0], Params.from_mapping(PARAMS))
    with pytest.raises(ValueError, match="only one class"):
        check_training_set(imp.assign(reward=0))
    for bad in (0.0, 1.5, np.nan, -0.2):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            check_training_set(imp.assign(propensity=np.where(np.arange(len(imp)) == 7, bad, imp.propensity)))
    with pytest.raises(ValueError, match="reward.weighting"):
        RewardParams.from_dict({"weighting": "snips"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'clipping' \(did you mean 'clip'\?\) in 'reward:'"):
        RewardParams.from_dict({"clipping": 3})
    with pytest.raises(ValueError, match="explanation id"):
        train_reward_models(feats, imp.assign(explanation_id="artist:99999"), Params.from_mapping(PARAMS))


def test_weights_split_and_calibration_error():
    p = np.array([1.0, 0.5, 0.01, 0.001])
    assert np.allclose(ips_weights(p, clip=None, normalize=False), [1, 2, 100, 1000])
    assert np.allclose(ips_weights(p, clip=50, normalize=False), [1, 2, 50, 50])
    assert ips_weights(p, clip=50, normalize=True).mean() == pytest.approx(1.0)
    ts = pd.Series(pd.to_datetime(["2026-10-26T00:00:00Z"] * 3 + ["2026-10-27T00:00:00Z"] * 2))
    train = time_split(ts, 0.3)
    assert train.tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="split"):
        time_split(pd.Series(pd.to_datetime(["2026-10-26T00:00:00Z"] * 4)), 0.5)
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.4, 200_000)
    y = (rng.random(len(q)) < q).astype(int)
    # calibrated predictions: ECE is binomial noise, about sqrt(q(1-q)/n_bin) per bin (≈ 0.003 here)
    assert expected_calibration_error(y, q) < 0.01
    assert expected_calibration_error(y, np.clip(q + 0.1, 0, 1)) == pytest.approx(0.1, abs=0.01)


def test_metrics_and_blocked_log_odds_equal_their_direct_forms():
    """``log_loss``/``roc_auc`` equal scikit-learn's (ties included); blocked log-odds equal one pass."""
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    from bartops.reward.model import LogisticModel
    from bartops.reward.train import log_loss, roc_auc

    rng = np.random.default_rng(4)
    q = rng.uniform(0.01, 0.6, 50_000)
    y = (rng.random(len(q)) < q).astype(int)
    for p in (q, np.round(q, 2)):  # distinct scores, then heavy ties
        assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-12)
        assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert roc_auc(y, np.full(len(y), 0.3)) == 0.5 and roc_auc(y, y + 0.0) == 1.0
    rows = rng.normal(size=(40_000, 7)).astype(np.float32)
    m = LogisticModel(rng.normal(size=7), 0.3, rng.normal(size=7), rng.uniform(0.5, 2, 7))
    one = rows.astype(np.float64) @ (m.coef / m.scale) + (m.intercept - float(m.mean @ (m.coef / m.scale)))
    np.testing.assert_allclose(m.decision(rows, block=999), one, rtol=0, atol=1e-12)
    assert np.array_equal(m.decision(rows[:5]), m.decision(rows, block=3)[:5])


def test_logistic_slot_columns_enter_as_log1p_and_old_files_keep_raw_slots():
    """The fitted logistic regression sees the slot as log(1 + shelf), log(1 + position); its log-odds
    equal the direct formula on those columns, the option survives to_dict/from_dict, and a file
    written before the option (no ``log_columns``) is read with raw slot columns."""
    from bartops.features.assemble import SLOT_COLUMNS
    from bartops.reward.model import LogisticModel

    rng = np.random.default_rng(5)
    rows = rng.integers(0, 8, size=(3_000, len(FEATURE_NAMES))).astype(np.float32)
    y = (rng.random(len(rows)) < 0.2 / (1 + rows[:, SLOT_COLUMNS[0]])).astype(int)
    m = LogisticModel.fit(rows, y, C=1.0, seed=0)
    assert m.log_columns == SLOT_COLUMNS, f"fit's default log columns: {m.log_columns}"
    x = rows.astype(np.float64)
    x[:, list(SLOT_COLUMNS)] = np.log1p(x[:, list(SLOT_COLUMNS)])
    direct = x @ (m.coef / m.scale) + (m.intercept - float(m.mean @ (m.coef / m.scale)))
    np.testing.assert_allclose(m.decision(rows, block=700), direct, rtol=0, atol=1e-12)
    again = LogisticModel.from_dict(json.loads(json.dumps(m.to_dict())), len(FEATURE_NAMES))
    assert np.array_equal(again.decision(rows), m.decision(rows)), "to_dict/from_dict changed the log-odds"
    old = {k: v for k, v in m.to_dict().items() if k != "log_columns"}
    raw = LogisticModel.from_dict(old, len(FEATURE_NAMES))
    assert raw.log_columns == (), f"a file without log_columns must keep raw slots, got {raw.log_columns}"
    assert not np.allclose(raw.decision(rows), m.decision(rows)), "raw and log slots gave the same log-odds"
    with pytest.raises(ValueError, match="log_columns"):
        LogisticModel.from_dict({**m.to_dict(), "log_columns": [len(FEATURE_NAMES)]}, len(FEATURE_NAMES))


def test_baselines_fit_on_a_capped_sample_while_the_candidate_sees_every_row(feats, small_sim):
    cap = 2_000
    params = {**PARAMS, "reward": {**PARAMS["reward"], "num_boost_round": 20, "baseline_rows": cap,
                                   "baselines": ["xgboost-unweighted", "logistic"]}}
    result = train_reward_models(feats, small_sim.impressions, Params.from_mapping(params), data_version="test")
    assert result.split["baseline_rows"] == cap < result.split["train_rows"]
    assert set(result.metrics["models"]) == {"xgboost-weighted", "xgboost-unweighted", "logistic"}
    uncapped = train_reward_models(feats, small_sim.impressions,
                                   Params.from_mapping({**params, "reward": {**params["reward"], "baseline_rows": None}}),
                                   data_version="test")
    assert uncapped.split["baseline_rows"] == uncapped.split["train_rows"]
    # the candidate does not depend on the cap; the sampled baselines do
    assert result.metrics["models"]["xgboost-weighted"] == uncapped.metrics["models"]["xgboost-weighted"]
    assert result.metrics["models"]["logistic"] != uncapped.metrics["models"]["logistic"]
    with pytest.raises(ValueError, match="baseline_rows"):
        RewardParams.from_dict({"baseline_rows": 10})
