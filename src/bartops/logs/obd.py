"""Adapter: Open Bandit Dataset (ZOZOTOWN) CSV logs → the impression log schema.

OBD rows (``<campaign>.csv``): an unnamed index, ``timestamp``, ``item_id``, ``position`` (1-based
slot of a 3-slot recommendation), ``click``, ``propensity_score``, ``user_feature_0..3`` (hashed
strings) and ``user-item_affinity_<item>``; ``item_context.csv`` has ``item_id`` and
``item_feature_0..``.  Mapping: one page = the rows sharing timestamp and user features, on one
shelf (0) with positions 0..2; ``user_id`` = a stable 62-bit hash of the user features; ``platform``
web, ``region`` JP; ``reward`` = click; the explanation is the item's category
(``genre:<item_feature_0>``) when ``item_context.csv`` is given, else ``new``.

OBD's ``propensity_score`` is the logging policy's *marginal* probability of the item at that
position (Saito et al. 2021), so it is directly the IIPS propensity of ``bartops.ope`` (not a
conditional step probability as in bartops' own logs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bartops.logs.schema import SchemaError, conform_impressions

REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


def user_features(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df.columns if c.startswith("user_feature_"))


def read_obd(path: Path | str, item_context: Path | str | None = None, policy_version: str = "obd-random",
             epsilon: float = 1.0) -> pd.DataFrame:
    """Read an OBD campaign CSV as impressions in bartops' log schema (``conform_impressions``).

    ``epsilon`` is recorded as the exploration rate (1.0 for OBD's uniform-random policy; rows are
    then ``explored``).  Raises ``SchemaError`` naming missing columns or invalid values.
    """
    df = pd.read_csv(path)
    df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise SchemaError(f"{path} is not an Open Bandit Dataset log: missing column(s) {missing}")
    if len(df) == 0:
        raise SchemaError(f"{path} has no rows")
    pos = pd.to_numeric(df["position"], errors="coerce")
    if pos.isna().any() or (pos < 1).any():
        raise SchemaError(f"{path}: position must be a 1-based integer slot, e.g. row {int(np.argmax(pos.isna() | (pos < 1)))}")
    clicks = pd.to_numeric(df["click"], errors="coerce")
    if not clicks.isin([0, 1]).all():
        raise SchemaError(f"{path}: click must be 0 or 1")
    ufeat = user_features(df)
    users = df[ufeat].astype(str) if ufeat else pd.DataFrame(index=df.index)
    user_id = (pd.util.hash_pandas_object(users, index=False).to_numpy(np.uint64) >> np.uint64(2)).astype(np.int64) \
        if ufeat else np.zeros(len(df), np.int64)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    page = pd.DataFrame({"t": ts, "u": user_id}).groupby(["t", "u"], sort=False).ngroup().to_numpy()
    slot = pd.DataFrame({"p": page, "k": pos.to_numpy()})
    dup = slot.duplicated()
    if dup.any():  # repeated slot within a page: those rows become pages of their own
        page = np.where(dup, page.max() + 1 + np.arange(len(df)), page)
    expl = np.full(len(df), "new", dtype=object)
    if item_context is not None:
        items = pd.read_csv(item_context)
        items = items.drop(columns=[c for c in items.columns if c.startswith("Unnamed")])
        if "item_id" not in items or "item_feature_0" not in items:
            raise SchemaError(f"{item_context} lacks item_id or item_feature_0")
        cat = items.set_index("item_id")["item_feature_0"].astype(str)
        known = df["item_id"].isin(cat.index)
        if not known.all():
            raise SchemaError(f"{int((~known).sum())} logged item(s) missing from {item_context}, "
                              f"e.g. item {df['item_id'][~known].iloc[0]}")
        expl = ("genre:" + cat.reindex(df["item_id"]).to_numpy().astype(str)).astype(object)
    out = pd.DataFrame({
        "impression_id": [f"obd-{i}" for i in range(len(df))],
        "request_id": [f"obd-page-{p}" for p in page],
        "user_id": user_id,
        "timestamp": ts,
        "platform": "web",
        "region": "JP",
        "shelf": 0,
        "position": pos.to_numpy(np.int64) - 1,
        "item_id": df["item_id"].to_numpy(np.int64),
        "explanation_id": expl,
        "propensity": pd.to_numeric(df["propensity_score"], errors="coerce").to_numpy(np.float64),
        "epsilon": float(epsilon),
        "explored": bool(epsilon >= 1.0),
        "policy_version": policy_version,
        "reward": clicks.to_numpy(np.int64),
    })
    bad = ~((out["propensity"] > 0) & (out["propensity"] <= 1))
    if bad.any():
        raise SchemaError(f"{path}: propensity_score must lie in (0, 1]; {int(bad.sum())} row(s) do not")
    return conform_impressions(out)


def obd_explanations(impressions: pd.DataFrame) -> pd.DataFrame:
    """An explanations table (explanation_id, kind, key, title) covering the adapted logs."""
    ids = sorted(impressions["explanation_id"].astype(str).unique())
    kind = [i.split(":", 1)[0] for i in ids]
    key = [i.split(":", 1)[1] if ":" in i else "" for i in ids]
    return pd.DataFrame({"explanation_id": ids, "kind": kind, "key": key,
                         "title": [f"Category {k}" if k else "New" for k in key]})
