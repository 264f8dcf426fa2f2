"""The promotion gate: rules over off-policy evidence, validation and calibration."""

from bartops.gate.rules import GateParams, decide, ece_from_metrics

__all__ = ["GateParams", "decide", "ece_from_metrics"]
