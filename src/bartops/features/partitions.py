"""Partitions of the data a step runs over, and the executors that run a step's per-partition work.

Page-aligned partitions of the validated impression batches; user-aligned ones of the history.

A partition is the rows of one parquet batch whose page view (``request_id``) hashes to one of
``buckets`` buckets (``page_folds``), so every page lies wholly in one partition whatever the file's
row order.  It is read by streaming the file's record batches and keeping only its bucket, so a
task holds about ``partition_rows`` rows (plus one record batch), never the whole file.
The listening history is split the same way by user (``user_partitions``), so every user's plays
lie in one partition.

A step is written once as per-partition work (``partial``), a reduction and a finish, and takes an
``Executor`` that maps the per-partition function over the partitions: ``IN_PROCESS`` here (the
whole file is one partition when ``partition_rows`` is None), or ``bartops.scale.DaskExecutor`` on
a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import numpy as np
import pandas as pd

from bartops.features.logstats import page_folds
from bartops.logs.schema import SchemaError, conform_impressions

READ_BATCH_ROWS = 65_536
T = TypeVar("T")


class Executor(Protocol):
    """Runs a step's per-partition work: ``map`` for results wanted here; ``submit``/``gather`` for
    results kept where they ran (``where``: the partition's index, so each partition runs in the same
    place pass after pass); ``share`` sends a value once to wherever the tasks run."""

    name: str

    def map(self, fn: Callable[..., T], items: Sequence[Any], **shared: Any) -> list[T]: ...

    def submit(self, fn: Callable[..., Any], *args: Any, where: int | None = None) -> Any: ...

    def gather(self, handles: Sequence[Any]) -> list[Any]: ...

    def share(self, value: Any) -> Any: ...


class InProcess:
    """The executor of one process: each task runs when submitted; a handle is its result."""

    name = "local"

    def map(self, fn: Callable[..., T], items: Sequence[Any], **shared: Any) -> list[T]:
        return [fn(item, **shared) for item in items]

    def submit(self, fn: Callable[..., Any], *args: Any, where: int | None = None) -> Any:
        return fn(*args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def share(self, value: Any) -> Any:
        return value


IN_PROCESS = InProcess()


@dataclass(frozen=True)
class Partition:
    """Rows of ``file`` whose page hashes to ``bucket`` of ``buckets``."""

    file: str
    bucket: int
    buckets: int
    file_rows: int


def batch_files(source: Path | str | list[Path]) -> list[Path]:
    """The parquet batches of a folder (sorted), a single file, or a list of files."""
    if isinstance(source, (list, tuple)):
        files = [Path(f) for f in source]
    elif Path(source).is_dir():
        files = sorted(Path(source).glob("*.parquet"))
    else:
        files = [Path(source)] if Path(source).is_file() else []
    if not files:
        raise FileNotFoundError(f"no impression batches (*.parquet) in {source}: validate a batch first")
    return files


def _buckets(rows: int, partition_rows: int | None) -> int:
    if partition_rows is None:
        return 1
    if int(partition_rows) < 1:
        raise ValueError(f"partition_rows must be positive, got {partition_rows!r}")
    return max(1, math.ceil(rows / int(partition_rows)))


def page_partitions(source: Path | str | list[Path], partition_rows: int | None) -> list[Partition]:
    """Page-aligned partitions of about ``partition_rows`` rows each (row counts from parquet metadata;
    None: each file whole)."""
    import pyarrow.parquet as pq

    parts = []
    for f in batch_files(source):
        rows = pq.ParquetFile(f).metadata.num_rows
        parts += [Partition(str(f), b, _buckets(rows, partition_rows), rows)
                  for b in range(_buckets(rows, partition_rows))]
    return parts


def parquet_columns(path: Path | str) -> list[str]:
    """The column names of a parquet file (from its schema)."""
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def read_partition(part: Partition, columns: list[str] | None = None, conform: bool = True) -> pd.DataFrame:
    """The partition's rows (log schema, conformed unless ``conform=False`` (raw, as stored); only
    ``columns`` (unconformed) if given, plus ``request_id``)."""
    cols = None if columns is None else list(dict.fromkeys(["request_id", *columns]))
    frame = _stream(part, cols, "request_id", page_folds)
    if columns is None and conform:
        try:
            return conform_impressions(frame)
        except SchemaError as exc:
            raise SchemaError(f"{part.file}: {exc}") from None
    return frame


def read_partition_rows(part: Partition, columns: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """``columns`` (plus ``request_id``; None = all) of the partition's rows, as stored, and each row's
    number in its file (0-based), which places the rows in the order of the concatenated batches."""
    cols = None if columns is None else list(dict.fromkeys(["request_id", *columns]))
    frame = _stream(part, cols, "request_id", page_folds, row_numbers=True)
    return frame.drop(columns=[ROW]).reset_index(drop=True), frame[ROW].to_numpy(np.int64)


ROW = "__file_row"


def _stream(part: Partition, cols: list[str] | None, key: str, buckets_of, row_numbers: bool = False) -> pd.DataFrame:
    """The rows of ``part.file`` whose ``key`` falls in ``part.bucket``, streamed by record batches
    (with ``row_numbers``, their row number in the file as column ``ROW``)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(part.file)
    frames = []
    offset = 0
    for rb in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=cols):
        df = rb.to_pandas()
        if row_numbers:
            df[ROW] = np.arange(offset, offset + len(df), dtype=np.int64)
        offset += len(df)
        if part.buckets > 1:
            df = df[buckets_of(df[key], part.buckets) == part.bucket]
        frames.append(df)
    if frames:
        return pd.concat(frames, ignore_index=True)
    empty = pf.schema_arrow.empty_table()
    out = (empty.select(cols) if cols is not None else empty).to_pandas()
    if row_numbers:
        out[ROW] = np.zeros(0, np.int64)
    return out


def user_buckets(user_id: pd.Series | np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each user id in ``range(buckets)`` (a hash of the id, so any id pattern spreads evenly)."""
    h = pd.util.hash_array(np.asarray(user_id, np.int64))
    return (h % np.uint64(buckets)).astype(np.int64)


def user_partitions(path: Path | str, partition_rows: int | None) -> list[Partition]:
    """User-aligned partitions of a table with ``user_id`` (the listening history), about
    ``partition_rows`` rows each (None: the whole file): every user's rows lie in one partition, in
    file order."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = pq.ParquetFile(path).metadata.num_rows
    return [Partition(str(path), b, _buckets(rows, partition_rows), rows)
            for b in range(_buckets(rows, partition_rows))]


def read_user_partition(part: Partition, columns: list[str]) -> pd.DataFrame:
    """``columns`` (plus ``user_id``) of the partition's users' rows, as stored."""
    return _stream(part, list(dict.fromkeys(["user_id", *columns])), "user_id", user_buckets)
