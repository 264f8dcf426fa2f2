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


# ---------------------------------------------------------------------------- ε-greedy propensities
# A card's propensity is p = (1−ε)·[greedy] + ε/n with n ≥ 1 remaining choices (bartops.policy.page), so:
#   greedy card:      p − (1−ε) = ε/n > 0 (p = 1 exactly when n = 1 or ε = 0);
#   non-greedy card:  n ≥ 2 and p = ε/n ≤ ε/2.
# ``_TOL`` absorbs float rounding; ``_MAX_CHOICES`` bounds n (ε/n must stay visible above rounding).
_TOL = 1e-12
_MAX_CHOICES = 1e9


def _floats(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _in_range(p: np.ndarray, e: np.ndarray) -> np.ndarray:
    """0 < p ≤ 1 and 0 ≤ ε ≤ 1: other rows are the range checks' (one failure, one named cause)."""
    return (p > 0) & (p <= 1) & (e >= 0) & (e <= 1)


def explored_matches_propensity(explored: pd.Series, propensity: pd.Series, epsilon: pd.Series) -> np.ndarray:
    """Per row: could the ε-greedy page policy have logged this (explored, propensity, ε)?

    explored = False (the greedy branch): the card is the greedy choice, so p − (1−ε) = ε/n > 0 —
    strictly above 1−ε when ε > 0 (p = 1−ε exactly is impossible), p = 1 when ε = 0.
    explored = True (the uniform branch): ε > 0, and the draw hit either the greedy card
    (p > 1−ε as above) or one of n ≥ 2 others (p ≤ ε/2).  So ε/2 < p ≤ 1−ε, or ε = 0, is impossible.
    Explored=True on a greedy card is legitimate (probability ε/n), so no exact rule can reject it.
    Rows outside 0 < p ≤ 1, 0 ≤ ε ≤ 1 pass here (the range checks name them).
    """
    x = explored.to_numpy(dtype=bool, na_value=False)
    p, e = _floats(propensity), _floats(epsilon)
    greedy = (p - (1.0 - e)) > e / _MAX_CHOICES - _TOL
    other = p <= e / 2 + _TOL
    return ~_in_range(p, e) | np.where(x, (e > 0) & (greedy | other), greedy)


def single_choice_possible(request_id: pd.Series, shelf: pd.Series, position: pd.Series,
                           propensity: pd.Series, epsilon: pd.Series) -> np.ndarray:
    """Per row: False where p claims a single remaining choice at a slot that cannot have had one.

    With ε > 0, p > 1 − ε/2 happens only for the greedy card of n = 1 choice (p = 1).  The fills of
    a shelf lose exactly one choice per slot (the chosen pair; pairs are unique per item and
    explanation), and each shelf head at least one, so n = 1 is possible only at the last card of a
    shelf (position ≥ 1) or at the head of the page's last shelf (position 0).
    """
    p, e = _floats(propensity), _floats(epsilon)
    claims_one = _in_range(p, e) & (e > 0) & (p > 1.0 - e / 2 + _TOL)
    if not claims_one.any():
        return np.ones(len(p), bool)
    req = pd.factorize(request_id, sort=False)[0].astype(np.int64)
    s, k = shelf.to_numpy(np.int64), position.to_numpy(np.int64)
    s_off = s - min(int(s.min()), 0)
    shelf_key = pd.factorize(req * (int(s_off.max()) + 1) + s_off, sort=False)[0]
    last_pos = np.full(shelf_key.max() + 1, np.iinfo(np.int64).min)
    np.maximum.at(last_pos, shelf_key, k)
    last_shelf = np.full(req.max() + 1, np.iinfo(np.int64).min)
    np.maximum.at(last_shelf, req, s)
    possible = np.where(k == 0, s == last_shelf[req], k == last_pos[shelf_key])
    return ~claims_one | possible


# ---------------------------------------------------------------------------- page context
def constant_within_page(request_id: pd.Series, values: pd.Series) -> np.ndarray:
    """Per row: do all rows of its page (request_id) hold one value?  A page fails as a whole.

    A page is one view by one user at one time on one platform and region, built by one policy
    version (simulator, service and the OBD adapter all log it so); two values on a page mean pages
    merged, cards moved between pages, or a context column overwritten.
    """
    page = pd.factorize(request_id, sort=False)[0].astype(np.int64)
    if len(page) == 0:
        return np.zeros(0, bool)
    code = pd.factorize(values, sort=False, use_na_sentinel=False)[0].astype(np.int64)
    order = np.lexsort((code, page))
    p, c = page[order], code[order]
    # a page is mixed when, sorted by (page, value), two neighbours share the page but not the value
    mixed = np.zeros(int(page.max()) + 1, bool)
    step = (p[1:] == p[:-1]) & (c[1:] != c[:-1]) & (p[1:] >= 0)
    mixed[p[1:][step]] = True
    return ~mixed[np.maximum(page, 0)] | (page < 0)


def stream_seconds_only_when_streamed(reward: pd.Series, stream_seconds: pd.Series) -> np.ndarray:
    """Per row: no stream duration on a card that was not streamed (reward 0 with stream_seconds set)."""
    r = _floats(reward)
    s = _floats(stream_seconds)
    return ~((r == 0) & ~np.isnan(s))


# ---------------------------------------------------------------------------- text lengths
def value_lengths(values: pd.Series) -> np.ndarray:
    """Character length per value (0 for missing); categoricals measured on their categories."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cat_len = values.cat.categories.astype(str).str.len().to_numpy(np.int64)
        codes = values.cat.codes.to_numpy()
        return np.where(codes >= 0, cat_len[np.maximum(codes, 0)] if len(cat_len) else 0, 0)
    return values.astype("string").str.len().fillna(0).to_numpy(np.int64)


def long_values(values: pd.Series, max_length: int, examples: int = 3) -> dict[str, Any]:
    """The longest length, how many values exceed ``max_length``, and a few (row, length, prefix)."""
    n = value_lengths(values)
    over = np.nonzero(n > max_length)[0]
    rows = [{"row": int(i), "length": int(n[i]), "starts": str(values.iloc[i])[:40] + "..."} for i in over[:examples]]
    return {"max_length": int(n.max()) if len(n) else 0, "over": int(len(over)), "rows": int(len(n)), "examples": rows}


def empty_values(values: pd.Series, examples: int = 3) -> dict[str, Any]:
    """How many present values are empty text (``""``), and the first few of their rows."""
    present = values.notna().to_numpy(bool)
    empty = np.nonzero(present & (value_lengths(values) == 0))[0]
    return {"empty": int(len(empty)), "rows": int(present.sum()), "examples": [{"row": int(i)} for i in empty[:examples]]}


# ---------------------------------------------------------------------------- the accepted store
STORE_COLUMNS = ("impression_id", "request_id", "reward")


def store_files(store_dir: str | os.PathLike | None, exclude_key: str = "") -> list[str]:
    """The accepted batches (``*.parquet``) of the store, less those of the batch ``exclude_key``.

    ``core._accept`` names a batch ``<stem>-<key>.parquet`` (or ``…-<key>-kept.parquet``) after the
    first 16 hex digits of its content digest: excluding its own files lets an already accepted
    batch re-validate as a no-op ("already ingested").
    """
    if not store_dir or not os.path.isdir(store_dir):
        return []
    own = (f"-{exclude_key}.parquet", f"-{exclude_key}-kept.parquet") if exclude_key else ()
    return sorted(os.path.join(store_dir, f) for f in os.listdir(store_dir)
                  if f.endswith(".parquet") and not f.startswith((".", "_")) and not (own and f.endswith(own)))


@lru_cache(maxsize=256)
def _store_file_ids(path: str, mtime_ns: int, size: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(STORE_COLUMNS))
    # plain text (not dictionary-encoded) ids and float rewards, so that every file compares alike
    return {c: table[c].cast(pa.float64() if c == "reward" else pa.string()).combine_chunks() for c in STORE_COLUMNS}


@lru_cache(maxsize=4)
def _store_ids(signature: tuple[tuple[str, int, int], ...]) -> dict | None:
    import pyarrow as pa

    if not signature:
        return None
    files = [_store_file_ids(*s) for s in signature]
    return {c: pa.concat_arrays([f[c] for f in files]) for c in STORE_COLUMNS}


def store_ids(store_dir: str | os.PathLike | None, exclude_key: str = ""):
    """impression_id, request_id, reward of every accepted row as Arrow arrays (None: an empty store).

    Only those columns are read, once per file version (cached); lookups are Arrow hash joins.
    """
    sig = []
    for f in store_files(store_dir, exclude_key):
        st = os.stat(f)
        sig.append((f, st.st_mtime_ns, st.st_size))
    return _store_ids(tuple(sig))


@lru_cache(maxsize=256)
def _store_file_rates(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """Per policy version of one accepted file: rows, page views and streams."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["policy_version", "request_id", "reward"]).to_pandas()
    g = t.groupby(t["policy_version"].astype(str), observed=True)
    return pd.DataFrame({"rows": g.size(), "pages": g["request_id"].nunique(),
                         "streams": g["reward"].sum().astype(float)})


def store_stream_rates(store_dir: str | os.PathLike | None, exclude_key: str = "") -> pd.DataFrame:
    """(policy_version → rows, pages, streams) of the accepted store, less the batch ``exclude_key``
    (each file read once per version: only those three columns)."""
    frames = []
    for f in store_files(store_dir, exclude_key):
        st = os.stat(f)
        frames.append(_store_file_rates(f, st.st_mtime_ns, st.st_size))
    if not frames:
        return pd.DataFrame({"rows": [], "pages": [], "streams": []}, index=pd.Index([], name="policy_version"))
    return pd.concat(frames).groupby(level=0).sum()


def _text(values: pd.Series):
    import pyarrow as pa

    return pa.array(values.astype(str).to_numpy(object), type=pa.string())


def already_accepted(values: pd.Series, store_dir: str | os.PathLike | None, exclude_key: str,
                     column: str) -> np.ndarray:
    """Per row: does the value (an impression_id or request_id) already appear in the store?"""
    import pyarrow.compute as pc

    stored = store_ids(store_dir, exclude_key)
    if stored is None or not len(values):
        return np.zeros(len(values), bool)
    return pc.is_in(_text(values), value_set=stored[column]).to_numpy(zero_copy_only=False).astype(bool)


def contradicts_store(impression_id: pd.Series, reward: pd.Series, store_dir: str | os.PathLike | None,
                      exclude_key: str) -> np.ndarray:
    """Per row: is the impression already accepted with a different reward (the same card, two outcomes)?"""
    import pyarrow.compute as pc

    stored = store_ids(store_dir, exclude_key)
    if stored is None or not len(impression_id):
        return np.zeros(len(impression_id), bool)
    at = pc.index_in(_text(impression_id), value_set=stored["impression_id"])
    seen = at.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    out = np.zeros(len(impression_id), bool)
    if seen.any():
        pos = at.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        stored_reward = stored["reward"].to_numpy(zero_copy_only=False)[pos]
        out = seen & (stored_reward != _floats(reward))
    return out
