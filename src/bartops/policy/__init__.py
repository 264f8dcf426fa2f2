"""The BaRT page policy (``page``)."""

from bartops.policy.page import (
    EMPTY,
    CandidateSet,
    PagePolicy,
    Pages,
    build_pages,
    logged_choice_probabilities,
)

__all__ = ["EMPTY", "CandidateSet", "PagePolicy", "Pages", "build_pages",
           "logged_choice_probabilities"]
