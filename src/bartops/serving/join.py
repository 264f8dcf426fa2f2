"""Served impressions + feedback → a reward-labelled impression batch (the next round's training data).

Rules (docs/serving-logs.md tells the why):

* **Reward.** A served card earns ``reward = 1`` when at least one ``streamed: true`` report for its
  (request_id, item_id) is timestamped within ``[timestamp, timestamp + attribution_window]`` of the
  page view, else 0; ``stream_seconds`` is the longest streamed duration reported in the window.
  Repeated reports for one card therefore count once.
* **Readiness.** A closed impression file is joined once every row's window has elapsed at ``now``,
  where a row's time is clamped to the file's close time (mtime) + ``clock_skew``: a row stamped far in
  the future holds its file back by at most ``clock_skew + window`` after the file closed, never forever.
  Files are joined whole, each exactly once (``joined.json``).
* **Feedback is read once.** ``joined.json`` records, per feedback file, the bytes already read (the
  complete lines of open files too).  Each report read is *used* (its card is joined now), *carried*
  (its page may still be in an impression file not joined yet: kept in ``carried-<hash>.jsonl`` for the
  next join) or *dropped* and counted (it matches no card joined now, and no impression file still
  waiting could hold its page: an unknown request id, an item not on the page, or a page already
  joined).  A report can only name a page served before it was written, so its page can be waiting
  only in an impression file opened at or before the report's time (the writer's name stamp), with
  ``clock_skew`` of slack.
* **Retirement.** After the batch and the manifest are written (atomically, in that order), the
  impression files joined and the closed feedback files read to their end are retired
  (``archive``: moved to ``<log_dir>/archive/``; ``delete``; ``keep``).  A crash before the manifest
  write re-joins the same files into the same batch name; a crash after it leaves files the next join
  retires without reading them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bartops.leftovers import write_atomic
from bartops.logs.schema import IMPRESSION_COLUMNS, conform_impressions
from bartops.serving.logwriter import (
    DONE,
    FEEDBACK,
    IMPRESSIONS,
    PART,
    RETIRE_MODES,
    closed_files,
    opened_at,
    read_rows,
    retire_files,
)

MANIFEST = "joined.json"  # what the joins consumed (in the log folder)
LOCK = ".join.lock"
CARRY = "carried"  # carried-<hash>.jsonl: feedback read but kept for impressions not joined yet
FEEDBACK_COLUMNS = ("request_id", "item_id", "streamed", "seconds", "timestamp")
CLOCK_SKEW_SECONDS = 300.0  # validation.window.future_skew_seconds


def _window(attribution_window: float | timedelta) -> pd.Timedelta:
    w = pd.Timedelta(seconds=attribution_window) if isinstance(attribution_window, (int, float)) \
        else pd.Timedelta(attribution_window)
    if w <= pd.Timedelta(0):
        raise ValueError(f"attribution_window must be positive, got {attribution_window!r}")
    return w


def _now(now: datetime | str | None) -> pd.Timestamp:
    ts = pd.Timestamp(datetime.now(timezone.utc) if now is None else now)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _closed_at(path: Path) -> pd.Timestamp:
    """When a closed log file was last written (its mtime, UTC)."""
    return pd.Timestamp(path.stat().st_mtime_ns, unit="ns", tz="UTC")


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


def ready_times(shown: pd.Series, closed_at: pd.Timestamp | pd.Series, window: pd.Timedelta,
                clock_skew: pd.Timedelta) -> pd.Series:
    """When each row's attribution window has elapsed: its time, clamped to ``closed_at + clock_skew``, + window."""
    upper = closed_at + clock_skew
    clamped = shown.where(shown <= upper, upper) if isinstance(upper, pd.Series) else shown.clip(upper=upper)
    return clamped + window


def feedback_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Feedback rows (as logged) as a typed frame with ``FEEDBACK_COLUMNS``."""
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


def _lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def read_feedback(log_dir: str | Path) -> pd.DataFrame:
    """All feedback rows present in ``log_dir`` (closed files and the complete lines of open ones)."""
    rows, _ = read_new_feedback(Path(log_dir), {})
    return feedback_frame(rows)


def _key(path: Path) -> str:
    """A log file's name without ``.jsonl``/``.jsonl.part``: the same before and after it is closed."""
    return path.name[: -len(PART)] if path.name.endswith(PART) else path.name[: -len(DONE)]


def read_new_feedback(log_dir: Path, offsets: dict[str, int]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Feedback rows after ``offsets`` (bytes read per file key): complete lines of open and closed files.

    Returns the rows and the new offsets.  Open files are read first: one closed in between is read
    again from its new offset, so no line is missed or read twice.
    """
    offsets = dict(offsets)
    rows: list[dict[str, Any]] = []
    paths = sorted(log_dir.glob(f"{FEEDBACK}-*{PART}")) + closed_files(log_dir, FEEDBACK)
    for path in paths:
        key = _key(path)
        start = offsets.get(key, 0)
        data = None
        for candidate in (path, path.with_name(key + DONE)):
            try:
                with open(candidate, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
                break
            except FileNotFoundError:
                continue
        if data is None:
            continue
        complete = data[: data.rfind(b"\n") + 1]
        rows += _lines(complete)
        offsets[key] = start + len(complete)
    return rows, offsets


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


def sort_feedback(impressions: pd.DataFrame, feedback: pd.DataFrame,
                  horizon: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split feedback into (used, carried, dropped) against the impressions joined now.

    *used*: its (request_id, item_id) is a card joined now.  *carried*: not used, its request id is not
    a page joined now, and it was written at or after ``horizon`` (so its page may still be waiting).
    *dropped*: the rest (unknown request id, item not on the page, page already joined).
    """
    cards = impressions[["request_id", "item_id"]].drop_duplicates().assign(_card=True)
    m = feedback.merge(cards, on=["request_id", "item_id"], how="left")
    used = m["_card"].notna().to_numpy()
    page_now = feedback["request_id"].isin(impressions["request_id"]).to_numpy()
    carried = ~used & ~page_now & (feedback["timestamp"] >= horizon).to_numpy()
    dropped = ~used & ~carried
    return feedback[used], feedback[carried], feedback[dropped]


def join_feedback(log_dir: str | Path, attribution_window: float | timedelta, now: datetime | str | None = None,
                  impression_files: list[Path] | None = None,
                  clock_skew: float | timedelta = CLOCK_SKEW_SECONDS) -> pd.DataFrame:
    """Reward-labelled impressions (log schema) whose attribution window has elapsed at ``now``.

    Stateless: reads the closed impression files of ``log_dir`` (or only ``impression_files``) and every
    feedback file present, and keeps no record (``join_to_batch`` is the step that consumes logs).
    """
    window, now_ts, skew = _window(attribution_window), _now(now), _window(clock_skew)
    files = closed_files(log_dir, IMPRESSIONS) if impression_files is None else list(impression_files)
    imp = read_impressions(files)
    closed = imp["_file"].map({f.name: _closed_at(f) for f in files}).astype("datetime64[ns, UTC]")
    imp = imp[ready_times(imp["timestamp"], closed, window, skew) <= now_ts]
    imp = imp.drop(columns="_file").reset_index(drop=True)
    return conform_impressions(label_impressions(imp, read_feedback(log_dir), window))


@dataclass
class JoinResult:
    """What ``join_to_batch`` did: the batch written (if any), the files consumed, the feedback's fate."""

    batch: str | None
    rows: int = 0
    rewards: int = 0
    files: list[str] = field(default_factory=list)  # impression files joined now
    waiting_files: list[str] = field(default_factory=list)  # closed, but their window has not elapsed
    feedback_read: int = 0  # reports read now (new lines + carried ones)
    feedback_used: int = 0  # ... naming a card joined now
    feedback_repeats: int = 0  # ... of which repeat a card already reported (the card counts once)
    feedback_carried: int = 0  # ... kept for impressions not joined yet
    feedback_dropped: int = 0  # ... matching no served card that is joined now or could still be
    retire: str = "archive"
    retired: list[str] = field(default_factory=list)  # log files archived or deleted after this join

    def to_dict(self) -> dict:
        return asdict(self)


def _empty_manifest() -> dict[str, Any]:
    return {"version": 2, "joined": {}, "feedback": {}, "carry": None, "waiting": {}, "pending": None,
            "last_join": None}


def _load_manifest(log_dir: Path) -> dict[str, Any]:
    path = log_dir / MANIFEST
    manifest = _empty_manifest()
    if path.exists():
        manifest.update(json.loads(path.read_text()))
    return manifest


def _write_manifest(log_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(log_dir / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2, sort_keys=True)))


def _consumed(log_dir: Path, manifest: dict[str, Any]) -> tuple[list[Path], list[Path], list[Path]]:
    """Files in ``log_dir`` the manifest says are consumed: joined impression files, closed feedback
    files read to their end, and carry files other than the current one."""
    imps = [f for f in closed_files(log_dir, IMPRESSIONS) if f.name in manifest["joined"]]
    fbs = [f for f in closed_files(log_dir, FEEDBACK)
           if manifest["feedback"].get(_key(f), -1) == f.stat().st_size]
    carries = [f for f in sorted(log_dir.glob(f"{CARRY}-*{DONE}")) if f.name != manifest["carry"]]
    return imps, fbs, carries


def _retire(log_dir: Path, manifest: dict[str, Any], mode: str) -> tuple[list[str], bool]:
    """Retire what the manifest says is consumed, then forget entries of files no longer in ``log_dir``.

    Returns (names retired, whether the manifest changed)."""
    imps, fbs, carries = _consumed(log_dir, manifest)
    retired = retire_files(imps + fbs, mode, log_dir)
    for f in carries:  # derived state, superseded: always deleted
        f.unlink(missing_ok=True)
    present = {_key(p) for p in log_dir.glob(f"{FEEDBACK}-*")}
    names = {p.name for p in closed_files(log_dir, IMPRESSIONS)}
    before = (len(manifest["joined"]), len(manifest["feedback"]))
    manifest["joined"] = {k: v for k, v in manifest["joined"].items() if k in names}
    manifest["feedback"] = {k: v for k, v in manifest["feedback"].items() if k in present}
    return retired, before != (len(manifest["joined"]), len(manifest["feedback"]))


def _classify(pending: list[Path], manifest: dict[str, Any], window: pd.Timedelta, skew: pd.Timedelta,
              now_ts: pd.Timestamp) -> tuple[list[Path], list[Path], dict[str, Any], dict[str, pd.DataFrame]]:
    """(ready, waiting, cache of waiting files' ready times, frames already read of ready files).

    A file is ready when every row is; one closed longer than ``skew + window`` ago is ready unread."""
    ready, waiting, cache, frames = [], [], {}, {}
    for f in pending:
        st = f.stat()
        closed = pd.Timestamp(st.st_mtime_ns, unit="ns", tz="UTC")
        if closed + skew + window <= now_ts:  # no row's clamped time is later than the close + skew
            ready.append(f)
            continue
        seen = manifest["waiting"].get(f.name)
        frame = None
        if seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
            at = pd.Timestamp(seen["ready_at"])
        else:
            frame = read_impressions([f])
            at = ready_times(frame["timestamp"], closed, window, skew).max() if len(frame) else closed
        if at <= now_ts:
            ready.append(f)
            if frame is not None:
                frames[f.name] = frame
        else:
            waiting.append(f)
            cache[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ready_at": at.isoformat()}
    return ready, waiting, cache, frames


def _read_ready(ready: list[Path], frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows of the ready files (reusing frames already read), without ``_file``."""
    parts = [frames[f.name] if f.name in frames else read_impressions([f]) for f in ready]
    imp = pd.concat(parts, ignore_index=True) if parts else read_impressions([])
    return imp.drop(columns="_file").reset_index(drop=True)


def _write_jsonl(path: Path, frame: pd.DataFrame) -> None:
    out = frame.assign(timestamp=frame["timestamp"].map(lambda t: t.isoformat()),
                       seconds=frame["seconds"].astype(object).where(frame["seconds"].notna(), None))
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n"
                            for r in out[list(FEEDBACK_COLUMNS)].to_dict("records")))


@contextmanager
def _exclusive(log_dir: Path):
    """One join at a time per log folder (an advisory lock on ``<log_dir>/.join.lock``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another join is running on {log_dir} (lock {log_dir / LOCK})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def join_to_batch(log_dir: str | Path, out_dir: str | Path, attribution_window: float | timedelta,
                  now: datetime | str | None = None, retire: str = "archive",
                  clock_skew: float | timedelta = CLOCK_SKEW_SECONDS) -> JoinResult:
    """Turn every closed, not yet joined impression file whose window has elapsed into one batch.

    The batch (``served-<hash>.parquet`` in ``out_dir``, e.g. data/incoming; the hash names the files
    joined) is written atomically, then ``<log_dir>/joined.json`` records what was consumed, then the
    consumed files are retired (``retire``: archive | delete | keep).  See the module docs for the rules.
    A second join on the same folder while one runs raises RuntimeError.
    """
    if retire not in RETIRE_MODES:
        raise ValueError(f"retire must be one of {RETIRE_MODES}, got {retire!r}")
    log_dir, out_dir = Path(log_dir), Path(out_dir)
    window, now_ts, skew = _window(attribution_window), _now(now), _window(clock_skew)
    with _exclusive(log_dir):
        return _join(log_dir, out_dir, window, now_ts, retire, skew)


def _join(log_dir: Path, out_dir: Path, window: pd.Timedelta, now_ts: pd.Timestamp, retire: str,
          skew: pd.Timedelta) -> JoinResult:
    clock = min(now_ts, _now(None))  # files opened after this cannot be listed below
    manifest = _load_manifest(log_dir)
    retired, changed = _retire(log_dir, manifest, retire)  # finish what a crashed join left
    if changed:
        _write_manifest(log_dir, manifest)
    open_parts = sorted(log_dir.glob(f"{IMPRESSIONS}-*{PART}"))  # before the closed ones: none slips between
    pending = [f for f in closed_files(log_dir, IMPRESSIONS) if f.name not in manifest["joined"]]
    intent = manifest.get("pending") or {}
    if intent.get("files") and set(intent["files"]) <= {f.name for f in pending}:
        # a join wrote (or was writing) this batch, then stopped before its manifest: redo exactly it
        ready = [f for f in pending if f.name in set(intent["files"])]
        waiting, cache, frames = [f for f in pending if f not in ready], {}, {}
    else:
        ready, waiting, cache, frames = _classify(pending, manifest, window, skew, now_ts)
    unjoined = waiting + open_parts
    opened = [pd.Timestamp(t) for t in map(opened_at, unjoined) if t is not None]
    horizon = min(opened + [clock]) - skew
    if any(opened_at(f) is None for f in unjoined):
        horizon = pd.Timestamp.min.tz_localize("UTC")  # a file of an unknown writer: keep every report

    carry = log_dir / manifest["carry"] if manifest["carry"] else None
    carried_rows = [{k: v for k, v in r.items() if k != "_file"} for r in read_rows([carry])] if carry else []
    new_rows, offsets = read_new_feedback(log_dir, manifest["feedback"])
    feedback = feedback_frame(carried_rows + new_rows)

    imp = _read_ready(ready, frames)
    used, kept, dropped = sort_feedback(imp, feedback, horizon)
    batch = conform_impressions(label_impressions(imp, used, window))
    names = [f.name for f in ready]
    result = JoinResult(batch=None, rows=len(batch), rewards=int(batch["reward"].sum()), files=names,
                        waiting_files=[f.name for f in waiting], feedback_read=len(feedback),
                        feedback_used=len(used),
                        feedback_repeats=len(used) - len(used[["request_id", "item_id"]].drop_duplicates()),
                        feedback_carried=len(kept), feedback_dropped=len(dropped), retire=retire)
    if len(batch):
        name = "served-" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:16] + ".parquet"
        if intent.get("files") != names:  # recorded first: a re-run after a crash redoes this very batch
            manifest["pending"] = {"files": names, "batch": name}
            _write_manifest(log_dir, manifest)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / name, lambda p: batch.to_parquet(p, index=False))
        result.batch = str(out_dir / name)
    new_carry = None
    if len(kept):
        digest = hashlib.sha256(pd.util.hash_pandas_object(kept, index=False).to_numpy().tobytes()).hexdigest()
        new_carry = f"{CARRY}-{digest[:16]}{DONE}"
        write_atomic(log_dir / new_carry, lambda p: _write_jsonl(p, kept))
    if not names and offsets == manifest["feedback"] and new_carry == manifest["carry"] \
            and cache == manifest["waiting"]:
        result.retired = retired
        return result  # nothing consumed: nothing to record
    stamp = now_ts.isoformat()
    manifest["joined"].update({f: {"batch": result.batch, "joined_at": stamp} for f in names})
    manifest.update(feedback=offsets, carry=new_carry, waiting=cache, pending=None,
                    last_join={k: v for k, v in result.to_dict().items() if k not in ("files", "waiting_files")})
    _write_manifest(log_dir, manifest)  # the commit point: from here on these files are consumed
    done, _ = _retire(log_dir, manifest, retire)
    result.retired = retired + done
    _write_manifest(log_dir, manifest)
    return result


__all__ = ["join_feedback", "join_to_batch", "JoinResult", "label_impressions", "read_feedback",
           "read_impressions", "read_new_feedback", "ready_times", "sort_feedback", "feedback_frame", "DONE",
           "MANIFEST", "CARRY"]
