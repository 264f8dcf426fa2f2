"""The accepted store takes no batch twice and no impossible rows (issue 17, parts 1 and 2).

Exact checks, not statistical ones: every page ``build_pages`` builds passes them, and each kind of
duplicate, contradiction or impossible row fails the named expectation with its observed value (the
kinds are in the corpus, ``tests/corpus/malformed.py``; here the pure rules and the store lookups).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bartops.config import Params, read_params_file
from bartops.policy.page import CandidateSet, PagePolicy, build_pages
from bartops.validation import ingest, validate_batch
from bartops.validation.checks import (
    already_accepted,
    constant_within_page,
    contradicts_store,
    explored_matches_propensity,
    long_values,
    single_choice_possible,
    stream_seconds_only_when_streamed,
)
from bartops.validation.suites import reference_stream_rate

ROOT = Path(__file__).resolve().parents[2]
BATCH = "incoming/sim-seed3.parquet"


# ---------------------------------------------------------------------------- the exact rules on real pages
def _built_rows(seed: int, eps_head: float, eps_fill: float, n_pages: int = 3000) -> pd.DataFrame:
    """Pages from build_pages over small, uneven candidate sets (short shelves, single choices, ties)."""
    rng = np.random.default_rng(seed)
    page, item, expl = [], [], []
    for b in range(n_pages):
        m = int(rng.integers(1, 25))
        page += [b] * m
        item += list(rng.integers(0, 12, m))
        expl += list(rng.integers(0, 5, m))
    cands = CandidateSet.from_arrays(np.array(page), np.array(item), np.array(expl), n_pages)
    scores = rng.integers(0, 4, len(cands)).astype(float)  # many ties
    policy = PagePolicy(lambda c, k: scores, shelves=4, cards=4, epsilon_head=eps_head, epsilon_fill=eps_fill)
    pages = build_pages(policy, pd.DataFrame({"user_id": np.zeros(n_pages, np.int64)}), cands, rng, scores=scores)
    b, s, k = np.nonzero(pages.filled)
    return pd.DataFrame({"request_id": pd.Series(b).astype(str), "shelf": s, "position": k,
                         "propensity": pages.propensity[b, s, k], "epsilon": pages.epsilon[b, s, k],
                         "explored": pages.explored[b, s, k], "greedy": pages.greedy[b, s, k]})


@pytest.mark.parametrize("eps_head,eps_fill", [(0.1, 0.1), (0.3, 0.05), (0.0, 0.5), (0.9, 1.0), (1.0, 0.0)])
def test_every_card_build_pages_logs_passes_the_exact_rules(eps_head, eps_fill):
    rows = _built_rows(int(eps_head * 10 + eps_fill * 100), eps_head, eps_fill)
    ok_explored = explored_matches_propensity(rows["explored"], rows["propensity"], rows["epsilon"])
    ok_single = single_choice_possible(rows["request_id"], rows["shelf"], rows["position"], rows["propensity"],
                                       rows["epsilon"])
    assert ok_explored.all(), rows[~ok_explored].head()
    assert ok_single.all(), rows[~ok_single].head()
    # the cases the rules must let through occur here
    one_left = (rows["propensity"] == 1.0) & (rows["epsilon"] > 0)
    if 0 < eps_head < 1 and 0 < eps_fill < 1:
        assert one_left.sum() > 50 and (one_left & (rows["position"] > 0)).any() and (one_left & (rows["position"] == 0)).any()
        assert (rows["explored"] & rows["greedy"]).any() and (rows["explored"] & ~rows["greedy"]).any()


def test_the_exact_rules_reject_what_the_page_policy_cannot_log():
    e = pd.Series([0.1] * 7 + [0.0, 0.0])
    p = pd.Series([0.9, 0.5, 0.06, 0.03, 0.95, 0.03, 0.925, 1.0, 1.0])
    x = pd.Series([True, True, True, False, False, True, True, True, False])
    # p = 1−ε exactly (no n gives it); ε/2 < p ≤ 1−ε; p = ε/n but not explored; explored under ε = 0
    assert explored_matches_propensity(x, p, e).tolist() == [False, False, False, False, True, True, True, False, True]
    # p = 1 (one choice left) under ε > 0: at the last card of a shelf or the head of the last shelf only
    req = pd.Series(["a"] * 5 + ["b"])
    shelf, pos = pd.Series([0, 0, 0, 1, 1, 0]), pd.Series([0, 1, 2, 0, 1, 0])
    prop = pd.Series([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    ok = single_choice_possible(req, shelf, pos, prop, pd.Series([0.1] * 6))
    assert ok.tolist() == [False, False, True, True, True, True]
    assert single_choice_possible(req, shelf, pos, prop, pd.Series([0.0] * 6)).all()  # ε = 0: greedy is certain
    s = pd.Series(["ok", "x" * 200, None], dtype="string")
    out = long_values(s, 128)
    assert out["max_length"] == 200 and out["over"] == 1 and out["examples"][0]["row"] == 1


def test_page_context_and_stream_seconds_rules_match_a_brute_force_check():
    rng = np.random.default_rng(11)
    req = pd.Series(rng.integers(0, 400, 5000).astype(str))
    user = pd.Series(rng.integers(0, 3, 5000))
    user = user.where(rng.random(5000) < 0.02, req.astype(int) % 7)  # 2% of rows break their page's user
    want = req.map(user.groupby(req).nunique() == 1).to_numpy(bool)
    got = constant_within_page(req, user)
    assert 0.5 < want.mean() < 1.0, want.mean()
    np.testing.assert_array_equal(got, want)
    ts = pd.Series(pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(req.astype(int), unit="s"))
    assert constant_within_page(req, ts).all() and constant_within_page(req, ts.astype("category")).all()
    reward = pd.Series([0, 0, 1, 1, None], dtype="Int64")
    seconds = pd.Series([np.nan, 12.0, np.nan, 30.0, 5.0])
    assert stream_seconds_only_when_streamed(reward, seconds).tolist() == [True, False, True, True, True]


# ---------------------------------------------------------------------------- the store, through GX
@pytest.fixture(scope="module")
def data_dir(small_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdata") / "data"
    shutil.copytree(small_data_dir, out)
    return out


@pytest.fixture(scope="module")
def good(data_dir) -> pd.DataFrame:
    return pd.read_parquet(data_dir / BATCH)


@pytest.fixture(scope="module")
def params(good) -> dict:
    p = read_params_file(ROOT / "params.yaml")
    p["validation"]["stream_rate"].update(reference_stream_rate(good))
    p["validation"]["row_split"]["enabled"] = False
    p["validation"]["remove_accepted_source"] = False
    return p


@pytest.fixture(scope="module")
def store(data_dir, params, tmp_path_factory) -> Path:
    """A store holding the good batch, accepted once."""
    imp = tmp_path_factory.mktemp("store") / "impressions"
    report = ingest(data_dir / BATCH, data_dir, imp.parent / "q", Params.from_mapping(params), impressions_dir=imp)
    assert report.decision == "accepted", report.failure_message()
    return imp


# duplicates, contradictions and subsets of the store, and impossible rows (explored vs propensity,
# p = 1 everywhere, 10 MB policy_version, 1 MB impression_id) through GX: the corpus in
# tests/corpus/malformed.py, run by tests/unit/test_malformed_corpus.py


def test_store_lookups_read_the_id_columns(store, good):
    ids = good["impression_id"].head(5)
    assert already_accepted(ids, store, "", "impression_id").all()
    key = next(store.glob("*.parquet")).stem.rsplit("-", 1)[1]
    assert not already_accepted(ids, store, key, "impression_id").any()  # its own file excluded
    assert not contradicts_store(ids, good["reward"].head(5), store, "").any()
    assert contradicts_store(ids, 1 - good["reward"].head(5), store, "").all()


def test_the_simulated_batch_passes_every_new_check(data_dir, params):
    report = validate_batch(data_dir / BATCH, data_dir, Params.from_mapping(params),
                            impressions_dir=data_dir / "no-store-yet")
    assert report.passed, report.failure_message()
    names = {e.check for e in report.expectations}
    assert {"explored_matches_propensity", "propensity_one_only_when_one_choice_left", "policy_version_length",
            "impressions_not_already_accepted", "rewards_not_contradicting_accepted", "pages_not_already_accepted",
            "stream_seconds_only_when_streamed", *(f"page_context_{c}" for c in
                                                  ("user_id", "timestamp", "platform", "region", "policy_version"))} <= names
