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
from bartops.ope.slate import (
    LoggedActionProbabilities,
    LoggedPages,
    expected_under_target,
    logged_pages,
    logging_probabilities,
    probabilities_of_logged_actions,
    slot_marginal_probabilities,
)
from bartops.ope.validate import LoggedData, check_inputs

__all__ = ["IPS", "SNIPS", "DR", "Estimate", "LoggedData", "check_inputs", "evaluate", "evaluate_many", "ips",
           "snips", "dr", "page_ips", "paired_difference", "make_estimator", "LoggedPages", "logged_pages",
           "LoggedActionProbabilities", "probabilities_of_logged_actions", "logging_probabilities",
           "slot_marginal_probabilities", "expected_under_target"]
