"""Vectorised checks behind the custom GX expectations (pure numpy/pandas; no GX import)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd


@lru_cache(maxsize=16)
def _catalog_values(path: str, column: str, mtime_ns: int, size: int) -> pd.Index:
    values = pd.read_parquet(path, columns=[column])[column]
    return pd.Index(values.dropna().unique())


def catalog_values(path: str | os.PathLike, column: str) -> pd.Index:
    """The distinct values of ``column`` in a parquet catalog (cached per file version)."""
    st = os.stat(path)
    return _catalog_values(str(path), column, st.st_mtime_ns, st.st_size)


def known_to_catalog(values: pd.Series, path: str | os.PathLike, column: str) -> pd.Series:
    """True where the value appears in the catalog column."""
    known = catalog_values(path, column)
    if pd.api.types.is_integer_dtype(values.dtype) and pd.api.types.is_integer_dtype(known.dtype):
        v = values.to_numpy(dtype=np.int64, na_value=-1)
        k = np.sort(known.to_numpy(np.int64))
        i = np.clip(np.searchsorted(k, v), 0, max(len(k) - 1, 0))
        ok = (k[i] == v) if len(k) else np.zeros(len(v), bool)
        return pd.Series(ok, index=values.index)
    return values.isin(known)


def page_slots_contiguous(request_id: pd.Series, shelf: pd.Series, position: pd.Series) -> np.ndarray:
    """Per row: does its page use shelves 0..S'-1 and each shelf positions 0..k-1, once each?"""
    req = pd.factorize(request_id, sort=False)[0].astype(np.int64)
    s = shelf.to_numpy(np.int64)
    k = position.to_numpy(np.int64)
    n = len(req)
    if n == 0:
        return np.zeros(0, bool)
    s_span = int(s.max()) - min(int(s.min()), 0) + 1
    k_span = int(k.max()) - min(int(k.min()), 0) + 1
    shelf_key = req * s_span + (s - min(int(s.min()), 0))
    # per (page, shelf): positions must be exactly 0..count-1  (min 0, max count-1, no repeats)
    _, shelf_grp, shelf_count = np.unique(shelf_key, return_inverse=True, return_counts=True)
    slot_key = shelf_key * k_span + (k - min(int(k.min()), 0))
    n_slots_unique_per_shelf = np.bincount(shelf_grp[_first_of_each(slot_key)], minlength=len(shelf_count))
    kmin = np.full(len(shelf_count), np.iinfo(np.int64).max)
    kmax = np.full(len(shelf_count), np.iinfo(np.int64).min)
    np.minimum.at(kmin, shelf_grp, k)
    np.maximum.at(kmax, shelf_grp, k)
    shelf_ok = (kmin == 0) & (kmax == shelf_count - 1) & (n_slots_unique_per_shelf == shelf_count)
    # per page: shelves must be exactly 0..S'-1
    shelf_first = _first_of_each(shelf_key)
    page_of_shelf = req[shelf_first]
    shelf_of_shelf = s[shelf_first]
    n_pages = int(req.max()) + 1
    shelves_per_page = np.bincount(page_of_shelf, minlength=n_pages)
    smin = np.full(n_pages, np.iinfo(np.int64).max)
    smax = np.full(n_pages, np.iinfo(np.int64).min)
    np.minimum.at(smin, page_of_shelf, shelf_of_shelf)
    np.maximum.at(smax, page_of_shelf, shelf_of_shelf)
    page_ok = (smin == 0) & (smax == shelves_per_page - 1)
    # a page fails as a whole when any of its shelves fails
    bad_page = np.zeros(n_pages, bool)
    bad_page[req[~shelf_ok[shelf_grp]]] = True
    return page_ok[req] & ~bad_page[req]


def _first_of_each(key: np.ndarray) -> np.ndarray:
    """Row indices of the first occurrence of each distinct key."""
    _, first = np.unique(key, return_index=True)
    return first


def explored_share_stats(explored: pd.Series, epsilon: pd.Series) -> dict[str, float]:
    """Observed explored count, its expectation Σε and variance Σε(1−ε) under the logged ε."""
    x = explored.to_numpy(dtype=bool, na_value=False)
    e = np.clip(epsilon.to_numpy(dtype=np.float64, na_value=np.nan), 0.0, 1.0)
    e = np.where(np.isnan(e), 0.0, e)
    return {"rows": int(len(x)), "observed": int(x.sum()), "expected": float(e.sum()),
            "variance": float((e * (1.0 - e)).sum())}


def page_reward_sums(reward: pd.Series, request_id: pd.Series) -> dict[str, float]:
    """Sufficient sums of the stream rate's page-clustered variance (they add up over whole pages).

    With y_j streams and m_j cards on page j: rows Σm, pages P, Σy, Σy², Σy·m, Σm².  Rows with a
    missing reward or request_id are left out (other checks reject them).
    """
    y = pd.to_numeric(reward, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ok = ~np.isnan(y) & request_id.notna().to_numpy()
    page = pd.factorize(request_id[ok], sort=False)[0]
    pages = int(page.max()) + 1 if len(page) else 0
    ys, ms = np.bincount(page, weights=y[ok], minlength=pages), np.bincount(page, minlength=pages).astype(np.float64)
    return {"rows": int(ok.sum()), "pages": pages, "y": float(ys.sum()), "y2": float((ys * ys).sum()),
            "ym": float((ys * ms).sum()), "m2": float((ms * ms).sum())}


def design_effect(sums: dict[str, float]) -> float:
    """The stream rate's design effect: its variance with pages as the units over the binomial one.

    The cards of one page share a user, a context and a page construction, so their rewards are
    correlated and the batch's stream rate r = Σy/Σm varies more than r(1−r)/n says (on the
    simulator 1.9× for the logging policy, 2.3× for a trained policy's served pages).  Page views
    are the independent units, so the ratio estimator's variance is P/(P−1)·Σ_j (y_j − r·m_j)²/n²
    (n = Σm); the design effect is that over r(1−r)/n, floored at 1 (never narrower than
    binomial), and 1 when r is 0 or 1 or there are fewer than 2 pages (nothing to estimate from).
    ``sums`` comes from ``page_reward_sums`` (or the sum of it over partitions of whole pages).
    Estimated from the batch itself (a cluster-robust variance): a drift confined to some pages
    raises it as well and widens the band a little; the check is about the batch-wide rate.
    """
    n, pages = float(sums["rows"]), int(sums["pages"])
    if pages < 2 or n <= 0:
        return 1.0
    r = sums["y"] / n
    if not 0.0 < r < 1.0:
        return 1.0
    resid = max(0.0, sums["y2"] - 2.0 * r * sums["ym"] + r * r * sums["m2"])  # Σ (y_j − r·m_j)²
    var_pages = pages / (pages - 1) * resid / (n * n)
    return max(1.0, var_pages / (r * (1.0 - r) / n))


def dtype_kind_matches(dtype: Any, kind: str) -> bool:
    """Does a pandas dtype hold the schema kind (string, int64, float64, bool, utc)?"""
    api = pd.api.types
    if kind == "string":  # a text dtype, or a categorical (dictionary-encoded) of text
        if isinstance(dtype, pd.CategoricalDtype):
            return api.is_string_dtype(dtype.categories.dtype) and not api.is_object_dtype(dtype.categories.dtype)
        return api.is_string_dtype(dtype) and not api.is_object_dtype(dtype)
    if kind == "int64":
        return api.is_integer_dtype(dtype) and not api.is_bool_dtype(dtype)
    if kind == "float64":
        return api.is_float_dtype(dtype)
    if kind == "bool":
        return api.is_bool_dtype(dtype)
    if kind == "utc":
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"
    raise ValueError(f"unknown schema kind {kind!r}")
