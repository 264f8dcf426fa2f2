"""Cross-fitted reward regression for the doubly robust estimator.

Pages are split into folds; the model that predicts a page's cards (logged and target) was fitted
on the other folds only, so no row is both fitted and evaluated by the same model.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xgboost as xgb


CROSS_FIT_ROUNDS = 80
CROSS_FIT_DEPTH = 5


def cross_fit_params(seed: int, depth: int = CROSS_FIT_DEPTH) -> dict[str, Any]:
    """The fold models' booster parameters (one thread each: the same models on any number of cores)."""
    return {"objective": "binary:logistic", "tree_method": "hist", "max_depth": depth, "eta": 0.15,
            "min_child_weight": 5.0, "subsample": 0.8, "nthread": 1, "seed": seed, "verbosity": 0}


def page_folds(n_pages: int, n_folds: int, seed: int) -> np.ndarray:
    """Each page's cross-fitting fold (pages numbered in sorted request-id order)."""
    return np.random.default_rng([seed, 7]).permutation(n_pages) % n_folds


def cross_fit(
    x_logged: np.ndarray,
    reward: np.ndarray,
    group: np.ndarray,
    x_target: np.ndarray,
    target_row: np.ndarray,
    n_folds: int = 2,
    seed: int = 0,
    rounds: int = CROSS_FIT_ROUNDS,
    depth: int = CROSS_FIT_DEPTH,
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction per logged row, prediction per target row), each from the model of the other folds.

    ``x_target`` rows are cards the target policy places; ``target_row`` gives the logged row (and so
    the page) each belongs to.
    """
    x_logged = np.asarray(x_logged, np.float32)
    x_target = np.asarray(x_target, np.float32)
    reward = np.asarray(reward, np.float64)
    if len(x_logged) != len(reward) or len(group) != len(reward):
        raise ValueError("x_logged, reward and group must have one row per logged card")
    if len(x_target) != len(target_row):
        raise ValueError("x_target and target_row must have the same length")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2 for cross-fitting, got {n_folds}")
    _, g = np.unique(group, return_inverse=True)
    fold = page_folds(g.max() + 1, n_folds, seed)[g]
    fold_t = fold[target_row]
    models = fit_fold_models(x_logged, reward, fold, n_folds, seed, rounds, depth)
    return predict_folds(models, x_logged, fold), predict_folds(models, x_target, fold_t)


def fit_fold_models(x: np.ndarray, reward: np.ndarray, fold: np.ndarray, n_folds: int, seed: int,
                    rounds: int = CROSS_FIT_ROUNDS, depth: int = CROSS_FIT_DEPTH) -> list[xgb.Booster | float]:
    """Per fold, the model of the other folds' rows: a booster, or their mean reward when they are one
    class (a constant; the whole log's mean when there are none).  One thread per fold, each booster
    single-threaded, so the models are the same on any number of cores."""
    params = cross_fit_params(seed, depth)

    def fit(f: int) -> xgb.Booster | float:
        train = fold != f
        if not train.any():
            return float(reward.mean())
        if len(np.unique(reward[train])) < 2:
            return float(reward[train].mean())
        return xgb.train(params, xgb.DMatrix(x[train], label=reward[train]), num_boost_round=rounds)

    with ThreadPoolExecutor(n_folds, thread_name_prefix="bartops-cross-fit") as pool:
        models = list(pool.map(fit, range(n_folds)))
    for model in models:  # predictions use every core (threads do not change them)
        if not isinstance(model, float):
            model.set_param({"nthread": os.cpu_count() or 1})
    return models


def predict_folds(models: list[xgb.Booster | float], x: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each row's prediction by its fold's model (a float model is a constant)."""
    out = np.zeros(len(x))
    for k, model in enumerate(models):
        at = fold == k
        if at.any():
            out[at] = model if isinstance(model, float) else model.inplace_predict(np.asarray(x[at], np.float32))
    return out
