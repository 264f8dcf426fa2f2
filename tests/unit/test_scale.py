"""The Dask backend's pure parts: the setting, page-aligned partitions, the OPE reduction (no cluster)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bartops.ope.estimators import DR, IPS, SNIPS, evaluate_many, paired_difference
from bartops.ope.validate import LoggedData, check_inputs
from bartops.scale.cluster import scale_settings, worker_environment
from bartops.scale.ope import evaluate_many_partitioned, paired_difference_partitioned, partition_statistics


def test_setting_env_overrides_params():
    p = {"scale": {"backend": "local", "workers": 3}}
    assert not scale_settings(p, environ={}).dask
    s = scale_settings(p, environ={"BARTOPS_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})
    assert s.dask and s.scheduler == "tcp://10.0.0.5:8786" and s.workers == 3
    assert scale_settings(p, environ={"BARTOPS_DASK_SCHEDULER": "dask"}).dask
    assert not scale_settings({"scale": {"backend": "dask"}}, environ={"BARTOPS_DASK_SCHEDULER": "local"}).dask
    assert scale_settings({"scale": {"scheduler": "tcp://h:1"}}, environ={}).dask
    with pytest.raises(ValueError, match="scale.backend"):
        scale_settings({"scale": {"backend": "spark"}}, environ={})
    with pytest.raises(ValueError, match="unknown scale parameter"):
        scale_settings({"scale": {"nodes": 4}}, environ={})
    with pytest.raises(ValueError, match="address"):
        scale_settings({"scale": {"scheduler": "localhost"}}, environ={})


def test_worker_environment_carries_the_prefect_api():
    env = worker_environment({"PREFECT_API_URL": "http://10.0.0.1:4200/api", "BARTOPS_DASK_SCHEDULER": "dask"})
    assert env["PREFECT_API_URL"] == "http://10.0.0.1:4200/api"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["BARTOPS_DASK_SCHEDULER"] == "dask"


def test_partitions_hold_whole_pages_and_every_row_once(small_data_dir):
    from bartops.scale.partitions import page_partitions, read_partition

    parts = page_partitions(small_data_dir / "incoming", 7000)
    frames = [read_partition(p) for p in parts]
    whole = pd.read_parquet(small_data_dir / "incoming" / "sim-seed3.parquet")
    assert len(parts) == int(np.ceil(len(whole) / 7000)) and sum(map(len, frames)) == len(whole)
    ids = np.concatenate([f["impression_id"].astype(str).to_numpy() for f in frames])
    assert len(set(ids)) == len(whole)
    pages = [set(f["request_id"].astype(str)) for f in frames]
    assert sum(map(len, pages)) == len(set().union(*pages))  # no page in two partitions


def _logged(seed: int, pages: int = 400):
    """Random page-structured logs with DR inputs (known weights, a noisy reward model)."""
    rng = np.random.default_rng(seed)
    cards = rng.integers(1, 9, pages)
    page = np.repeat(np.arange(pages), cards)
    n = len(page)
    p = rng.uniform(0.05, 1.0, n)
    q = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 1, n))
    r = (rng.random(n) < 0.2).astype(float)
    slot = rng.integers(0, 6, n)
    pred = np.clip(0.2 + rng.normal(0, 0.05, n), 0, 1)
    rid = np.array([f"req-{rng.integers(1e9)}-{i}" for i in range(pages)])
    return r, p, q, page, slot, pred, rid


def _split(r, p, q, page, slot, pred, rid, parts: int, seed: int):
    """LoggedData per partition (pages assigned at random; rows keep their order), as a worker builds it."""
    assign = np.random.default_rng(seed).integers(0, parts, len(rid))
    out = []
    for k in range(parts):
        rows = assign[page] == k
        local_pages, g = np.unique(page[rows], return_inverse=True)
        out.append((LoggedData(r[rows], p[rows], q[rows], g, len(local_pages), slot[rows], pred[rows], pred[rows] * 0.9),
                    rid[local_pages]))
    return out


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_partitioned_estimates_equal_local(parts):
    r, p, q, page, slot, pred, rid = _logged(1)
    order = np.argsort(rid)  # the local path numbers pages by sorted request id (logged_pages)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(rid))
    whole = check_inputs(r, p, q, rank[page], slot, pred, pred * 0.9)
    ests = [IPS(), SNIPS(clip=5.0), DR(clip=20.0)]
    local = evaluate_many(ests, whole, n_boot=200, seed=4)
    stats = [partition_statistics(ests, d, ids) for d, ids in _split(r, p, q, page, slot, pred, rid, parts, 2)]
    dist = evaluate_many_partitioned(ests, stats, n_boot=200, seed=4)
    for name in local:
        a, b = local[name], dist[name]
        assert (a.value, a.ci_low, a.ci_high, a.se, a.n_rows, a.n_groups) == (b.value, b.ci_low, b.ci_high, b.se,
                                                                               b.n_rows, b.n_groups), name
        for f in ("ess", "max_weight", "support", "mean_weight"):
            assert getattr(b, f) == pytest.approx(getattr(a, f), rel=1e-12, abs=1e-15), (name, f)


def test_partitioned_paired_difference_equals_local():
    r, p, q, page, slot, pred, rid = _logged(2)
    order = np.argsort(rid)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(rid))
    q2 = np.clip(q * 0.7 + 0.1, 0, 1)
    cand, prod = check_inputs(r, p, q, rank[page], slot), check_inputs(r, p, q2, rank[page], slot)
    local = paired_difference(SNIPS(), cand, prod, n_boot=150, seed=9)
    c = [partition_statistics([SNIPS()], d, ids) for d, ids in _split(r, p, q, page, slot, pred, rid, 4, 3)]
    pr = [partition_statistics([SNIPS()], d, ids) for d, ids in _split(r, p, q2, page, slot, pred, rid, 4, 3)]
    dist = paired_difference_partitioned(SNIPS(), c, pr, n_boot=150, seed=9)
    assert (dist.value, dist.ci_low, dist.ci_high) == (local.value, local.ci_low, local.ci_high)


def test_a_page_split_across_partitions_is_refused():
    r, p, q, page, slot, pred, rid = _logged(3, pages=20)
    d, ids = _split(r, p, q, page, slot, pred, rid, 1, 0)[0]
    s = partition_statistics([IPS()], d, ids)
    with pytest.raises(ValueError, match="split across partitions"):
        evaluate_many_partitioned([IPS()], [s, s], n_boot=50)


def test_response_table_from_summed_cell_rates_equals_direct():
    """Two partitions' cell sums, added, give the rates of the whole: the same table as computed at once."""
    from bartops.features.logstats import cell_sums, response_table

    rng = np.random.default_rng(5)
    n = 5000
    user, kind = rng.integers(0, 50, n), rng.integers(0, 4, n)
    shelf, position = rng.integers(0, 3, n), rng.integers(0, 4, n)
    reward = (rng.random(n) < 0.2).astype(float)
    half = rng.random(n) < 0.5
    sums = pd.concat([cell_sums(kind[m], shelf[m], position[m], reward[m]) for m in (half, ~half)])
    rates = sums.groupby(["shelf", "position", "kind"], as_index=False)[["shows", "streams"]].sum()
    rates["rate"] = rates["streams"] / rates["shows"]
    direct = response_table(user, kind, shelf, position, reward)
    via = response_table(user, kind, shelf, position, reward, rates=rates)
    pd.testing.assert_frame_equal(direct[["user_id", "kind", "shows", "streams"]], via[["user_id", "kind", "shows", "streams"]])
    np.testing.assert_allclose(via["expected"], direct["expected"], rtol=1e-12)
    with pytest.raises(ValueError, match="rates lack"):
        response_table(user, kind, shelf, position, reward, rates=rates.iloc[1:])


def test_history_sums_of_user_partitions_concatenate_to_the_whole(small_data_dir):
    from bartops.features.store import add_history_sums, history_sums
    from bartops.scale.partitions import read_user_partition, user_partitions

    history = pd.read_parquet(small_data_dir / "history.parquet")
    items = pd.read_parquet(small_data_dir / "items.parquet")["item_id"].to_numpy()
    now = pd.Timestamp("2026-11-01T00:00:00Z")
    parts = user_partitions(small_data_dir / "history.parquet", 5000)
    frames = [read_user_partition(p, ["item_id", "timestamp"]) for p in parts]
    assert len(parts) >= 5 and sum(map(len, frames)) == len(history)
    users = [set(f["user_id"]) for f in frames]
    assert sum(map(len, users)) == len(set().union(*users))  # every user's plays in one partition
    whole = history_sums(history, items, now, 30.0)
    assert whole["plays"].sum() == history["item_id"].isin(items).sum()
    # exact: a user × item sum never spans partitions, and each partition keeps the file's row order
    pd.testing.assert_frame_equal(add_history_sums([history_sums(f, items, now, 30.0) for f in frames]), whole,
                                  check_exact=True)
