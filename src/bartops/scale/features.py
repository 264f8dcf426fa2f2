"""The feature snapshot on Dask: history sums reduced from user-aligned partitions, finished locally.

Everything the snapshot takes from the listening history is ``history_sums`` (per user × item: play
count and summed decay weight).  The history is split into partitions by user (``user_partitions``:
a task streams the file and keeps the users hashing to its bucket), so each user's plays sit in one
partition in file order and the per-partition tables concatenate to the whole history's table
exactly.  Two passes: the latest play (the snapshot's ``now``), then the sums.  The driver finishes
as the local build does (``features_from_history_sums``: affinities, SVD, k-means, similar items,
candidate tables), so those are identical to the local snapshot.

The logged response to explanation kinds (``user_kind``) comes from the validated batches'
page-aligned partitions: the training cut from the gathered timestamps, then per-partition cell
sums and user × kind sums (``bartops.scale.train.dask_response_tables``).  Shows and streams are
integer counts (exact); ``expected`` sums rates over a user's rows in several partitions, so it may
differ from the local value in the last bits (relative 1e-12 at most, tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bartops.features.logstats import empty_user_kind
from bartops.features.store import (FeatureParams, Features, add_history_sums, features_from_history_sums,
                                    history_sums, snapshot_now)
from bartops.scale.partitions import (Partition, batch_files, page_partitions, read_partition, read_user_partition,
                                     user_partitions)

HISTORY_COLUMNS = ["user_id", "item_id", "timestamp"]


def partition_last_play(part: Partition) -> pd.Timestamp | None:
    """Pass 0: the latest play of the partition (None when it is empty)."""
    ts = read_user_partition(part, ["timestamp"])["timestamp"]
    return pd.to_datetime(ts, utc=True).max() if len(ts) else None


def partition_history_sums(part: Partition, item_ids: np.ndarray, now: pd.Timestamp,
                           half_life_days: float) -> pd.DataFrame:
    """Pass 1: ``history_sums`` of the partition's plays."""
    return history_sums(read_user_partition(part, HISTORY_COLUMNS), item_ids, now, half_life_days)


def partition_timestamps(part: Partition) -> np.ndarray:
    """The partition's impression timestamps (UTC nanoseconds)."""
    ts = pd.to_datetime(read_partition(part, ["timestamp"])["timestamp"], utc=True)
    return ts.dt.tz_convert(None).to_numpy("datetime64[ns]")


def dask_history_sums(client, history: Path, item_ids: np.ndarray, params: FeatureParams,
                      partition_rows: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """(the history's ``history_sums``, the snapshot's now) from user-aligned partitions."""
    parts = user_partitions(history, partition_rows)
    last = None
    if not params.now:
        latest = [t for t in client.gather(client.map(partition_last_play, parts, pure=False)) if t is not None]
        last = max(latest) if latest else None
    now = snapshot_now(params, last)
    items = client.scatter(np.asarray(item_ids, np.int64), broadcast=True, hash=False)
    sums = client.gather(client.map(partition_history_sums, parts, item_ids=items, now=now,
                                    half_life_days=params.half_life_days, pure=False))
    return add_history_sums(sums), now


def dask_response_stats(client, features: Features, impressions_dir: Path, validation_fraction: float,
                        partition_rows: int) -> Features:
    """``with_response_stats`` of the validated batches, by reductions over page-aligned partitions."""
    from bartops.features.logstats import batches_version
    from bartops.scale.train import dask_response_tables, training_cut

    files = batch_files(Path(impressions_dir))
    parts = page_partitions(files, partition_rows)
    stamps = client.gather(client.map(partition_timestamps, parts, pure=False))
    cut = training_cut(stamps, validation_fraction)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    rows = int(sum((s < cut.tz_convert(None).to_datetime64()).sum() for s in stamps))
    table = dask_response_tables(client, features.explanations, parts, cut, 0)[0]
    return features.with_user_kind(table, {"rows": rows, "data_version": batches_version(files),
                                           "before": cut.isoformat()})


def build_features_dask(client, data_dir: Path, params: dict[str, Any], impressions_dir: Path | None = None,
                        partition_rows: int = 250_000) -> Features:
    """``bartops.features.store.build_features`` with the history and the impression logs reduced on
    the cluster (the catalog and users are read on the driver)."""
    data_dir = Path(data_dir)
    frames: dict[str, pd.DataFrame | None] = {}
    for name in ("items", "users", "explanations"):
        path = data_dir / f"{name}.parquet"
        if not path.exists() and name != "explanations":
            raise FileNotFoundError(f"{path} not found: run `bartops simulate` (or provide the catalog) first")
        frames[name] = pd.read_parquet(path) if path.exists() else None
    history = data_dir / "history.parquet"
    if not history.exists():
        raise FileNotFoundError(f"{history} not found: run `bartops simulate` (or provide the history) first")
    fp = FeatureParams.from_dict(params.get("features"))
    items = frames["items"]
    if "item_id" not in items.columns:
        raise ValueError("items table lacks column(s) ['item_id']")
    sums, now = dask_history_sums(client, history, items["item_id"].to_numpy(np.int64), fp, partition_rows)
    features = features_from_history_sums(items, frames["users"], sums, now, fp, seed=int(params.get("seed", 0)),
                                          explanations=frames["explanations"])
    if impressions_dir is None and (params.get("paths") or {}).get("impressions"):
        impressions_dir = Path(params["paths"]["impressions"])
    if impressions_dir is None or not any(Path(impressions_dir).glob("*.parquet")):  # as build_features: no logs
        return features.with_user_kind(empty_user_kind(), {"rows": 0, "data_version": None})
    vf = float((params.get("reward") or {}).get("validation_fraction", 0.2))
    return dask_response_stats(client, features, Path(impressions_dir), vf, partition_rows)
