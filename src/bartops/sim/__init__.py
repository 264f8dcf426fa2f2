"""Simulated music service with ground truth (see ``world`` and ``simulate``)."""

from bartops.sim.simulate import (
    SimulatedData,
    logging_policy,
    oracle_policy,
    sample_contexts,
    simulate,
    true_value,
)
from bartops.sim.world import World

__all__ = ["World", "SimulatedData", "simulate", "true_value", "oracle_policy",
           "logging_policy", "sample_contexts"]
