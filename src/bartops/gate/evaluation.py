"""The gate's evaluation of a candidate bundle on the validated batches, written once for every executor.

The log is read as page-aligned partitions (``bartops.features.partitions``: in this process each batch
file is one; on Dask about ``scale.partition_rows`` rows each), and an ``Executor`` runs the
per-partition passes, keeping each partition's state where it ran (in this process, or on its worker):

0. ``scan_partition``: the policy versions of the rows; after the candidate's training cut, each row's
   page and row number in its file.  The driver checks one logging policy, draws the ``ope.max_pages``
   pages (``subsample_pages`` over the pages in order of appearance) and numbers the rows in file order.
1. ``load_partition``: the partition's pages (``logged_pages``), the reward-model inputs of its logged
   cards, and its rows of the examination sample.
2. ``sample_targets``: each target's pages (``sample_target_pages`` under κ = 1) and their cards' model
   inputs, beside the driver's examination profile κ (``estimate_examination`` on the sample: every row
   up to ``EXAMINATION_ROWS``, else a seeded draw of them in file order).
3. ``logging_exposures``: the logging policy's exposures under κ (``logging_marginals``), beside DR's
   cross-fitted fold models (``fit_folds``: ``xgboost.train`` on the gathered cards in this process,
   ``xgboost.dask`` on the partitions on Dask: the one engine-specific part).
4. ``finish_partition``: ``ope.pipeline.evaluate_partition`` with the targets' exposures under κ and the
   fold models' predictions; the driver's ``reduce_evaluation`` (the functions ``evaluate_policies`` runs
   on a whole log in memory) gives the ``PolicyEvaluation``.

Seeding: a partition's Monte Carlo is seeded by ``ope.seed``, its batch file's name and its bucket, so a
run is reproducible for the same batches and partitions whatever the executor: in this process and on
Dask with the same partitions every estimate but DR is equal, and DR differs only through the fold
models (``xgboost.dask`` merges per-worker quantile sketches).  Pages never straddle partitions, so the
per-page sums, the bootstrap resamples and the intervals are those of the whole log.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bartops.features.assemble import assemble_rows
from bartops.features.partitions import Executor, Partition, read_partition_rows
from bartops.ope.pipeline import (
    EXAMINATION_ROWS, LoggingMarginals, PartitionResult, PolicyEvaluation, TargetInputs, TargetPages,
    estimate_examination, evaluate_partition, first_row_of_page, logging_marginals, reduce_evaluation,
    sample_target_pages, subsample_pages,
)
from bartops.config import OPEConfig
from bartops.ope.reward import fit_fold_models, page_folds, predict_folds
from bartops.ope.slate import LoggedPages, logged_pages
from bartops.policy.page import CandidateSet, PagePolicy

SCAN_COLUMNS = ["timestamp", "policy_version"]


@dataclass(frozen=True)
class EvaluationSetup:
    """What the gate evaluates and with what: the candidate bundle's snapshot (the reward-model inputs),
    the logging policy and the snapshot giving its log-time candidate sets, the targets (name → (policy,
    its Features); None = the logging policy, on-policy) and each explanation's kind.  On Dask it is
    sent once to every worker."""

    cfg: OPEConfig
    holdout_from: pd.Timestamp | None
    features: Any  # the candidate bundle's Features (reward-model inputs)
    logging: PagePolicy
    logging_features: Any  # Features whose candidates the logging policy draws from
    targets: dict[str, tuple[PagePolicy, Any] | None]
    kinds: np.ndarray  # explanation code → kind label

    def reduce(self, results: Sequence[PartitionResult], kappa: np.ndarray) -> PolicyEvaluation:
        """``reduce_evaluation`` of the partitions' results (the targets' versions, the kinds' names)."""
        versions = {name: None if spec is None else spec[0].version for name, spec in self.targets.items()}
        return reduce_evaluation(list(results), versions, self.cfg, kappa,
                                 list(np.unique(np.asarray(self.kinds).astype(str))))

    def featurize(self, contexts: pd.DataFrame, cards: CandidateSet, shelf, position) -> np.ndarray:
        """The reward-model inputs of cards at slots (the candidate's snapshot)."""
        return assemble_rows(self.features, contexts, cards, shelf, position)


@dataclass(frozen=True)
class PartitionState:
    """A partition's pages, kept where its passes run (filled in pass by pass)."""

    part: Partition
    logs: LoggedPages
    x_logged: np.ndarray  # reward-model inputs of the logged cards (float32)
    sample: pd.DataFrame  # its rows of the examination sample (raw, with their file row)
    targets: dict[str, TargetPages | None] | None = None  # pages under κ = 1
    x_targets: dict[str, np.ndarray] | None = None  # model inputs of the targets' cards
    marginals: LoggingMarginals | None = None


def partition_seed(seed: int, part: Partition) -> int:
    """The partition's Monte-Carlo seed: ``ope.seed``, the batch file's name and the bucket (a 32-bit
    draw of ``numpy.random.SeedSequence``), so it depends on neither the executor nor the run."""
    key = [int(seed), zlib.crc32(Path(part.file).name.encode()), int(part.bucket), int(part.buckets)]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _after(frame: pd.DataFrame, holdout_from: pd.Timestamp | None, version: str | None = None) -> np.ndarray:
    """Rows after the training cut (served by ``version``, when given)."""
    keep = np.ones(len(frame), bool) if holdout_from is None else \
        (pd.to_datetime(frame["timestamp"], utc=True) >= holdout_from).to_numpy()
    return keep if version is None else keep & (frame["policy_version"].astype(str) == version).to_numpy()


# ---------------------------------------------------------------------- pass 0: scan and plan
def scan_partition(part: Partition, holdout_from: pd.Timestamp | None, version: str | None = None) -> dict[str, Any]:
    """Policy versions of the rows after the cut; for those of ``version`` (all, when None), their page
    (an index into the sorted request ids ``ids``) and their row number in the file."""
    frame, row = read_partition_rows(part, SCAN_COLUMNS)
    after = _after(frame, holdout_from)
    keep = _after(frame, holdout_from, version)
    ids, page = np.unique(frame["request_id"].astype(str).to_numpy()[keep], return_inverse=True)
    return {"versions": sorted(set(frame["policy_version"].astype(str)[after])), "ids": ids,
            "page": page.astype(np.int64).ravel(), "file_row": row[keep]}


def row_plan(scans: Sequence[dict[str, Any]], file_index: Sequence[int], max_pages: int | None, seed: int,
             sample_rows: int) -> tuple[list[np.ndarray | None], list[np.ndarray], int]:
    """(per partition the request ids to keep (None = all), per partition the file rows of the
    examination sample, the rows evaluated).

    The kept pages are ``subsample_pages``'s draw over the pages in order of first appearance in the
    concatenated batches; the rows are numbered in that order too (file, then row in file), and the
    sample is every row when there are at most ``sample_rows``, else a seeded draw of ``sample_rows``.
    """
    keep: list[np.ndarray | None] = [None] * len(scans)
    kept_rows = [np.ones(len(s["page"]), bool) for s in scans]
    if max_pages is not None:
        ids = np.concatenate([s["ids"] for s in scans])
        first = np.concatenate([_first_rows(s) for s in scans])
        files = np.concatenate([np.full(len(s["ids"]), f) for s, f in zip(scans, file_index)])
        order = np.lexsort((first, files))
        chosen = set(subsample_pages(pd.DataFrame({"request_id": ids[order]}), max_pages, seed)["request_id"])
        for i, s in enumerate(scans):
            in_keep = np.asarray([x in chosen for x in s["ids"]], bool)
            keep[i] = s["ids"][in_keep]
            kept_rows[i] = in_keep[s["page"]]
    rows = [s["file_row"][k] for s, k in zip(scans, kept_rows)]
    n = int(sum(len(r) for r in rows))
    owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]) if n else np.zeros(0, np.int64)
    file_row = np.concatenate(rows) if n else np.zeros(0, np.int64)
    order = np.lexsort((file_row, np.asarray(file_index)[owner])) if n else np.zeros(0, np.int64)
    pick = (np.arange(n) if n <= sample_rows else
            np.sort(np.random.default_rng([seed, 13]).choice(n, size=sample_rows, replace=False)))
    chosen_rows = order[pick]
    sample = [np.sort(file_row[chosen_rows[owner[chosen_rows] == i]]) for i in range(len(scans))]
    return keep, sample, n


def _first_rows(scan: dict[str, Any]) -> np.ndarray:
    first = np.full(len(scan["ids"]), np.iinfo(np.int64).max)
    np.minimum.at(first, scan["page"], scan["file_row"])
    return first


# ---------------------------------------------------------------------- pass 1: load
def load_partition(part: Partition, setup: EvaluationSetup, keep: np.ndarray | None, sample: np.ndarray
                   ) -> PartitionState | None:
    """The partition's pages after the cut (and within ``keep``), the logged cards' model inputs and
    its rows of the examination sample (``sample``: file rows); None when no row remains."""
    frame, row = read_partition_rows(part)
    mask = _after(frame, setup.holdout_from, setup.logging.version)
    if keep is not None:
        mask = mask & frame["request_id"].astype(str).isin(set(keep)).to_numpy()
    if not mask.any():
        return None
    in_sample = np.isin(row, sample) & mask
    sample_frame = frame[in_sample].assign(_file_row=row[in_sample])
    frame = frame[mask].reset_index(drop=True)
    lp = logged_pages(frame, setup.features.explanations)
    cards = CandidateSet(lp.page, lp.item_id, lp.explanation, lp.n_pages, np.ones(len(lp), bool))
    x = np.asarray(setup.featurize(lp.contexts, cards, lp.shelf, lp.position), np.float32)
    return PartitionState(part, lp, x, sample_frame)


def loaded(state: PartitionState | None) -> bool:
    """Whether the partition has rows to evaluate."""
    return state is not None


def sample_rows(state: PartitionState) -> pd.DataFrame:
    """The partition's rows of the examination sample (raw, with ``_file_row``)."""
    return state.sample


def examination_profile(samples: Sequence[pd.DataFrame], file_index: Sequence[int], setup: EvaluationSetup
                        ) -> np.ndarray:
    """κ: ``estimate_examination`` on the partitions' sample rows, in file order (file, row in file)."""
    frames = [s.assign(_file=f) for s, f in zip(samples, file_index) if len(s)]
    both = pd.concat(frames, ignore_index=True).sort_values(["_file", "_file_row"], kind="stable")
    lp = logged_pages(both.drop(columns=["_file", "_file_row"]).reset_index(drop=True), setup.features.explanations)
    return estimate_examination(lp, setup.featurize, setup.logging.shelves, setup.logging.cards, setup.cfg.seed,
                                max_rows=max(len(lp), 1))


# ---------------------------------------------------------------------- passes 2 and 3: Monte Carlo
def sample_targets(state: PartitionState, setup: EvaluationSetup) -> PartitionState:
    """Each target's pages under κ = 1 (seeded by ``partition_seed``) and their cards' model inputs."""
    lp = state.logs
    seed = partition_seed(setup.cfg.seed, state.part)
    pages = {name: None if spec is None else
             sample_target_pages(spec[0], lp, spec[1].candidates_for(lp.contexts), setup.cfg.target_samples, seed)
             for name, spec in setup.targets.items()}
    x = {name: setup.featurize(lp.contexts, tp.cards, tp.shelf, tp.position) for name, tp in pages.items()
         if tp is not None}
    return replace(state, sample=state.sample.iloc[:0], targets=pages, x_targets=x)


def logging_exposures(state: PartitionState, setup: EvaluationSetup, kappa: np.ndarray) -> PartitionState:
    """The logging policy's exposures of the logged cards under κ (seeded by ``partition_seed``)."""
    lp = state.logs
    cfg = replace(setup.cfg, seed=partition_seed(setup.cfg.seed, state.part))
    return replace(state, marginals=logging_marginals(setup.logging, lp,
                                                      setup.logging_features.candidates_for(lp.contexts), cfg, kappa))


def partition_summary(state: PartitionState) -> dict[str, Any]:
    """What the driver needs of a partition: its pages (sorted request ids) with their rows and streams."""
    lp = state.logs
    return {"ids": np.asarray(lp.request_id).astype(str), "rows": np.bincount(lp.page, minlength=lp.n_pages),
            "streams": np.bincount(lp.page, weights=lp.reward, minlength=lp.n_pages),
            "first": lp.contexts["timestamp"].min(), "last": lp.contexts["timestamp"].max()}


def page_fold_assignment(summaries: Sequence[dict[str, Any]], folds: int, seed: int) -> list[np.ndarray]:
    """Per partition, each page's cross-fitting fold as ``cross_fit`` assigns it over the whole log
    (``page_folds`` over the pages in sorted request-id order)."""
    ids = np.concatenate([s["ids"] for s in summaries])
    if len(np.unique(ids)) != len(ids):
        raise ValueError("a page is split across partitions: partitions must hold whole page views")
    fold = page_folds(len(ids), folds, seed)
    index = pd.Index(np.sort(ids))
    return [fold[index.get_indexer(s["ids"])] for s in summaries]


# ---------------------------------------------------------------------- DR's fold models
def fold_rows(state: PartitionState, page_fold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The partition's logged cards: model inputs, rewards and cross-fitting fold."""
    return state.x_logged, state.logs.reward, page_fold[state.logs.page]


FitFolds = Callable[[Executor, Sequence[Any], Sequence[dict[str, Any]], Sequence[np.ndarray], OPEConfig], list]


def local_fold_models(executor: Executor, states: Sequence[Any], summaries: Sequence[dict[str, Any]],
                      folds: Sequence[np.ndarray], cfg: OPEConfig) -> list:
    """``fit_fold_models`` (``xgboost.train``, one thread per fold) on every partition's logged cards."""
    got = executor.gather([executor.submit(fold_rows, s, f) for s, f in zip(states, folds)])
    return fit_fold_models(np.vstack([g[0] for g in got]), np.concatenate([g[1] for g in got]),
                           np.concatenate([g[2] for g in got]), cfg.folds, cfg.seed)


# ---------------------------------------------------------------------- pass 4: finish
def finish_partition(state: PartitionState, setup: EvaluationSetup, page_fold: np.ndarray, models: Sequence[Any],
                     kappa: np.ndarray) -> PartitionResult:
    """``evaluate_partition`` of the partition's pages: the targets' exposures under κ, DR's predictions
    by the fold models."""
    lp = state.logs
    row_fold = page_fold[lp.page]
    first = first_row_of_page(lp)
    targets = {name: None if tp is None else TargetInputs(tp.with_examination(kappa), predict_folds(
        models, state.x_targets[name], row_fold[first[tp.cards.page]])) for name, tp in state.targets.items()}
    kind_names, kind_code = np.unique(np.asarray(setup.kinds).astype(str), return_inverse=True)
    return evaluate_partition(lp, state.marginals, targets, setup.cfg, predict_folds(models, state.x_logged, row_fold),
                              kind_code, len(kind_names))


# ---------------------------------------------------------------------- the whole evaluation
@dataclass(frozen=True)
class PartitionedEvaluation:
    """The ``PolicyEvaluation``, κ, DR's fold models, and the rows and pages evaluated."""

    result: PolicyEvaluation
    examination: np.ndarray
    models: list[Any]
    n_rows: int
    n_pages: int
    first_page_view: pd.Timestamp
    last_page_view: pd.Timestamp


def evaluate_partitions(executor: Executor, parts: Sequence[Partition], setup: EvaluationSetup,
                        scans: Sequence[dict[str, Any]] | None = None,
                        fit_folds: FitFolds = local_fold_models) -> PartitionedEvaluation:
    """The evaluation of the partitions' pages after ``setup.holdout_from`` (module docs); ``scans``:
    their ``scan_partition`` results, if already gathered.  A side thread computes κ and then DR's fold
    models while this one samples the targets' pages and then the logging exposures (which need κ), so
    one machine's cores serve both sides."""
    cfg = setup.cfg
    files = list(dict.fromkeys(p.file for p in parts))
    file_index = [files.index(p.file) for p in parts]
    if scans is None:
        scans = executor.map(scan_partition, parts, holdout_from=setup.holdout_from, version=setup.logging.version)
    keep, sample, n = row_plan(scans, file_index, cfg.max_pages, cfg.seed, EXAMINATION_ROWS)
    if n == 0:
        raise ValueError("logs are empty: nothing to evaluate")
    shared = executor.share(setup)
    states = [executor.submit(load_partition, p, shared, k, s, where=i)
              for i, (p, k, s) in enumerate(zip(parts, keep, sample))]
    live = [i for i, ok in enumerate(executor.gather([executor.submit(loaded, s) for s in states])) if ok]
    states, where = [states[i] for i in live], live
    samples = executor.gather([executor.submit(sample_rows, s) for s in states])
    summaries = executor.gather([executor.submit(partition_summary, s) for s in states])
    folds = page_fold_assignment(summaries, cfg.folds, cfg.seed)
    with ThreadPoolExecutor(1, thread_name_prefix="bartops-evaluation") as side:  # κ, then DR's fold models
        kappa_f = side.submit(examination_profile, samples, [file_index[i] for i in live], setup)
        models_f = side.submit(fit_folds, executor, states, summaries, folds, cfg)
        states = [executor.submit(sample_targets, s, shared, where=w) for s, w in zip(states, where)]
        kappa = kappa_f.result()
        states = [executor.submit(logging_exposures, s, shared, kappa, where=w) for s, w in zip(states, where)]
        models = models_f.result()
    models_h = executor.share(models)
    results = executor.gather([executor.submit(finish_partition, s, shared, f, models_h, kappa, where=w)
                               for s, f, w in zip(states, folds, where)])
    return PartitionedEvaluation(setup.reduce(results, kappa), kappa, models, sum(r.rows for r in results),
                                 sum(r.pages for r in results), min(s["first"] for s in summaries),
                                 max(s["last"] for s in summaries))
