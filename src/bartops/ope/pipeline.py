"""Evaluate candidate page policies (and production) on impression logs: the gate's evidence.

Model and assumptions (item-position model, as in IIPS):

A1. A card's expected reward depends only on the context, the card (item, explanation) and its slot
    (shelf, position) — not on the other cards of the page.  True of the simulator
    (relevance × examination(slot)); the value of a page is the sum over its slots.
A2. Support: wherever the target puts a card at a slot with positive probability, the logging
    policy's marginal probability of that card at that slot is positive.
A3. The logging marginal π̂₀ is accurate where it is used: it is a Rao-Blackwellised Monte-Carlo
    average of exact step probabilities (``bartops.ope.slate``); rows whose marginal rests on fewer
    than ``min_support`` sampled prefixes are *unresolved*: they get no weight, and the share of the
    target's matched cards that fall on them is reported (``unresolved_share``).

Support share: Σ min(w, dr_clip) / (target cards shown) estimates the share of the target's cards
that fall where the logs can check them (capped, so it errs low).  Outside that share DR is the
reward model's extrapolation, which no bootstrap interval covers; the gate requires a minimum share.

Estimators (value = expected streams per page view; pages are the bootstrap units):

- ``ips``   Σ_rows m̂·r / π̂₀ per page, where m̂ is the share of ``target_samples`` sampled target
  pages that put the logged card at its slot (an unbiased estimate of the target's marginal; exact
  for a greedy target).  Unbiased under A1–A3 except for unresolved rows (biased down by their mass).
- ``snips`` the same, self-normalised per slot.  Consistent; bias O(1/n); same unresolved caveat.
- ``dr``    direct method on the target's own pages (the real page construction for each logged
  context, every filled slot scored by a cross-fitted reward model q̂) plus the correction
  Σ_rows m̂/π̂₀ · (r − q̂(logged card)).  Unbiased if A1–A3 hold *or* q̂ is exact; unresolved rows
  lose only their correction, so its bias is that share × the model's error there (small).
  The correction's weights are capped at ``dr_clip``: a logged card the target would show but the
  logging policy shows only by rare exploration (a random shelf head, π₀ ≈ ε/N) has a weight in the
  thousands and makes the plain correction heavy-tailed, its bootstrap interval dishonest (measured
  in ``bench/ope_accuracy.py``).  Capping biases only by Σ(w − cap)₊·E[r − q̂], which is small
  when q̂ is (cross-fitted, unbiased on average); the capped share is reported (``clipped_share``).

A candidate learned from the same logs must be evaluated on logs its model did not see: otherwise it
picks exactly the cards whose rewards it (and q̂, fitted on the same rows) over-fits, and the direct
method is biased upward (measured: +9% on the demo).  ``bartops.gate.evaluate`` therefore keeps only
the pages after the bundle's training cut (``metrics.json`` → ``split.validation_from``).

The logging policy itself (production when nothing is in production) is evaluated on-policy: the
mean reward per page, all weights 1.  The paired difference candidate − production uses the same
page resamples for both.  The DR interval treats q̂ as fixed (cross-fitting keeps its errors
independent of each page's own rewards).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import pandas as pd

from bartops.ope.estimators import DR, IPS, SNIPS, Estimate, evaluate_many, paired_difference, weights
from bartops.ope.reward import cross_fit
from bartops.ope.slate import LoggedPages, slot_marginals_with_support
from bartops.ope.validate import LoggedData, check_inputs
from bartops.policy.page import EMPTY, CandidateSet, PagePolicy, build_pages

Featurize = Callable[[pd.DataFrame, CandidateSet, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OPEConfig:
    """``params.yaml`` → ``ope:``."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    marginal_samples: int = 100  # Monte-Carlo prefixes for the logging policy's slot marginals
    min_support: int = 10  # a logging marginal resting on fewer sampled prefixes is unresolved
    target_samples: int = 8  # sampled pages per context for a stochastic target (1 if greedy)
    clip: float | None = None  # optional weight cap of IPS and SNIPS
    dr_clip: float | None = 20.0  # weight cap of DR's correction term (see module docs)
    folds: int = 2
    max_pages: int | None = None  # evaluate on a random subset of this many pages (None = all)
    holdout_only: bool = True  # evaluate a bundle only on logs after its training cut (validation_from)

    def __post_init__(self) -> None:
        for name in ("n_boot", "marginal_samples", "target_samples", "folds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ope.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.min_support < 1 or self.min_support > self.marginal_samples:
            raise ValueError(f"ope.min_support must lie in [1, marginal_samples], got {self.min_support!r}")
        if self.max_pages is not None and int(self.max_pages) < 1:
            raise ValueError(f"ope.max_pages must be positive or null, got {self.max_pages!r}")

    @staticmethod
    def from_dict(values: dict | None) -> "OPEConfig":
        values = dict(values or {})
        known = {f.name for f in fields(OPEConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ope parameter(s) {unknown}; known: {sorted(known)}")
        return OPEConfig(**values)


@dataclass(frozen=True)
class LoggingMarginals:
    """The logging policy's marginal probability of each logged card at its slot."""

    probability: np.ndarray
    support: np.ndarray  # sampled prefixes in which the card was available at its slot
    resolved: np.ndarray  # bool: positive and supported by at least min_support prefixes


def logging_marginals(logging: PagePolicy, logs: LoggedPages, candidates: CandidateSet,
                      cfg: OPEConfig) -> LoggingMarginals:
    """The logging policy's slot marginals of the logged cards (Rao-Blackwellised MC, see ope.slate)."""
    p, support = slot_marginals_with_support(logging, logs.contexts, candidates, logs.page, logs.shelf,
                                             logs.position, logs.item_id, logs.explanation,
                                             cfg.marginal_samples, cfg.seed)
    return LoggingMarginals(p, support, (p > 0) & (support >= cfg.min_support))


@dataclass(frozen=True)
class TargetPages:
    """``m`` sampled target pages per logged context, as cards, and their agreement with the logs."""

    m: int
    match: np.ndarray  # per logged row: share of samples whose card at the row's slot is the logged card
    cards: CandidateSet  # every filled target slot over all samples (page = logged page)
    shelf: np.ndarray
    position: np.ndarray


def sample_target_pages(policy: PagePolicy, logs: LoggedPages, candidates: CandidateSet, n_samples: int,
                        seed: int) -> TargetPages:
    """Build the target's pages for the logged contexts (once if greedy, else ``n_samples`` times)."""
    if candidates.n_pages != logs.n_pages:
        raise ValueError(f"candidates describe {candidates.n_pages} pages but the logs have {logs.n_pages}")
    greedy = policy.epsilon_head == 0 and policy.epsilon_fill == 0
    m = 1 if greedy else int(n_samples)
    scores = policy.scorer(logs.contexts, candidates)
    rng = np.random.default_rng([seed, 5])
    S, K = policy.shelves, policy.cards
    inside = (logs.shelf < S) & (logs.position < K)
    match = np.zeros(len(logs))
    pg, it, ex, sh, po = [], [], [], [], []
    for _ in range(m):
        built = build_pages(policy, logs.contexts, candidates, rng, scores=scores)
        at = np.full(len(logs), EMPTY, np.int64)
        at[inside] = built.candidate[logs.page[inside], logs.shelf[inside], logs.position[inside]]
        ok = at != EMPTY
        safe = np.where(ok, at, 0)
        match += ok & (candidates.item_id[safe] == logs.item_id) & (candidates.explanation[safe] == logs.explanation)
        b, s, k = np.nonzero(built.filled)
        c = built.candidate[b, s, k]
        pg.append(b), it.append(candidates.item_id[c]), ex.append(candidates.explanation[c])
        sh.append(s), po.append(k)
    cards = CandidateSet(np.concatenate(pg), np.concatenate(it), np.concatenate(ex), logs.n_pages,
                         np.ones(sum(len(a) for a in pg), bool))
    return TargetPages(m, match / m, cards, np.concatenate(sh), np.concatenate(po))


def _first_row_of_page(logs: LoggedPages) -> np.ndarray:
    first = np.full(logs.n_pages, -1, np.int64)
    first[logs.page[::-1]] = np.arange(len(logs))[::-1]
    return first


def evaluate_policies(
    logs: LoggedPages,
    marginals: LoggingMarginals,
    targets: dict[str, tuple[PagePolicy, CandidateSet] | None],
    cfg: OPEConfig,
    featurize: Featurize | None = None,
    kind_of_explanation: np.ndarray | None = None,
) -> dict:
    """Estimates (IPS, SNIPS and, with ``featurize``, DR) for each target (None = the logging policy
    itself, on-policy), paired differences of the first target against each other one, per-kind
    values per card, and diagnostics (weights, unresolved share).

    ``featurize(contexts, cards, shelf, position)`` gives reward-model inputs; DR's q̂ is an XGBoost
    model cross-fitted over page folds.  ``kind_of_explanation`` maps explanation code → kind label.
    """
    n = len(logs)
    if len(marginals.probability) != n:
        raise ValueError(f"marginals have {len(marginals.probability)} rows but the logs have {n}")
    resolved = marginals.resolved
    p = np.where(resolved, marginals.probability, 1.0)
    stratum = logs.shelf * (int(logs.position.max()) + 1) + logs.position
    first = _first_row_of_page(logs)
    x_logged = None
    if featurize is not None:
        logged_cards = CandidateSet(logs.page, logs.item_id, logs.explanation, logs.n_pages, np.ones(n, bool))
        x_logged = featurize(logs.contexts, logged_cards, logs.shelf, logs.position)
    kinds_row = None if kind_of_explanation is None else np.asarray(kind_of_explanation).astype(str)[logs.explanation]
    data: dict[str, LoggedData] = {}
    diag: dict[str, dict] = {}
    per_kind_parts: dict[str, dict[str, tuple[float, float]]] = {}
    pred_logged = None
    for name, spec in targets.items():
        prediction = expected = None
        if spec is None:  # the logging policy: on-policy, weight 1 everywhere
            q = p.copy()
            if x_logged is not None:
                prediction, expected = np.zeros(n), np.zeros(n)
            if kinds_row is not None:
                per_kind_parts[name] = {k: (float(logs.reward[kinds_row == k].sum()), float((kinds_row == k).sum()))
                                        for k in np.unique(kinds_row)}
            diag[name] = {"policy": "logging (on-policy)", "unresolved_share": 0.0, "match_rate": 1.0}
        else:
            policy, cands = spec
            tp = sample_target_pages(policy, logs, cands, cfg.target_samples, cfg.seed)
            q = np.where(resolved, tp.match, 0.0)
            matched_mass = tp.match.sum()
            diag[name] = {"policy": policy.version, "target_samples": tp.m,
                          "match_rate": float(matched_mass / max(len(tp.cards) / tp.m, 1)),
                          "unresolved_share": float(tp.match[~resolved].sum() / matched_mass) if matched_mass else 0.0}
            dm_kind = None
            if x_logged is not None:
                x_t = featurize(logs.contexts, tp.cards, tp.shelf, tp.position)
                pl, pt = cross_fit(x_logged, logs.reward, logs.page, x_t, first[tp.cards.page], cfg.folds, cfg.seed)
                pred_logged = pl if pred_logged is None else pred_logged
                prediction = pred_logged
                dm_page = np.bincount(tp.cards.page, weights=pt, minlength=logs.n_pages) / tp.m
                expected = np.zeros(n)
                has = first >= 0
                expected[first[has]] = dm_page[has]
                if kind_of_explanation is not None:
                    tk = np.asarray(kind_of_explanation).astype(str)[tp.cards.explanation]
                    dm_kind = {k: (float(pt[tk == k].sum() / tp.m), float((tk == k).sum() / tp.m)) for k in np.unique(tk)}
            if kinds_row is not None:
                w = weights(LoggedData(logs.reward, p, q, logs.page, logs.n_pages), cfg.dr_clip if dm_kind else cfg.clip)
                corr = w * (logs.reward - (prediction if prediction is not None else 0.0))
                parts = {}
                for k in set(np.unique(kinds_row)) | set(dm_kind or {}):
                    mask = kinds_row == k
                    if dm_kind is not None:
                        dm_v, cnt = dm_kind.get(k, (0.0, 0.0))
                        parts[k] = (dm_v + float(corr[mask].sum()), cnt)
                    else:
                        parts[k] = (float((w * logs.reward)[mask].sum()), float(q[mask].sum()))
                per_kind_parts[name] = parts
        data[name] = check_inputs(logs.reward, p, q, logs.page, stratum, prediction, expected)
        cap = cfg.dr_clip if cfg.dr_clip is not None else np.inf
        diag[name].update({"weights": weights(data[name], None),
                           "support_share": min(1.0, float(np.minimum(weights(data[name], None), cap).sum()
                                                           / max(len(tp.cards) / tp.m if spec is not None else n, 1))),
                           "clipped_share": float((weights(data[name], None) > (cfg.dr_clip or np.inf)).mean())})
    ests = [IPS(cfg.clip), SNIPS(cfg.clip)] + ([DR(cfg.dr_clip)] if x_logged is not None else [])
    estimates = {name: evaluate_many(ests, d, cfg.n_boot, cfg.level, cfg.seed) for name, d in data.items()}
    names = list(targets)
    differences = {other: {e.name: paired_difference(e, data[names[0]], data[other], cfg.n_boot, cfg.level,
                                                     cfg.seed) for e in ests} for other in names[1:]}
    per_kind: dict[str, dict[str, float]] = {}
    if per_kind_parts:
        all_kinds = sorted(set().union(*[set(v) for v in per_kind_parts.values()]))
        for k in all_kinds:
            row = {}
            for name, parts in per_kind_parts.items():
                total, cards = parts.get(k, (0.0, 0.0))
                row[name] = total / cards if cards > 0 else 0.0  # streams per shown card of this kind
                row[f"{name}_cards_per_page"] = cards / logs.n_pages
            per_kind[k] = row
    return {"estimates": estimates, "differences": differences, "per_kind": per_kind, "diagnostics": diag,
            "logging": {"resolved_share": float(resolved.mean()),
                        "median_support": float(np.median(marginals.support))}}


def subsample_pages(logs: pd.DataFrame, max_pages: int | None, seed: int) -> pd.DataFrame:
    """A random subset of whole pages (all rows of ``max_pages`` requests), or the logs unchanged."""
    if max_pages is None:
        return logs
    req = logs["request_id"].astype(str).unique()
    if len(req) <= max_pages:
        return logs
    keep = np.random.default_rng([seed, 11]).choice(req, size=int(max_pages), replace=False)
    return logs[logs["request_id"].astype(str).isin(set(keep))].reset_index(drop=True)


def estimate_table(result: dict) -> list[dict]:
    """Rows (policy, estimator, value, ci_low, ci_high, se, ess, max_weight, support) for reports;
    differences carry policy ``candidate - <other>`` and the estimator's own name."""
    rows = []
    for policy, ests in result["estimates"].items():
        for name, e in ests.items():
            rows.append(_row(policy, name, e))
    for other, ests in result["differences"].items():
        for name, e in ests.items():
            rows.append(_row(f"candidate - {other}", name, e))
    return rows


def _row(policy: str, name: str, e: Estimate) -> dict:
    return {"policy": policy, "estimator": name, "value": round(e.value, 5), "ci_low": round(e.ci_low, 5),
            "ci_high": round(e.ci_high, 5), "se": round(e.se, 5), "ess": round(e.ess, 1),
            "max_weight": round(e.max_weight, 2), "support": round(e.support, 4)}
