"""Promotion rules (``params.yaml`` → ``gate:``) and the decision with its evidence.

A candidate is promoted only if every rule passes:

1. ``validation``: the logs it was evaluated on passed validation;
2. ``ess``: the effective sample size (Σw)²/Σw² of the gate estimator's importance weights (for DR
   the capped correction weights) is at least ``min_ess``;
3. ``lift``: the lower bound of the paired bootstrap interval of candidate − production
   (estimator ``estimator``, DR by default) exceeds ``margin`` (streams per page);
4. ``calibration``: the reward model's ECE (from its metrics.json) is at most ``max_ece``;
5. ``explanations``: for no explanation kind do the logs show with confidence that the candidate's
   streams per card fall below production's by more than ``explanation_tolerance`` (relative; per-card
   quality falls somewhat when a policy shows more cards of a kind in lower slots, hence a loose
   default).  Each kind's paired relative change has a Bonferroni-adjusted bootstrap interval
   (``bartops.ope.kinds``); the rule fails on a kind whose upper bound lies below −tolerance, so it
   falsely rejects at most 2.5 % of candidates (at level 0.95) whose kinds all lose less than the
   tolerance.  A kind the logs cannot measure is reported as unmeasured, not as a loss;
6. ``support``: at least ``min_support_share`` of the candidate's cards fall where the logs can
   check them (``bartops.ope.pipeline``): beyond that DR is the reward model's extrapolation.  The
   share is the lower of the weights' estimate and the exact share of the candidate's examination
   on pairs the logging policy could show when it logged (its log-time candidate sets).
"""

from __future__ import annotations

from dataclasses import dataclass

from bartops.config import GateParams
from bartops.ope.estimators import Estimate
from bartops.ope.kinds import KindLift





def ece_from_metrics(metrics: dict | None) -> float | None:
    """The validation ECE from a bundle's metrics.json (``validation.ece`` or top-level ``ece``)."""
    if not metrics:
        return None
    v = metrics.get("validation", {})
    ece = v.get("ece") if isinstance(v, dict) else None
    if ece is None:
        ece = metrics.get("ece")
    return None if ece is None else float(ece)


@dataclass(frozen=True)
class RuleResult:
    """One promotion rule's outcome with the figure it judged."""

    rule: str
    passed: bool
    value: float | bool | None
    threshold: float | bool | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What the rules decide: ``promote`` only if every rule passed."""

    decision: str  # promote | reject
    rules: list[RuleResult]
    failed: list[str]


def decide(
    params: GateParams,
    validation_passed: bool | None,
    difference: Estimate,
    ess: float,
    ece: float | None,
    kind_lifts: dict[str, KindLift],
    support_share: float | None = None,
) -> Verdict:
    """The rules applied to the evidence.

    ``difference`` is the paired estimate of candidate − production by ``params.estimator``;
    ``kind_lifts`` maps explanation kind → its relative change with its interval.
    """
    rules = []
    if params.require_validation:
        rules.append(RuleResult("validation", validation_passed is True, validation_passed, True,
                                "the evaluated logs passed validation" if validation_passed else
                                "validation failed or was not run on the evaluated logs"))
    rules.append(RuleResult("ess", ess >= params.min_ess, round(float(ess), 2), params.min_ess,
                            f"effective sample size of the candidate's {params.estimator} weights"))
    lo = float(difference.ci_low)
    rules.append(RuleResult("lift", lo > params.margin, round(lo, 6), params.margin,
                            f"{difference.level:.0%} lower bound of candidate − production ({params.estimator}); "
                            f"point {difference.value:+.5f}"))
    rules.append(RuleResult("calibration", ece is not None and ece <= params.max_ece,
                            None if ece is None else round(ece, 6), params.max_ece,
                            "validation ECE of the reward model" if ece is not None else
                            "ECE missing from metrics.json"))
    measured = {k: v for k, v in sorted(kind_lifts.items()) if v.measured}
    unmeasured = sorted(set(kind_lifts) - set(measured))
    losing = [k for k, v in measured.items() if v.ci_high < -params.explanation_tolerance]
    highest = min((v.ci_high for v in measured.values()), default=None)
    detail = ("; ".join(f"kind {k!r} loses {-measured[k].lift:.1%} of its streams per card "
                        f"[{-measured[k].ci_high:.1%}, {-measured[k].ci_low:.1%}]" for k in losing)
              if losing else "no measured explanation kind loses more than the tolerance with confidence")
    if unmeasured:
        detail += f"; unmeasured: {', '.join(unmeasured)}"
    rules.append(RuleResult("explanations", not losing, None if highest is None else round(float(highest), 6),
                            -params.explanation_tolerance, detail))
    rules.append(RuleResult("support", support_share is not None and support_share >= params.min_support_share,
                            None if support_share is None else round(float(support_share), 4),
                            params.min_support_share,
                            "share of the candidate's cards the logs can check (the rest is model extrapolation)"))
    failed = [r.rule for r in rules if not r.passed]
    return Verdict("reject" if failed else "promote", rules, failed)
