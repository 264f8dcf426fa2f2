"""The gate's evaluation (``bartops evaluate``) on Dask: the per-page work on page-aligned partitions.

The local path is ``bartops.gate.evaluate.evaluate_bundle`` → ``bartops.ope.pipeline.evaluate_policies``
on the whole log.  Here no worker holds more than its partitions (whole pages, ``bartops.features.partitions``)
and the driver at most ``estimate_examination``'s sample:

0. ``scan_partition``: the policy versions of every row; after the candidate's training cut, each row's
   page and row number in its file.  The driver checks one logging policy, draws the ``ope.max_pages``
   pages with ``subsample_pages`` over the pages in file order, and orders the rows as the local path
   does (batch files in order, rows in file order).
1. ``load_partition`` (kept on its worker): the partition's pages (``logged_pages``), the reward-model
   inputs of its logged cards, and its rows of the examination sample.
2. driver: the examination profile κ = ``estimate_examination`` of the sample (all rows when there are
   at most its ``max_rows``: then the local κ exactly; else the same fitted rows as locally, other probe
   cards).
3. ``sample_partition``: the logging policy's exposures (``logging_marginals``) and each target's pages
   (``sample_target_pages``), Monte Carlo seeded by ``partition_seed``.
4. ``fit_fold_models``: DR's cross-fitted reward model, one ``xgboost.dask`` booster per fold trained on
   the other folds' logged cards of all partitions (``cross_fit``'s folds, rows and parameters).
5. ``finish_partition``: ``bartops.ope.pipeline.evaluate_partition`` with the fold models' predictions
   (per-page statistic sums, per-kind and diagnostic sums, the weights); then the driver's
   ``reduce_evaluation``, the same two functions that ``evaluate_policies`` runs on the whole log.

Seeding and equivalence.  A partition's Monte Carlo is seeded by ``ope.seed``, its batch file's name and
its bucket, so a run is reproducible on the same batches and ``scale.partition_rows`` whatever the workers
(and the fold models see the same rows per worker: partitions are pinned round-robin).  Given the same
κ, exposures, target pages and reward model, everything equals ``evaluate_policies``'s result to
floating-point precision (the same per-page sums and bootstrap resamples; tested).  Against a local run:
κ is exact up to ``max_rows`` evaluated rows; the exposures and target pages are other Monte-Carlo draws
of the same quantities (the local run draws every page from one generator, which no partition can
reproduce), so the candidate's estimates differ by Monte-Carlo noise (a tolerance derived from
replicate local draws is tested); DR's fold models come from ``xgboost.dask`` (merged quantile sketches,
per-worker subsampling).  The on-policy production estimates involve none of these and are equal.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bartops.features.partitions import Partition, page_partitions, read_partition_rows
from bartops.gate.evaluate import Evaluation, EvaluationSetup, evaluated_policy, evaluation_setup, training_cut
from bartops.ope.pipeline import (EXAMINATION_ROWS, LoggingMarginals, OPEConfig, PartitionResult, PolicyEvaluation, TargetInputs,
                                  TargetPages, estimate_examination, evaluate_partition, first_row_of_page,
                                  logging_marginals, sample_target_pages, subsample_pages)
from bartops.ope.reward import CROSS_FIT_ROUNDS, cross_fit_params, page_folds, predict_folds
from bartops.ope.slate import LoggedPages, logged_pages
from bartops.policy.page import CandidateSet

SCAN_COLUMNS = ["timestamp", "policy_version"]


@dataclass(frozen=True)
class PartitionState:
    """A partition's pages, kept on its worker between the passes (Monte Carlo filled by pass 3)."""

    part: Partition
    logs: LoggedPages
    x_logged: np.ndarray  # reward-model inputs of the logged cards (float32)
    sample: pd.DataFrame  # its rows of the examination sample (raw, with their file row)
    marginals: LoggingMarginals | None = None
    targets: dict[str, TargetPages | None] | None = None


# ---------------------------------------------------------------------- seeds and filters
def partition_seed(seed: int, part: Partition) -> int:
    """The partition's Monte-Carlo seed: ``ope.seed``, the batch file's name and the bucket (a 32-bit
    draw of ``numpy.random.SeedSequence``), so it depends on neither the workers nor the run."""
    key = [int(seed), zlib.crc32(Path(part.file).name.encode()), int(part.bucket), int(part.buckets)]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _after(frame: pd.DataFrame, holdout_from: pd.Timestamp | None, version: str | None = None) -> np.ndarray:
    """Rows after the training cut (served by ``version``, when given)."""
    keep = np.ones(len(frame), bool) if holdout_from is None else \
        (pd.to_datetime(frame["timestamp"], utc=True) >= holdout_from).to_numpy()
    return keep if version is None else keep & (frame["policy_version"].astype(str) == version).to_numpy()


# ---------------------------------------------------------------------- pass 0: scan
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
    sample is every row when there are at most ``sample_rows``, else ``estimate_examination``'s draw.
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


def examination_sample(samples: Sequence[pd.DataFrame], file_index: Sequence[int]) -> pd.DataFrame:
    """The partitions' sample rows in the local order (file, row in file)."""
    frames = [s.assign(_file=f) for s, f in zip(samples, file_index) if len(s)]
    both = pd.concat(frames, ignore_index=True).sort_values(["_file", "_file_row"], kind="stable")
    return both.drop(columns=["_file", "_file_row"]).reset_index(drop=True)


def examination_profile(sample: pd.DataFrame, setup: EvaluationSetup) -> np.ndarray:
    """κ: ``estimate_examination`` on the sample's pages (what ``evaluate_bundle`` runs on the whole log)."""
    lp = logged_pages(sample, setup.features.explanations)
    return estimate_examination(lp, setup.featurize, setup.logging.shelves, setup.logging.cards, setup.cfg.seed)


# ---------------------------------------------------------------------- pass 3: Monte Carlo
def sample_partition(state: PartitionState, setup: EvaluationSetup, kappa: np.ndarray) -> PartitionState:
    """The logging policy's exposures of the logged cards and each target's sampled pages, seeded by
    ``partition_seed``."""
    lp = state.logs
    seed = partition_seed(setup.cfg.seed, state.part)
    cfg = replace(setup.cfg, seed=seed)
    marg = logging_marginals(setup.logging, lp, setup.logging_features.candidates_for(lp.contexts), cfg, kappa)
    targets = {name: None if spec is None else
               sample_target_pages(spec[0], lp, spec[1].candidates_for(lp.contexts), cfg.target_samples, seed, kappa)
               for name, spec in setup.targets.items()}
    return replace(state, sample=state.sample.iloc[:0], marginals=marg, targets=targets)


def partition_summary(state: PartitionState) -> dict[str, Any]:
    """What the driver needs of a partition: its pages (sorted request ids) with their rows and streams."""
    lp = state.logs
    return {"ids": np.asarray(lp.request_id).astype(str), "rows": np.bincount(lp.page, minlength=lp.n_pages),
            "streams": np.bincount(lp.page, weights=lp.reward, minlength=lp.n_pages),
            "first": lp.contexts["timestamp"].min(), "last": lp.contexts["timestamp"].max()}


def page_fold_assignment(summaries: Sequence[dict[str, Any]], folds: int, seed: int) -> list[np.ndarray]:
    """Per partition, each page's cross-fitting fold as ``cross_fit`` assigns it over the whole log:
    ``default_rng([seed, 7]).permutation(pages) % folds`` over the pages in sorted request-id order."""
    ids = np.concatenate([s["ids"] for s in summaries])
    if len(np.unique(ids)) != len(ids):
        raise ValueError("a page is split across partitions: partitions must hold whole page views")
    fold = page_folds(len(ids), folds, seed)
    index = pd.Index(np.sort(ids))
    return [fold[index.get_indexer(s["ids"])] for s in summaries]


# ---------------------------------------------------------------------- pass 4: cross-fitted reward model
def _fold_part(state: PartitionState, page_fold: np.ndarray, fold: int, what: str) -> np.ndarray:
    """The partition's logged cards outside ``fold`` (model inputs, or rewards)."""
    train = page_fold[state.logs.page] != fold
    return state.x_logged[train] if what == "x" else state.logs.reward[train]


def _width(state: PartitionState) -> int:
    return int(state.x_logged.shape[1])


def dask_fold_models(client, states: Sequence[Any], summaries: Sequence[dict[str, Any]],
                    folds_of_pages: Sequence[np.ndarray], cfg: OPEConfig) -> list[Any]:
    """Per fold, ``cross_fit``'s model of the other folds' logged cards: an ``xgboost.dask`` booster, or
    (as ``cross_fit`` does when those cards are one class or none) their mean reward as a float."""
    import dask.array as da
    import xgboost.dask as dxgb
    from dask import delayed

    rows = [np.bincount(f, weights=s["rows"], minlength=cfg.folds) for s, f in zip(summaries, folds_of_pages)]
    streams = [np.bincount(f, weights=s["streams"], minlength=cfg.folds) for s, f in zip(summaries, folds_of_pages)]
    width = client.submit(_width, states[0], pure=False).result()
    models: list[Any] = []
    for k in range(cfg.folds):
        n_train = [int(r.sum() - r[k]) for r in rows]
        n, y_sum = sum(n_train), sum(float(s.sum() - s[k]) for s in streams)
        if n == 0 or y_sum == 0 or y_sum == n:  # no training cards, or one class (rewards are 0/1)
            models.append(y_sum / n if n else sum(float(s.sum()) for s in streams) / sum(float(r.sum()) for r in rows))
            continue
        xs, ys = [], []
        for st, pf, m in zip(states, folds_of_pages, n_train):
            if m:
                xs.append(da.from_delayed(delayed(_fold_part)(st, pf, k, "x"), (m, width), np.float32))
                ys.append(da.from_delayed(delayed(_fold_part)(st, pf, k, "y"), (m,), np.float64))
        dtrain = dxgb.DaskQuantileDMatrix(client, da.concatenate(xs), da.concatenate(ys))
        booster = dxgb.train(client, {k: v for k, v in cross_fit_params(cfg.seed).items() if k != "nthread"}, dtrain,
                             num_boost_round=CROSS_FIT_ROUNDS)["booster"]
        booster.set_param({"nthread": 1})
        models.append(booster)
        del dtrain
    return models


# ---------------------------------------------------------------------- pass 5: finish
def finish_partition(state: PartitionState, setup: EvaluationSetup, page_fold: np.ndarray, models: Sequence[Any]
                     ) -> PartitionResult:
    """``evaluate_partition`` of the partition's pages, with DR's predictions by the fold models."""
    lp = state.logs
    row_fold = page_fold[lp.page]
    first = first_row_of_page(lp)
    targets = {name: None if tp is None else TargetInputs(tp, predict_folds(
        models, setup.featurize(lp.contexts, tp.cards, tp.shelf, tp.position), row_fold[first[tp.cards.page]]))
        for name, tp in state.targets.items()}
    kind_names, kind_code = np.unique(np.asarray(setup.kinds).astype(str), return_inverse=True)
    return evaluate_partition(lp, state.marginals, targets, setup.cfg, predict_folds(models, state.x_logged, row_fold),
                              kind_code, len(kind_names))


# ---------------------------------------------------------------------- the whole evaluation
@dataclass(frozen=True)
class PartitionedEvaluation:
    """``evaluate_policies``'s result, κ, the cross-fitted fold models, and the rows and pages evaluated."""

    result: PolicyEvaluation
    examination: np.ndarray
    models: list[Any]
    n_rows: int
    n_pages: int
    first_page_view: pd.Timestamp
    last_page_view: pd.Timestamp


def evaluate_partitions(client, parts: Sequence[Partition], setup: EvaluationSetup,
                        scans: Sequence[dict[str, Any]] | None = None) -> PartitionedEvaluation:
    """The evaluation of the partitions' pages after ``setup.holdout_from`` on the cluster (module docs);
    ``scans``: their ``scan_partition`` results, if already gathered."""
    cfg = setup.cfg
    files = list(dict.fromkeys(p.file for p in parts))
    file_index = [files.index(p.file) for p in parts]
    if scans is None:
        scans = client.gather(client.map(scan_partition, parts, holdout_from=setup.holdout_from,
                                         version=setup.logging.version, pure=False))
    keep, sample, n = row_plan(scans, file_index, cfg.max_pages, cfg.seed, EXAMINATION_ROWS)
    if n == 0:
        raise ValueError("logs are empty: nothing to evaluate")
    workers = sorted(client.scheduler_info()["workers"])
    setup_f = client.scatter(setup, broadcast=True, hash=False)
    # pinned round-robin: the same placement on every run, so xgboost.dask sees the same rows per worker
    where = [dict(workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False) for i in range(len(parts))]
    states = [client.submit(load_partition, p, setup_f, k, s, **w) for p, k, s, w in zip(parts, keep, sample, where)]
    live = [i for i, ok in enumerate(client.gather([client.submit(loaded, f, pure=False) for f in states])) if ok]
    states, where = [states[i] for i in live], [where[i] for i in live]
    samples = client.gather([client.submit(sample_rows, f, pure=False) for f in states])
    kappa = examination_profile(examination_sample(samples, [file_index[i] for i in live]), setup)
    del samples
    states = [client.submit(sample_partition, f, setup_f, kappa, **w) for f, w in zip(states, where)]
    summaries = client.gather([client.submit(partition_summary, s, pure=False) for s in states])
    folds = page_fold_assignment(summaries, cfg.folds, cfg.seed)
    models = dask_fold_models(client, states, summaries, folds, cfg)
    models_f = client.scatter(models, broadcast=True, hash=False)
    results = client.gather([client.submit(finish_partition, s, setup_f, f, models_f, pure=False)
                             for s, f in zip(states, folds)])
    del states
    return PartitionedEvaluation(setup.reduce(results, kappa), kappa, models,
                                 sum(r.rows for r in results), sum(r.pages for r in results),
                                 min(s["first"] for s in summaries), max(s["last"] for s in summaries))


def evaluate_bundle_dask(client, bundle_dir: Path, params: dict, registry, impressions: Path | Sequence[Path],
                         data_dir: Path, partition_rows: int) -> Evaluation:
    """``bartops.gate.evaluate.evaluate_bundle`` on page-aligned partitions of the validated batches
    (module docs)."""

    parts = page_partitions(impressions, partition_rows)
    cfg = OPEConfig.from_dict(params.get("ope"))
    holdout_from = training_cut(Path(bundle_dir)) if cfg.holdout_only else None
    scans = client.gather(client.map(scan_partition, parts, holdout_from=holdout_from, pure=False))
    if holdout_from is not None and sum(len(s["page"]) for s in scans) == 0:
        raise ValueError(f"no logged impressions after the candidate's training cut {holdout_from}: "
                         "nothing it has not been trained on to evaluate it with")
    versions = sorted(set().union(*[s["versions"] for s in scans]))
    production = registry.production() if registry is not None else None
    version = evaluated_policy(versions, production)
    if len(versions) > 1:  # production's own logs among others': scan again for its pages alone
        scans = client.gather(client.map(scan_partition, parts, holdout_from=holdout_from, version=version,
                                         pure=False))
    setup = evaluation_setup(Path(bundle_dir), params, registry, Path(data_dir), version)
    ev = evaluate_partitions(client, parts, setup, scans)
    return Evaluation(ev.result, production, version, cfg, ev.n_pages, ev.n_rows,
                      None if holdout_from is None else holdout_from.isoformat(),
                      pd.Timestamp(ev.first_page_view).isoformat(), pd.Timestamp(ev.last_page_view).isoformat(),
                      backend="dask", partitions=len(parts))
