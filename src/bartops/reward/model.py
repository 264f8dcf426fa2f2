"""Reward models: P(stream | context, item, explanation, slot), saved as XGBoost UBJ + schema.json.

``RewardModel`` (the counterfactually weighted XGBoost candidate, and its unweighted twin) and the
baselines ``LogisticModel`` (scikit-learn) and ``PopularityModel`` share one ``predict`` signature,
so any of them can be a page-policy scorer (``bartops.reward.policy.model_scorer``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import xgboost as xgb

from bartops.faults import crash_point
from bartops.features.arrays import native_threads
from bartops.features.assemble import FEATURE_NAMES, SLOT_COLUMNS, assemble_rows, feature_schema_hash
from bartops.features.store import Features, atomic_replace_dir
from bartops.leftovers import make_temp_dir, recover_leftovers
from bartops.policy.page import CandidateSet

MODEL_FILE = "model.ubj"
SCHEMA_FILE = "schema.json"
MARGIN_FILE = "margin.json"  # the logistic base margin of a stacked model (exact JSON floats)
SCHEMA_FORMAT = 1


class SchemaMismatchError(ValueError):
    """A saved model was trained on a different feature layout than this code assembles."""


class Predictor(Protocol):
    """Anything that predicts P(stream) for candidates of contexts at a slot."""

    name: str

    def predict(self, features: Features, contexts: pd.DataFrame, candidates: CandidateSet,
                shelf: int | np.ndarray = 0, position: int | np.ndarray = 0) -> np.ndarray: ...


@dataclass
class RewardModel:
    """An XGBoost booster over ``FEATURE_NAMES`` rows, with its params and training metrics.

    Stacked (``margin`` set): the booster's trees add to the logistic regression's log-odds,
    given to XGBoost as ``base_margin`` in training and in every prediction.
    """

    booster: xgb.Booster
    feature_names: tuple[str, ...] = FEATURE_NAMES
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = "xgboost-weighted"
    margin: "LogisticModel | None" = None

    def base_margin(self, rows: np.ndarray) -> np.ndarray | None:
        """The stacked logistic log-odds of the rows (None for a plain booster)."""
        return None if self.margin is None else self.margin.decision(rows)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """P(stream) of assembled rows (float32, columns ``feature_names``)."""
        rows = np.asarray(rows, np.float32)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names):
            raise ValueError(f"rows must have shape (n, {len(self.feature_names)}), got {rows.shape}")
        if len(rows) == 0:
            return np.zeros(0)
        return self.booster.inplace_predict(rows, validate_features=False,
                                            base_margin=self.base_margin(rows)).astype(np.float64)

    def predict(self, features: Features, contexts: pd.DataFrame, candidates: CandidateSet,
                shelf: int | np.ndarray = 0, position: int | np.ndarray = 0) -> np.ndarray:
        """P(stream) of each candidate at the given slot (default the top-left reference slot)."""
        return self.predict_rows(assemble_rows(features, contexts, candidates, shelf, position))


@dataclass
class LogisticModel:
    """Baseline: scikit-learn logistic regression on standardised ``FEATURE_NAMES`` rows.

    The columns ``log_columns`` (by default the slot, ``SLOT_COLUMNS``) enter as log(1 + x): the
    examination of a slot decays multiplicatively down the page and along a shelf, so its log-odds
    are close to linear in log(1 + shelf) and log(1 + position), not in the slot numbers themselves
    (docs/reward-model.md).  A model saved before this option has none (``from_dict``).
    """

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    name: str = "logistic"
    log_columns: tuple[int, ...] = ()

    @staticmethod
    def fit(rows: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, C: float = 1.0,
            seed: int = 0, log_columns: tuple[int, ...] = SLOT_COLUMNS) -> "LogisticModel":
        from sklearn.linear_model import LogisticRegression

        x = log_inputs(rows, log_columns)  # a copy, standardised in place
        mean = x.mean(axis=0)
        z = np.subtract(x, mean, out=x)
        scale = np.sqrt(np.add.reduce(z * z, axis=0) / max(len(z), 1))  # x.std(axis=0), the same floats
        scale[scale == 0] = 1.0
        z /= scale
        lr = LogisticRegression(C=C, max_iter=500, random_state=seed)
        with native_threads():  # faster at these sizes, and the same coefficients on any core count
            lr.fit(z, y, sample_weight=sample_weight)
        return LogisticModel(lr.coef_.ravel().copy(), float(lr.intercept_[0]), mean, scale,
                             log_columns=tuple(int(c) for c in log_columns))

    def decision(self, rows: np.ndarray, block: int = 16384) -> np.ndarray:
        """Log-odds of the rows (float64): the standardisation folded into the coefficients (one pass),
        in blocks of ``block`` rows (float64 copies that stay in cache; the same values)."""
        w = self.coef / self.scale
        b = self.intercept - float(self.mean @ w)
        rows = np.asarray(rows)
        if len(rows) <= block:
            return log_inputs(rows, self.log_columns) @ w + b
        out = np.empty(len(rows))
        for lo in range(0, len(rows), block):
            out[lo:lo + block] = log_inputs(rows[lo:lo + block], self.log_columns) @ w
        return out + b

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(rows)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready coefficients (Python floats round-trip exactly through ``json``)."""
        return {"coef": self.coef.tolist(), "intercept": float(self.intercept), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "log_columns": list(self.log_columns)}

    @staticmethod
    def from_dict(values: dict[str, Any], n_features: int) -> "LogisticModel":
        """Inverse of ``to_dict``; ValueError if a part is missing or has the wrong length."""
        try:
            arrays = [np.asarray(values[k], np.float64) for k in ("coef", "mean", "scale")]
            intercept = float(values["intercept"])
            log_columns = tuple(int(c) for c in values.get("log_columns", ()))  # none before the option
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"logistic coefficients are incomplete: {exc}") from None
        if any(a.shape != (n_features,) for a in arrays):
            raise ValueError(f"logistic coefficients must have {n_features} values each, got "
                             f"{[a.shape for a in arrays]}")
        if any(not 0 <= c < n_features for c in log_columns):
            raise ValueError(f"log_columns {list(log_columns)} must index the {n_features} features")
        return LogisticModel(arrays[0], intercept, arrays[1], arrays[2], log_columns=log_columns)


def log_inputs(rows: np.ndarray, log_columns: tuple[int, ...]) -> np.ndarray:
    """A float64 copy of ``rows`` with the columns ``log_columns`` replaced by log(1 + x)."""
    x = np.array(rows, np.float64)
    if log_columns:
        cols = list(log_columns)
        x[:, cols] = np.log1p(x[:, cols])
    return x

    def predict(self, features: Features, contexts: pd.DataFrame, candidates: CandidateSet,
                shelf: int | np.ndarray = 0, position: int | np.ndarray = 0) -> np.ndarray:
        return self.predict_rows(assemble_rows(features, contexts, candidates, shelf, position))


@dataclass
class PopularityModel:
    """Baseline: each item's smoothed stream rate in the training logs (context- and slot-blind).

    Items never logged get the global rate; ties between them are broken by catalog popularity.
    """

    item_ids: np.ndarray
    rate: np.ndarray
    global_rate: float
    name: str = "popularity"

    @staticmethod
    def fit(item_id: np.ndarray, reward: np.ndarray, prior_strength: float = 20.0) -> "PopularityModel":
        item_id = np.asarray(item_id, np.int64)
        reward = np.asarray(reward, np.float64)
        g = float(reward.mean()) if len(reward) else 0.0
        ids, inv = np.unique(item_id, return_inverse=True)
        hits = np.bincount(inv, weights=reward, minlength=len(ids))
        n = np.bincount(inv, minlength=len(ids))
        return PopularityModel(ids, (hits + prior_strength * g) / (n + prior_strength), g)

    def predict_items(self, item_id: np.ndarray) -> np.ndarray:
        item_id = np.asarray(item_id, np.int64)
        if len(self.item_ids) == 0:
            return np.full(len(item_id), self.global_rate)
        pos = np.minimum(np.searchsorted(self.item_ids, item_id), len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_id, self.rate[pos], self.global_rate)

    def predict(self, features: Features, contexts: pd.DataFrame, candidates: CandidateSet,
                shelf: int | np.ndarray = 0, position: int | np.ndarray = 0) -> np.ndarray:
        ipos = features.item_index(candidates.item_id)
        tiebreak = 1e-9 * features.item_stats["log_popularity"].to_numpy()[ipos]
        return self.predict_items(candidates.item_id) + tiebreak


# ---------------------------------------------------------------------- persistence
def save_model(model: RewardModel, dir: Path) -> Path:
    """Write ``model.ubj`` and ``schema.json`` (feature names + hash, params, metrics) atomically."""
    out = Path(dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(out.parent)  # what a killed earlier step left beside it
    tmp = make_temp_dir(out)
    try:
        model.booster.save_model(str(tmp / MODEL_FILE))
        crash_point(f"write-dir:{out.name}:partial")
        if model.margin is not None:
            (tmp / MARGIN_FILE).write_text(json.dumps(model.margin.to_dict()))
        schema = {
            "format": SCHEMA_FORMAT,
            "name": model.name,
            "feature_names": list(model.feature_names),
            "feature_schema_hash": feature_schema_hash(tuple(model.feature_names)),
            "params": model.params,
            "margin": "logistic" if model.margin is not None else None,
            "metrics": model.metrics,
            "xgboost_version": xgb.__version__,
        }
        (tmp / SCHEMA_FILE).write_text(json.dumps(schema, indent=2, default=_json_default))
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_model(dir: Path) -> RewardModel:
    """Read a model written by ``save_model``.

    Raises FileNotFoundError if a file is missing and SchemaMismatchError if the model was trained
    on another feature layout than ``FEATURE_NAMES`` (retrain it with this code).
    """
    d = Path(dir)
    for f in (MODEL_FILE, SCHEMA_FILE):
        if not (d / f).exists():
            raise FileNotFoundError(f"no reward model in {d} ({f} missing): run `bartops train`")
    schema = json.loads((d / SCHEMA_FILE).read_text())
    names = tuple(schema.get("feature_names", ()))
    if names != FEATURE_NAMES or schema.get("feature_schema_hash") != feature_schema_hash():
        extra = sorted(set(names) - set(FEATURE_NAMES))[:5]
        lacking = sorted(set(FEATURE_NAMES) - set(names))[:5]
        raise SchemaMismatchError(
            f"model in {d} was trained on feature schema {schema.get('feature_schema_hash')!r} "
            f"({len(names)} features), this code assembles {feature_schema_hash()!r} ({len(FEATURE_NAMES)}); "
            f"unknown to this code: {extra}, missing from the model: {lacking}; retrain with `bartops train`"
        )
    booster = xgb.Booster()
    booster.load_model(str(d / MODEL_FILE))
    if booster.num_features() != len(FEATURE_NAMES):
        raise SchemaMismatchError(f"model in {d} expects {booster.num_features()} features, schema.json says {len(names)}")
    margin = None
    if schema.get("margin") == "logistic":
        if not (d / MARGIN_FILE).exists():
            raise FileNotFoundError(f"stacked reward model in {d} lacks {MARGIN_FILE} (its logistic base margin)")
        try:
            margin = LogisticModel.from_dict(json.loads((d / MARGIN_FILE).read_text()), len(names))
        except ValueError as exc:
            raise SchemaMismatchError(f"model in {d}: {MARGIN_FILE}: {exc}") from None
    elif schema.get("margin") is not None:
        raise SchemaMismatchError(f"model in {d} has an unknown base margin {schema.get('margin')!r}")
    return RewardModel(booster, names, schema.get("params", {}), schema.get("metrics", {}),
                       schema.get("name", "xgboost"), margin)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
