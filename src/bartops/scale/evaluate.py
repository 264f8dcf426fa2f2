"""DR's cross-fitted fold models on Dask: the one engine-specific part of the gate's evaluation.

The evaluation itself (``bartops.gate.evaluation``) is the same on every executor; on Dask its partitions'
states live on the workers (pinned round-robin, so ``xgboost.dask`` sees the same rows per worker on every
run), and ``dask_fold_models`` trains one ``xgboost.dask`` booster per fold on the other folds' logged
cards of all partitions, with ``cross_fit``'s folds, rows and parameters.  Its predictions differ from
``xgboost.train``'s only as far as merged per-worker quantile sketches and per-worker subsampling move
the trees.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bartops.gate.evaluation import PartitionState
from bartops.config import OPEConfig
from bartops.ope.reward import CROSS_FIT_ROUNDS, cross_fit_params


def fold_cards(state: PartitionState, page_fold: np.ndarray, fold: int, what: str) -> np.ndarray:
    """The partition's logged cards outside ``fold`` (model inputs, or rewards)."""
    train = page_fold[state.logs.page] != fold
    return state.x_logged[train] if what == "x" else state.logs.reward[train]


def _width(state: PartitionState) -> int:
    return int(state.x_logged.shape[1])


def dask_fold_models(executor, states: Sequence[Any], summaries: Sequence[dict[str, Any]],
                     folds_of_pages: Sequence[np.ndarray], cfg: OPEConfig) -> list[Any]:
    """Per fold, ``cross_fit``'s model of the other folds' logged cards: an ``xgboost.dask`` booster, or
    (as ``fit_fold_models`` does when those cards are one class or none) their mean reward as a float."""
    import dask.array as da
    import xgboost.dask as dxgb
    from dask import delayed

    client = executor.client
    rows = [np.bincount(f, weights=s["rows"], minlength=cfg.folds) for s, f in zip(summaries, folds_of_pages)]
    streams = [np.bincount(f, weights=s["streams"], minlength=cfg.folds) for s, f in zip(summaries, folds_of_pages)]
    width = client.submit(_width, states[0], pure=False).result()
    params = {k: v for k, v in cross_fit_params(cfg.seed).items() if k != "nthread"}
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
                xs.append(da.from_delayed(delayed(fold_cards)(st, pf, k, "x"), (m, width), np.float32))
                ys.append(da.from_delayed(delayed(fold_cards)(st, pf, k, "y"), (m,), np.float64))
        dtrain = dxgb.DaskQuantileDMatrix(client, da.concatenate(xs), da.concatenate(ys))
        booster = dxgb.train(client, params, dtrain, num_boost_round=CROSS_FIT_ROUNDS)["booster"]
        booster.set_param({"nthread": 1})
        models.append(booster)
        del dtrain
    return models
