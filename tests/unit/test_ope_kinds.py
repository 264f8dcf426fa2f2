"""Per-kind lifts (``bartops.ope.kinds``): the bootstrap interval against synthetic pages with a known ratio."""

from __future__ import annotations

import numpy as np

from bartops.ope.kinds import KindPageSums, kind_lifts, kind_page_sums, per_kind_table


def _pages(rng: np.random.Generator, n_pages: int, rates: np.ndarray, cards_per_page: np.ndarray) -> KindPageSums:
    cards = rng.poisson(cards_per_page, (n_pages, len(rates))).astype(float)
    streams = rng.binomial(cards.astype(int), rates).astype(float)
    return KindPageSums(streams, cards)


def test_bonferroni_intervals_cover_the_true_ratios_jointly():
    """200 synthetic logs of 400 pages and 3 kinds with known per-card rates (true lifts +20 %, 0, −30 %).
    Each log's three Bonferroni-adjusted 95 % intervals cover all three true lifts jointly with
    probability ≥ 0.95 (about 0.95–0.97 here).  The test fails if fewer than 180 of 200 do: for a joint
    coverage of 0.95 that happens with probability P(Binomial(200, 0.05) > 20) ≈ 1.6e-4 (fixed seeds, so
    a given run is deterministic)."""
    prod_rates = np.array([0.20, 0.10, 0.15])
    true_lift = np.array([0.20, 0.0, -0.30])
    kinds = ["artist", "genre", "new"]
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng([seed, 5])
        prod = _pages(rng, 400, prod_rates, np.array([8.0, 12.0, 5.0]))
        cand = _pages(rng, 400, prod_rates * (1 + true_lift), np.array([10.0, 9.0, 6.0]))
        lifts = kind_lifts(cand, prod, kinds, prod.streams.sum(axis=0), n_boot=400, level=0.95, seed=seed)
        covered += all(lifts[k].ci_low <= t <= lifts[k].ci_high for k, t in zip(kinds, true_lift))
        assert all(lifts[k].level == 1 - 0.05 / 3 for k in kinds), lifts
    assert covered >= 180, f"joint coverage {covered}/200 of the Bonferroni intervals, expected ≥ 180"


def test_a_kind_without_cards_or_streams_is_unmeasured_not_a_loss():
    rng = np.random.default_rng(0)
    prod = _pages(rng, 300, np.array([0.2, 0.1, 0.0]), np.array([8.0, 0.0, 4.0]))
    cand = _pages(rng, 300, np.array([0.2, 0.1, 0.1]), np.array([8.0, 3.0, 4.0]))
    lifts = kind_lifts(cand, prod, ["artist", "genre", "new"], prod.streams.sum(axis=0), n_boot=200)
    assert lifts["artist"].measured, lifts["artist"]
    assert not lifts["genre"].measured and "production shows no card" in lifts["genre"].reason, lifts["genre"]
    assert not lifts["new"].measured and "no stream" in lifts["new"].reason, lifts["new"]
    assert np.isnan(lifts["new"].lift), lifts["new"]


def test_page_sums_and_table():
    sums = kind_page_sums(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.array([1.0, 2.0, 3.0, 4.0]), 2, 2)
    assert sums.tolist() == [[1.0, 2.0], [0.0, 7.0]], sums
    table = per_kind_table({"p": KindPageSums(sums, np.array([[1.0, 1.0], [0.0, 2.0]]))}, ["a", "b"], np.array([1, 3]))
    assert table == {"a": {"p": 1.0, "p_cards_per_page": 0.5}, "b": {"p": 3.0, "p_cards_per_page": 1.5}}, table
