"""Evaluate a candidate page policy (and production) on impression logs: the gate's evidence.

Production defaults to the logging policy recorded in the logs: its value is then the on-policy
mean reward per page (weights 1).  Rows whose logging marginal the Monte Carlo found to be 0
(the logged card needs a rarely sampled prefix) cannot be weighted; they get weight 0, which biases
IIPS downward for candidates that often build such pages — their share is reported as
``mc_unsupported`` and the bias is measured in ``bench/ope_accuracy.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from bartops.ope.estimators import DR, IPS, SNIPS, Estimate, evaluate_many, paired_difference
from bartops.ope.reward import cross_fit
from bartops.ope.slate import (
    LoggedPages,
    logging_probabilities,
    probabilities_of_logged_actions,
    slot_marginal_probabilities,
    target_cards,
)
from bartops.ope.validate import check_inputs
from bartops.policy.page import CandidateSet, PagePolicy

Featurize = Callable[[pd.DataFrame, CandidateSet, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OPEConfig:
    probability: str = "marginal"
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    marginal_samples: int = 100
    clip: float | None = None
    folds: int = 2

    @staticmethod
    def from_dict(values: dict | None) -> "OPEConfig":
        values = dict(values or {})
        known = set(OPEConfig.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ope parameter(s) {unknown}; known: {sorted(known)}")
        return OPEConfig(**values)


def logging_marginals(logging: PagePolicy, logs: LoggedPages, candidates: CandidateSet, cfg: OPEConfig):
    """The logging policy's slot marginals of the logged cards (RB Monte Carlo, see ope.slate)."""
    return slot_marginal_probabilities(logging, logs.contexts, candidates, logs.page, logs.shelf, logs.position,
                                       logs.item_id, logs.explanation, cfg.marginal_samples, cfg.seed)


def evaluate_policies(
    logs: LoggedPages,
    logging_marginal: np.ndarray | None,
    targets: dict[str, tuple[PagePolicy, CandidateSet] | None],
    cfg: OPEConfig,
    shelves: int,
    cards: int,
    featurize: Featurize | None = None,
    kinds: np.ndarray | None = None,
) -> dict:
    """Estimates for each target (None = the logging policy itself), paired differences of the
    first target against each other one, and per-explanation-kind IPS values.

    ``logging_marginal`` is required for ``cfg.probability == 'marginal'``.  With ``featurize``
    (contexts, cards, shelf, position) → features, DR uses a cross-fitted XGBoost reward model.
    ``kinds`` gives the explanation kind of each logged row.
    """
    if cfg.probability == "marginal" and logging_marginal is None:
        raise ValueError("the marginal (IIPS) weights need the logging policy's slot marginals")
    lg = logging_probabilities(logs, shelves, cards, logging_marginal)
    p_log = lg.kind(cfg.probability)
    unsupported = ~(p_log > 0)
    p = np.where(unsupported, 1.0, p_log)
    stratum = logs.shelf * cards + logs.position
    x_logged = None
    if featurize is not None:
        x_logged = featurize(logs.contexts, CandidateSet(logs.page, logs.item_id, logs.explanation, logs.n_pages,
                                                         np.ones(len(logs), bool)), logs.shelf, logs.position)
    data, diag = {}, {}
    pred_logged = None
    for name, spec in targets.items():
        if spec is None:
            q = p.copy()
            q[unsupported] = 0.0
            exp_rows = None
        else:
            policy, cands = spec
            probs = probabilities_of_logged_actions(policy, logs, cands, cfg.marginal_samples, cfg.seed)
            q = np.where(unsupported, 0.0, probs.kind(cfg.probability))
            exp_rows = (policy, cands)
        prediction = expected = None
        if x_logged is not None:
            if spec is None:
                tcards, has = CandidateSet(logs.page, logs.item_id, logs.explanation, logs.n_pages,
                                           np.ones(len(logs), bool)), np.ones(len(logs), bool)
            else:
                tcards, has = target_cards(exp_rows[0], logs, exp_rows[1], seed=cfg.seed)
            x_t = featurize(logs.contexts, tcards, logs.shelf[has], logs.position[has])
            pl, pt = cross_fit(x_logged, logs.reward, logs.page, x_t, np.flatnonzero(has), cfg.folds, cfg.seed)
            pred_logged = pl if pred_logged is None else pred_logged
            prediction = pred_logged
            expected = np.zeros(len(logs))
            expected[has] = pt
        data[name] = check_inputs(logs.reward, p, q, logs.page, stratum, prediction, expected)
        diag[name] = {"mc_unsupported": float(unsupported.mean()),
                      "matched": float((q > 0).mean())}
    ests = [IPS(cfg.clip), SNIPS(cfg.clip)] + ([DR(cfg.clip)] if x_logged is not None else [])
    estimates = {name: evaluate_many(ests, d, cfg.n_boot, cfg.level, cfg.seed) for name, d in data.items()}
    names = list(targets)
    differences = {}
    for other in names[1:]:
        differences[other] = {e.name: paired_difference(e, data[names[0]], data[other], cfg.n_boot, cfg.level,
                                                        cfg.seed) for e in ests}
    per_kind = {}
    if kinds is not None:
        kinds = np.asarray(kinds).astype(str)
        for k in sorted(set(kinds)):
            mask = kinds == k
            per_kind[k] = {name: float((d.target / d.propensity * d.reward * mask).sum() / d.n_groups)
                           for name, d in data.items()}
    return {"estimates": estimates, "differences": differences, "per_kind": per_kind, "diagnostics": diag}


def estimate_table(result: dict) -> list[dict]:
    """Rows (policy, estimator, value, ci_low, ci_high, ess, max_weight, support) for reports."""
    rows = []
    for policy, ests in result["estimates"].items():
        for name, e in ests.items():
            rows.append(_row(policy, e))
    for other, ests in result["differences"].items():
        for name, e in ests.items():
            rows.append(_row(f"candidate - {other}", e))
    return rows


def _row(policy: str, e: Estimate) -> dict:
    return {"policy": policy, "estimator": e.estimator, "value": round(e.value, 5), "ci_low": round(e.ci_low, 5),
            "ci_high": round(e.ci_high, 5), "ess": round(e.ess, 1), "max_weight": round(e.max_weight, 2),
            "support": round(e.support, 4)}
