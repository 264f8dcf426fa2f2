"""The BaRT page policy: structure, exact propensities (checked by Monte Carlo), replay, marginals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bartops.policy.page import (
    EMPTY,
    CandidateSet,
    PagePolicy,
    build_pages,
    construct_page,
    locate_cards,
    logged_choice_probabilities,
    logged_slots_to_candidates,
)


# ---------------------------------------------------------------------- a brute-force reference
def slot_marginals(
    policy: PagePolicy,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    page: np.ndarray,
    shelf: np.ndarray,
    position: np.ndarray,
    item_id: np.ndarray,
    explanation: np.ndarray,
    n_samples: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The brute-force reference: marginal P(policy puts (item, explanation) at (shelf, position) |
    context) for query rows as the frequency over ``n_samples`` independent page builds, with its
    binomial standard error (exact, standard error 0, when both ε are 0)."""
    scores = policy.scorer(contexts, candidates)
    deterministic = policy.epsilon_head == 0 and policy.epsilon_fill == 0
    reps = 1 if deterministic else int(n_samples)
    if reps < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    page = np.asarray(page, np.int64)
    widened, forced, row_index = logged_slots_to_candidates(
        candidates, page, shelf, position, item_id, explanation, policy.shelves, policy.cards
    )
    del forced
    rng = np.random.default_rng(seed)
    hits = np.zeros(len(page))
    inside = row_index != EMPTY
    sh, po = np.asarray(shelf)[inside], np.asarray(position)[inside]
    # replicate pages in chunks so memory stays bounded
    chunk = max(1, 20_000 // max(candidates.n_pages, 1))
    idx_map = _candidate_index_map(candidates, widened)
    done = 0
    while done < reps:
        r = min(chunk, reps - done)
        rep = _replicate(candidates, r)
        built = construct_page(rep, np.tile(scores, r), policy.shelves, policy.cards,
                               policy.epsilon_head, policy.epsilon_fill, rng)
        n = len(candidates)
        cand = built.candidate.reshape(r, candidates.n_pages, policy.shelves, policy.cards)
        cand = np.where(cand >= 0, cand % max(n, 1), EMPTY)
        chosen = cand[:, page[inside], sh, po]  # (r, q) original candidate index at the slot
        target = idx_map[row_index[inside]]  # original index of the queried pair, -1 if none
        hits[inside] += ((chosen == target[None, :]) & (target[None, :] >= 0)).sum(axis=0)
        done += r
    p = hits / reps
    se = np.zeros_like(p) if deterministic else np.sqrt(p * (1 - p) / reps)
    return p, se


def _candidate_index_map(original: CandidateSet, widened: CandidateSet) -> np.ndarray:
    """For each widened index, the original candidate index (-1 for added, unchoosable pairs)."""
    pos = locate_cards(original, widened.page, widened.explanation, widened.item_id)
    return np.where(widened.choosable, pos, EMPTY)


def _replicate(candidates: CandidateSet, r: int) -> CandidateSet:
    """r stacked copies of the candidate set (copy j's pages come after copy j-1's)."""
    B = candidates.n_pages
    page = (np.arange(r)[:, None] * B + candidates.page[None, :]).ravel()
    return CandidateSet(
        page,
        np.tile(candidates.item_id, r),
        np.tile(candidates.explanation, r),
        B * r,
        np.tile(candidates.choosable, r),
    )


def tiny_context(n_pages: int = 1):
    """12 candidates over 3 explanations with overlapping items and a score tie."""
    item = np.array([1, 2, 3, 4, 5, 2, 3, 6, 7, 1, 8, 9])
    expl = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    score = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.8, 0.5, 0.6, 0.1, 0.7, 0.6, 0.3])
    page = np.repeat(np.arange(n_pages), len(item))
    cands = CandidateSet.from_arrays(page, np.tile(item, n_pages), np.tile(expl, n_pages), n_pages)
    lookup = dict(zip(zip(expl, item), score))
    scores = np.array([lookup[(e, i)] for e, i in zip(cands.explanation, cands.item_id)])
    ctx = pd.DataFrame({"user_id": np.zeros(n_pages, dtype=np.int64)})
    return ctx, cands, scores


def fixed_scorer(scores_one_page: np.ndarray):
    def scorer(contexts, candidates):
        return np.tile(scores_one_page, candidates.n_pages)
    return scorer


def test_pages_have_distinct_items_titles_and_contiguous_slots():
    ctx, cands, scores = tiny_context(500)
    policy = PagePolicy(fixed_scorer(scores[:12]), shelves=3, cards=3, epsilon_head=0.5, epsilon_fill=0.5)
    pages = build_pages(policy, ctx, cands, np.random.default_rng(0))
    for b in range(500):
        chosen = pages.candidate[b][pages.filled[b]]
        items = cands.item_id[chosen]
        assert len(set(items)) == len(items)
        titles = [cands.explanation[pages.candidate[b, s, 0]] for s in range(3) if pages.filled[b, s, 0]]
        assert len(set(titles)) == len(titles)
        for s in range(3):
            row = pages.filled[b, s]
            # slots fill left to right: no gap before a filled slot
            assert not np.any(~row[:-1] & row[1:])
            for k in range(1, 3):
                if row[k]:
                    assert cands.explanation[pages.candidate[b, s, k]] == cands.explanation[pages.candidate[b, s, 0]]
    assert ((pages.propensity > 0) | ~pages.filled).all() and (pages.propensity <= 1).all()


def test_greedy_policy_is_deterministic_with_ties_to_the_earlier_candidate():
    ctx, cands, scores = tiny_context(1)
    policy = PagePolicy(fixed_scorer(scores), shelves=3, cards=3, epsilon_head=0.0, epsilon_fill=0.0)
    a = build_pages(policy, ctx, cands, np.random.default_rng(1))
    b = build_pages(policy, ctx, cands, np.random.default_rng(2))
    np.testing.assert_array_equal(a.candidate, b.candidate)
    assert np.all(a.propensity[a.filled] == 1.0)
    # head of shelf 0 is the best pair overall: (expl 0, item 1, 0.9)
    first = a.candidate[0, 0, 0]
    assert (cands.explanation[first], cands.item_id[first]) == (0, 1)
    # expl 1's best is item 2 (0.8); in expl 2 item 1 is taken, so its head is item 8 (0.6)
    heads = [(cands.explanation[a.candidate[0, s, 0]], cands.item_id[a.candidate[0, s, 0]]) for s in range(3)]
    assert heads == [(0, 1), (1, 2), (2, 8)]
    # shelf 0's fill takes item 3, so shelf 1's fill is item 6 (0.6) then item 7 (0.1), not 3 (0.5)
    fill1 = [cands.item_id[a.candidate[0, 1, k]] for k in range(1, 3)]
    assert fill1 == [6, 7]


def test_ties_break_toward_the_canonical_first_pair_whatever_the_input_order():
    rng = np.random.default_rng(5)
    for _ in range(5):
        order = rng.permutation(4)
        item, expl = np.array([10, 11, 12, 13])[order], np.array([1, 0, 1, 0])[order]
        cands = CandidateSet.from_arrays(np.zeros(4), item, expl, 1)
        policy = PagePolicy(lambda c, k: np.full(len(k), 0.5), shelves=1, cards=1, epsilon_head=0, epsilon_fill=0)
        pages = build_pages(policy, pd.DataFrame({"user_id": [0]}), cands, rng)
        chosen = pages.candidate[0, 0, 0]
        assert (cands.explanation[chosen], cands.item_id[chosen]) == (0, 11)


def test_page_propensities_match_monte_carlo_frequencies():
    """Every distinct page's propensity (product of card propensities) equals its frequency.

    Tolerance: a chi-square goodness-of-fit test over pages with expected count >= 20; it fails
    wrongly with probability 1e-4 when the propensities are exact.
    """
    n = 60_000
    ctx, cands, scores = tiny_context(n)
    policy = PagePolicy(fixed_scorer(scores[:12]), shelves=2, cards=3, epsilon_head=0.4, epsilon_fill=0.3)
    pages = build_pages(policy, ctx, cands, np.random.default_rng(3))
    local = np.where(pages.filled, pages.candidate % 12, -1).reshape(n, -1)
    keys, inverse, counts = np.unique(local, axis=0, return_inverse=True, return_counts=True)
    prop = pages.page_propensity()
    # the same page always gets the same propensity
    first = np.zeros(len(keys), int)
    first[inverse[::-1]] = np.arange(n)[::-1]
    np.testing.assert_allclose(prop, prop[first][inverse], rtol=1e-12)
    expected = prop[first] * n
    big = expected >= 20
    observed = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], n - expected[big].sum())
    chi2 = ((observed - exp) ** 2 / exp).sum()
    p_value = stats.chi2.sf(chi2, df=len(observed) - 1)
    assert p_value > 1e-4, f"chi2={chi2:.1f} over {len(observed)} cells"
    # probabilities of all pages ever seen cannot exceed one
    assert prop[first].sum() <= 1 + 1e-9


def test_logged_choice_probabilities_reproduce_logged_propensities(small_sim):
    """Replaying the simulator's logs with the logging policy recomputes each logged propensity."""
    from bartops.features.candidates import candidates_for_requests
    from bartops.sim import logging_policy

    logs = small_sim.impressions
    pages = logs.drop_duplicates("request_id")[["request_id", "user_id", "platform", "region", "timestamp"]]
    pages = pages.reset_index(drop=True)
    page_of = pd.Series(np.arange(len(pages)), index=pages["request_id"]).loc[logs["request_id"]].to_numpy()
    cands = candidates_for_requests(small_sim.candidates, pages["user_id"].to_numpy())
    code = pd.Series(np.arange(len(small_sim.world.explanations)), index=small_sim.world.explanations["explanation_id"])
    policy = logging_policy(small_sim.world, small_sim.history, 6, 8, 0.1, 0.1)
    p = logged_choice_probabilities(
        policy, pages, cands, page_of, logs["shelf"], logs["position"], logs["item_id"],
        code.loc[logs["explanation_id"]].to_numpy(),
    )
    np.testing.assert_allclose(p, logs["propensity"].to_numpy(), rtol=1e-12, atol=0)


def test_logged_choice_outside_support_has_probability_zero():
    ctx, cands, scores = tiny_context(1)
    policy = PagePolicy(fixed_scorer(scores), shelves=2, cards=2, epsilon_head=0.2, epsilon_fill=0.2)
    # item 99 is no candidate; slot (1, 0) is logged but (0, 5) lies beyond the policy's shape
    p = logged_choice_probabilities(policy, ctx, cands, np.array([0, 0, 0]), np.array([0, 1, 0]),
                                    np.array([0, 0, 5]), np.array([99, 2, 1]), np.array([0, 1, 0]))
    assert p[0] == 0.0 and p[2] == 0.0
    # (1, 0): expl 1 is free, item 2 is free; greedy among heads excluding expl 0 … remaining 8 pairs
    assert 0 < p[1] <= 1


def test_slot_marginals_exact_for_greedy_and_monte_carlo_otherwise():
    ctx, cands, scores = tiny_context(1)
    greedy = PagePolicy(fixed_scorer(scores), shelves=2, cards=2, epsilon_head=0.0, epsilon_fill=0.0)
    p, se = slot_marginals(greedy, ctx, cands, np.array([0, 0]), np.array([0, 0]), np.array([0, 0]),
                           np.array([1, 2]), np.array([0, 0]))
    np.testing.assert_array_equal(p, [1.0, 0.0])
    np.testing.assert_array_equal(se, [0.0, 0.0])
    eps = 0.3
    noisy = PagePolicy(fixed_scorer(scores), shelves=2, cards=2, epsilon_head=eps, epsilon_fill=eps)
    # the first head has no prefix: its marginal is (1-ε)[greedy] + ε/12 exactly
    p, se = slot_marginals(noisy, ctx, cands, np.array([0, 0]), np.array([0, 0]), np.array([0, 0]),
                           np.array([1, 3]), np.array([0, 0]), n_samples=20_000, seed=4)
    truth = np.array([1 - eps + eps / 12, eps / 12])
    assert np.all(np.abs(p - truth) <= 4.5 * np.sqrt(truth * (1 - truth) / 20_000))
    assert np.all(se > 0)


@pytest.mark.parametrize("name,kwargs", [
    ("epsilon_head", dict(epsilon_head=1.5)),
    ("epsilon_fill", dict(epsilon_fill=-0.1)),
    ("shelves", dict(shelves=0)),
    ("cards", dict(cards=0)),
])
def test_invalid_policy_parameters_name_the_parameter(name, kwargs):
    with pytest.raises(ValueError, match=name):
        PagePolicy(lambda c, k: np.zeros(len(k)), **kwargs)


def test_empty_candidate_set_gives_empty_pages():
    cands = CandidateSet.from_arrays(np.zeros(0), np.zeros(0), np.zeros(0), 2)
    policy = PagePolicy(lambda c, k: np.zeros(len(k)), shelves=2, cards=2)
    pages = build_pages(policy, pd.DataFrame({"user_id": [1, 2]}), cands, np.random.default_rng(0))
    assert (pages.candidate == EMPTY).all()


def test_rao_blackwellised_marginals_agree_with_page_frequencies():
    """The OPE module's Rao-Blackwellised marginals (exact step probabilities averaged over sampled
    prefixes) match plain Monte-Carlo frequencies; first-head marginals are exact.  Tolerance: 4.5
    binomial standard errors of the frequency estimate (the RB estimate has lower variance)."""
    from bartops.ope.slate import slot_marginals_with_support

    ctx, cands, scores = tiny_context(1)
    policy = PagePolicy(fixed_scorer(scores), shelves=2, cards=3, epsilon_head=0.3, epsilon_fill=0.3)
    n = len(cands)
    page = np.zeros(n * 6, np.int64)
    shelf = np.repeat([0, 0, 0, 1, 1, 1], n)
    position = np.repeat([0, 1, 2, 0, 1, 2], n)
    item, expl = np.tile(cands.item_id, 6), np.tile(cands.explanation, 6)
    rb, support = slot_marginals_with_support(policy, ctx, cands, page, shelf, position, item, expl,
                                              n_samples=3000, seed=1)
    freq, se = slot_marginals(policy, ctx, cands, page, shelf, position, item, expl, n_samples=20_000, seed=2)
    bound = 4.5 * np.sqrt(np.maximum(freq * (1 - freq), 1e-4) / 20_000) + 0.01
    assert np.all(np.abs(rb - freq) <= bound)
    greedy_first = (cands.explanation == 0) & (cands.item_id == 1)
    # float32 accumulation over 3,000 prefixes: relative error ~1e-5
    np.testing.assert_allclose(rb[:n], np.where(greedy_first, 0.7 + 0.3 / n, 0.3 / n), rtol=1e-4)
    assert (support[rb > 0] > 0).all()


def test_marginals_of_cards_under_rarely_explored_titles_are_resolved_and_unbiased():
    """A fill card under a title the logging policy picks only by exploration (P ≈ ε·6/48) has a
    marginal of order 1e-3.  Title-forced importance sampling resolves it from every sampled prefix
    (median support > n_samples / 2) and agrees with plain page frequencies.  Each per-prefix value lies in
    [0, 1], so sqrt(p(1−p)/n) bounds both standard errors; tolerance 4.5 combined SE + 2e-4."""
    from bartops.ope.slate import slot_marginals_with_support

    n_expl, per = 8, 6
    expl = np.repeat(np.arange(n_expl), per)
    item = np.arange(n_expl * per) % 20  # items shared across explanations
    cands = CandidateSet.from_arrays(np.zeros(len(item)), item, expl, 1)
    scores = 1.0 - 0.1 * cands.explanation - 0.01 * cands.item_id
    policy = PagePolicy(fixed_scorer(scores), shelves=2, cards=3, epsilon_head=0.05, epsilon_fill=0.2)
    ctx = pd.DataFrame({"user_id": [0]})
    n = len(cands)
    page = np.zeros(n * 4, np.int64)
    shelf = np.repeat([0, 0, 1, 1], n)
    position = np.repeat([1, 2, 1, 2], n)
    it, ex = np.tile(cands.item_id, 4), np.tile(cands.explanation, 4)
    m, support = slot_marginals_with_support(policy, ctx, cands, page, shelf, position, it, ex,
                                             n_samples=2000, seed=3)
    freq, _ = slot_marginals(policy, ctx, cands, page, shelf, position, it, ex, n_samples=400_000, seed=4)
    se = np.sqrt(np.maximum(freq * (1 - freq), 1e-6) / 400_000 + np.maximum(m * (1 - m), 1e-6) / 2000)
    assert np.all(np.abs(m - freq) <= 4.5 * se + 2e-4)
    rare = (ex >= 2) & (freq > 0)  # titles chosen only by exploration
    assert rare.sum() > 50 and np.median(freq[rare]) < 0.01
    assert np.median(support[rare]) >= 1000  # natural prefixes would hold such a title ~0.6% of the time


def test_exposure_marginals_agree_with_page_frequencies():
    """``examination_marginals`` (RB steps + defensive importance sampling of the heads) against
    plain page frequencies weighted by κ.  Tolerance: 4.5 standard errors, the RB side's taken from
    the spread of 8 independent runs, the frequency side's binomial (Σ_slots κ²·p(1−p)/n)."""
    from bartops.ope.slate import examination_marginals

    ctx, cands, scores = tiny_context(1)
    policy = PagePolicy(fixed_scorer(scores), shelves=2, cards=3, epsilon_head=0.1, epsilon_fill=0.3)
    kappa = np.array([[1.0, 0.7, 0.5], [0.6, 0.4, 0.3]])
    runs = np.array([examination_marginals(policy, ctx, cands, kappa, n_samples=400, seed=s) for s in range(8)])
    n, freq_n = len(cands), 40_000
    shelf, position = np.repeat([0, 0, 0, 1, 1, 1], n), np.repeat([0, 1, 2, 0, 1, 2], n)
    freq, _ = slot_marginals(policy, ctx, cands, np.zeros(6 * n, np.int64), shelf, position,
                             np.tile(cands.item_id, 6), np.tile(cands.explanation, 6), n_samples=freq_n, seed=9)
    k = kappa[shelf, position]
    exposure = np.bincount(np.tile(np.arange(n), 6), weights=k * freq, minlength=n)
    se = np.sqrt(runs.var(axis=0, ddof=1) / len(runs)
                 + np.bincount(np.tile(np.arange(n), 6), weights=k ** 2 * freq * (1 - freq), minlength=n) / freq_n)
    assert np.all(np.abs(runs.mean(axis=0) - exposure) <= 4.5 * se + 1e-4), (runs.mean(axis=0), exposure)
    assert (runs > 0).all()  # every card can head a shelf by exploration
    greedy = dataclasses.replace(policy, epsilon_head=0.0, epsilon_fill=0.0)
    exact = examination_marginals(greedy, ctx, cands, kappa)
    assert set(np.round(exact, 6)) <= set(np.round(kappa.ravel(), 6)) | {0.0}


def test_exposure_marginals_of_needed_cards_only():
    """``needed`` skips the forced-title passes of titles no needed card carries: the needed cards'
    exposures still agree with page frequencies (same tolerance as above), cards under a skipped rare
    title are NaN, and cards under the greedy title are unaffected (same random stream)."""
    from bartops.ope.slate import examination_marginals

    ctx, cands, scores = tiny_context(1)
    # one shelf: title 0 is the greedy one, titles 1 and 2 are shown only by exploration
    policy = PagePolicy(fixed_scorer(scores), shelves=1, cards=3, epsilon_head=0.2, epsilon_fill=0.3)
    kappa = np.array([[1.0, 0.7, 0.5]])
    full = examination_marginals(policy, ctx, cands, kappa, n_samples=400, seed=0)
    needed = cands.explanation != 2
    runs = np.array([examination_marginals(policy, ctx, cands, kappa, n_samples=400, seed=s, needed=needed)
                     for s in range(8)])
    assert np.isnan(runs[:, ~needed]).all() and np.isfinite(runs[:, needed]).all()
    np.testing.assert_array_equal(runs[0, cands.explanation == 0], full[cands.explanation == 0])
    n, freq_n = len(cands), 40_000
    shelf, position = np.zeros(3 * n, np.int64), np.repeat([0, 1, 2], n)
    freq, _ = slot_marginals(policy, ctx, cands, np.zeros(3 * n, np.int64), shelf, position,
                             np.tile(cands.item_id, 3), np.tile(cands.explanation, 3), n_samples=freq_n, seed=9)
    k = kappa[shelf, position]
    exposure = np.bincount(np.tile(np.arange(n), 3), weights=k * freq, minlength=n)[needed]
    se = np.sqrt(runs[:, needed].var(axis=0, ddof=1) / len(runs)
                 + np.bincount(np.tile(np.arange(n), 3), weights=k ** 2 * freq * (1 - freq), minlength=n)[needed]
                 / freq_n)
    assert np.all(np.abs(runs[:, needed].mean(axis=0) - exposure) <= 4.5 * se + 1e-4)
    with pytest.raises(ValueError, match="needed must have one flag per candidate"):
        examination_marginals(policy, ctx, cands, kappa, needed=needed[:-1])


def test_identical_pages_get_independent_exposure_draws():
    """A user's repeat visits (identical candidates and scores) must not share Monte-Carlo draws: a
    shared error would be common to all those pages, and the page bootstrap could not see it."""
    from bartops.ope.slate import examination_marginals

    ctx, cands, scores = tiny_context(3)
    policy = PagePolicy(fixed_scorer(scores[:12]), shelves=2, cards=3, epsilon_head=0.2, epsilon_fill=0.3)
    e = examination_marginals(policy, ctx, cands, np.array([[1.0, 0.7, 0.5], [0.6, 0.4, 0.3]]), n_samples=20,
                              seed=0).reshape(3, 12)
    assert not np.allclose(e[0], e[1]) and not np.allclose(e[1], e[2])


def _random_candidates(rng: np.random.Generator, n_pages: int, unchoosable: float) -> CandidateSet:
    n = rng.integers(0, 40, n_pages)
    page = np.repeat(np.arange(n_pages), n)
    return CandidateSet.from_arrays(page, rng.integers(0, 30, len(page)), rng.integers(0, 6, len(page)), n_pages,
                                    rng.random(len(page)) >= unchoosable)


@pytest.mark.parametrize("n_pages", [1, 5, 80])  # 80: the compiled loop runs its pages across the cores
def test_compiled_loop_makes_the_array_loops_choices_bit_for_bit(n_pages):
    """``construct_page`` runs a compiled loop unless a step is observed; both must build the same pages
    (candidates, propensities, explored and greedy flags, ε) from the same generator, with ties,
    empty pages, ε of 0 and 1, ``last_shelf``, and replays of logged and of arbitrary (non-free) cards."""
    from bartops.policy.page import construct_page

    def both(*args, seed=None, **kw):
        """(compiled, array loop), each with its own generator from ``seed``."""
        fast = construct_page(*args, rng=None if seed is None else np.random.default_rng(seed), **kw)
        arrays = construct_page(*args, rng=None if seed is None else np.random.default_rng(seed),
                                observe=lambda *step: None, **kw)  # an observer forces the array loop
        return fast, arrays

    for trial in range(40):
        rng = np.random.default_rng(trial)
        cands = _random_candidates(rng, n_pages, unchoosable=0.2 if trial % 2 else 0.0)
        scores = np.round(rng.normal(size=len(cands)), trial % 3)  # rounding makes ties
        S, K = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        eps_head, eps_fill = [(0.1, 0.1), (0.0, 0.0), (1.0, 0.5), (0.3, 1.0)][trial % 4]
        last = None if trial % 5 else int(rng.integers(0, S))
        built = both(cands, scores, S, K, eps_head, eps_fill, seed=trial, last_shelf=last)
        off = cands.offsets
        anywhere = np.full((n_pages, S, K), EMPTY)
        for b in np.flatnonzero(np.diff(off) > 0):  # any card of the page, free or not, or nothing
            anywhere[b] = np.where(rng.random((S, K)) < 0.8, rng.integers(off[b], off[b + 1], (S, K)), EMPTY)
        replays = [both(cands, scores, S, K, eps_head, eps_fill, forced=f) for f in (built[0].candidate, anywhere)]
        for what, (fast, arrays) in zip(("sampled", "replayed", "replayed arbitrary"), [built, *replays]):
            for name in ("candidate", "propensity", "explored", "greedy", "epsilon"):
                a, b = getattr(fast, name), getattr(arrays, name)
                assert np.array_equal(a, b), (f"trial {trial} ({what}, S={S}, K={K}, ε={eps_head}/{eps_fill}): "
                                              f"{name} differs in {int((a != b).sum())} of {a.size} slots")


def test_replay_refuses_forced_cards_of_another_page_or_shape():
    """The compiled replay checks its input: a forced card must be one of its own page's candidates."""
    from bartops.policy.page import construct_page

    ctx, cands, scores = tiny_context(n_pages=2)
    forced = np.full((2, 2, 2), EMPTY)
    forced[0, 0, 0] = 12  # candidate 12 is page 1's first
    with pytest.raises(ValueError, match="another page") as err:
        construct_page(cands, scores, 2, 2, 0.1, 0.1, None, forced=forced)
    with pytest.raises(ValueError, match="expected") as err:
        construct_page(cands, scores, 2, 2, 0.1, 0.1, None, forced=np.full((2, 3, 2), EMPTY))
    assert "(2, 3, 2)" in str(err.value), f"the message names the shape given: {err.value}"
