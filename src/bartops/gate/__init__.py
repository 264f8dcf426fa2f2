"""The promotion gate: rules over off-policy evidence, validation and calibration."""

from bartops.gate.decision import Approval, GateDecision
from bartops.gate.rules import GateParams, RuleResult, Verdict, decide, ece_from_metrics

__all__ = ["Approval", "GateDecision", "GateParams", "RuleResult", "Verdict", "decide", "ece_from_metrics"]
