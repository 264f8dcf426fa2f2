"""Served impressions + feedback → a reward-labelled impression batch (the next round's training data).

A served card earns ``reward = 1`` when a ``streamed: true`` feedback for (request_id, item_id)
arrives within ``attribution_window`` after the page view (``timestamp``), else 0; ``stream_seconds``
is the longest streamed duration reported in the window.  Only impressions whose window has fully
elapsed at ``now`` are labelled.  Impressions are read from closed log files only; feedback also from
the file still being written (complete lines only), so no report inside the window is missed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.logs.schema import IMPRESSION_COLUMNS, conform_impressions
from bartops.serving.logwriter import DONE, FEEDBACK, IMPRESSIONS, PART, closed_files, read_rows

MANIFEST = "joined.json"  # impression files already turned into batches (in the log folder)
FEEDBACK_COLUMNS = ("request_id", "item_id", "streamed", "seconds", "timestamp")


def _window(attribution_window: float | timedelta) -> pd.Timedelta:
    w = pd.Timedelta(seconds=attribution_window) if isinstance(attribution_window, (int, float)) \
        else pd.Timedelta(attribution_window)
    if w <= pd.Timedelta(0):
        raise ValueError(f"attribution_window must be positive, got {attribution_window!r}")
    return w


def _now(now: datetime | str | None) -> pd.Timestamp:
    ts = pd.Timestamp(datetime.now(timezone.utc) if now is None else now)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_impressions(files: list[Path]) -> pd.DataFrame:
    """Served impression rows (log schema without reward) of closed log files, with their ``_file``."""
    rows = read_rows(files)
    cols = [c for c in IMPRESSION_COLUMNS if c not in ("reward", "stream_seconds")]
    if not rows:
        empty = conform_impressions(pd.DataFrame({c: pd.Series([], dtype=_empty_dtype(c)) for c in cols}),
                                    require_reward=False)
        return empty.assign(_file=pd.Series([], dtype="string"))
    df = pd.DataFrame.from_records(rows)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"served log rows lack column(s) {missing} (files {sorted(set(df['_file']))[:3]})")
    out = conform_impressions(df[cols], require_reward=False)
    out["_file"] = df["_file"].astype("string").to_numpy()
    return out


def _empty_dtype(col: str) -> str:
    kind = IMPRESSION_COLUMNS[col]
    return {"string": "string", "utc": "datetime64[ns, UTC]", "bool": "bool"}.get(kind, kind)


def read_feedback(log_dir: str | Path) -> pd.DataFrame:
    """All feedback rows (closed files and the complete lines of open ones)."""
    log_dir = Path(log_dir)
    rows = []
    # open files first: one closed in between is then read twice (harmless), never missed
    for part in sorted(log_dir.glob(f"{FEEDBACK}-*{PART}")):
        try:
            data = part.read_bytes()
        except FileNotFoundError:
            continue
        for line in data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    rows += read_rows(closed_files(log_dir, FEEDBACK))
    if not rows:
        return pd.DataFrame({"request_id": pd.Series([], dtype="string"), "item_id": pd.Series([], dtype=np.int64),
                             "streamed": pd.Series([], dtype=bool), "seconds": pd.Series([], dtype=np.float64),
                             "timestamp": pd.Series([], dtype="datetime64[ns, UTC]")})
    df = pd.DataFrame.from_records(rows)
    return pd.DataFrame({
        "request_id": df["request_id"].astype("string"),
        "item_id": df["item_id"].astype(np.int64),
        "streamed": df["streamed"].astype(bool),
        "seconds": pd.to_numeric(df.get("seconds"), errors="coerce").astype(np.float64),
        "timestamp": pd.to_datetime(df["timestamp"], utc=True, format="ISO8601"),
    })


def label_impressions(impressions: pd.DataFrame, feedback: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """Add ``reward`` and ``stream_seconds`` to served impressions from feedback within the window."""
    fb = feedback[feedback["streamed"]]
    keys = impressions[["request_id", "item_id", "timestamp"]].reset_index().rename(columns={"timestamp": "shown"})
    m = keys.merge(fb, on=["request_id", "item_id"], how="inner")
    m = m[(m["timestamp"] >= m["shown"]) & (m["timestamp"] <= m["shown"] + window)]
    hit = m.groupby("index")["seconds"].max()
    out = impressions.copy()
    out["reward"] = np.zeros(len(out), np.int64)
    out["stream_seconds"] = np.full(len(out), np.nan)
    if len(hit):
        pos = out.index.get_indexer(hit.index)
        out.iloc[pos, out.columns.get_loc("reward")] = 1
        out.iloc[pos, out.columns.get_loc("stream_seconds")] = hit.to_numpy(np.float64)
    return out


def join_feedback(log_dir: str | Path, attribution_window: float | timedelta, now: datetime | str | None = None,
                  impression_files: list[Path] | None = None) -> pd.DataFrame:
    """Reward-labelled impressions (log schema) whose attribution window has elapsed at ``now``.

    Reads the closed impression files of ``log_dir`` (or only ``impression_files``) and all feedback.
    """
    window, now_ts = _window(attribution_window), _now(now)
    files = closed_files(log_dir, IMPRESSIONS) if impression_files is None else list(impression_files)
    imp = read_impressions(files)
    imp = imp[imp["timestamp"] + window <= now_ts].drop(columns="_file").reset_index(drop=True)
    labelled = label_impressions(imp, read_feedback(log_dir), window)
    return conform_impressions(labelled)


@dataclass
class JoinResult:
    """What ``join_to_batch`` did: the batch written (if any) and the files it consumed."""

    batch: str | None
    rows: int = 0
    rewards: int = 0
    files: list[str] = field(default_factory=list)
    waiting_files: list[str] = field(default_factory=list)  # closed, but their window has not elapsed

    def to_dict(self) -> dict:
        return asdict(self)


def _load_manifest(log_dir: Path) -> dict:
    path = log_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"joined": {}}


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def join_to_batch(log_dir: str | Path, out_dir: str | Path, attribution_window: float | timedelta,
                  now: datetime | str | None = None) -> JoinResult:
    """Turn every closed, not yet joined impression file whose window has elapsed into one batch.

    The batch (``served-<hash>.parquet`` in ``out_dir``, e.g. data/incoming) is written atomically,
    then the files are recorded in ``<log_dir>/joined.json``: a file is joined exactly once, and a
    re-run after a crash between the two steps rewrites the same batch name (idempotent).
    """
    log_dir, out_dir = Path(log_dir), Path(out_dir)
    window, now_ts = _window(attribution_window), _now(now)
    manifest = _load_manifest(log_dir)
    pending = [f for f in closed_files(log_dir, IMPRESSIONS) if f.name not in manifest["joined"]]
    ready, waiting = [], []
    for f in pending:
        ts = read_impressions([f])["timestamp"]
        (ready if len(ts) == 0 or ts.max() + window <= now_ts else waiting).append(f)
    result = JoinResult(batch=None, files=[f.name for f in ready], waiting_files=[f.name for f in waiting])
    if not ready:
        return result
    batch = join_feedback(log_dir, window.to_pytimedelta(), now_ts, impression_files=ready)
    name = "served-" + hashlib.sha256("\n".join(result.files).encode()).hexdigest()[:16] + ".parquet"
    if len(batch):
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(out_dir / name, lambda p: batch.to_parquet(p, index=False))
        result.batch = str(out_dir / name)
    result.rows, result.rewards = len(batch), int(batch["reward"].sum())
    stamp = now_ts.isoformat()
    manifest["joined"].update({f: {"batch": result.batch, "joined_at": stamp} for f in result.files})
    _atomic_write(log_dir / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    return result


__all__ = ["join_feedback", "join_to_batch", "JoinResult", "label_impressions", "read_feedback",
           "read_impressions", "DONE"]
