"""Temporary names that say which process owns them, and the recovery of those a killed step left.

A file or folder being written beside its final name ``X`` is called ``.X.tmp-<pid>-<random>``; the
previous ``X`` moved aside during a replace is ``.X.old-<pid>-<random>``.  Both are hidden (readers
skip dot-names) and carry the writer's process id, so ``recover_leftovers`` can tell a leftover of a
killed step (its process is gone) from the temporary file of a step running right now in another
process (left alone).  An ``.old-`` whose final name is missing is moved back: the step died
between moving the old version aside and renaming the new one in, so the previous state returns.

Names written by earlier code without a process id (``.X.tmp-<random>``, ``.X.<hex>.tmp``, ``.X.tmp``,
``.X.json.<random>``) cannot be
attributed; they are removed once older than ``LEGACY_AGE_S``, longer than any step runs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bartops.faults import crash_point

TMP, OLD = "tmp", "old"
OWNED = re.compile(r"^\.(?P<final>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9A-Za-z_]+$")
LEGACY = re.compile(r"^\.(?P<final>.+)\.(tmp-[0-9a-z_]{8}|[0-9a-f]{8}\.tmp|tmp)$|^\.(?P<json>.+\.json)\.[0-9a-z_]{8}$")
LEGACY_AGE_S = 6 * 3600.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(final: Path, kind: str = TMP) -> Path:
    """A hidden sibling name of ``final`` owned by this process: ``.<name>.<kind>-<pid>-<random>``."""
    final = Path(final)
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def write_atomic(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary sibling (``temp_path``), which is
    flushed to disk and renamed over ``path``; on any error the temporary file is removed and
    ``path`` keeps its previous content.  Crash point: ``write-file:<name>:before-rename``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        crash_point(f"write-file:{path.name}:before-rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """``write_atomic`` of UTF-8 text."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path | str, data: Any, *, sort_keys: bool = False) -> Path:
    """``write_atomic`` of ``data`` as indented JSON (NumPy values as numbers, paths and other objects
    as ``str``)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=_json_value) + "\n")


def _json_value(o: Any) -> Any:
    return o.tolist() if hasattr(o, "tolist") else str(o)


def write_parquet_atomic(frame: Any, path: Path | str) -> Path:
    """``write_atomic`` of a pandas frame as Parquet (without its index)."""
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def make_temp_dir(final: Path) -> Path:
    """Create and return a new, empty temporary folder beside ``final`` (see ``temp_path``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{TMP}-{os.getpid()}-", dir=final.parent))


def owner_gone(pid: int) -> bool:
    """True when ``pid`` is neither this process nor a live one."""
    return pid != os.getpid() and not pid_alive(pid)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover_leftovers(*dirs: Path | str, any_owner: bool = False) -> list[str]:
    """Clean the leftovers of killed steps in ``dirs`` (not recursive); returns what was done.

    ``.X.tmp-<pid>-…`` is removed and ``.X.old-<pid>-…`` moved back to ``X`` when ``X`` is missing
    (else removed), when the process ``pid`` is gone.  ``any_owner=True`` ignores the owner, for a
    caller holding the lock that every writer of these folders takes.  Legacy names are removed
    when older than ``LEGACY_AGE_S`` (or at once with ``any_owner``).
    """
    done: list[str] = []
    now = time.time()
    for d in dirs:
        d = Path(d)
        try:
            entries = sorted(d.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            m = OWNED.match(entry.name)
            if m is None:
                legacy = LEGACY.match(entry.name)
                try:
                    old_enough = any_owner or now - entry.lstat().st_mtime > LEGACY_AGE_S
                except FileNotFoundError:
                    continue
                if legacy is not None and old_enough:
                    _remove(entry)
                    done.append(f"removed {entry}")
                continue
            if not any_owner and not owner_gone(int(m["pid"])):
                continue
            final = d / m["final"]
            if m["kind"] == OLD and not (final.exists() or final.is_symlink()):
                os.replace(entry, final)
                done.append(f"restored {final} from {entry.name}")
            else:
                _remove(entry)
                done.append(f"removed {entry}")
    return done
