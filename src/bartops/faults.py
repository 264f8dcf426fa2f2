"""Crash injection, a test hook: ``crash_point(name)`` kills the process when ``BARTOPS_CRASH_AT`` names it.

Steps call ``crash_point`` at the moments a crash would be worst (a temporary file written but not
renamed, a batch moved but not yet reported).  A test sets ``BARTOPS_CRASH_AT=<name>`` in a child
process; the child then dies there like ``kill -9`` (``os._exit(137)``: no cleanup, no ``finally``).
The variable is read once at import, so an unarmed call costs one comparison with None.
"""

from __future__ import annotations

import os

ENV = "BARTOPS_CRASH_AT"
CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL
_ARMED = os.environ.get(ENV) or None


def crash_point(name: str) -> None:
    """Exit at once with status 137 when ``$BARTOPS_CRASH_AT`` equals ``name``; otherwise do nothing."""
    if _ARMED is not None and _ARMED == name:
        os._exit(CRASH_EXIT_CODE)
