"""The impression-log schema (one row per card shown), shared by simulator, service and training."""

from __future__ import annotations

import numpy as np
import pandas as pd

# column -> kind; "string" columns hold text, "utc" is a tz-aware UTC timestamp
IMPRESSION_COLUMNS: dict[str, str] = {
    "impression_id": "string",
    "request_id": "string",
    "user_id": "int64",
    "timestamp": "utc",
    "platform": "string",
    "region": "string",
    "shelf": "int64",
    "position": "int64",
    "item_id": "int64",
    "explanation_id": "string",
    "propensity": "float64",
    "epsilon": "float64",
    "explored": "bool",
    "policy_version": "string",
    "reward": "int64",
    "stream_seconds": "float64",
}
OPTIONAL_COLUMNS: frozenset[str] = frozenset({"stream_seconds"})


class SchemaError(ValueError):
    """A table does not follow the impression-log schema."""


def conform_impressions(df: pd.DataFrame, require_reward: bool = True) -> pd.DataFrame:
    """Return the table with schema columns in order and canonical dtypes.

    Raises SchemaError naming missing, extra or mistyped columns.  ``require_reward=False``
    accepts served logs that have not been joined with feedback yet.
    """
    needed = [c for c in IMPRESSION_COLUMNS if c not in OPTIONAL_COLUMNS and (require_reward or c != "reward")]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(f"missing column(s) {missing}")
    extra = [c for c in df.columns if c not in IMPRESSION_COLUMNS]
    if extra:
        raise SchemaError(f"unexpected column(s) {extra}")
    out = {}
    for col, kind in IMPRESSION_COLUMNS.items():
        if col not in df.columns:
            if col == "stream_seconds" or (col == "reward" and not require_reward):
                continue
        out[col] = _coerce(df[col], col, kind)
    return pd.DataFrame(out)


def _coerce(s: pd.Series, col: str, kind: str) -> pd.Series:
    try:
        if kind == "string":
            if not (pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)):
                raise TypeError(f"dtype {s.dtype}")
            if s.isna().any():
                raise TypeError("null values")
            return s.astype("string")
        if kind == "utc":
            if not pd.api.types.is_datetime64_any_dtype(s):
                s = pd.to_datetime(s, utc=True, format="ISO8601")
            return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        if kind == "bool":
            if pd.api.types.is_bool_dtype(s):
                return s.astype(bool)
            if pd.api.types.is_integer_dtype(s) and s.isin([0, 1]).all():
                return s.astype(bool)
            raise TypeError(f"dtype {s.dtype}")
        if kind == "int64":
            if pd.api.types.is_integer_dtype(s):
                return s.astype(np.int64)
            if pd.api.types.is_float_dtype(s) and s.notna().all() and (s == np.round(s)).all():
                return s.astype(np.int64)
            raise TypeError(f"dtype {s.dtype}")
        if kind == "float64":
            if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                return s.astype(np.float64)
            raise TypeError(f"dtype {s.dtype}")
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"column {col!r} must be {kind}: {exc}") from None
    raise AssertionError(kind)
