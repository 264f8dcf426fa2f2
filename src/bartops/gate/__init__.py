"""The promotion gate: rules over off-policy evidence, validation and calibration."""

from bartops.gate.decision import Approval, GateDecision
from bartops.gate.rules import RuleResult, Verdict, decide, ece_from_metrics

__all__ = ["Approval", "GateDecision", "RuleResult", "Verdict", "decide", "ece_from_metrics"]
