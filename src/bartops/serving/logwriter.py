"""Append-only, rotating JSON-lines log files for served impressions and feedback.

A file is written as ``<prefix>-<utc time>-<pid>-<seq>.jsonl.part`` and, when it is closed (after
``rotate_rows`` rows, once it is ``rotate_seconds`` old, or at shutdown), flushed, fsynced and renamed
to ``….jsonl``.  Readers only read closed ``.jsonl`` files, so they never see a half-written file.
``recover_partial_files`` closes ``.part`` files left by a process that died (dropping a torn last
line).  Each process (BentoML worker) writes its own files; the pid in the name keeps them apart.
Files the join has consumed are retired (``retire_files``): moved to ``<directory>/archive/``, deleted,
or kept, as ``serving.retire_joined`` says.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson

from bartops.leftovers import pid_alive

PART = ".jsonl.part"
DONE = ".jsonl"
IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
ARCHIVE = "archive"  # sub-folder of the log folder that retired files move to
RETIRE_MODES = ("archive", "delete", "keep")
_STAMP = "%Y%m%dT%H%M%S%f"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RotatingLogWriter:
    """Thread-safe writer of JSON-lines rows into rotating files under ``directory``."""

    def __init__(self, directory: str | Path, prefix: str, rotate_rows: int = 20_000,
                 rotate_seconds: float = 60.0, background: bool = True) -> None:
        if rotate_rows < 1 or rotate_seconds <= 0:
            raise ValueError(f"rotate_rows must be ≥ 1 and rotate_seconds > 0, got {rotate_rows}, {rotate_seconds}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rotate_rows = int(rotate_rows)
        self.rotate_seconds = float(rotate_seconds)
        self._lock = threading.Lock()
        self._fh = None
        self._path: Path | None = None
        self._opened = 0.0
        self._rows = 0
        self._seq = 0
        self._closed = False
        self.files_closed: list[Path] = []
        self._stop = threading.Event()
        self._timer = None
        if background:
            self._timer = threading.Thread(target=self._age_loop, name=f"{prefix}-rotation", daemon=True)
            self._timer.start()

    # ---------------------------------------------------------------- writing
    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append rows (one JSON line each) to the current file; returns how many were written."""
        # orjson: the same compact lines as json.dumps, a tenth of the time (0.02 ms for a 48-card page)
        text = b"".join(orjson.dumps(r, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)
                        for r in rows).decode()
        if not text:
            return 0
        n = text.count("\n")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"log writer for {self.directory}/{self.prefix} is closed")
            if self._fh is None:
                self._open()
            self._fh.write(text)
            self._fh.flush()
            self._rows += n
            if self._rows >= self.rotate_rows:
                self._close_current()
        return n

    def rotate(self) -> Path | None:
        """Close the current file now (if any); returns its final path."""
        with self._lock:
            return self._close_current()

    def close(self) -> None:
        """Close the current file and stop the rotation thread; further writes fail."""
        self._stop.set()
        with self._lock:
            self._close_current()
            self._closed = True
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=5)

    # ---------------------------------------------------------------- internals
    def _open(self) -> None:
        self._seq += 1
        stamp = datetime.now(timezone.utc).strftime(_STAMP)
        self._path = self.directory / f"{self.prefix}-{stamp}-{os.getpid()}-{self._seq:06d}{PART}"
        self._fh = open(self._path, "x", encoding="utf-8")
        self._opened = time.monotonic()
        self._rows = 0

    def _close_current(self) -> Path | None:
        if self._fh is None:
            return None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self._path.with_name(self._path.name[: -len(PART)] + DONE)
        os.replace(self._path, final)
        _fsync_dir(self.directory)
        self._fh, self._path = None, None
        self.files_closed.append(final)
        return final

    def _age_loop(self) -> None:
        tick = min(1.0, self.rotate_seconds / 4)
        while not self._stop.wait(tick):
            with self._lock:
                if self._fh is not None and time.monotonic() - self._opened >= self.rotate_seconds:
                    self._close_current()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the log")


def recover_partial_files(directory: str | Path) -> list[Path]:
    """Close ``.part`` files whose writer process is gone: drop a torn last line, fsync, rename."""
    directory = Path(directory)
    recovered = []
    for part in sorted(directory.glob(f"*{PART}")):
        try:
            pid = int(part.name[: -len(PART)].split("-")[-2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        data = part.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        with open(part, "r+b") as fh:
            fh.truncate(len(keep))
            fh.flush()
            os.fsync(fh.fileno())
        final = part.with_name(part.name[: -len(PART)] + DONE)
        os.replace(part, final)
        recovered.append(final)
    if recovered:
        _fsync_dir(directory)
    return recovered


def closed_files(directory: str | Path, prefix: str) -> list[Path]:
    """Closed (complete) log files of one kind, oldest first."""
    return sorted(Path(directory).glob(f"{prefix}-*{DONE}"))


def read_rows(files: Iterable[Path]) -> list[dict[str, Any]]:
    """All rows of the given closed JSON-lines files (with the file name in ``_file``)."""
    rows = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{f}:{n}: not a JSON line ({exc})") from None
                row["_file"] = f.name
                rows.append(row)
    return rows


def archived_files(directory: str | Path, prefix: str) -> list[Path]:
    """Closed log files of one kind that a join has retired to ``<directory>/archive/``, oldest first."""
    return closed_files(Path(directory) / ARCHIVE, prefix)


def opened_at(path: Path) -> datetime | None:
    """When the writer opened this log file (UTC, from its name); None for a name not in the writer's form.

    Every row in the file was written at or after this time, by the writer's clock.
    """
    try:
        return datetime.strptime(path.name.split("-")[1], _STAMP).replace(tzinfo=timezone.utc)
    except (IndexError, ValueError):
        return None


def retire_files(files: Iterable[Path], mode: str, directory: str | Path) -> list[str]:
    """Retire log files: move them to ``<directory>/archive/`` (``archive``), delete them (``delete``), or
    leave them (``keep``).  Files already gone are skipped (a re-run after a crash); returns the names retired."""
    if mode not in RETIRE_MODES:
        raise ValueError(f"retire mode must be one of {RETIRE_MODES}, got {mode!r}")
    if mode == "keep":
        return []
    directory = Path(directory)
    archive = directory / ARCHIVE
    done = []
    for f in files:
        try:
            if mode == "archive":
                archive.mkdir(exist_ok=True)
                os.replace(f, archive / f.name)  # same file system: a rename, bytes and mtime untouched
            else:
                f.unlink()
        except FileNotFoundError:
            continue
        done.append(f.name)
    if done:
        _fsync_dir(directory)
        if mode == "archive":
            _fsync_dir(archive)
    return done
