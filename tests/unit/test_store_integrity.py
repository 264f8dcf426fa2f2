"""The accepted store takes no batch twice and no impossible rows (issue 17, parts 1 and 2).

Exact checks, not statistical ones: every page ``build_pages`` builds passes them, and each kind of
duplicate, contradiction or impossible row fails the named expectation with its observed value.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bartops.config import load_params
from bartops.policy.page import CandidateSet, PagePolicy, build_pages
from bartops.validation import ingest, validate_batch
from bartops.validation.checks import (
    already_accepted,
    contradicts_store,
    explored_matches_propensity,
    long_values,
    single_choice_possible,
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
    p = copy.deepcopy(load_params(ROOT / "params.yaml"))
    p["validation"]["stream_rate"].update(reference_stream_rate(good))
    p["validation"]["row_split"]["enabled"] = False
    p["validation"]["remove_accepted_source"] = False
    return p


@pytest.fixture(scope="module")
def store(data_dir, params, tmp_path_factory) -> Path:
    """A store holding the good batch, accepted once."""
    imp = tmp_path_factory.mktemp("store") / "impressions"
    report = ingest(data_dir / BATCH, data_dir, imp.parent / "q", params, impressions_dir=imp)
    assert report.decision == "accepted", report.failure_message()
    return imp


def _failed(report) -> set[str]:
    return {e.check for e in report.failed}


def _outcome(report, check):
    return next(e for e in report.expectations if e.check == check)


def test_the_same_batch_again_is_a_no_op_and_under_another_name_a_duplicate(tmp_path, data_dir, params, store, good):
    again = ingest(data_dir / BATCH, data_dir, tmp_path / "q", params, impressions_dir=store)
    assert again.passed and again.decision == "already-ingested", again.failure_message()
    assert len(list(store.glob("*.parquet"))) == 1
    copy_path = tmp_path / "incoming" / "renamed.parquet"
    copy_path.parent.mkdir()
    shutil.copy(data_dir / BATCH, copy_path)
    report = ingest(copy_path, data_dir, tmp_path / "q", params, impressions_dir=store)
    assert report.decision == "rejected"
    assert _failed(report) == {"impressions_not_already_accepted", "pages_not_already_accepted"}, report.failure_message()
    dup = _outcome(report, "impressions_not_already_accepted")
    assert dup.unexpected_count == len(good) and dup.examples
    assert "impressions/impressions_not_already_accepted" in report.failure_message()
    assert len(list(store.glob("*.parquet"))) == 1  # nothing added


def test_flipped_rewards_on_accepted_impressions_are_a_contradiction(tmp_path, data_dir, params, store, good):
    pages = good["request_id"].unique()[:100]
    bad = good[good["request_id"].isin(pages)].copy()
    bad["reward"] = 1 - bad["reward"]
    path = tmp_path / "flipped.parquet"
    bad.to_parquet(path, index=False)
    report = validate_batch(path, data_dir, params, impressions_dir=store)
    failed = _failed(report)
    assert {"impressions_not_already_accepted", "rewards_not_contradicting_accepted", "pages_not_already_accepted"} <= failed
    contra = _outcome(report, "rewards_not_contradicting_accepted")
    assert contra.unexpected_count == len(bad), report.failure_message()
    # a pure duplicate is no contradiction
    same = good[good["request_id"].isin(pages)]
    same.to_parquet(path, index=False)
    report = validate_batch(path, data_dir, params, impressions_dir=store)
    assert "rewards_not_contradicting_accepted" not in _failed(report)
    assert {"impressions_not_already_accepted", "pages_not_already_accepted"} <= _failed(report)


def test_a_subset_of_accepted_pages_is_rejected_and_new_pages_pass(tmp_path, data_dir, params, store, good):
    pages = good["request_id"].unique()
    subset = good[good["request_id"].isin(pages[::3])]
    path = tmp_path / "subset.parquet"
    subset.to_parquet(path, index=False)
    report = ingest(path, data_dir, tmp_path / "q", params, impressions_dir=store)
    assert report.decision == "rejected"
    assert _outcome(report, "pages_not_already_accepted").unexpected_count == len(subset)
    # new ids only for the pages: a page already accepted cannot come back under new impression ids
    renamed = subset.assign(impression_id=subset["impression_id"] + "-new")
    renamed.to_parquet(path, index=False)
    report = validate_batch(path, data_dir, params, impressions_dir=store)
    assert _failed(report) == {"pages_not_already_accepted"}, report.failure_message()
    # the same cards as new page views pass every check: the store check is exact
    fresh = good.assign(impression_id=good["impression_id"] + "-new", request_id=good["request_id"] + "-new")
    fresh.to_parquet(path, index=False)
    report = validate_batch(path, data_dir, params, impressions_dir=store)
    assert report.passed, report.failure_message()


def test_store_lookups_read_the_id_columns(store, good):
    ids = good["impression_id"].head(5)
    assert already_accepted(ids, store, "", "impression_id").all()
    key = next(store.glob("*.parquet")).stem.rsplit("-", 1)[1]
    assert not already_accepted(ids, store, key, "impression_id").any()  # its own file excluded
    assert not contradicts_store(ids, good["reward"].head(5), store, "").any()
    assert contradicts_store(ids, 1 - good["reward"].head(5), store, "").all()


def _impossible(good: pd.DataFrame) -> dict:
    greedy = good.index[~good["explored"] & (good["propensity"] < 1)][:3]
    other = good.index[good["explored"] & (good["propensity"] <= good["epsilon"] / 2)][:3]

    def explored_on_one_minus_eps(df):  # "explored greedy card" at p = 1−ε exactly: no n gives it
        df.loc[greedy, "propensity"] = 1 - df.loc[greedy, "epsilon"]
        df.loc[greedy, "explored"] = True
        return df

    def greedy_with_low_propensity(df):
        df.loc[other, "explored"] = False
        return df

    def propensity_one_everywhere(df):
        df["propensity"] = 1.0
        return df

    def long_policy_version(df):
        df["policy_version"] = df["policy_version"].astype(str)
        df.loc[df.index[7], "policy_version"] = "v" * 10_000_000
        return df

    def long_impression_id(df):
        df.loc[df.index[5], "impression_id"] = "i" * 1_000_000
        return df

    return {"explored_matches_propensity": (explored_on_one_minus_eps, "0.9"),
            "explored_matches_propensity ": (greedy_with_low_propensity, "'explored': false"),
            "propensity_one_only_when_one_choice_left": (propensity_one_everywhere, "'propensity': 1.0"),
            "policy_version_length": (long_policy_version, "observed 10000000, allowed ≤ 128"),
            "impression_id_length": (long_impression_id, "observed 1000000, allowed ≤ 128")}


@pytest.mark.parametrize("case", ["explored_matches_propensity", "explored_matches_propensity ",
                                  "propensity_one_only_when_one_choice_left", "policy_version_length",
                                  "impression_id_length"])
def test_impossible_rows_fail_the_named_check_with_the_observed_value(tmp_path, data_dir, params, good, case):
    mutate, observed = _impossible(good)[case]
    path = tmp_path / "bad.parquet"
    mutate(good.copy()).to_parquet(path, index=False)
    report = validate_batch(path, data_dir, params)
    check = case.strip()
    assert check in _failed(report), report.failure_message()
    msg = report.failure_message()
    assert f"impressions/{check}" in msg and observed in msg.replace('"', "'"), msg
    assert len(msg) < 20_000  # long values are cut in the message, not echoed


def test_the_simulated_batch_passes_every_new_check(data_dir, params):
    report = validate_batch(data_dir / BATCH, data_dir, params, impressions_dir=data_dir / "no-store-yet")
    assert report.passed, report.failure_message()
    names = {e.check for e in report.expectations}
    assert {"explored_matches_propensity", "propensity_one_only_when_one_choice_left", "policy_version_length",
            "impressions_not_already_accepted", "rewards_not_contradicting_accepted", "pages_not_already_accepted"} <= names
