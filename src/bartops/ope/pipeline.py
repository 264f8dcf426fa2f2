"""Evaluate candidate page policies (and production) on impression logs: the gate's evidence.

Model and assumptions (position-based model, as in click-model OPE: Li et al. 2018, "Offline
evaluation of ranking policies with click models"):

A1. A card's expected reward is θ(context, card) · κ(slot): its appeal times the examination of its
    slot (shelf, position), independent of the other cards of the page.  True of the simulator
    (relevance × examination); the value of a page is Σ_cards θ·κ.
A2. Support: every card the target can show, the logging policy shows somewhere with positive
    probability (true of ε-greedy logging: any pair can head a shelf by exploration).
A3. κ is known up to a constant: ``estimate_examination`` takes it from a reward model fitted on the
    logs (partial dependence on the slot; a logistic base in log(1 + slot) under the trees), reported
    in the diagnostics.

Exposure: E_π(card) = Σ_slots π(card at slot)·κ(slot), the card's expected examination under policy π.
Under A1 the target's value is Σ_cards θ·E_t, and a logged reward r at slot a has E[r] = θ·κ(a), so
the weight w = E_t(card)/E₀(card) makes Σ_rows w·r unbiased for it.  Pooling a card's examination
over all slots is what makes this workable for slates: a card the target shows at (2, 3) is checked
by every logged page that showed it anywhere, not only at (2, 3) (on the simulator at 100k
impressions, a "very different" candidate's cards match a logged card at the same slot 1 % of the
time, somewhere on the page 25 %).  E₀ is a Rao-Blackwellised Monte-Carlo average of exact step
probabilities with defensive importance sampling of the shelf heads (``ope.slate``).  Every page has
its own draws, so the Monte-Carlo error is independent across pages and part of each page's term: the
page bootstrap's variance includes it (draws shared by a user's identical repeat visits made 100k-
impression intervals far too narrow).  The error still biases 1/E₀ upward, so use enough samples
(``ope.marginal_samples``; measured in bench/ope_accuracy).

Estimators (value = expected streams per page view; pages are the bootstrap units):

- ``ips``   Σ_rows w·r per page.  Unbiased under A1–A3; heavy-tailed when E₀ is small.
- ``snips`` M̄ · Σ w·r / Σ w·κ(slot), M = the target's total examination per page (the expectation of
  Σ w·κ).  Consistent, bias O(1/n), far lower variance.
- ``dr``    direct method on the target's own pages (every filled slot scored by a cross-fitted
  reward model q̂) plus the correction Σ_rows w·(r − q̂(logged card, its slot)).  Unbiased if A1–A3
  hold *or* q̂ is exact.  The correction's weights are capped at ``dr_clip``; capping biases only by
  Σ(w − cap)₊·E[r − q̂], small when q̂ is, and the capped share is reported (``clipped_share``).
  ``ope.dr_interval: joined`` widens the interval to hold the uncapped DR's too (``ope.estimators.DR``).

Support share: Σ min(w, dr_clip)·κ(slot) / M, the share of the target's examination the logs check
at moderate weights (its expectation is 1 without the cap); outside it DR is the model's extrapolation.

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

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from bartops.config import OPEConfig
from bartops.ope.estimators import (DR, IPS, SNIPS, Estimate, Estimator, PartitionStatistics,
                                    evaluate_many_partitioned, paired_difference_partitioned, partition_statistics,
                                    weights)
from bartops.ope.kinds import KindLift, KindPageSums, kind_lifts, logging_kind_sums, per_kind_table, target_kind_sums
from bartops.ope.reward import cross_fit
from bartops.ope.slate import LoggedPages, examination_marginals
from bartops.ope.validate import LoggedData, check_inputs
from bartops.policy.page import CandidateSet, PagePolicy, locate_cards, build_pages
from bartops.reward.model import LogisticModel

Featurize = Callable[[pd.DataFrame, CandidateSet, np.ndarray, np.ndarray], np.ndarray]




@dataclass(frozen=True)
class LoggingMarginals:
    """The logging policy's expected examination of each logged card, E₀(c) = Σ_slots π₀(c, slot)·κ(slot)."""

    examination: np.ndarray  # (S, K) examination profile κ, max 1
    exposure: np.ndarray  # per logged row: E₀ of its card (the IPS denominator), > 0 under support
    candidates: CandidateSet | None = None  # the logging policy's (log-time) candidate sets of the logged pages


def log_time_support(marginals: LoggingMarginals, cards: CandidateSet, examination: np.ndarray
                     ) -> tuple[float, float]:
    """(Σ κ over a target's cards that the logging policy could show (pairs of its log-time candidate
    sets: under ε-greedy each has E₀ > 0), Σ κ over all its cards): their ratio is the log-time
    support; all of it is inside without the sets."""
    total = float(examination.sum())
    if marginals.candidates is None or not len(cards):
        return total, total
    inside = locate_cards(marginals.candidates, cards.page, cards.explanation, cards.item_id) >= 0
    return float((examination * inside).sum()), total


EXAMINATION_ROWS = 200_000  # logged cards (at most) the examination profile's model is fitted on


def estimate_examination(logs: LoggedPages, featurize: Featurize, shelves: int, cards: int, seed: int = 0,
                         max_rows: int = EXAMINATION_ROWS, probe_cards: int = 2_000) -> np.ndarray:
    """Examination profile κ(shelf, position), max 1, from the logs: a stream model fitted on (a sample
    of) the logged cards, then its mean prediction for ``probe_cards`` logged cards moved to each slot
    (partial dependence).  Under the position-based model E[r] = θ(card)·κ(slot) this recovers κ.

    The model is stacked: a logistic regression on the card's inputs plus log(1 + shelf) and
    log(1 + position) gives the log-odds the trees start from.  Examination decays multiplicatively,
    so the regression carries the slot's effect into the rarely streamed bottom of the page, where
    trees alone (few streams, tiny Hessians) stay near their neighbours' values and κ came out too flat
    (docs/ope-method.md#the-examination-profile).
    """
    import xgboost as xgb

    rng = np.random.default_rng([seed, 13])
    n = len(logs)
    fit = np.sort(rng.choice(n, size=min(n, max_rows), replace=False))
    cards_fit = CandidateSet(logs.page[fit], logs.item_id[fit], logs.explanation[fit], logs.n_pages,
                             np.ones(len(fit), bool))
    x = np.asarray(featurize(logs.contexts, cards_fit, logs.shelf[fit], logs.position[fit]), np.float32)
    y = logs.reward[fit]
    if len(np.unique(y)) < 2:
        return np.ones((shelves, cards))
    width = x.shape[1]  # the regression's inputs: the card's, then its slot (as log(1 + ·): log_columns)
    x_base = np.column_stack([x, logs.shelf[fit], logs.position[fit]])
    base = LogisticModel.fit(x_base, y, seed=seed, log_columns=(width, width + 1))
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 5, "eta": 0.15,
              "min_child_weight": 5.0, "nthread": 2, "seed": seed, "verbosity": 0}
    margin = base.decision(x_base)
    booster = xgb.train(params, xgb.DMatrix(x, label=y, base_margin=margin), num_boost_round=80)
    probe = rng.choice(n, size=min(n, probe_cards), replace=False)
    pc = CandidateSet(logs.page[probe], logs.item_id[probe], logs.explanation[probe], logs.n_pages,
                      np.ones(len(probe), bool))
    n, slots = len(probe), shelves * cards
    moved = CandidateSet(np.tile(pc.page, slots), np.tile(pc.item_id, slots), np.tile(pc.explanation, slots),
                         logs.n_pages, np.ones(n * slots, bool))  # every probe card at every slot, one call
    shelf, position = np.repeat(np.arange(shelves), cards * n), np.tile(np.repeat(np.arange(cards), n), shelves)
    xs = np.asarray(featurize(logs.contexts, moved, shelf, position), np.float32)
    pred = booster.inplace_predict(xs, base_margin=base.decision(np.column_stack([xs, shelf, position])))
    kappa = pred.reshape(slots, n).mean(axis=1).reshape(shelves, cards)
    return kappa / kappa.max()


def logging_marginals(logging: PagePolicy, logs: LoggedPages, candidates: CandidateSet, cfg: OPEConfig,
                      examination: np.ndarray | None = None) -> LoggingMarginals:
    """E₀ of each logged card under the logging policy (Rao-Blackwellised MC, ``ope.slate``), for the
    examination profile ``examination`` (from ``estimate_examination``; None = every slot alike)."""
    kappa = np.ones((logging.shelves, logging.cards)) if examination is None else np.asarray(examination, float)
    idx = locate_cards(candidates, logs.page, logs.explanation, logs.item_id)
    logged = np.zeros(len(candidates), bool)
    logged[idx[idx >= 0]] = True
    e0 = examination_marginals(logging, logs.contexts, candidates, kappa, cfg.marginal_samples, cfg.seed,
                               needed=logged)
    exposure = np.where(idx >= 0, e0[np.maximum(idx, 0)], 0.0)
    return LoggingMarginals(kappa, exposure, candidates)


@dataclass(frozen=True)
class TargetPages:
    """``m`` sampled target pages per logged context, as cards, and each logged card's exposure on them."""

    m: int
    exposure: np.ndarray  # per logged row: E_t of its card, mean over samples of κ(slot the target gives it)
    cards: CandidateSet  # every filled target slot over all samples (page = logged page)
    shelf: np.ndarray
    position: np.ndarray
    logged_slot: np.ndarray  # (m, logged rows): the slot (shelf·cards + position) sample i gives the row's card, −1 none

    def with_examination(self, examination: np.ndarray) -> "TargetPages":
        """The same pages with the logged cards' exposures under the examination profile ``examination``."""
        kappa = np.asarray(examination, float).ravel()
        exposure = np.zeros(self.logged_slot.shape[1])
        for slot in self.logged_slot:
            exposure += np.where(slot >= 0, kappa[np.maximum(slot, 0)], 0.0)
        return replace(self, exposure=exposure / self.m)


def sample_target_pages(policy: PagePolicy, logs: LoggedPages, candidates: CandidateSet, n_samples: int,
                        seed: int, examination: np.ndarray | None = None) -> TargetPages:
    """Build the target's pages for the logged contexts (once if greedy, else ``n_samples`` times)."""
    if candidates.n_pages != logs.n_pages:
        raise ValueError(f"candidates describe {candidates.n_pages} pages but the logs have {logs.n_pages}")
    greedy = policy.epsilon_head == 0 and policy.epsilon_fill == 0
    m = 1 if greedy else int(n_samples)
    kappa = np.ones((policy.shelves, policy.cards)) if examination is None else np.asarray(examination, float)
    scores = policy.scorer(logs.contexts, candidates)
    rng = np.random.default_rng([seed, 5])
    logged = pd.MultiIndex.from_arrays([logs.page, logs.explanation, logs.item_id])
    logged_slot = np.full((m, len(logs)), -1, np.int64)
    pg, it, ex, sh, po = [], [], [], [], []
    for i in range(m):
        built = build_pages(policy, logs.contexts, candidates, rng, scores=scores)
        b, s, k = np.nonzero(built.filled)
        c = built.candidate[b, s, k]
        at = pd.MultiIndex.from_arrays([b, candidates.explanation[c], candidates.item_id[c]]).get_indexer(logged)
        logged_slot[i] = np.where(at >= 0, s[at] * policy.cards + k[at], -1)
        pg.append(b), it.append(candidates.item_id[c]), ex.append(candidates.explanation[c])
        sh.append(s), po.append(k)
    cards = CandidateSet(np.concatenate(pg), np.concatenate(it), np.concatenate(ex), logs.n_pages,
                         np.ones(sum(len(a) for a in pg), bool))
    return TargetPages(m, np.zeros(len(logs)), cards, np.concatenate(sh), np.concatenate(po),
                       logged_slot).with_examination(kappa)


def first_row_of_page(logs: LoggedPages) -> np.ndarray:
    """Per page, the index of its first logged row (−1 for a page without rows)."""
    first = np.full(logs.n_pages, -1, np.int64)
    first[logs.page[::-1]] = np.arange(len(logs))[::-1]
    return first


def on_first_rows(per_page: np.ndarray, first: np.ndarray, n_rows: int) -> np.ndarray:
    """A per-page value as a per-row column: on each page's first row, 0 elsewhere (so group sums give it back)."""
    out = np.zeros(n_rows)
    has = first >= 0
    out[first[has]] = per_page[has]
    return out


def logged_row_terms(logs: LoggedPages, exposure: np.ndarray, kappa: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per logged row, whatever the target: κ of its slot (0 outside the profile), whether its card has
    E₀ > 0 (support), and the weights' denominator E₀ (capped at 1; 1 where unsupported, weight 0 there)."""
    inside = (logs.shelf < kappa.shape[0]) & (logs.position < kappa.shape[1])
    slot_exam = np.where(inside, kappa[np.minimum(logs.shelf, kappa.shape[0] - 1),
                                       np.minimum(logs.position, kappa.shape[1] - 1)], 0.0)
    supported = exposure > 0
    return slot_exam, supported, np.where(supported, np.minimum(exposure, 1.0), 1.0)


@dataclass(frozen=True)
class TargetDiagnostics:
    """How well the logs check one evaluated policy (module docs: weights, support share)."""

    policy: str  # the policy's version, or "logging (on-policy)"
    weights: np.ndarray  # per logged row: E_t/E₀ (0 where the target cannot show the logged card)
    support_share: float  # share of the target's examination the logs check at moderate weights
    clipped_share: float  # share of rows whose weight exceeds dr_clip
    cards_per_page: float  # cards the target shows per page
    unsupported_share: float  # share of the target's exposure on cards the logging policy could not show
    log_time_support: float  # share of its examination on pairs the logger could show when it logged
    target_samples: int | None = None  # sampled pages per context (None for the on-policy logging policy)

    @property
    def ess(self) -> float:
        """(Σw)²/Σw² over the logged rows."""
        w2 = float((self.weights ** 2).sum())
        return float(self.weights.sum() ** 2 / w2) if w2 > 0 else 0.0


@dataclass(frozen=True)
class LoggingSummary:
    """What the evaluation learnt about the logging policy: κ and the logged cards' support."""

    examination: list[list[float]]  # κ per (shelf, position), rounded to 4 decimals
    supported_share: float  # share of logged rows inside the support (E₀ > 0)
    min_exposure: float  # the smallest E₀ of a supported logged card


@dataclass(frozen=True)
class EstimateRow:
    """One line of the OPE table: a policy's (or a paired difference's) estimate by one estimator."""

    policy: str  # "candidate", "production", or "candidate - production" for the paired difference
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    ess: float
    max_weight: float
    support: float

    @staticmethod
    def of(policy: str, estimator: str, e: Estimate) -> "EstimateRow":
        return EstimateRow(policy, estimator, round(e.value, 5), round(e.ci_low, 5), round(e.ci_high, 5),
                           round(e.se, 5), round(e.ess, 1), round(e.max_weight, 2), round(e.support, 4))


@dataclass(frozen=True)
class PolicyEvaluation:
    """``evaluate_policies``' result, the same from the local and the partitioned (Dask) path.

    ``estimates``: policy → estimator → Estimate; ``differences``: other policy → estimator → the
    paired Estimate of the first target minus it; ``per_kind``: kind → streams per card and cards per
    page of each policy (``ope.kinds.per_kind_table``); ``kind_lifts``: other policy → kind → KindLift.
    """

    estimates: dict[str, dict[str, Estimate]]
    differences: dict[str, dict[str, Estimate]]
    per_kind: dict[str, dict[str, float]]
    kind_lifts: dict[str, dict[str, KindLift]]
    diagnostics: dict[str, TargetDiagnostics]
    logging: LoggingSummary

    def table(self) -> list[EstimateRow]:
        """Every estimate and paired difference as rows (a difference's policy is ``candidate - <other>``)."""
        rows = [EstimateRow.of(policy, name, e) for policy, ests in self.estimates.items() for name, e in ests.items()]
        return rows + [EstimateRow.of(f"candidate - {other}", name, e) for other, ests in self.differences.items()
                       for name, e in ests.items()]


@dataclass(frozen=True)
class TargetInputs:
    """What a target's estimates need that does not depend on κ: its sampled pages (exposures under
    κ = 1) and DR's cross-fitted prediction of each of its cards (None without a reward model)."""

    pages: TargetPages
    predicted: np.ndarray | None


@dataclass(frozen=True)
class PreparedTargets:
    """The κ-free part of ``evaluate_policies``: reward-model inputs of the logged cards, DR's
    cross-fitted prediction of each logged card, and each target's ``TargetInputs`` (None for the
    logging policy).  ``prepare_targets`` builds it."""

    logged_rows: np.ndarray | None
    predicted_logged: np.ndarray | None
    targets: dict[str, TargetInputs | None]


def prepare_targets(logs: LoggedPages, targets: dict[str, tuple[PagePolicy, CandidateSet] | None], cfg: OPEConfig,
                    featurize: Featurize | None = None) -> PreparedTargets:
    """Each target's pages and DR's predictions: everything ``evaluate_policies`` needs but the logging
    policy's exposures and κ, so it can run while those are estimated (``bartops.gate.evaluate``).
    DR's fold models are fitted once and predict every target's cards."""
    pages = {name: sample_target_pages(spec[0], logs, spec[1], cfg.target_samples, cfg.seed)
             for name, spec in targets.items() if spec is not None}
    x_logged = pred_logged = None
    predicted: dict[str, np.ndarray | None] = {name: None for name in pages}
    if featurize is not None:
        logged_cards = CandidateSet(logs.page, logs.item_id, logs.explanation, logs.n_pages, np.ones(len(logs), bool))
        x_logged = featurize(logs.contexts, logged_cards, logs.shelf, logs.position)
        if pages:
            first = first_row_of_page(logs)
            x_t = np.concatenate([featurize(logs.contexts, tp.cards, tp.shelf, tp.position) for tp in pages.values()])
            rows = np.concatenate([first[tp.cards.page] for tp in pages.values()])
            pred_logged, pred_t = cross_fit(x_logged, logs.reward, logs.page, x_t, rows, cfg.folds, cfg.seed)
            ends = np.cumsum([len(tp.cards) for tp in pages.values()])
            predicted = dict(zip(pages, np.split(pred_t, ends[:-1])))
    return PreparedTargets(x_logged, pred_logged, {name: None if spec is None else
                                                   TargetInputs(pages[name], predicted[name])
                                                   for name, spec in targets.items()})


def estimators_for(cfg: OPEConfig, dr: bool) -> list[Estimator]:
    """The estimators of the gate's evaluation: IPS, SNIPS and, with a reward model, DR."""
    return [IPS(cfg.clip), SNIPS(cfg.clip)] + ([DR(cfg.dr_clip, cfg.dr_interval == "joined")] if dr else [])


@dataclass(frozen=True)
class PartitionResult:
    """The evaluation of one page-aligned partition of the logs (the whole log is one partition):
    per target its per-page statistic sums, its weights, its diagnostic sums and per-kind page sums,
    which ``reduce_evaluation`` adds up."""

    rows: int
    pages: int
    statistics: dict[str, PartitionStatistics]
    weights: dict[str, np.ndarray]  # unclipped weights per row (the decision's histogram and ESS)
    sums: dict[str, dict[str, float]]  # per target: diagnostic numerators and denominators
    per_kind: dict[str, KindPageSums]  # per target: per-page sums by kind (pages in request-id order)
    kind_rows: np.ndarray | None  # logged rows of each kind (None without kinds)
    kind_streams: np.ndarray | None  # logged streams of each kind
    supported: int
    min_exposure: float  # among supported rows (inf if none)
    with_dr: bool  # whether DR's statistics follow IPS's and SNIPS's


def evaluate_partition(logs: LoggedPages, marginals: LoggingMarginals, targets: dict[str, TargetInputs | None],
                       cfg: OPEConfig, predicted_logged: np.ndarray | None = None,
                       kind_code: np.ndarray | None = None, n_kinds: int = 0) -> PartitionResult:
    """Every target's estimator inputs on these pages (None = the logging policy, on-policy), as per-page
    sums.  ``targets``' pages carry the exposures under ``marginals.examination``; ``predicted_logged``
    and each target's ``predicted`` are DR's cross-fitted predictions (None: no DR); ``kind_code`` maps
    explanation code → kind number (None: no per-kind sums)."""
    n = len(logs)
    if len(marginals.exposure) != n:
        raise ValueError(f"marginals have {len(marginals.exposure)} rows but the logs have {n}")
    kappa = marginals.examination
    slot_exam, supported, p = logged_row_terms(logs, marginals.exposure, kappa)
    first = first_row_of_page(logs)
    row_kind = None if kind_code is None else kind_code[logs.explanation]
    cap = cfg.dr_clip if cfg.dr_clip is not None else np.inf
    ests = estimators_for(cfg, predicted_logged is not None)
    stats, w_out, sums, per_kind = {}, {}, {}, {}
    for name, inputs in targets.items():
        prediction = expected = None
        if inputs is None:  # the logging policy, on-policy: weight 1 everywhere
            q = p.copy()
            target_mass = np.bincount(logs.page, weights=slot_exam, minlength=logs.n_pages)
            if predicted_logged is not None:
                prediction, expected = np.zeros(n), np.zeros(n)
            if row_kind is not None:
                per_kind[name] = logging_kind_sums(logs.page, row_kind, logs.reward, logs.n_pages, n_kinds)
            sums[name] = {"shown": float(n)}
        else:
            tp, pt = inputs.pages, inputs.predicted
            q = np.where(supported, tp.exposure, 0.0)
            t_exam = kappa[tp.shelf, tp.position]
            target_mass = np.bincount(tp.cards.page, weights=t_exam, minlength=logs.n_pages) / tp.m
            inside, total = log_time_support(marginals, tp.cards, t_exam)
            sums[name] = {"shown": len(tp.cards) / tp.m, "m": float(tp.m), "exposure": float(tp.exposure.sum()),
                          "unsupported": float(tp.exposure[~supported].sum()), "exam_inside": inside, "exam": total}
            if predicted_logged is not None:
                prediction = predicted_logged
                dm_page = np.bincount(tp.cards.page, weights=pt, minlength=logs.n_pages) / tp.m
                expected = on_first_rows(dm_page, first, n)
            if row_kind is not None:  # the corrections' weights are capped at dr_clip with a DM, else at clip
                clip = cfg.clip if pt is None or not len(pt) else cfg.dr_clip
                w = weights(LoggedData(logs.reward, p, q, logs.page, logs.n_pages), clip)
                corr = w * (logs.reward - (prediction if prediction is not None else 0.0))
                per_kind[name] = target_kind_sums(logs.page, row_kind, corr, tp.cards.page,
                                                  kind_code[tp.cards.explanation], pt, tp.m, logs.n_pages, n_kinds)
        d = check_inputs(logs.reward, p, q, logs.page, None, prediction, expected, examination=slot_exam,
                         target_mass=on_first_rows(target_mass, first, n))
        stats[name] = partition_statistics(ests, d, logs.request_id)
        w_all = weights(d, None)
        w_out[name] = w_all
        sums[name].update(covered=float((np.minimum(w_all, cap) * slot_exam).sum()), mass=float(target_mass.sum()),
                          clipped=float((w_all > cap).sum()))
    kind_rows = None if row_kind is None else np.bincount(row_kind, minlength=n_kinds)
    kind_streams = None if row_kind is None else np.bincount(row_kind, weights=logs.reward, minlength=n_kinds)
    min_exposure = float(marginals.exposure[supported].min()) if supported.any() else np.inf
    return PartitionResult(n, logs.n_pages, stats, w_out, sums, per_kind, kind_rows, kind_streams,
                           int(supported.sum()), min_exposure, predicted_logged is not None)


def reduce_evaluation(results: list[PartitionResult], versions: dict[str, str | None], cfg: OPEConfig,
                      kappa: np.ndarray, kind_names: list[str] | None = None) -> PolicyEvaluation:
    """The evaluation of the whole log from its partitions' results: estimates, paired differences of
    the first target against each other one, per-kind values and lifts, diagnostics.  ``versions``:
    target name → policy version (None = the logging policy)."""
    names = list(versions)
    first = results[0]
    ests = estimators_for(cfg, first.with_dr)
    n = sum(r.rows for r in results)
    n_pages = sum(r.pages for r in results)
    estimates = {name: evaluate_many_partitioned(ests, [r.statistics[name] for r in results], cfg.n_boot, cfg.level,
                                                 cfg.seed) for name in names}
    differences = {other: {e.name: paired_difference_partitioned(
        e, [r.statistics[names[0]].of_estimator(i) for r in results],
        [r.statistics[other].of_estimator(i) for r in results], cfg.n_boot, cfg.level, cfg.seed)
        for i, e in enumerate(ests)} for other in names[1:]}
    diag: dict[str, TargetDiagnostics] = {}
    for name, version in versions.items():
        s = {k: sum(r.sums[name][k] for r in results) for k in first.sums[name]}
        common = {"weights": np.concatenate([r.weights[name] for r in results]),
                  "support_share": min(1.0, s["covered"] / max(s["mass"], 1e-300)),
                  "clipped_share": float(s["clipped"] / n), "cards_per_page": s["shown"] / n_pages}
        if version is None:
            diag[name] = TargetDiagnostics("logging (on-policy)", unsupported_share=0.0, log_time_support=1.0,
                                           **common)
        else:
            diag[name] = TargetDiagnostics(version, unsupported_share=float(s["unsupported"] / max(s["exposure"], 1e-300)),
                                           log_time_support=float(s["exam_inside"] / max(s["exam"], 1e-300))
                                           if s["exam"] > 0 else 1.0, target_samples=int(first.sums[name]["m"]),
                                           **common)
    per_kind, lifts = {}, {}
    if kind_names is not None:  # the per-kind page sums of all partitions in request-id order, as one log
        order = np.argsort(np.concatenate([r.statistics[names[0]].request_id for r in results]), kind="stable")
        kind_sums = {name: KindPageSums(np.vstack([r.per_kind[name].streams for r in results])[order],
                                        np.vstack([r.per_kind[name].cards for r in results])[order]) for name in names}
        per_kind = per_kind_table(kind_sums, kind_names, sum(r.kind_rows for r in results))
        logged_streams = sum(r.kind_streams for r in results)
        lifts = {other: kind_lifts(kind_sums[names[0]], kind_sums[other], kind_names, logged_streams, cfg.n_boot,
                                   cfg.level, cfg.seed) for other in names[1:]}
    supported = sum(r.supported for r in results)
    min_exposure = min(r.min_exposure for r in results)
    return PolicyEvaluation(estimates, differences, per_kind, lifts, diag,
                            LoggingSummary(np.round(kappa, 4).tolist(), float(supported / n),
                                           float(min_exposure) if supported else 0.0))


def evaluate_policies(
    logs: LoggedPages,
    marginals: LoggingMarginals,
    targets: dict[str, tuple[PagePolicy, CandidateSet] | None],
    cfg: OPEConfig,
    featurize: Featurize | None = None,
    kind_of_explanation: np.ndarray | None = None,
    prepared: PreparedTargets | None = None,
) -> PolicyEvaluation:
    """Estimates (IPS, SNIPS and, with ``featurize``, DR) for each target (None = the logging policy
    itself, on-policy), paired differences of the first target against each other one, per-kind
    values per card, and diagnostics (weights, support share): ``evaluate_partition`` of the whole
    log, reduced.

    Weights are exposure ratios E_t(card)/E₀(card) (module docs).  ``featurize(contexts, cards, shelf,
    position)`` gives reward-model inputs; DR's q̂ is an XGBoost model cross-fitted over page folds.
    ``kind_of_explanation`` maps explanation code → kind label.  ``prepared``: ``prepare_targets`` of
    the same arguments, if it ran already (else it runs here).
    """
    if prepared is None:
        prepared = prepare_targets(logs, targets, cfg, featurize)
    kappa = marginals.examination
    inputs = {name: None if t is None else replace(t, pages=t.pages.with_examination(kappa))
              for name, t in prepared.targets.items()}
    kind_names, kind_code = (None, None) if kind_of_explanation is None else \
        np.unique(np.asarray(kind_of_explanation).astype(str), return_inverse=True)
    result = evaluate_partition(logs, marginals, inputs, cfg, prepared.predicted_logged, kind_code,
                                0 if kind_names is None else len(kind_names))
    versions = {name: None if spec is None else spec[0].version for name, spec in targets.items()}
    return reduce_evaluation([result], versions, cfg, kappa, None if kind_names is None else list(kind_names))


def subsample_pages(logs: pd.DataFrame, max_pages: int | None, seed: int) -> pd.DataFrame:
    """A random subset of whole pages (all rows of ``max_pages`` requests), or the logs unchanged."""
    if max_pages is None:
        return logs
    req = logs["request_id"].astype(str).unique()
    if len(req) <= max_pages:
        return logs
    keep = np.random.default_rng([seed, 11]).choice(req, size=int(max_pages), replace=False)
    return logs[logs["request_id"].astype(str).isin(set(keep))].reset_index(drop=True)
