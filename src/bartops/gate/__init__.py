"""The promotion gate: rules over off-policy evidence, validation and calibration."""

from bartops.gate.decision import Approval, GateDecision, GateOutcome
from bartops.gate.rules import RuleResult, Verdict, decide, ece_from_metrics

__all__ = ["Approval", "GateDecision", "GateOutcome", "RuleResult", "Verdict", "decide", "ece_from_metrics"]
