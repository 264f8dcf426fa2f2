"""Off-policy evaluation reduced over page-aligned partitions: no worker needs the whole log.

Every estimator in ``bartops.ope.estimators`` is statistics → per-page sums → combine.  A partition
(whole pages) computes its per-page statistic sums and weight moments; the driver orders the pages
as the local path does (sorted ``request_id``, the page numbering of ``logged_pages``), and then
bootstraps exactly as ``evaluate_many`` / ``paired_difference`` do (``bootstrap_sums`` on the same
units).  Per-page sums equal the local ones bit for bit (the same rows added in the same order), so
values and intervals agree with the local path to floating-point precision; only the weight
diagnostics (ESS, mean weight) differ in the last bits (sums of partition sums).

Target probabilities that are exact functions of a page (a greedy target's conditional, prefix and
page probabilities, the logged propensities) are computed per partition too
(``partition_prefix_data``), so the partitioned estimate equals the local one on the same logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from bartops.ope.estimators import Estimate, Estimator, difference_from_sums, estimates_from_sums, weight_moments
from bartops.ope.slate import logged_pages, products
from bartops.ope.validate import LoggedData, check_inputs
from bartops.policy.page import CandidateSet, PagePolicy, logged_choice_probabilities


@dataclass(frozen=True)
class PartitionStatistics:
    """One partition's per-page statistic sums (pages sorted by request id) and weight moments."""

    request_id: np.ndarray  # per page
    sums: np.ndarray  # (pages, Σ statistic widths)
    moments: np.ndarray  # (estimators, 5): ``weight_moments`` of each estimator
    widths: tuple[int, ...]


def partition_statistics(estimators: Sequence[Estimator], data: LoggedData, request_id: np.ndarray
                         ) -> PartitionStatistics:
    """Per-page sums of every estimator's statistics; ``data.group`` indexes ``request_id``."""
    request_id = np.asarray(request_id).astype(str)
    if len(request_id) != data.n_groups:
        raise ValueError(f"{len(request_id)} request ids for {data.n_groups} pages")
    if len(np.unique(request_id)) != len(request_id):
        raise ValueError("request ids of a partition must be distinct (one per page)")
    stats = [e.group_statistics(data) for e in estimators]
    sums = np.hstack(stats)
    order = np.argsort(request_id, kind="stable")
    moments = np.vstack([weight_moments(data, getattr(e, "clip", None)) for e in estimators])
    return PartitionStatistics(request_id[order], sums[order], moments, tuple(s.shape[1] for s in stats))


def reduce_partitions(parts: Sequence[PartitionStatistics]) -> tuple[np.ndarray, np.ndarray]:
    """(per-page sums of all partitions in sorted request-id order, reduced weight moments).

    Raises ValueError when a page appears in two partitions (partitions must hold whole pages).
    """
    if not parts:
        raise ValueError("no partitions to reduce: nothing to evaluate")
    if len({p.widths for p in parts}) != 1:
        raise ValueError("partitions were computed with different estimators (statistic widths differ)")
    ids = np.concatenate([p.request_id for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise ValueError(f"page {ids[1:][ids[1:] == ids[:-1]][0]!r} is split across partitions: partitions "
                         "must hold whole page views")
    sums = np.vstack([p.sums for p in parts])[order]
    m = np.stack([p.moments for p in parts])
    moments = np.concatenate([m[:, :, :3].sum(axis=0), m[:, :, 3:4].max(axis=0), m[:, :, 4:].sum(axis=0)], axis=1)
    return sums, moments


def evaluate_many_partitioned(estimators: Sequence[Estimator], parts: Sequence[PartitionStatistics],
                              n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """``evaluate_many`` from per-partition statistics (same values and bootstrap resamples)."""
    sums, moments = reduce_partitions(parts)
    return estimates_from_sums(estimators, sums, parts[0].widths, moments, n_boot, level, seed)


def paired_difference_partitioned(estimator: Estimator, candidate: Sequence[PartitionStatistics],
                                  production: Sequence[PartitionStatistics], n_boot: int = 1000,
                                  level: float = 0.95, seed: int = 0) -> Estimate:
    """``paired_difference`` (candidate − production, same page resamples) from per-partition
    statistics of one estimator on the same partitions."""
    if len(candidate) != len(production) or any(not np.array_equal(c.request_id, p.request_id)
                                                 for c, p in zip(candidate, production)):
        raise ValueError("paired comparison needs both policies' statistics on the same partitions and pages")
    joined = [PartitionStatistics(c.request_id, np.hstack([c.sums, p.sums]), c.moments, c.widths + p.widths)
              for c, p in zip(candidate, production)]
    sums, moments = reduce_partitions(joined)
    return difference_from_sums(estimator, sums, candidate[0].widths[0], moments[0], n_boot, level, seed)


# ---------------------------------------------------------------------- per-partition inputs
def slot_strata(shelf: np.ndarray, position: np.ndarray, cards: int) -> np.ndarray:
    """Global stratum code of a slot (the same numbering in every partition)."""
    return np.asarray(shelf, np.int64) * int(cards) + np.asarray(position, np.int64)


def partition_prefix_data(logs: pd.DataFrame, explanations: pd.DataFrame, target: PagePolicy,
                          candidates: Callable[[pd.DataFrame], CandidateSet], strata: np.ndarray
                          ) -> tuple[LoggedData, np.ndarray]:
    """(LoggedData, request ids) of one partition with prefix (cascade) weights: the target's exact
    probability of the logged prefix over the logging policy's (the logged propensities' product).

    ``candidates(contexts)`` gives the target's candidate pairs of the pages; ``strata`` is the sorted
    list of global slot codes (``slot_strata``) present in the whole log, so SNIPS's per-slot columns
    line up across partitions.
    """
    lp = logged_pages(logs, explanations)
    cond = logged_choice_probabilities(target, lp.contexts, candidates(lp.contexts), lp.page, lp.shelf,
                                       lp.position, lp.item_id, lp.explanation)
    q, _ = products(cond, lp, target.shelves, target.cards)
    p, _ = products(lp.propensity, lp, target.shelves, target.cards)
    d = check_inputs(lp.reward, p, q, lp.page)
    code = slot_strata(lp.shelf, lp.position, target.cards)
    stratum = np.searchsorted(np.asarray(strata), code)
    if (stratum >= len(strata)).any() or not np.array_equal(np.asarray(strata)[np.minimum(stratum, len(strata) - 1)], code):
        raise ValueError("strata must list every slot code of the logs (slot_strata of the whole log)")
    return LoggedData(d.reward, d.propensity, d.target, d.group, d.n_groups, stratum), lp.request_id
