"""The gate's decision as one typed artefact with one JSON form: ``gate.json``.

The gate writes it (``bartops evaluate``, the ``evaluate-and-gate`` flow), the registry stores it
beside the version, and the dashboard and the CLI read it back with ``GateDecision.from_dict``,
which accepts exactly what ``to_dict`` writes and otherwise raises a ``ValueError`` naming the key.

A decision's life: ``pending`` (the bundle is registered, nothing decided; what
``write_policy_bundle`` starts with), then decided by the rules (``promote`` or ``reject``), with
``status`` ``awaiting_approval`` while a reviewer is asked (``flow_run_id`` is the paused run), and
``decided`` once final.  A promotion a reviewer does not approve becomes a ``reject`` with the
failed rule ``approval``.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from bartops.config import GateParams, OPEConfig, reject_unknown
from bartops.gate.rules import RuleResult
from bartops.ope.kinds import KindLift
from bartops.ope.pipeline import EstimateRow, LoggingSummary, TargetDiagnostics

DECISIONS = ("pending", "promote", "reject")
STATUSES = ("pending", "awaiting_approval", "decided")
DIFFERENCE = "candidate - production"  # the OPE table's policy label of the paired difference


def _typed(cls, value: Any, where: str, **converted: Any):
    """``cls(**value)`` for a dataclass, with errors that name ``where`` and the offending keys;
    ``converted`` holds nested fields the caller has already built."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object, got {type(value).__name__}")
    reject_unknown(cls, value, where)
    missing = sorted(f.name for f in fields(cls)
                     if f.default is MISSING and f.default_factory is MISSING and f.name not in value)
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    try:
        return cls(**{**value, **converted})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class WeightHistogram:
    """Log10-binned histogram of a policy's positive importance weights; zeros counted apart."""

    edges: list[float]
    counts: list[float]
    log_x: bool
    zeros: int

    @staticmethod
    def of(weights: np.ndarray, bins: int = 30) -> "WeightHistogram | None":
        """``bins`` log10 bins over the positive weights (None for no weights at all)."""
        w = np.asarray(weights, np.float64)
        if not len(w):
            return None
        pos = w[w > 0]
        if not len(pos):
            return WeightHistogram([0.0, 1.0], [float(len(w))], False, int(len(w)))
        lw = np.log10(pos)
        lo, hi = float(np.floor(lw.min() * 4) / 4), float(np.ceil(lw.max() * 4) / 4)
        if hi <= lo:
            hi = lo + 0.25
        counts, edges = np.histogram(lw, bins=bins, range=(lo, hi))
        return WeightHistogram(edges.tolist(), counts.astype(float).tolist(), True, int((w == 0).sum()))


@dataclass(frozen=True)
class PolicyWeights:
    """A policy's weight diagnostics as the decision keeps them (the weights themselves summarised)."""

    policy: str
    ess: float
    max_weight: float
    nonzero_weights: int
    support_share: float
    clipped_share: float
    cards_per_page: float
    unsupported_share: float
    log_time_support: float
    target_samples: int | None = None
    weight_histogram: WeightHistogram | None = None

    @staticmethod
    def of(d: TargetDiagnostics, histogram: bool = False) -> "PolicyWeights":
        w = d.weights
        return PolicyWeights(d.policy, d.ess, float(w.max()) if len(w) else 0.0, int((w > 0).sum()), d.support_share,
                             d.clipped_share, d.cards_per_page, d.unsupported_share, d.log_time_support,
                             d.target_samples, WeightHistogram.of(w) if histogram else None)

    @staticmethod
    def from_dict(d: Any, where: str) -> "PolicyWeights":
        h = d.get("weight_histogram") if isinstance(d, Mapping) else None
        return _typed(PolicyWeights, d, where, weight_histogram=None if h is None else
                      _typed(WeightHistogram, h, f"{where}.weight_histogram"))


@dataclass(frozen=True)
class OPEEvidence:
    """The off-policy evaluation behind a decision: the table, the weights, κ and the per-kind figures."""

    config: OPEConfig
    table: list[EstimateRow]
    diagnostics: dict[str, PolicyWeights]  # "candidate", "production"
    logging: LoggingSummary
    per_kind: dict[str, dict[str, float]]  # kind → streams per card and cards per page of each policy
    kind_lifts: dict[str, KindLift]  # kind → candidate against production

    def row(self, policy: str, estimator: str) -> EstimateRow | None:
        return next((r for r in self.table if r.policy == policy and r.estimator == estimator), None)

    def estimators(self) -> list[str]:
        return list(dict.fromkeys(r.estimator for r in self.table))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Any, where: str = "ope") -> "OPEEvidence":
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be an object, got {type(d).__name__}")
        d = dict(d)
        diagnostics = dict(_mapping(d, "diagnostics", where))
        if "logging" not in d and "logging_marginals" in diagnostics:  # gate.json written before 2026-12-06
            d["logging"] = diagnostics.pop("logging_marginals")
            d["diagnostics"] = diagnostics
        return _typed(
            OPEEvidence, d, where,
            config=OPEConfig.from_dict(d.get("config")),
            table=[_typed(EstimateRow, r, f"{where}.table[{i}]") for i, r in enumerate(_list(d, "table", where))],
            diagnostics={k: PolicyWeights.from_dict(v, f"{where}.diagnostics.{k}")
                         for k, v in _mapping(d, "diagnostics", where).items()},
            logging=_typed(LoggingSummary, d.get("logging"), f"{where}.logging"),
            kind_lifts={k: _typed(KindLift, v, f"{where}.kind_lifts.{k}")
                        for k, v in _mapping(d, "kind_lifts", where).items()})


@dataclass(frozen=True)
class Approval:
    """A reviewer's answer (``reviewer`` "auto" when no approval is required)."""

    approved: bool
    reviewer: str = ""
    comment: str = ""


@dataclass(frozen=True)
class EvaluatedLogs:
    """The logs a decision rests on."""

    rows: int
    pages: int
    policy_version: str  # the policy that served them
    holdout_from: str | None = None  # only page views from the candidate's training cut on
    first_page_view: str | None = None
    last_page_view: str | None = None
    dir: str | None = None
    batches: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateDecision:
    """A candidate's gate decision with its evidence; ``to_dict`` is the content of ``gate.json``."""

    decision: str  # pending | promote | reject
    status: str = "decided"  # pending | awaiting_approval | decided
    version: str | None = None
    summary: str = ""
    rules: list[RuleResult] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    params: GateParams | None = None
    estimator: str | None = None
    production: str | None = None  # the version compared with, or "logging policy (<version>)"
    evaluated_at: str | None = None
    logs: EvaluatedLogs | None = None
    interval_scope: str = ""
    ope: OPEEvidence | None = None
    validation: list[dict[str, Any]] | None = None  # the evaluated batches' ValidationReport dicts
    data_version: str | None = None
    code_version: str | None = None
    approval: Approval | None = None
    flow_run_id: str | None = None  # the gate flow run paused for a reviewer
    recorded_at: str | None = None  # when the registry stored it

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @staticmethod
    def pending(version: str | None = None) -> "GateDecision":
        return GateDecision("pending", "pending", version)

    @property
    def review_status(self) -> str:
        """``pending``, ``awaiting_approval``, ``promoted`` or ``rejected`` (the dashboard's badge)."""
        if self.status != "decided":
            return self.status
        return "promoted" if self.decision == "promote" else "rejected"

    def headline(self) -> EstimateRow | None:
        """The gate estimator's paired difference candidate − production."""
        if self.ope is None or self.estimator is None:
            return None
        return self.ope.row(DIFFERENCE, self.estimator)

    def awaiting(self, flow_run_id: str) -> "GateDecision":
        """This decision while the paused run ``flow_run_id`` waits for a reviewer."""
        return replace(self, status="awaiting_approval", flow_run_id=flow_run_id)

    def approved_by(self, approval: Approval) -> "GateDecision":
        """The final decision: a promotion stands only if ``approval`` approves it."""
        out = replace(self, status="decided", approval=approval)
        if self.decision != "promote" or approval.approved:
            return out
        why = approval.comment or f"rejected by {approval.reviewer or 'the reviewer'}"
        return replace(out, decision="reject", failed=[*self.failed, "approval"],
                       summary=self.summary.replace("promote:", "reject:", 1) + f"; not approved ({why})")

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    @staticmethod
    def from_dict(d: Any) -> "GateDecision":
        """The decision stored as ``d`` (``gate.json``); ``ValueError`` names what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError(f"gate.json must be an object, got {type(d).__name__}")
        d = dict(d)
        if "evidence" in d and d["evidence"] is None:  # the pending form of bundles written before 2026-12
            del d["evidence"]
        if "decision" not in d:
            raise ValueError(f"gate.json has no 'decision' (keys: {sorted(d)})")
        d.setdefault("status", "pending" if d["decision"] == "pending" else "decided")
        return _typed(
            GateDecision, d, "gate.json",
            rules=[_typed(RuleResult, r, f"gate.json rules[{i}]") for i, r in enumerate(_list(d, "rules", "gate.json"))],
            params=None if d.get("params") is None else GateParams.from_dict(d["params"]),
            logs=None if d.get("logs") is None else _typed(EvaluatedLogs, d["logs"], "gate.json logs"),
            ope=None if d.get("ope") is None else OPEEvidence.from_dict(d["ope"], "gate.json ope"),
            approval=None if d.get("approval") is None else _typed(Approval, d["approval"], "gate.json approval"))


@dataclass(frozen=True)
class GateOutcome:
    """What the `evaluate-and-gate` flow did with a candidate: its decision (``already-production`` when it
    was not evaluated again), whether it was promoted, the one-line summary and the production version after."""

    version: str
    decision: str
    promoted: bool
    summary: str
    failed: list[str]
    production: str | None


def _list(d: Mapping, key: str, where: str) -> list:
    v = d.get(key) or []
    if not isinstance(v, list):
        raise ValueError(f"{where}.{key} must be a list, got {type(v).__name__}")
    return v


def _mapping(d: Mapping, key: str, where: str) -> Mapping:
    v = d.get(key) or {}
    if not isinstance(v, Mapping):
        raise ValueError(f"{where}.{key} must be an object, got {type(v).__name__}")
    return v


def _finite(x: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN: an unmeasured kind's lift is null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
