"""Off-policy evaluation: estimators over logged actions and slate probabilities of page policies."""

from bartops.ope.estimators import (
    DR,
    IPS,
    SNIPS,
    Estimate,
    evaluate,
    evaluate_many,
    dr,
    ips,
    make_estimator,
    page_ips,
    paired_difference,
    snips,
)
from bartops.ope.slate import LoggedPages, logged_pages
from bartops.ope.validate import LoggedData, check_inputs

__all__ = ["IPS", "SNIPS", "DR", "Estimate", "LoggedData", "check_inputs", "evaluate", "evaluate_many", "ips",
           "snips", "dr", "page_ips", "paired_difference", "make_estimator", "LoggedPages", "logged_pages"]
