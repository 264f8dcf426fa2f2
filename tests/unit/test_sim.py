"""The simulator: determinism, schema, ground truth, and parameter errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bartops.features.candidates import candidates_for_requests
from bartops.logs.schema import IMPRESSION_COLUMNS, SchemaError, conform_impressions
from bartops.policy.page import build_pages
from bartops.sim import World, logging_policy, oracle_policy, sample_contexts, simulate, true_value
from bartops.config import CandidateParams, SimParams
from bartops.sim.simulate import page_value

from conftest import SHAPE, SMALL


def test_same_seed_gives_identical_data(small_sim):
    again = simulate(World.generate(SMALL, seed=3), SMALL.impressions, seed=3, **SHAPE)
    pd.testing.assert_frame_equal(again.impressions, small_sim.impressions)
    pd.testing.assert_frame_equal(again.history, small_sim.history)
    pd.testing.assert_frame_equal(again.world.items, small_sim.world.items)
    other = simulate(World.generate(SMALL, seed=4), 2000, seed=4, **SHAPE)
    assert not other.impressions["item_id"].head(200).equals(small_sim.impressions["item_id"].head(200))


def test_candidate_generation_is_a_parameter_of_the_simulation(small_sim):
    """More artists and more items per explanation give larger candidate sets, and the logged pages
    draw from them: the robustness benchmark's big-candidates world."""
    bigger = CandidateParams(top_artists=5, items_per_artist=40, items_per_genre=90, items_new=90)
    big = simulate(World.generate(SMALL, seed=3), 2000, seed=3, candidates=bigger, **SHAPE)
    default, larger = small_sim.candidates.groupby("user_id").size(), big.candidates.groupby("user_id").size()
    assert larger.mean() > 1.5 * default.mean(), (larger.mean(), default.mean())
    logged = big.impressions[["user_id", "item_id"]].drop_duplicates()
    inside = logged.merge(big.candidates[["user_id", "item_id"]].drop_duplicates(), how="left", indicator=True)
    assert (inside["_merge"] == "both").all(), f"{(inside['_merge'] != 'both').sum()} logged pairs outside the candidate sets"


def test_impressions_follow_the_log_schema(small_sim):
    logs = small_sim.impressions
    assert list(logs.columns) == list(IMPRESSION_COLUMNS)
    assert str(logs["timestamp"].dt.tz) == "UTC"
    assert logs["impression_id"].is_unique
    assert ((logs["propensity"] > 0) & (logs["propensity"] <= 1)).all()
    assert set(logs["reward"].unique()) <= {0, 1}
    assert logs["stream_seconds"].notna().eq(logs["reward"] == 1).all()
    per_page = logs.groupby("request_id")["item_id"].agg(["size", "nunique"])
    assert (per_page["size"] == per_page["nunique"]).all()
    start, end = SMALL.window
    assert logs["timestamp"].between(start, end).all()
    # the explored share estimates ε = 0.1 (binomial, 5 standard errors)
    n = len(logs)
    assert abs(logs["explored"].mean() - 0.1) < 5 * np.sqrt(0.09 / n)
    # conform_impressions is idempotent on a good table
    pd.testing.assert_frame_equal(conform_impressions(logs), logs)


def test_schema_errors_name_the_column(small_sim):
    logs = small_sim.impressions.head(10)
    with pytest.raises(SchemaError, match="propensity"):
        conform_impressions(logs.drop(columns="propensity"))
    with pytest.raises(SchemaError, match="surprise"):
        conform_impressions(logs.assign(surprise=1))
    with pytest.raises(SchemaError, match="shelf"):
        conform_impressions(logs.assign(shelf="top"))


def test_rewards_depend_on_position_taste_and_explanation(small_sim):
    logs = small_sim.impressions
    by_shelf = logs.groupby("shelf")["reward"].mean()
    assert by_shelf.iloc[0] > by_shelf.iloc[-1]
    kind = logs["explanation_id"].str.split(":").str[0]
    assert logs.groupby(kind)["reward"].mean().std() > 0.005


def _fixed_contexts(sim, n=400, seed=11):
    ctx = sample_contexts(sim.world, n, np.random.default_rng(seed))
    return ctx, candidates_for_requests(sim.candidates, ctx["user_id"].to_numpy())


def test_exact_value_of_greedy_policy_matches_its_monte_carlo_rewards(small_sim):
    """Average simulated streams per page agree with the exact value within 4 standard errors."""
    world = small_sim.world
    ctx, cands = _fixed_contexts(small_sim)
    greedy = dataclasses.replace(logging_policy(world, small_sim.history, **SHAPE), epsilon_head=0.0, epsilon_fill=0.0)
    exact, se0 = true_value(world, greedy, ctx, cands)
    assert se0 == 0.0
    pages = build_pages(greedy, ctx, cands, np.random.default_rng(0))
    b, s, k = np.nonzero(pages.filled)
    p = world.relevance(ctx, cands)[pages.candidate[b, s, k]] * world.examination(s, k)
    rng = np.random.default_rng(12)
    reps = 200
    streams = (rng.random((reps, len(p))) < p).astype(float)
    per_page = np.stack([np.bincount(b, weights=row, minlength=len(ctx)) for row in streams])
    mc = per_page.mean()
    # standard error of that mean: Bernoulli noise over every card of every repetition
    se = np.sqrt((p * (1 - p)).sum() / reps) / len(ctx)
    assert abs(mc - exact) < 4 * se, (mc, exact, se)
    np.testing.assert_allclose(page_value(world, ctx, cands, pages).mean(), exact)


def test_stochastic_true_value_agrees_with_its_greedy_limit_and_reports_error(small_sim):
    world = small_sim.world
    ctx, cands = _fixed_contexts(small_sim, n=200)
    tiny = dataclasses.replace(logging_policy(world, small_sim.history, **SHAPE), epsilon_head=1e-12, epsilon_fill=1e-12)
    v, se = true_value(world, tiny, ctx, cands, n_samples=3)
    exact, _ = true_value(world, dataclasses.replace(tiny, epsilon_head=0, epsilon_fill=0), ctx, cands)
    assert se >= 0 and abs(v - exact) < 1e-9
    noisy = dataclasses.replace(tiny, epsilon_head=0.5, epsilon_fill=0.5)
    v, se = true_value(world, noisy, ctx, cands, n_samples=8)
    assert se > 0


def test_oracle_beats_logging_and_random(small_sim):
    world = small_sim.world
    ctx, cands = _fixed_contexts(small_sim)
    logging = logging_policy(world, small_sim.history, **SHAPE)
    v_oracle, _ = true_value(world, oracle_policy(world, 6, 8), ctx, cands)
    v_log, se_log = true_value(world, logging, ctx, cands, n_samples=10)
    v_rand, se_rand = true_value(world, dataclasses.replace(logging, epsilon_head=1.0, epsilon_fill=1.0), ctx, cands, n_samples=10)
    assert v_oracle >= v_log + 4 * se_log
    assert v_log > v_rand + 4 * (se_log + se_rand)


@pytest.mark.parametrize("field,value", [("items", 0), ("users", 0), ("artists", -1), ("impressions", 0)])
def test_invalid_sim_parameters_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=f"sim.{field}"):
        dataclasses.replace(SMALL, **{field: value})


def test_more_shelves_than_explanations_is_an_error():
    world = World.generate(SMALL, seed=5)
    with pytest.raises(ValueError, match="shelves"):
        simulate(world, 1000, shelves=40, cards=8, epsilon_head=0.1, epsilon_fill=0.1, seed=5)


def test_unknown_sim_parameter_is_named():
    with pytest.raises(ValueError, match="colour"):
        SimParams.from_dict({"colour": "blue"})


def test_world_round_trips_through_disk(small_sim, tmp_path):
    small_sim.world.save(tmp_path)
    loaded = World.load(tmp_path)
    ctx, cands = _fixed_contexts(small_sim, n=50)
    np.testing.assert_array_equal(loaded.relevance(ctx, cands), small_sim.world.relevance(ctx, cands))
    with pytest.raises(FileNotFoundError, match="world.json"):
        World.load(tmp_path / "nowhere")
