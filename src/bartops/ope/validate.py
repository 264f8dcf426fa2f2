"""Input checks for the off-policy estimators, in one place, with errors that say what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoggedData:
    """Validated arrays describing logged actions (one row per logged card).

    ``group`` numbers the independent units (pages) 0..n_groups-1: values are per group, and the
    bootstrap resamples groups.  ``stratum`` (optional) numbers slots for per-slot self-normalisation.
    """

    reward: np.ndarray
    propensity: np.ndarray  # logging probability of the logged action, in (0, 1]
    target: np.ndarray  # target-policy probability of the logged action, in [0, 1]
    group: np.ndarray
    n_groups: int
    stratum: np.ndarray | None = None
    prediction: np.ndarray | None = None  # reward model for the logged action
    expected: np.ndarray | None = None  # reward model's expectation under the target policy
    examination: np.ndarray | None = None  # κ of the logged slot (exposure weights, see ope.pipeline)
    target_mass: np.ndarray | None = None  # the target's total examination of a group, on one row of it

    def __len__(self) -> int:
        return len(self.reward)


def _array(name: str, x, n: int | None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} values but rewards has {n}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(a)).sum())} NaN or infinite value(s)")
    return a


def check_inputs(
    reward,
    propensity,
    target,
    group=None,
    stratum=None,
    prediction=None,
    expected=None,
    examination=None,
    target_mass=None,
) -> LoggedData:
    """Validate shapes and ranges and return a LoggedData; raise ValueError naming the problem."""
    r = _array("rewards", reward, None)
    n = len(r)
    if n == 0:
        raise ValueError("rewards is empty: nothing to evaluate")
    p = _array("propensities", propensity, n)
    bad = (p <= 0) | (p > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"propensities must lie in (0, 1]: {int(bad.sum())} do not (e.g. row {i}: {p[i]!r})")
    q = _array("target probabilities", target, n)
    bad = (q < 0) | (q > 1 + 1e-12)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"target probabilities must lie in [0, 1]: {int(bad.sum())} do not (e.g. row {i}: {q[i]!r})")
    if group is None:
        g, n_groups = np.arange(n), n
    else:
        g_raw = np.asarray(group)
        if g_raw.shape != (n,):
            raise ValueError(f"groups has shape {g_raw.shape}, expected ({n},)")
        _, g = np.unique(g_raw, return_inverse=True)
        n_groups = int(g.max()) + 1
    s = None
    if stratum is not None:
        s_raw = np.asarray(stratum)
        if s_raw.shape != (n,):
            raise ValueError(f"strata has shape {s_raw.shape}, expected ({n},)")
        _, s = np.unique(s_raw, return_inverse=True)
    pred = None if prediction is None else _array("predictions", prediction, n)
    exp = None if expected is None else _array("expected predictions", expected, n)
    exam = None if examination is None else _array("examination", examination, n)
    mass = None if target_mass is None else _array("target mass", target_mass, n)
    return LoggedData(r, p, np.minimum(q, 1.0), g, n_groups, s, pred, exp, exam, mass)


def check_same_logs(a: LoggedData, b: LoggedData) -> None:
    """Raise unless two LoggedData describe the same logged rows (needed for a paired comparison)."""
    if len(a) != len(b) or not np.array_equal(a.reward, b.reward) or not np.array_equal(a.group, b.group):
        raise ValueError("paired comparison needs both policies evaluated on the same logged rows and pages")
    if not np.array_equal(a.propensity, b.propensity):
        raise ValueError("paired comparison needs the same logging propensities for both policies")


def check_bootstrap(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 10:
        raise ValueError(f"n_boot must be an integer of at least 10, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level!r}")


def check_clip(clip: float | None) -> None:
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
