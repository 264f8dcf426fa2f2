"""Per-user response to explanation kinds, learned from validated impression logs.

A user's *lift* for a kind is (streams + m) / (expected + m): observed streams of cards shown to the
user under that kind, over the streams expected from the logs' mean rate at the same (shelf,
position, kind) — so the slot's position bias and the kind's average appeal are divided out — with
a prior of ``m`` expected streams (``features.response_prior``) pulling thin evidence towards 1.
Users the logs never showed a kind keep the prior (lift 1, zero shows).

The snapshot (``Features.user_kind``) holds the counts of the validated logs before the training
cut (``time_split`` with ``reward.validation_fraction``: the rows the model is trained on), so the
latest share stays unseen for validation metrics and off-policy evaluation; training rows get the
same statistic computed out of fold (``response_table`` of the other folds), so a row's own reward
never enters its own feature.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.features.arrays import group_codes
from bartops.features.candidates import EXPLANATION_KINDS
from bartops.logs.schema import SchemaError, conform_impressions

USER_KIND_COLUMNS = ("user_id", "kind", "shows", "streams", "expected")


def empty_user_kind() -> pd.DataFrame:
    """A ``user_kind`` table without rows (every user gets the prior)."""
    return pd.DataFrame({"user_id": np.zeros(0, np.int64), "kind": np.zeros(0, np.int64),
                         "shows": np.zeros(0, np.float64), "streams": np.zeros(0, np.float64),
                         "expected": np.zeros(0, np.float64)})


def explanation_kind_codes(explanations: pd.DataFrame) -> np.ndarray:
    """Kind code (index in ``EXPLANATION_KINDS``) of each explanation row; ValueError on unknown kinds."""
    codes = explanations["kind"].map({k: i for i, k in enumerate(EXPLANATION_KINDS)})
    if codes.isna().any():
        raise ValueError(f"unknown explanation kind(s) {sorted(set(explanations['kind'][codes.isna()]))}")
    return codes.to_numpy(np.int64)


def response_tables(user_id: np.ndarray, kind: np.ndarray, shelf: np.ndarray, position: np.ndarray,
                    reward: np.ndarray, sources: list[np.ndarray]) -> list[pd.DataFrame]:
    """``[response_table(user_id[s], kind[s], shelf[s], position[s], reward[s]) for s in sources]``
    (boolean row masks), with the rows grouped by user × kind and by cell once for all of them.

    Sums run over the rows in order, as ``response_table``'s, so the tables are equal bit for bit.
    """
    user_id = np.asarray(user_id, np.int64)
    kind = np.asarray(kind, np.int64)
    reward = np.asarray(reward, np.float64)
    shelf = np.asarray(shelf, np.int64)
    position = np.asarray(position, np.int64)
    n = len(user_id)
    if not (len(kind) == len(shelf) == len(position) == len(reward) == n):
        raise ValueError("response_table: user_id, kind, shelf, position and reward must have equal lengths")
    sources = [np.asarray(src, bool) for src in sources]
    if any(src.shape != (n,) for src in sources):
        raise ValueError(f"response_tables: every source must be a boolean mask of the {n} rows")
    used = np.logical_or.reduce(sources) if sources else np.zeros(n, bool)
    K = len(EXPLANATION_KINDS)
    if ((kind < 0) | (kind >= K))[used].any():
        raise ValueError(f"kind codes must lie in [0, {len(EXPLANATION_KINDS)})")
    width = int(position[used].max()) + 1 if used.any() else 1
    _, cell = group_codes((shelf * width + position) * K + kind)
    keys, group = group_codes(user_id * K + kind)
    n_cells = int(cell.max()) + 1 if n else 0
    out = []
    for src in sources:
        if not src.any():
            out.append(empty_user_kind())
            continue
        c, g, r = cell[src], group[src], reward[src]
        with np.errstate(invalid="ignore", divide="ignore"):  # cells without rows in this source are not used
            rate = np.bincount(c, weights=r, minlength=n_cells) / np.bincount(c, minlength=n_cells)
        shows = np.bincount(g, minlength=len(keys))
        present = shows > 0
        out.append(pd.DataFrame({
            "user_id": keys[present] // K,
            "kind": keys[present] % K,
            "shows": shows[present].astype(np.float64),
            "streams": np.bincount(g, weights=r, minlength=len(keys))[present],
            "expected": np.bincount(g, weights=rate[c], minlength=len(keys))[present],
        }))
    return out


def response_table(user_id: np.ndarray, kind: np.ndarray, shelf: np.ndarray, position: np.ndarray,
                   reward: np.ndarray) -> pd.DataFrame:
    """(user_id, kind, shows, streams, expected) from logged impressions given as arrays.

    ``expected`` sums each impression's mean reward over these same impressions at its (shelf,
    position, kind) cell.  Sorted by (user_id, kind).
    """
    if len(user_id) == 0:
        return empty_user_kind()
    return response_tables(user_id, kind, shelf, position, reward, [np.ones(len(user_id), bool)])[0]


def impression_kinds(explanations: pd.DataFrame, explanation_id: np.ndarray | pd.Series) -> np.ndarray:
    """Kind code of each logged explanation id (ids the catalog lacks are a ValueError)."""
    idx = pd.Index(explanations["explanation_id"].astype(str))
    values = explanation_id if isinstance(explanation_id, pd.Series) else np.asarray(explanation_id, dtype=object)
    inverse, distinct = pd.factorize(values, use_na_sentinel=False)  # look each distinct id up once
    ids = np.asarray(distinct, dtype=object).astype(str)
    pos = idx.get_indexer(ids)
    if (pos < 0).any():
        raise ValueError(f"explanation id(s) {sorted(set(ids[pos < 0]))[:5]} are not in the catalog")
    return explanation_kind_codes(explanations)[pos][inverse]


def impressions_response_table(explanations: pd.DataFrame, impressions: pd.DataFrame) -> pd.DataFrame:
    """``response_table`` of a logged impression frame (needs user_id, explanation_id, shelf, position, reward)."""
    missing = [c for c in ("user_id", "explanation_id", "shelf", "position", "reward") if c not in impressions]
    if missing:
        raise ValueError(f"impressions lack column(s) {missing}")
    if len(impressions) == 0:
        return empty_user_kind()
    return response_table(impressions["user_id"].to_numpy(np.int64),
                          impression_kinds(explanations, impressions["explanation_id"]),
                          impressions["shelf"].to_numpy(), impressions["position"].to_numpy(),
                          impressions["reward"].to_numpy())


def lift(streams: np.ndarray, expected: np.ndarray, prior: float) -> np.ndarray:
    """Smoothed observed / expected streams: (streams + prior) / (expected + prior)."""
    return (np.asarray(streams, np.float64) + prior) / (np.asarray(expected, np.float64) + prior)


def page_folds(request_id: np.ndarray | pd.Series, folds: int) -> np.ndarray:
    """Deterministic fold (0..folds-1) of each row from a hash of its page view (request_id)."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    values = request_id if isinstance(request_id, pd.Series) else np.asarray(request_id, dtype=object)
    inverse, distinct = pd.factorize(values, use_na_sentinel=False)  # hash each page view once
    h = pd.util.hash_array(np.asarray(distinct, dtype=object).astype(str), categorize=True)
    return (h % np.uint64(folds)).astype(np.int64)[inverse]


def load_impressions(directory: Path) -> tuple[pd.DataFrame, str]:
    """All parquet batches under ``directory`` (validated batches), conformed; and a data version hash."""
    directory = Path(directory)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no impression batches (*.parquet) in {directory}: validate a batch first")
    frames = []
    for f in files:
        try:
            frames.append(conform_impressions(pd.read_parquet(f)))
        except SchemaError as exc:
            raise SchemaError(f"{f}: {exc}") from None
    return pd.concat(frames, ignore_index=True), batches_version(files)


def batches_version(files: list[Path]) -> str:
    """The data version of impression batches: sha256 of their names and bytes, in the given order."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def time_split(timestamp: pd.Series, validation_fraction: float) -> np.ndarray:
    """Boolean mask of training rows: all rows strictly before the cut; the latest share validates.

    The cut is a timestamp, so every page view lies wholly on one side.
    """
    ts = pd.to_datetime(pd.Series(timestamp), utc=True).dt.tz_convert(None).to_numpy()  # datetime64, not objects
    k = min(int(len(ts) * (1 - validation_fraction)), len(ts) - 1)
    nat = np.isnat(ts)
    cut = np.partition(ts, k)[k] if nat.any() else np.partition(ts.view(np.int64), k)[k].astype(ts.dtype)
    train = ts < cut
    if train.all() or not train.any():
        raise ValueError("time-based split left the training or validation part empty: "
                         "the logs span too few distinct timestamps")
    return train
