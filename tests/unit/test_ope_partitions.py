"""Estimators on page-aligned partitions of the logs equal the estimators on the whole log."""

from __future__ import annotations

import numpy as np
import pytest

from bartops.ope.estimators import (DR, IPS, SNIPS, evaluate_many, evaluate_many_partitioned, paired_difference,
                                    paired_difference_partitioned, partition_statistics)
from bartops.ope.validate import LoggedData, check_inputs


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
