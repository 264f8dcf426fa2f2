"""Reward models (``model``), counterfactual training (``train``) and the candidate policy (``policy``)."""
