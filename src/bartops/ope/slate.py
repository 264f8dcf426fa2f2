"""Probabilities of logged cards under a page policy, for slate off-policy estimators.

A page is built step by step (shelf heads, then fills; see ``bartops.policy.page``), so a card's
probability can be taken in several ways, each the basis of an estimator with its own assumption:

- ``conditional``: P(card at its slot | the *logged* cards before it).  The ratio of two such
  probabilities is NOT an unbiased per-card weight when the target would build a different
  prefix: it ignores how likely the logged prefix is under the target (shown in bench/ope_accuracy).
- ``prefix``: the product of ``conditional`` over every step up to the card (cascade weight).
  Unbiased when a card's reward depends only on the context and the cards chosen up to it.
- ``page``: the product over the whole page.  Unbiased for any reward structure; high variance.
- ``marginal``: P(policy puts this (item, explanation) at this (shelf, position)), summed over all
  prefixes (item-position model, IIPS).  Unbiased when a card's reward depends only on the context,
  the card and its slot — true of the simulator (relevance × examination(slot)) — and the logging
  marginal is positive wherever the target's is.  Exact for a greedy policy (ε = 0: 0 or 1);
  for an ε-greedy policy a Rao-Blackwellised Monte-Carlo average: over sampled prefixes, the exact
  conditional probability of every candidate at every slot is accumulated (lower variance than
  counting hits, and never 0 for a card that is still available).  Pages with identical candidates
  and scores share one computation.  The returned ``marginal_se`` bounds the MC error
  (≤ sqrt(p(1−p)/n_samples), the error of counting hits); 1/p̂ is biased upward by about
  (1−p)/(p·n_samples), so use enough samples (≥ 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from bartops.logs.schema import SchemaError
from bartops.policy.page import (
    EMPTY,
    CandidateSet,
    PagePolicy,
    _construct,
    _locate,
    build_pages,
    logged_choice_probabilities,
)

_CELLS = 4_000_000  # dense cells per vectorised replicate chunk


@dataclass(frozen=True)
class LoggedPages:
    """Logged impressions arranged by page: one context row per request, arrays per logged card."""

    contexts: pd.DataFrame  # user_id, platform, region, timestamp (one row per page)
    request_id: np.ndarray  # per page
    page: np.ndarray  # per row
    shelf: np.ndarray
    position: np.ndarray
    item_id: np.ndarray
    explanation: np.ndarray  # integer codes
    reward: np.ndarray
    propensity: np.ndarray
    policy_version: np.ndarray

    @property
    def n_pages(self) -> int:
        return len(self.contexts)

    def __len__(self) -> int:
        return len(self.page)


def logged_pages(logs: pd.DataFrame, explanations: pd.DataFrame) -> LoggedPages:
    """Arrange impression logs (log schema) by page; explanation ids become codes of ``explanations``."""
    need = ["request_id", "user_id", "platform", "region", "timestamp", "shelf", "position", "item_id",
            "explanation_id", "propensity", "reward"]
    missing = [c for c in need if c not in logs.columns]
    if missing:
        raise SchemaError(f"logs lack column(s) {missing}")
    if len(logs) == 0:
        raise ValueError("logs are empty: nothing to evaluate")
    code = pd.Series(np.arange(len(explanations)), index=explanations["explanation_id"].astype(str).to_numpy())
    ids = logs["explanation_id"].astype(str)
    unknown = sorted(set(ids) - set(code.index))
    if unknown:
        raise ValueError(f"logs use explanation id(s) not in the explanations table: {unknown[:5]}")
    req, page = np.unique(logs["request_id"].astype(str).to_numpy(), return_inverse=True)
    first = np.zeros(len(req), np.int64)
    first[page[::-1]] = np.arange(len(page))[::-1]
    ctx = logs.iloc[first][["user_id", "platform", "region", "timestamp"]].reset_index(drop=True)
    dup = pd.DataFrame({"p": page, "s": logs["shelf"].to_numpy(), "k": logs["position"].to_numpy()}).duplicated()
    if dup.any():
        raise ValueError(f"{int(dup.sum())} logged row(s) repeat a (request, shelf, position) slot")
    pv = logs["policy_version"].astype(str).to_numpy() if "policy_version" in logs else np.full(len(logs), "")
    return LoggedPages(ctx, req, page.astype(np.int64), logs["shelf"].to_numpy(np.int64),
                       logs["position"].to_numpy(np.int64), logs["item_id"].to_numpy(np.int64),
                       code.loc[ids].to_numpy(np.int64), logs["reward"].to_numpy(np.float64),
                       logs["propensity"].to_numpy(np.float64), pv)


@dataclass(frozen=True)
class LoggedActionProbabilities:
    """Per logged row: the policy's probability of that card in each of the senses above."""

    conditional: np.ndarray
    prefix: np.ndarray
    page: np.ndarray
    marginal: np.ndarray
    marginal_se: np.ndarray

    def kind(self, name: str) -> np.ndarray:
        if name not in ("conditional", "prefix", "page", "marginal"):
            raise ValueError(f"unknown probability kind {name!r}; use conditional, prefix, page or marginal")
        return getattr(self, name)


def step_index(shelf: np.ndarray, position: np.ndarray, shelves: int, cards: int) -> np.ndarray:
    """Construction order of slots: heads (s, 0) first, then fills shelf by shelf."""
    shelf, position = np.asarray(shelf), np.asarray(position)
    return np.where(position == 0, shelf, shelves + shelf * (cards - 1) + position - 1)


def products(conditional: np.ndarray, lp: LoggedPages, shelves: int, cards: int) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, page) products of per-step probabilities within each logged page."""
    order = np.lexsort((step_index(lp.shelf, lp.position, shelves, cards), lp.page))
    c = conditional[order]
    pg = lp.page[order]
    start = np.r_[0, np.flatnonzero(np.diff(pg)) + 1]
    prefix_sorted = np.empty(len(c))
    page_sorted = np.empty(len(c))
    for lo, hi in zip(start, np.r_[start[1:], len(c)]):
        cp = np.cumprod(c[lo:hi])
        prefix_sorted[lo:hi] = cp
        page_sorted[lo:hi] = cp[-1]
    prefix, page = np.empty(len(c)), np.empty(len(c))
    prefix[order], page[order] = prefix_sorted, page_sorted
    return prefix, page


def _page_keys(candidates: CandidateSet, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Representative page of each group of pages with identical candidates and scores, and the map."""
    off = candidates.offsets
    seen: dict[bytes, int] = {}
    rep_of = np.empty(candidates.n_pages, np.int64)
    reps = []
    for b in range(candidates.n_pages):
        lo, hi = off[b], off[b + 1]
        key = (candidates.item_id[lo:hi].tobytes() + b"|" + candidates.explanation[lo:hi].tobytes() + b"|"
               + candidates.choosable[lo:hi].tobytes() + b"|" + np.asarray(scores[lo:hi]).tobytes())
        if key not in seen:
            seen[key] = len(reps)
            reps.append(b)
        rep_of[b] = seen[key]
    return np.asarray(reps, np.int64), rep_of


def _rb_marginals(cands: CandidateSet, scores: np.ndarray, S: int, K: int, eps_head: float, eps_fill: float,
                  n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pages, S, K, width) float32 mean over sampled prefixes of each candidate's exact step probability,
    and (pages, S, K, width) uint16 count of the sampled prefixes in which that probability was positive."""
    U = cands.n_pages
    width = int(max(np.diff(cands.offsets).max(initial=0), 1))
    r = int(max(1, min(n_samples, _CELLS // max(U * width, 1))))
    rep = CandidateSet((np.arange(r)[:, None] * U + cands.page[None, :]).ravel(), np.tile(cands.item_id, r),
                       np.tile(cands.explanation, r), U * r, np.tile(cands.choosable, r))
    rep_scores = np.tile(scores, r)
    rows = np.arange(U * r)
    acc = np.zeros((U, S, K, width), np.float32)
    hits = np.zeros((U, S, K, width), np.uint16)
    reps_now = r

    def accumulate(s: int, k: int, free: np.ndarray, count: np.ndarray, greedy_col: np.ndarray, eps: float) -> None:
        has = count > 0
        contrib = free * np.float32(eps) / np.maximum(count, 1)[:, None].astype(np.float32)
        contrib[rows[has], greedy_col[has]] += np.float32(1 - eps)
        acc[:, s, k, :] += contrib.reshape(r, U, width)[:reps_now].sum(axis=0)
        hits[:, s, k, :] += free.reshape(r, U, width)[:reps_now].sum(axis=0, dtype=np.uint16)

    done = 0
    while done < n_samples:
        reps_now = min(r, n_samples - done)
        _construct(rep, rep_scores, S, K, eps_head, eps_fill, rng, observe=accumulate)
        done += reps_now
    return acc / np.float32(n_samples), hits


def slot_marginals_with_support(
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
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Marginal P(policy puts (item, explanation) at (shelf, position) | context) per query row, and
    the number of sampled prefixes in which the card was available at that slot (its MC support).

    Exact for ε = 0 (support = ``n_samples`` where the card is placed); otherwise Rao-Blackwellised
    Monte Carlo (see module docs).  A marginal resting on few supporting prefixes is unreliable
    (1/p̂ is then biased upward and heavy-tailed): callers should treat it as unresolved.
    """
    page = np.asarray(page, np.int64)
    shelf, position = np.asarray(shelf, np.int64), np.asarray(position, np.int64)
    if scores is None:
        scores = policy.scorer(contexts, candidates)
    scores = np.asarray(scores, np.float64)
    S, K = policy.shelves, policy.cards
    inside = (shelf >= 0) & (shelf < S) & (position >= 0) & (position < K)
    idx = _locate(candidates, page, np.asarray(explanation, np.int64), np.asarray(item_id, np.int64))
    ok = inside & (idx >= 0)
    ok[ok] &= candidates.choosable[idx[ok]]
    out = np.zeros(len(page))
    support = np.zeros(len(page), np.int64)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if policy.epsilon_head == 0 and policy.epsilon_fill == 0:
        built = build_pages(policy, contexts, candidates, np.random.default_rng(seed), scores=scores)
        out[ok] = built.candidate[page[ok], shelf[ok], position[ok]] == idx[ok]
        support[ok] = np.where(out[ok] > 0, int(n_samples), 0)
        return out, support
    reps, rep_of = _page_keys(candidates, scores)
    rep_cands = candidates.subset(reps)
    rep_scores = np.concatenate([scores[candidates.offsets[b]: candidates.offsets[b + 1]] for b in reps]) \
        if len(reps) else np.zeros(0)
    acc, hits = _rb_marginals(rep_cands, rep_scores, S, K, policy.epsilon_head, policy.epsilon_fill,
                              int(n_samples), np.random.default_rng(seed))
    col = idx - candidates.offsets[page]  # position within its page (same within the representative)
    u = rep_of[page]
    out[ok] = acc[u[ok], shelf[ok], position[ok], col[ok]]
    support[ok] = hits[u[ok], shelf[ok], position[ok], col[ok]]
    return np.clip(out, 0.0, 1.0), support


def slot_marginal_probabilities(
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
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Marginal P(policy puts (item, explanation) at (shelf, position) | context) per query row.

    Exact for ε = 0; otherwise Rao-Blackwellised Monte Carlo (see module docs).  Returns the
    probabilities and a bound on their MC standard error (0 when exact).
    """
    out, _ = slot_marginals_with_support(policy, contexts, candidates, page, shelf, position, item_id,
                                         explanation, n_samples, seed, scores)
    if policy.epsilon_head == 0 and policy.epsilon_fill == 0:
        return out, np.zeros(len(out))
    return out, np.sqrt(out * (1 - out) / int(n_samples))


def probabilities_of_logged_actions(
    policy: PagePolicy,
    logs: LoggedPages,
    candidates: CandidateSet,
    n_samples: int = 200,
    seed: int = 0,
    scores: np.ndarray | None = None,
) -> LoggedActionProbabilities:
    """The policy's probabilities of each logged card: conditional (on the logged prefix, from the
    page policy's ``logged_choice_probabilities``), prefix and page products, and slot marginals.

    ``candidates`` holds the policy's candidate pairs for ``logs.contexts`` (one page per row).
    """
    if candidates.n_pages != logs.n_pages:
        raise ValueError(f"candidates describe {candidates.n_pages} pages but the logs have {logs.n_pages}")
    cond = logged_choice_probabilities(policy, logs.contexts, candidates, logs.page, logs.shelf, logs.position,
                                       logs.item_id, logs.explanation)
    prefix, page = products(cond, logs, policy.shelves, policy.cards)
    marg, se = slot_marginal_probabilities(policy, logs.contexts, candidates, logs.page, logs.shelf,
                                           logs.position, logs.item_id, logs.explanation, n_samples, seed, scores)
    return LoggedActionProbabilities(cond, prefix, page, marg, se)


def logging_probabilities(logs: LoggedPages, shelves: int, cards: int,
                          marginal: np.ndarray | None = None,
                          marginal_se: np.ndarray | None = None) -> LoggedActionProbabilities:
    """The logging policy's probabilities from the logs' own propensities (conditional on the prefix);
    the marginal must come from ``slot_marginal_probabilities`` of the logging policy (or the logs,
    when they record marginal propensities, as the Open Bandit Dataset does)."""
    prefix, page = products(logs.propensity, logs, shelves, cards)
    m = np.full(len(logs), np.nan) if marginal is None else marginal
    return LoggedActionProbabilities(logs.propensity, prefix, page, m,
                                     np.zeros(len(logs)) if marginal_se is None else marginal_se)


Predictor = Callable[[pd.DataFrame, CandidateSet, np.ndarray, np.ndarray], np.ndarray]


def expected_under_target(
    policy: PagePolicy,
    logs: LoggedPages,
    candidates: CandidateSet,
    predict: Predictor,
    n_samples: int = 20,
    seed: int = 0,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Per logged row, E_target[prediction of the card the target puts at that row's slot].

    ``predict(contexts, cards, shelf, position)`` scores cards (a CandidateSet, one entry per slot)
    at their slots.  Exact for a greedy target; otherwise the mean over ``n_samples`` sampled pages.
    A slot the target leaves empty contributes 0.
    """
    if scores is None:
        scores = policy.scorer(logs.contexts, candidates)
    greedy = policy.epsilon_head == 0 and policy.epsilon_fill == 0
    reps = 1 if greedy else int(n_samples)
    rng = np.random.default_rng(seed)
    S, K = policy.shelves, policy.cards
    inside = (logs.shelf < S) & (logs.position < K)
    total = np.zeros(len(logs))
    for _ in range(reps):
        built = build_pages(policy, logs.contexts, candidates, rng, scores=scores)
        cand = np.full(len(logs), EMPTY, np.int64)
        cand[inside] = built.candidate[logs.page[inside], logs.shelf[inside], logs.position[inside]]
        has = cand != EMPTY
        cards = CandidateSet(logs.page[has], candidates.item_id[cand[has]], candidates.explanation[cand[has]],
                             logs.n_pages, np.ones(int(has.sum()), bool))
        total[has] += predict(logs.contexts, cards, logs.shelf[has], logs.position[has])
    return total / reps


def target_cards(policy: PagePolicy, logs: LoggedPages, candidates: CandidateSet, seed: int = 0,
                 scores: np.ndarray | None = None) -> tuple[CandidateSet, np.ndarray]:
    """One sampled target page per logged page, as cards aligned with the logged rows
    (CandidateSet with one entry per row whose slot the target fills) and that mask."""
    if scores is None:
        scores = policy.scorer(logs.contexts, candidates)
    built = build_pages(policy, logs.contexts, candidates, np.random.default_rng(seed), scores=scores)
    inside = (logs.shelf < policy.shelves) & (logs.position < policy.cards)
    cand = np.full(len(logs), EMPTY, np.int64)
    cand[inside] = built.candidate[logs.page[inside], logs.shelf[inside], logs.position[inside]]
    has = cand != EMPTY
    return CandidateSet(logs.page[has], candidates.item_id[cand[has]], candidates.explanation[cand[has]],
                        logs.n_pages, np.ones(int(has.sum()), bool)), has
