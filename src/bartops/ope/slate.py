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
  conditional probability of the card at its slot is accumulated (lower variance than counting
  hits).  A fill card's marginal is dominated by how often its explanation becomes the shelf's title,
  which for a title chosen only by exploration is rare: such prefixes are drawn with the title forced
  (``TitleForcing``) and weighted by its exact probability, so every marginal is resolved from every
  sample.  ``marginal_se`` bounds the MC error (each per-prefix value lies in [0, 1]).

``examination_marginals`` gives the position-based model's exposure Σ_slots P(card at slot)·κ(slot)
of every candidate, which ``bartops.ope.pipeline`` uses as the gate's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bartops.logs.schema import SchemaError
from bartops.ope.exposure import common_exposures, forced_exposures, page_layout
from bartops.policy.compiled import KERNEL_LOCK  # one lock for every parallel kernel of the process
from bartops.policy.page import CandidateSet, PagePolicy, TitleForcing, build_pages, construct_page, locate_cards

_CELLS = 4_000_000  # dense cells per vectorised replicate chunk
HEAD_PROPOSAL_EPSILON = 0.6  # head exploration of the defensive proposal for exposure marginals


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


def _rb_query_marginals(cands: CandidateSet, scores: np.ndarray, S: int, K: int, eps_head: float,
                        eps_fill: float, n_samples: int, rng: np.random.Generator, q_page: np.ndarray,
                        q_shelf: np.ndarray, q_position: np.ndarray, q_col: np.ndarray,
                        q_explanation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slot marginals of query cards (page, shelf, position, column in the page's candidates) and the
    number of sampled prefixes in which each was available (its support).

    One task per (page, shelf, explanation) asked about.  A task samples ``n_samples`` prefixes with
    that shelf's title forced to the explanation (``TitleForcing``): a head query gets the exact step
    probability averaged over the natural prefixes before the forced step; a fill query gets
    E_forced[w · P(card at slot | prefix)], w = P(title has that explanation | prefix), which equals
    its marginal however rarely the logging policy picks the title.  Construction stops after the
    task's shelf.  Memory is O(queries), not O(pages × slots × candidates).
    """
    out = np.zeros(len(q_page))
    support = np.zeros(len(q_page), np.int64)
    if len(q_page) == 0:
        return out, support
    task_key = np.stack([q_page, q_shelf, q_explanation], axis=1)
    tasks, q_task = np.unique(task_key, axis=0, return_inverse=True)
    q_task = q_task.ravel()
    width = int(max(np.diff(cands.offsets).max(initial=0), 1))
    for s in np.unique(tasks[:, 1]):
        t_idx = np.flatnonzero(tasks[:, 1] == s)
        local = np.full(len(tasks), -1, np.int64)
        local[t_idx] = np.arange(len(t_idx))
        T = len(t_idx)
        sub = cands.subset(tasks[t_idx, 0])
        off = cands.offsets
        sub_scores = np.concatenate([scores[off[b]: off[b + 1]] for b in tasks[t_idx, 0]])
        queries = np.flatnonzero(tasks[q_task, 1] == s)
        q_local, q_k, q_c = local[q_task[queries]], q_position[queries], q_col[queries]
        r = int(max(1, min(n_samples, _CELLS // max(T * width, 1))))
        rep = CandidateSet((np.arange(r)[:, None] * T + sub.page[None, :]).ravel(), np.tile(sub.item_id, r),
                           np.tile(sub.explanation, r), T * r, np.tile(sub.choosable, r))
        rep_scores = np.tile(sub_scores, r)
        expl = np.tile(tasks[t_idx, 2], r)
        done = 0
        while done < n_samples:
            reps_now = min(r, n_samples - done)
            force = TitleForcing(int(s), expl, np.ones(T * r))

            def accumulate(s_: int, k: int, free: np.ndarray, count: np.ndarray, greedy_col: np.ndarray,
                           eps: float) -> None:
                if s_ != s:
                    return
                at = np.flatnonzero(q_k == k)
                if len(at) == 0:
                    return
                row = np.arange(reps_now)[:, None] * T + q_local[at][None, :]  # (reps, queries)
                col = q_c[at][None, :]
                avail = free[row, col]
                p = avail * (eps / np.maximum(count[row], 1)) + (1 - eps) * (avail & (greedy_col[row] == col))
                w = force.weight[row] if k > 0 else 1.0
                out[queries[at]] += (p * w).sum(axis=0)
                support[queries[at]] += (avail & (np.asarray(w) > 0)).sum(axis=0)

            construct_page(rep, rep_scores, S, K, eps_head, eps_fill, rng, observe=accumulate, force_title=force,
                           last_shelf=int(s))
            done += reps_now
    return out / n_samples, support


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
    idx = locate_cards(candidates, page, np.asarray(explanation, np.int64), np.asarray(item_id, np.int64))
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
    # each page its own draws (repeat visits too): MC errors independent across pages
    col = idx - candidates.offsets[page]  # position within its page
    key = np.stack([page[ok], shelf[ok], position[ok], col[ok]], axis=1)
    uq, inverse = np.unique(key, axis=0, return_inverse=True)
    q_expl = candidates.explanation[candidates.offsets[uq[:, 0]] + uq[:, 3]]
    p, hits = _rb_query_marginals(candidates, scores, S, K, policy.epsilon_head, policy.epsilon_fill,
                                  int(n_samples), np.random.default_rng(seed), uq[:, 0], uq[:, 1], uq[:, 2],
                                  uq[:, 3], q_expl)
    out[ok] = p[inverse.ravel()]
    support[ok] = hits[inverse.ravel()]
    return np.clip(out, 0.0, 1.0), support


def examination_marginals(
    policy: PagePolicy,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    examination: np.ndarray,
    n_samples: int = 100,
    seed: int = 0,
    scores: np.ndarray | None = None,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """Per candidate, its expected examination on the policy's page: E(c) = Σ_slots P(c at slot)·κ(slot)
    for an (S, K) examination profile κ (position-based model; see ``bartops.ope.pipeline``).

    Exact for ε = 0; otherwise Rao-Blackwellised Monte Carlo: over ``n_samples`` sampled prefixes, the
    exact step probability of every candidate at every slot, weighted by κ, summed and averaged.  A card
    has positive E wherever it can be placed at all (every candidate can head a shelf by exploration).
    ``needed`` (bool per candidate) limits the costly forced-title passes to the titles of needed cards
    (e.g. the logged ones); other cards under a rare title then get NaN.
    """
    kappa = np.asarray(examination, np.float64)
    S, K = policy.shelves, policy.cards
    if kappa.shape != (S, K) or (kappa < 0).any():
        raise ValueError(f"examination must be a non-negative ({S}, {K}) array, got shape {kappa.shape}")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if scores is None:
        scores = policy.scorer(contexts, candidates)
    scores = np.asarray(scores, np.float64)
    out = np.zeros(len(candidates))
    if policy.epsilon_head == 0 and policy.epsilon_fill == 0:
        built = build_pages(policy, contexts, candidates, np.random.default_rng(seed), scores=scores)
        b, sh, k = np.nonzero(built.filled)
        out[built.candidate[b, sh, k]] = kappa[sh, k]
        return out
    # every page gets its own draws, even where pages are identical (a user's repeat visits): shared
    # draws would give those pages one common Monte-Carlo error, which the page bootstrap cannot see
    layout = page_layout(candidates, scores)
    group = layout["expl_group"]
    # a title the greedy page does not use is rare: its fills are estimated with the title forced
    greedy = construct_page(candidates, scores, S, K, 0.0, 0.0, np.random.default_rng(0))
    heads = greedy.candidate[:, :, 0]
    rare = ~np.isin(group, group[heads[heads >= 0]])
    skipped = np.zeros(len(candidates), bool)
    if needed is not None:
        needed = np.asarray(needed, bool)
        if needed.shape != (len(candidates),):
            raise ValueError(f"needed must have one flag per candidate ({len(candidates)}), got {needed.shape}")
        skipped = rare & ~np.isin(group, group[rare & needed])
    rng = np.random.default_rng(seed)
    args = (layout["off"], layout["by_score"], layout["by_expl"], layout["expl_off"], group, layout["item_local"],
            layout["expl_local"])
    choosable = np.asarray(candidates.choosable, bool)
    page_seeds = rng.integers(0, 2**32 - 1, candidates.n_pages)
    tasks = np.unique(group[rare & ~skipped])
    page_of_group = np.zeros(int(group.max(initial=-1)) + 1, np.int64)
    page_of_group[group] = candidates.page
    with KERNEL_LOCK:  # numba's default thread pool takes one parallel call at a time
        out = common_exposures(*args, layout["first_expl"], layout["width"], choosable, ~rare, kappa,
                               float(policy.epsilon_head), float(policy.epsilon_fill), HEAD_PROPOSAL_EPSILON,
                               int(n_samples), page_seeds)
        if len(tasks):
            out = out + forced_exposures(*args, layout["width"], choosable, page_of_group[tasks],
                                         tasks.astype(np.int64), kappa, float(policy.epsilon_head),
                                         float(policy.epsilon_fill), int(n_samples),
                                         rng.integers(0, 2**32 - 1, len(tasks)))
    out[skipped] = np.nan
    return out
