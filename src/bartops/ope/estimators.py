"""Off-policy estimators over logged actions: IPS, SNIPS, DR, with a vectorised page bootstrap.

All estimators share one interface (as in Open Bandit Pipeline's ``obp.ope``): a small frozen
dataclass with ``statistics(data) -> (n, k)`` per-row columns and ``combine(sums, n_groups)``
mapping column sums to a value.  Because every estimator is a function of column sums, the
bootstrap draws multinomial counts of groups (pages) once and evaluates every estimator — and the
paired difference candidate − production — on the same resamples with one matrix product.
``variants(sums, n_groups)`` are the values whose percentile intervals the reported interval joins:
the value alone, except for a capped DR with ``joined``, whose interval also holds the uncapped DR's.

The value is per group: with pages as groups and cards as rows it is the expected reward per page
(streams per page view).  Weights are ``target / propensity``; which probabilities are passed
(per-card marginal, page, prefix) is the caller's choice, see ``bartops.ope.slate``.
Logs split into page-aligned partitions reduce exactly (``partition_statistics`` per partition, then
``evaluate_many_partitioned``): the local path is the same code on one partition.
Unbiasedness needs ``propensity > 0`` wherever the target has mass (support) and, for DR, holds
whatever the reward model, provided ``expected`` is the model's exact expectation under the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import numpy as np

from bartops.ope.validate import LoggedData, check_bootstrap, check_clip, check_inputs, check_same_logs

# Above this many independent units (pages, or rows of unpaged logs) the bootstrap resamples random
# equal blocks of them: 20,000 iid block sums give the same interval to within its own Monte-Carlo
# noise (bench.ope_rows) at a tenth of the cost of 200,000 (1M unpaged rows, 1,000 resamples).
MAX_BOOTSTRAP_UNITS = 20_000
_CELLS_PER_CHUNK = 5_000_000  # resample counts built at a time (40 MB of float64)


@dataclass(frozen=True)
class Estimate:
    """A value with its percentile bootstrap interval and weight diagnostics."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float  # bootstrap standard deviation
    level: float
    n_rows: int
    n_groups: int
    ess: float  # (Σw)² / Σw² over rows
    max_weight: float
    support: float  # share of rows whose logged action the target can take (w > 0)
    mean_weight: float  # estimates the target's probability mass inside the logging support
    n_boot: int
    seed: int
    clip: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Estimator(Protocol):
    name: str

    def statistics(self, d: LoggedData) -> np.ndarray: ...

    def group_statistics(self, d: LoggedData) -> np.ndarray: ...

    def combine(self, sums: np.ndarray, n_groups: int) -> np.ndarray: ...

    def variants(self, sums: np.ndarray, n_groups: int) -> np.ndarray: ...


class _OneVariant:
    """``variants``: the value alone (its interval is the value's percentile interval)."""

    def variants(self, sums: np.ndarray, n_groups: int) -> np.ndarray:
        return self.combine(sums, n_groups)[..., None]


class _PerRowStatistics(_OneVariant):
    """``group_statistics`` as the per-group sums of the per-row ``statistics``."""

    def group_statistics(self, d: LoggedData) -> np.ndarray:
        return group_sums(self.statistics(d), d.group, d.n_groups)


def weights(d: LoggedData, clip: float | None = None) -> np.ndarray:
    """Importance weights target/propensity, optionally clipped at ``clip``."""
    w = d.target / d.propensity
    return w if clip is None else np.minimum(w, clip)


@dataclass(frozen=True)
class IPS(_PerRowStatistics):
    """Inverse propensity scoring: Σ w·r / n_groups.  Unbiased under support (clip=None)."""

    clip: float | None = None
    name: str = "ips"

    def statistics(self, d: LoggedData) -> np.ndarray:
        return (weights(d, self.clip) * d.reward)[:, None]

    def combine(self, sums: np.ndarray, n_groups: int) -> np.ndarray:
        return sums[..., 0] / n_groups


@dataclass(frozen=True)
class SNIPS(_OneVariant):
    """Self-normalised IPS, per stratum: Σ_s (n_s / n_groups) · Σ_s w·r / Σ_s w.

    With slots as strata each slot's weights are normalised to mean 1 (their expectation under
    support), which removes most of the variance from weight noise at a bias of order 1/n.
    With exposure weights (``examination`` given, see ``bartops.ope.pipeline``) the normaliser is
    Σ w·κ(slot), whose expectation is the target's total examination M: value = M̄ · Σ w·r / Σ w·κ.
    """

    clip: float | None = None
    name: str = "snips"

    def statistics(self, d: LoggedData) -> np.ndarray:
        w = weights(d, self.clip)
        if d.examination is not None:
            return np.column_stack([w * d.reward, w * d.examination, _target_mass(d)])
        s = np.zeros(len(d), np.int64) if d.stratum is None else d.stratum
        m = int(s.max()) + 1
        out = np.zeros((len(d), 3 * m))
        rows = np.arange(len(d))
        out[rows, s] = w * d.reward
        out[rows, m + s] = w
        out[rows, 2 * m + s] = 1.0
        return out

    def group_statistics(self, d: LoggedData) -> np.ndarray:
        """The per-group sums of ``statistics`` without its dense rows × 3·strata matrix."""
        if d.examination is not None:
            return group_sums(self.statistics(d), d.group, d.n_groups)
        w = weights(d, self.clip)
        s = np.zeros(len(d), np.int64) if d.stratum is None else d.stratum
        m = int(s.max()) + 1
        key, size = d.group * m + s, d.n_groups * m
        cols = (np.bincount(key, weights=w * d.reward, minlength=size), np.bincount(key, weights=w, minlength=size),
                np.bincount(key, minlength=size).astype(np.float64))
        return np.hstack([c.reshape(d.n_groups, m) for c in cols])

    def combine(self, sums: np.ndarray, n_groups: int) -> np.ndarray:
        m = sums.shape[-1] // 3
        wr, w, n = sums[..., :m], sums[..., m: 2 * m], sums[..., 2 * m:]
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(w > 0, wr / np.where(w > 0, w, 1.0), 0.0)
        return (n / n_groups * per).sum(axis=-1)


def _target_mass(d: LoggedData) -> np.ndarray:
    if d.target_mass is None:
        raise ValueError("snips with exposure weights needs target_mass (the target's examination per group)")
    return d.target_mass


@dataclass(frozen=True)
class DR(_PerRowStatistics):
    """Doubly robust: Σ [expected + w·(r − prediction)] / n_groups.

    Unbiased if either the weights are exact (support) or the reward model is; ``prediction`` must
    come from a model not fitted on the same rows (cross-fitting, ``bartops.ope.reward``).

    With a cap ``clip`` the correction uses min(w, clip): far less variance, but a bias of
    −Σ(w − clip)₊·E[r − prediction], the reward model's error where the logs check the target only
    through large weights, which the interval leaves out.  ``joined``: the interval is the union of
    the capped and the uncapped DR's percentile intervals (``variants``), since the uncapped DR
    estimates that bias (with much variance); the value stays the capped one.
    """

    clip: float | None = None
    joined: bool = False
    name: str = "dr"

    def statistics(self, d: LoggedData) -> np.ndarray:
        if d.prediction is None or d.expected is None:
            raise ValueError("dr needs predictions (reward model, logged action) and expected (under the target)")
        residual = d.reward - d.prediction
        capped = d.expected + weights(d, self.clip) * residual
        if self.joined and self.clip is not None:
            return np.column_stack([capped, d.expected + weights(d) * residual])
        return capped[:, None]

    def combine(self, sums: np.ndarray, n_groups: int) -> np.ndarray:
        return sums[..., 0] / n_groups

    def variants(self, sums: np.ndarray, n_groups: int) -> np.ndarray:
        return sums / n_groups  # [capped, uncapped] when joined, else the value alone


ESTIMATORS = {"ips": IPS, "snips": SNIPS, "dr": DR}


def make_estimator(name: str, clip: float | None = None) -> Estimator:
    """An estimator by name ('ips', 'snips', 'dr')."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    check_clip(clip)
    return ESTIMATORS[name](clip=clip)


# ---------------------------------------------------------------------- bootstrap engine
def group_sums(stats: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, k) per-group column sums."""
    out = np.zeros((n_groups, stats.shape[1]))
    for j in range(stats.shape[1]):
        out[:, j] = np.bincount(group, weights=stats[:, j], minlength=n_groups)
    return out


def bootstrap_units(sums: np.ndarray, seed: int) -> np.ndarray:
    """Resampling units: groups, or random equal blocks of groups when there are very many.

    Blocks of iid groups have iid sums, so resampling blocks keeps the bootstrap valid while
    bounding its cost (used only above MAX_BOOTSTRAP_UNITS groups, e.g. unpaged bandit logs).
    """
    G = len(sums)
    if G <= MAX_BOOTSTRAP_UNITS:
        return sums
    block = np.random.default_rng([seed, 99]).permutation(G) % MAX_BOOTSTRAP_UNITS
    out = np.zeros((MAX_BOOTSTRAP_UNITS, sums.shape[1]))
    for j in range(sums.shape[1]):
        out[:, j] = np.bincount(block, weights=sums[:, j], minlength=MAX_BOOTSTRAP_UNITS)
    return out


def bootstrap_sums(unit_sums: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, k) column sums of ``n_boot`` multinomial resamples of the units (vectorised)."""
    U = len(unit_sums)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(U, 1))
    out = np.empty((n_boot, unit_sums.shape[1]))
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        draws = rng.integers(0, U, size=(b, U)) + (np.arange(b) * U)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * U).reshape(b, U).astype(np.float64)
        out[lo: lo + b] = counts @ unit_sums
    return out


def weight_moments(d: LoggedData, clip: float | None) -> np.ndarray:
    """[rows, Σw, Σw², max w, rows with target > 0]: the weight diagnostics as summable moments
    (max is combined with max), so partitions of the logs can be reduced."""
    w = weights(d, clip)
    return np.array([len(d), w.sum(), (w ** 2).sum(), w.max(), (d.target > 0).sum()], np.float64)


def estimate_from_moments(name: str, value: float, boot: np.ndarray, level: float, moments: np.ndarray,
                          n_groups: int, clip, n_boot, seed) -> Estimate:
    """An Estimate from its value, bootstrap values and ``weight_moments`` (reduced over partitions).

    ``boot`` is (n_boot, variants): the interval joins the variants' percentile intervals; the value
    and the standard error are the first variant's (``Estimator.variants``).
    """
    alpha = (1 - level) / 2
    boot = boot.reshape(len(boot), -1)
    ends = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    lo, hi = ends[0].min(), ends[1].max()
    boot = boot[:, 0]
    n, sw, sw2, wmax, n_support = moments
    return Estimate(
        estimator=name, value=float(value), ci_low=float(lo), ci_high=float(hi), se=float(boot.std(ddof=1)),
        level=level, n_rows=int(n), n_groups=int(n_groups),
        ess=float(sw ** 2 / sw2) if sw2 > 0 else 0.0, max_weight=float(wmax),
        support=float(n_support / n), mean_weight=float(sw / n),
        n_boot=int(n_boot), seed=int(seed), clip=clip,
    )


def estimates_from_sums(estimators: Sequence[Estimator], sums: np.ndarray, widths: Sequence[int],
                        moments: Sequence[np.ndarray], n_boot: int, level: float, seed: int) -> dict[str, Estimate]:
    """Every estimator's value and interval from per-group statistic sums (each estimator's ``widths``
    columns side by side) and its ``weight_moments``: one bootstrap of the groups for all of them."""
    check_bootstrap(n_boot, level)
    G = len(sums)
    edges = np.cumsum((0, *widths))
    total = sums.sum(axis=0)
    boot = bootstrap_sums(bootstrap_units(sums, seed), n_boot, seed)
    return {e.name: estimate_from_moments(e.name, e.combine(total[a:b], G), e.variants(boot[:, a:b], G), level, m, G,
                                          getattr(e, "clip", None), n_boot, seed)
            for e, a, b, m in zip(estimators, edges[:-1], edges[1:], moments)}


def difference_from_sums(estimator: Estimator, sums: np.ndarray, k: int, moments: np.ndarray, n_boot: int,
                         level: float, seed: int) -> Estimate:
    """candidate − production from per-group sums (the candidate's ``k`` statistic columns, then
    production's), both on the same group resamples; ``moments`` are the candidate's weight moments."""
    check_bootstrap(n_boot, level)
    G = len(sums)
    total = sums.sum(axis=0)
    boot = bootstrap_sums(bootstrap_units(sums, seed), n_boot, seed)
    value = estimator.combine(total[:k], G) - estimator.combine(total[k:], G)
    diff = estimator.variants(boot[:, :k], G) - estimator.variants(boot[:, k:], G)
    return estimate_from_moments(f"{estimator.name}-difference", value, diff, level, moments, G,
                                 getattr(estimator, "clip", None), n_boot, seed)


def evaluate(estimator: Estimator, data: LoggedData, n_boot: int = 1000, level: float = 0.95,
             seed: int = 0) -> Estimate:
    """Point estimate and percentile bootstrap interval (groups resampled) of one estimator."""
    return evaluate_many([estimator], data, n_boot, level, seed)[estimator.name]


def evaluate_many(estimators: list[Estimator], data: LoggedData, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> dict[str, Estimate]:
    """Several estimators on the same bootstrap resamples (one pass over the data)."""
    check_bootstrap(n_boot, level)
    parts = [e.group_statistics(data) for e in estimators]
    return estimates_from_sums(estimators, np.hstack(parts), [p.shape[1] for p in parts],
                               [weight_moments(data, getattr(e, "clip", None)) for e in estimators], n_boot, level,
                               seed)


def paired_difference(estimator: Estimator, candidate: LoggedData, production: LoggedData, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> Estimate:
    """candidate − production on the same logs, both on the same page resamples (paired bootstrap).

    The weight diagnostics (ESS, max weight, support) are the candidate's.
    """
    check_bootstrap(n_boot, level)
    check_same_logs(candidate, production)
    sc, sp = estimator.group_statistics(candidate), estimator.group_statistics(production)
    return difference_from_sums(estimator, np.hstack([sc, sp]), sc.shape[1],
                                weight_moments(candidate, getattr(estimator, "clip", None)), n_boot, level, seed)



# ---------------------------------------------------------------------- page-aligned partitions
@dataclass(frozen=True)
class PartitionStatistics:
    """One partition's per-page statistic sums (pages sorted by request id) and weight moments.

    Pages never straddle partitions, so every estimator reduces exactly: the per-page sums of all
    partitions in request-id order are the whole log's, bit for bit (a whole log is one partition).
    """

    request_id: np.ndarray  # per page
    sums: np.ndarray  # (pages, Σ statistic widths)
    moments: np.ndarray  # (estimators, 5): ``weight_moments`` of each estimator
    widths: tuple[int, ...]

    def of_estimator(self, i: int) -> "PartitionStatistics":
        """The statistics of the i-th estimator only."""
        lo = sum(self.widths[:i])
        return PartitionStatistics(self.request_id, self.sums[:, lo: lo + self.widths[i]], self.moments[i: i + 1],
                                   (self.widths[i],))


def partition_statistics(estimators: Sequence[Estimator], data: LoggedData, request_id: np.ndarray
                         ) -> PartitionStatistics:
    """Per-page sums of every estimator's statistics; ``data.group`` indexes ``request_id``."""
    request_id = np.asarray(request_id).astype(str)
    if len(request_id) != data.n_groups:
        raise ValueError(f"{len(request_id)} request ids for {data.n_groups} pages")
    if len(np.unique(request_id)) != len(request_id):
        raise ValueError("request ids of a partition must be distinct (one per page)")
    stats = [e.group_statistics(data) for e in estimators]
    order = np.argsort(request_id, kind="stable")
    moments = np.vstack([weight_moments(data, getattr(e, "clip", None)) for e in estimators])
    return PartitionStatistics(request_id[order], np.hstack(stats)[order], moments, tuple(s.shape[1] for s in stats))


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

# ---------------------------------------------------------------------- plain functions
def ips(reward, propensity, target, groups=None, clip=None, n_boot=1000, level=0.95, seed=0) -> Estimate:
    """IPS estimate of the value per group (page) of the target policy."""
    check_clip(clip)
    return evaluate(IPS(clip), check_inputs(reward, propensity, target, groups), n_boot, level, seed)


def snips(reward, propensity, target, groups=None, strata=None, clip=None, n_boot=1000, level=0.95,
          seed=0) -> Estimate:
    """Self-normalised IPS (per stratum, e.g. slot) of the value per group."""
    check_clip(clip)
    return evaluate(SNIPS(clip), check_inputs(reward, propensity, target, groups, strata), n_boot, level, seed)


def dr(reward, propensity, target, prediction, expected, groups=None, clip=None, n_boot=1000, level=0.95,
       seed=0) -> Estimate:
    """Doubly robust estimate with (cross-fitted) reward-model predictions."""
    check_clip(clip)
    d = check_inputs(reward, propensity, target, groups, prediction=prediction, expected=expected)
    return evaluate(DR(clip), d, n_boot, level, seed)


def page_ips(reward, page_propensity, page_target, groups, clip=None, n_boot=1000, level=0.95,
             seed=0) -> Estimate:
    """Page-level IPS: weight = target P(whole logged page) / logging P(whole logged page).

    Unbiased with no assumption on how rewards of a page interact (only support), but its weights
    are products over every card, so its variance is large unless the policies nearly agree.
    """
    d = check_inputs(reward, page_propensity, page_target, groups)
    for name, a in (("page propensities", d.propensity), ("page target probabilities", d.target)):
        first = np.zeros(d.n_groups)
        first[d.group] = a
        if not np.allclose(first[d.group], a):
            raise ValueError(f"{name} must be constant within each page")
    check_clip(clip)
    est = evaluate(IPS(clip), d, n_boot, level, seed)
    return Estimate(**{**est.to_dict(), "estimator": "page-ips"})
