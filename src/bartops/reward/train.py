"""Counterfactual training of the XGBoost reward model and its baselines, with validation metrics.

BaRT-style weighting: each logged card gets the sample weight 1/propensity (clipped at
``reward.clip``, optionally normalised to mean 1), so the model is fitted to the whole candidate
space rather than to the logging policy's favourites.  Baselines are trained in the same run on
the same time-based split: the same XGBoost unweighted, a logistic regression, and popularity.
Rows come from ``assemble_rows`` with the logged-response features computed out of fold
(``training_rows``), so no row sees its own reward: every row is assembled once and only the four
response columns are recomputed per fold (``fold_response_tables`` → ``rows_from_tables``, the
split that lets a partitioned trainer build the same rows).  With ``reward.stack: logistic`` the
trees are fitted on top of a logistic regression's log-odds (XGBoost ``base_margin``), which the
saved model carries (``margin.json``) and applies on every prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from bartops.config import Params, RewardParams
from bartops.features.arrays import native_threads
from bartops.features.assemble import (FEATURE_NAMES, RESPONSE_NAMES, assemble_rows, feature_schema_hash,
                                       impression_inputs, response_columns)
from bartops.features.candidates import EXPLANATION_KINDS
from bartops.features.logstats import page_folds, response_tables, time_split
from bartops.features.store import Features
from bartops.reward.model import LogisticModel, PopularityModel, RewardModel





# ---------------------------------------------------------------------- input
def check_training_set(impressions: pd.DataFrame, name: str = "training set") -> None:
    """Raise ValueError naming the problem: empty, one class, bad propensities or rewards."""
    if len(impressions) == 0:
        raise ValueError(f"{name} is empty: no logged impressions to learn from")
    for col in ("reward", "propensity", "timestamp", "item_id", "explanation_id", "shelf", "position"):
        if col not in impressions.columns:
            raise ValueError(f"{name} lacks column {col!r}")
    r = impressions["reward"].to_numpy()
    if not np.isin(r, (0, 1)).all():
        raise ValueError(f"{name}: reward must be 0 or 1")
    if r.min() == r.max():
        raise ValueError(f"{name} has only one class (every reward is {int(r[0])}): a stream model cannot be fitted")
    p = impressions["propensity"].to_numpy(np.float64)
    bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} propensities outside (0, 1], e.g. {p[bad][:3].tolist()}")


def ips_weights(propensity: np.ndarray, clip: float | None, normalize: bool) -> np.ndarray:
    """1/propensity, clipped at ``clip``, optionally scaled to mean 1."""
    p = np.asarray(propensity, np.float64)
    if len(p) and not (np.isfinite(p) & (p > 0) & (p <= 1)).all():
        raise ValueError("propensities must lie in (0, 1]")
    w = 1.0 / p
    if clip is not None:
        w = np.minimum(w, clip)
    if normalize and len(w):
        w = w / w.mean()
    return w


# ---------------------------------------------------------------------- metrics
def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10,
                     order: np.ndarray | None = None) -> list[dict[str, float | int]]:
    """Equal-frequency bins of the predictions: mean prediction, observed rate and rows of each.

    ``order``: ``np.argsort(p, kind="stable")`` if computed already.
    """
    order = np.argsort(p, kind="stable") if order is None else order
    return [{"predicted": float(p[b].mean()), "observed": float(y[b].mean()), "count": int(len(b))}
            for b in np.array_split(order, min(bins, len(y))) if len(b)]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-frequency bins: Σ_b (n_b/n)·|mean(y_b) − mean(p_b)|."""
    if len(y) == 0:
        return float("nan")
    return _ece(calibration_bins(y, p, bins), len(y))


def _ece(bins: list[dict[str, float | int]], n: int) -> float:
    return float(sum(b["count"] * abs(b["observed"] - b["predicted"]) for b in bins) / n)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of 0/1 labels ``y`` under probabilities ``p`` in (0, 1)."""
    return float(-np.mean(np.where(np.asarray(y) == 1, np.log(p), np.log1p(-p))))


def roc_auc(y: np.ndarray, p: np.ndarray, order: np.ndarray | None = None) -> float:
    """Area under the ROC curve of scores ``p`` for 0/1 labels ``y`` (both classes present): the
    Mann–Whitney statistic with tied scores at their average rank, which equals the trapezoidal area
    ``sklearn.metrics.roc_auc_score`` computes.  ``order``: ``np.argsort(p, kind="stable")`` if known.
    """
    order = np.argsort(p, kind="stable") if order is None else order
    ps, ys = np.asarray(p)[order], np.asarray(y)[order]
    first = np.r_[True, ps[1:] != ps[:-1]]
    start = np.nonzero(first)[0]
    mean_rank = (start + np.r_[start[1:], len(ps)] + 1) / 2.0  # ranks start+1 … end of each tie group
    n_pos = float(ys.sum())
    n_neg = len(ys) - n_pos
    rank_sum = float(mean_rank[np.cumsum(first) - 1][ys == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def classification_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float | int | None]:
    """Log loss, AUC (None for one class), ECE, rows and mean label/prediction."""
    y = np.asarray(y, np.int64)
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    if len(y) == 0:
        return {"rows": 0, "log_loss": None, "auc": None, "ece": None, "mean_reward": None, "mean_prediction": None}
    order = np.argsort(p, kind="stable")
    calibration = calibration_bins(y, p, bins, order)
    return {
        "rows": int(len(y)),
        "log_loss": log_loss(y, p),
        "auc": roc_auc(y, p, order) if 0 < y.sum() < len(y) else None,
        "ece": _ece(calibration, len(y)),
        "calibration": calibration,
        "mean_reward": float(y.mean()),
        "mean_prediction": float(p.mean()),
    }


def model_metrics(y: np.ndarray, p: np.ndarray, kind: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Overall metrics plus the same per explanation kind."""
    out = classification_metrics(y, p, bins)
    out["by_kind"] = {k: classification_metrics(y[kind == k], p[kind == k], bins)
                      for k in EXPLANATION_KINDS if (kind == k).any()}
    return out


# ---------------------------------------------------------------------- training rows
@dataclass(frozen=True)
class LoggedCodes:
    """Integer arrays of logged impressions (explanation ids encoded once), row-aligned."""

    user: np.ndarray
    explanation: np.ndarray  # row of ``features.explanations``
    kind: np.ndarray  # index in EXPLANATION_KINDS
    shelf: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    fold: np.ndarray  # ``page_folds`` of the request ids

    @staticmethod
    def of(features: Features, impressions: pd.DataFrame, folds: int) -> "LoggedCodes":
        explanation = features.explanation_codes(impressions["explanation_id"])
        return LoggedCodes(
            user=impressions["user_id"].to_numpy(np.int64), explanation=explanation,
            kind=features.kind_codes(explanation), shelf=impressions["shelf"].to_numpy(np.int64),
            position=impressions["position"].to_numpy(np.int64),
            reward=impressions["reward"].to_numpy(np.float64), fold=page_folds(impressions["request_id"], folds))

    @staticmethod
    def concat(parts: list["LoggedCodes"]) -> "LoggedCodes":
        """The codes of several sets of impressions, one after the other."""
        return LoggedCodes(*(np.concatenate([getattr(c, f.name) for c in parts]) for f in fields(LoggedCodes)))


def _train_mask(train: np.ndarray, n: int) -> np.ndarray:
    train = np.asarray(train, bool)
    if train.shape != (n,):
        raise ValueError(f"train mask must have one value per impression ({n}), got shape {train.shape}")
    return train


def fold_tables(codes: LoggedCodes, train: np.ndarray, folds: int) -> list[pd.DataFrame]:
    """``fold_response_tables`` of the rows' codes (row-aligned with the ``train`` mask)."""
    sources = [train & (codes.fold != k) for k in range(folds)] + [train]
    return response_tables(codes.user, codes.kind, codes.shelf, codes.position, codes.reward, sources)


def _rows(features: Features, impressions: pd.DataFrame, codes: LoggedCodes, train: np.ndarray,
          tables: list[pd.DataFrame], folds: int) -> np.ndarray:
    if len(tables) != folds + 1:
        raise ValueError(f"expected {folds + 1} response tables (one per fold, then all training rows), got {len(tables)}")
    contexts, cands, shelf, position = impression_inputs(features, impressions, codes.explanation)
    # the response columns of each row from its table (the targets partition the rows), the rest once
    response = np.empty((len(impressions), len(RESPONSE_NAMES)), np.float32)
    targets = [train & (codes.fold == k) for k in range(folds)] + [~train]
    for table, target in zip(tables, targets):
        if target.any():
            response[target] = response_columns(features.with_user_kind(table), codes.user[target], codes.kind[target])
    return assemble_rows(features, contexts, cands, shelf, position, response)


def fold_response_tables(features: Features, impressions: pd.DataFrame, train: np.ndarray,
                         folds: int) -> list[pd.DataFrame]:
    """The ``folds + 1`` user × kind response tables (``response_table``) of leak-free training rows.

    Entry k < folds comes from the training rows outside fold k (folds are page views,
    ``page_folds``); entry ``folds`` from all training rows (what validation and serving see).
    """
    impressions = impressions.reset_index(drop=True)
    train = _train_mask(train, len(impressions))
    return fold_tables(LoggedCodes.of(features, impressions, folds), train, folds)


def rows_from_tables(features: Features, impressions: pd.DataFrame, train: np.ndarray,
                     tables: list[pd.DataFrame], folds: int) -> np.ndarray:
    """Model rows (float32, ``FEATURE_NAMES``) of impressions given ``fold_response_tables``.

    A training row in fold k gets its response columns from ``tables[k]``, a validation row from
    ``tables[folds]``; every other column is ``assemble_rows``.  Works on any subset of the
    impressions given the tables of the whole set (each row's result depends on the row alone).
    """
    impressions = impressions.reset_index(drop=True)
    train = _train_mask(train, len(impressions))
    return _rows(features, impressions, LoggedCodes.of(features, impressions, folds), train, tables, folds)


def training_rows(features: Features, impressions: pd.DataFrame, train: np.ndarray, folds: int) -> np.ndarray:
    """Model input rows of logged impressions, with leak-free logged-response features.

    ``rows_from_tables(…, fold_response_tables(…))``: a training row in fold k sees the training
    rows of the other folds; a validation row sees all training rows (as serving sees all logs
    before it).  A row's own reward therefore never enters its own statistic.
    """
    impressions = impressions.reset_index(drop=True)
    train = _train_mask(train, len(impressions))
    codes = LoggedCodes.of(features, impressions, folds)
    return _rows(features, impressions, codes, train, fold_tables(codes, train, folds), folds)


# ---------------------------------------------------------------------- training
def _fit_booster(rows: np.ndarray, y: np.ndarray, weight: np.ndarray | None, base_margin: np.ndarray | None,
                 params: RewardParams, seed: int) -> xgb.Booster:
    dtrain = xgb.QuantileDMatrix(rows, label=y, weight=weight, base_margin=base_margin,
                                 feature_names=list(FEATURE_NAMES))
    return xgb.train(params.booster_params(seed), dtrain, num_boost_round=int(params.num_boost_round))


def fit_stack_margin(rows: np.ndarray, y: np.ndarray, params: RewardParams, seed: int) -> LogisticModel | None:
    """The logistic regression a stacked model's trees start from (None unless ``stack: logistic``).

    Fitted unweighted on at most ``stack_rows`` training rows (a seeded sample, in row order):
    its few coefficients need far fewer rows than the trees.
    """
    if params.stack == "none":
        return None
    if len(rows) > params.stack_rows:
        keep = np.sort(np.random.default_rng([seed, 17]).choice(len(rows), int(params.stack_rows), replace=False))
        rows, y = rows[keep], y[keep]
    return LogisticModel.fit(rows, y, C=params.logistic_C, seed=seed)


def _take(rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rows[mask]``; a view when the mask is one contiguous run (time-sorted logs: the training prefix)."""
    idx = np.flatnonzero(mask)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return rows[idx[0]:idx[-1] + 1]
    return rows[mask]


def candidate_params(rp: RewardParams, seed: int, features: Features, data_version: str) -> dict[str, Any]:
    """The candidate model's parameters as saved with it (training, booster, features and data versions)."""
    return {**asdict(rp), "seed": seed, "booster": rp.booster_params(seed), "feature_schema_hash": feature_schema_hash(),
            "features_version": features.version, "response_prior": float(features.params.get("response_prior", 2.0)),
            "data_version": data_version}


def split_summary(rp: RewardParams, train_rows: int, validation_rows: int, cutoff: pd.Timestamp,
                  weight: np.ndarray | None) -> dict[str, Any]:
    """The time split and the training weights' summary (largest weight, effective sample share)."""
    w = weight
    return {"train_rows": train_rows, "validation_rows": validation_rows, "validation_from": cutoff.isoformat(),
            "weighting": rp.weighting, "clip": rp.clip, "normalize": rp.normalize,
            "max_weight": float(w.max()) if w is not None else 1.0,
            "ess_fraction": float(w.sum() ** 2 / (w ** 2).sum() / len(w)) if w is not None else 1.0}


@dataclass
class TrainingResult:
    """The candidate model, the fitted baselines and every model's validation metrics."""

    model: RewardModel
    baselines: dict[str, Any]
    metrics: dict[str, Any]
    split: dict[str, Any]

    def predictors(self) -> dict[str, Any]:
        return {self.model.name: self.model, **self.baselines}


def train_reward_models(features: Features, impressions: pd.DataFrame, params: Params,
                        data_version: str = "unknown") -> TrainingResult:
    """Train the weighted candidate and the baselines on one time-based split (pure).

    Reads ``params.reward`` and ``params.seed``.
    """
    rp, seed = params.reward, params.seed
    check_training_set(impressions)
    impressions = impressions.reset_index(drop=True)
    y = impressions["reward"].to_numpy(np.int64)
    train = time_split(impressions["timestamp"], rp.validation_fraction)
    valid = ~train
    if y[train].min() == y[train].max():  # the rest of check_training_set holds for every row already
        raise ValueError(f"training part of the time-based split has only one class (every reward is "
                         f"{int(y[train][0])}): a stream model cannot be fitted")
    with native_threads():  # numpy and scikit-learn steps; XGBoost below keeps its own threads
        codes = LoggedCodes.of(features, impressions, rp.response_folds)
        rows = _rows(features, impressions, codes, train, fold_tables(codes, train, rp.response_folds), rp.response_folds)
        tr_rows, tr_y = _take(rows, train), y[train]
        w = ips_weights(impressions["propensity"].to_numpy()[train], rp.clip, rp.normalize) \
            if rp.weighting == "ips" else None
        margin = fit_stack_margin(tr_rows, tr_y, rp, seed)
        tr_margin = None if margin is None else margin.decision(tr_rows)
    booster = _fit_booster(tr_rows, tr_y, w, tr_margin, rp, seed)
    cutoff = pd.to_datetime(impressions["timestamp"], utc=True)[valid].min()
    model_params = candidate_params(rp, seed, features, data_version)
    model = RewardModel(booster, FEATURE_NAMES, model_params, {},
                        name="xgboost-weighted" if rp.weighting == "ips" else "xgboost-unweighted", margin=margin)
    baselines: dict[str, Any] = {}
    b_rows, b_y, b_margin = tr_rows, tr_y, tr_margin  # baselines: a seeded sample when the logs are large
    if rp.baseline_rows is not None and len(tr_rows) > rp.baseline_rows:
        keep = np.sort(np.random.default_rng([seed, 19]).choice(len(tr_rows), int(rp.baseline_rows), replace=False))
        b_rows, b_y = tr_rows[keep], tr_y[keep]
        b_margin = None if tr_margin is None else tr_margin[keep]
    if "xgboost-unweighted" in rp.baselines and rp.weighting == "ips":
        baselines["xgboost-unweighted"] = RewardModel(_fit_booster(b_rows, b_y, None, b_margin, rp, seed),
                                                      FEATURE_NAMES, {**model_params, "weighting": "none"}, {},
                                                      "xgboost-unweighted", margin)
    if "logistic" in rp.baselines:
        baselines["logistic"] = LogisticModel.fit(b_rows, b_y, C=rp.logistic_C, seed=seed)
    if "popularity" in rp.baselines:
        baselines["popularity"] = PopularityModel.fit(impressions["item_id"].to_numpy()[train], tr_y, rp.popularity_prior)

    va_rows, va_y = _take(rows, valid), y[valid]
    va_kind = np.asarray(EXPLANATION_KINDS, dtype=object)[codes.kind[valid]]
    metrics: dict[str, Any] = {}
    for name, m in {model.name: model, **baselines}.items():
        if isinstance(m, PopularityModel):
            p = m.predict_items(impressions["item_id"].to_numpy()[valid])
        else:
            p = m.predict_rows(va_rows)
        metrics[name] = model_metrics(va_y, p, va_kind, rp.ece_bins)
    split = {**split_summary(rp, int(train.sum()), int(valid.sum()), cutoff, w), "baseline_rows": int(len(b_rows))}
    model.metrics = {"validation": metrics[model.name], "split": split}
    for name, b in baselines.items():
        if isinstance(b, RewardModel):
            b.metrics = {"validation": metrics[name], "split": split}
    return TrainingResult(model, baselines, {"models": metrics, "split": split}, split)
