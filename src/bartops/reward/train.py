"""Counterfactual training of the XGBoost reward model and its baselines, with validation metrics.

BaRT-style weighting: each logged card gets the sample weight 1/propensity (clipped at
``reward.clip``, optionally normalised to mean 1), so the model is fitted to the whole candidate
space rather than to the logging policy's favourites.  Baselines are trained in the same run on
the same time-based split: the same XGBoost unweighted, a logistic regression, and popularity.
Rows come from ``assemble_rows`` with the logged-response features computed out of fold
(``training_rows``), so no row sees its own reward.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from bartops.features.assemble import FEATURE_NAMES, assemble_impressions, feature_schema_hash
from bartops.features.candidates import EXPLANATION_KINDS
from bartops.features.logstats import impression_kinds, load_impressions, page_folds, response_table, time_split
from bartops.features.store import Features
from bartops.reward.model import LogisticModel, PopularityModel, RewardModel

BASELINES = ("xgboost-unweighted", "logistic", "popularity")


@dataclass(frozen=True)
class RewardParams:
    """``params.yaml`` → ``reward:``."""

    weighting: str = "ips"  # "ips" (1/propensity) or "none"
    clip: float | None = 10.0  # largest sample weight; None = no clipping
    normalize: bool = True  # scale weights to mean 1
    validation_fraction: float = 0.2  # the latest share of page views, by time
    num_boost_round: int = 200
    xgboost: dict = field(default_factory=lambda: {
        "max_depth": 6, "eta": 0.1, "subsample": 1.0, "min_child_weight": 1.0, "lambda": 1.0,
    })
    baselines: tuple[str, ...] = BASELINES
    logistic_C: float = 1.0
    popularity_prior: float = 20.0
    ece_bins: int = 10
    response_folds: int = 5  # out-of-fold folds (by page view) of the logged-response features


    def __post_init__(self) -> None:
        if self.weighting not in ("ips", "none"):
            raise ValueError(f"reward.weighting must be 'ips' or 'none', got {self.weighting!r}")
        if self.clip is not None and not self.clip >= 1:
            raise ValueError(f"reward.clip must be at least 1 (or null), got {self.clip!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"reward.validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        if int(self.num_boost_round) != self.num_boost_round or self.num_boost_round < 1:
            raise ValueError(f"reward.num_boost_round must be a positive integer, got {self.num_boost_round!r}")
        if int(self.response_folds) != self.response_folds or self.response_folds < 2:
            raise ValueError(f"reward.response_folds must be an integer of at least 2, got {self.response_folds!r}")
        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"unknown reward.baselines {bad}; choose from {list(BASELINES)}")

    @staticmethod
    def from_dict(values: dict[str, Any] | None) -> "RewardParams":
        values = dict(values or {})
        known = {f.name for f in fields(RewardParams)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown reward parameter(s) {unknown}")
        if "xgboost" in values:
            values["xgboost"] = {**RewardParams().xgboost, **(values["xgboost"] or {})}
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"] or ())
        return RewardParams(**values)

    def booster_params(self, seed: int) -> dict[str, Any]:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "nthread": os.cpu_count() or 1, "seed": int(seed), **self.xgboost}


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
def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float | int]]:
    """Equal-frequency bins of the predictions: mean prediction, observed rate and rows of each."""
    order = np.argsort(p, kind="stable")
    return [{"predicted": float(p[b].mean()), "observed": float(y[b].mean()), "count": int(len(b))}
            for b in np.array_split(order, min(bins, len(y))) if len(b)]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-frequency bins: Σ_b (n_b/n)·|mean(y_b) − mean(p_b)|."""
    if len(y) == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["observed"] - b["predicted"]) for b in calibration_bins(y, p, bins)) / len(y))


def classification_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float | int | None]:
    """Log loss, AUC (None for one class), ECE, rows and mean label/prediction."""
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(y, np.int64)
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    if len(y) == 0:
        return {"rows": 0, "log_loss": None, "auc": None, "ece": None, "mean_reward": None, "mean_prediction": None}
    return {
        "rows": int(len(y)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "ece": expected_calibration_error(y, p, bins),
        "calibration": calibration_bins(y, p, bins),
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
def training_rows(features: Features, impressions: pd.DataFrame, train: np.ndarray, folds: int) -> np.ndarray:
    """Model input rows of logged impressions, with leak-free logged-response features.

    Rows go through ``assemble_rows`` (via ``assemble_impressions``) with the snapshot's
    ``user_kind`` table replaced by one computed only from other impressions: a training row in
    fold k (folds are page views, ``page_folds``) sees the training rows of the other folds; a
    validation row sees all training rows (as serving sees all logs before it).  A row's own
    reward therefore never enters its own statistic.
    """
    impressions = impressions.reset_index(drop=True)
    train = np.asarray(train, bool)
    user = impressions["user_id"].to_numpy(np.int64)
    kind = impression_kinds(features.explanations, impressions["explanation_id"])
    shelf = impressions["shelf"].to_numpy(np.int64)
    position = impressions["position"].to_numpy(np.int64)
    reward = impressions["reward"].to_numpy(np.float64)
    fold = page_folds(impressions["request_id"], folds)
    rows = np.empty((len(impressions), len(FEATURE_NAMES)), np.float32)

    def fill(target: np.ndarray, source: np.ndarray) -> None:
        if not target.any():
            return
        table = response_table(user[source], kind[source], shelf[source], position[source], reward[source])
        f = features.with_user_kind(table)
        rows[target] = assemble_impressions(f, impressions.loc[target])

    for k in range(folds):
        fill(train & (fold == k), train & (fold != k))
    fill(~train, train)
    return rows


# ---------------------------------------------------------------------- training
def fit_xgboost(rows: np.ndarray, y: np.ndarray, weight: np.ndarray | None, params: RewardParams,
                seed: int) -> xgb.Booster:
    """``xgboost.train`` on assembled rows with the configured params."""
    dtrain = xgb.QuantileDMatrix(rows, label=y, weight=weight, feature_names=list(FEATURE_NAMES))
    return xgb.train(params.booster_params(seed), dtrain, num_boost_round=int(params.num_boost_round))


@dataclass
class TrainingResult:
    """The candidate model, the fitted baselines and every model's validation metrics."""

    model: RewardModel
    baselines: dict[str, Any]
    metrics: dict[str, Any]
    split: dict[str, Any]

    def predictors(self) -> dict[str, Any]:
        return {self.model.name: self.model, **self.baselines}


def train_reward_models(features: Features, impressions: pd.DataFrame, params: dict,
                        data_version: str = "unknown") -> TrainingResult:
    """Train the weighted candidate and the baselines on one time-based split (pure).

    ``params`` is the whole params.yaml mapping (reads ``reward:`` and ``seed``).
    """
    rp = RewardParams.from_dict(params.get("reward"))
    seed = int(params.get("seed", 0))
    check_training_set(impressions)
    impressions = impressions.reset_index(drop=True)
    y = impressions["reward"].to_numpy(np.int64)
    kind = features.explanations["kind"].to_numpy(dtype=object)[features.explanation_codes(impressions["explanation_id"])]
    train = time_split(impressions["timestamp"], rp.validation_fraction)
    valid = ~train
    check_training_set(impressions[train], "training part of the time-based split")
    rows = training_rows(features, impressions, train, rp.response_folds)
    tr_rows, tr_y = rows[train], y[train]
    w = ips_weights(impressions["propensity"].to_numpy()[train], rp.clip, rp.normalize) \
        if rp.weighting == "ips" else None
    booster = fit_xgboost(tr_rows, tr_y, w, rp, seed)
    cutoff = pd.to_datetime(impressions["timestamp"], utc=True)[valid].min()
    model_params = {**asdict(rp), "seed": seed, "booster": rp.booster_params(seed),
                    "feature_schema_hash": feature_schema_hash(), "features_version": features.version,
                    "response_prior": float(features.params.get("response_prior", 2.0)),
                    "data_version": data_version}
    model = RewardModel(booster, FEATURE_NAMES, model_params, {},
                        name="xgboost-weighted" if rp.weighting == "ips" else "xgboost-unweighted")
    baselines: dict[str, Any] = {}
    if "xgboost-unweighted" in rp.baselines and rp.weighting == "ips":
        baselines["xgboost-unweighted"] = RewardModel(fit_xgboost(tr_rows, tr_y, None, rp, seed), FEATURE_NAMES,
                                                      {**model_params, "weighting": "none"}, {}, "xgboost-unweighted")
    if "logistic" in rp.baselines:
        baselines["logistic"] = LogisticModel.fit(tr_rows, tr_y, C=rp.logistic_C, seed=seed)
    if "popularity" in rp.baselines:
        baselines["popularity"] = PopularityModel.fit(impressions["item_id"].to_numpy()[train], tr_y, rp.popularity_prior)

    va_rows, va_y, va_kind = rows[valid], y[valid], kind[valid]
    metrics: dict[str, Any] = {}
    for name, m in {model.name: model, **baselines}.items():
        if isinstance(m, PopularityModel):
            p = m.predict_items(impressions["item_id"].to_numpy()[valid])
        else:
            p = m.predict_rows(va_rows)
        metrics[name] = model_metrics(va_y, p, va_kind, rp.ece_bins)
    split = {"train_rows": int(train.sum()), "validation_rows": int(valid.sum()),
             "validation_from": cutoff.isoformat(), "weighting": rp.weighting, "clip": rp.clip,
             "normalize": rp.normalize,
             "max_weight": float(w.max()) if w is not None else 1.0,
             "ess_fraction": float(w.sum() ** 2 / (w ** 2).sum() / len(w)) if w is not None else 1.0}
    model.metrics = {"validation": metrics[model.name], "split": split}
    for name, b in baselines.items():
        if isinstance(b, RewardModel):
            b.metrics = {"validation": metrics[name], "split": split}
    return TrainingResult(model, baselines, {"models": metrics, "split": split}, split)
