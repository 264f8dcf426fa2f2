"""A local, file-based registry of policy bundles.

Layout under ``root``::

    versions/<version>/     a copied policy bundle (model/, features/, policy.json, metrics.json,
                            lineage.json, gate.json once decided) plus registry.json
    production.json         the production pointer: one small JSON file replaced atomically
    history.jsonl           append-only log of committed promotions and rollbacks

Crash safety: a bundle is copied into a hidden temporary directory (``.<version>.tmp-<pid>-…``) and renamed into
``versions/`` in one step; the pointer is written to a temporary file, flushed, and switched with
``os.replace``, which is atomic on POSIX.  The pointer carries the event that created it, and the
history line is appended only after the switch, so a crash before the switch leaves the old
production and its history untouched, and a crash after it leaves the new production whose event
``history()`` recovers from the pointer.  Mutations hold an exclusive ``flock`` on ``root/.lock``
and, once they hold it, remove the temporary files a killed mutation left (``recover_leftovers``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from bartops.config import Paths, load_params_or_defaults
from bartops.faults import crash_point
from bartops.leftovers import recover_leftovers, temp_path, write_json_atomic

REGISTRY_ENV = "BARTOPS_REGISTRY"  # the registry folder, unless a command names one
POINTER = "production.json"
HISTORY = "history.jsonl"
REQUIRED_BUNDLE_ENTRIES = ("model", "features", "policy.json")
BUNDLE_JSON_FILES = ("policy.json", "metrics.json", "gate.json", "lineage.json", "registry.json")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def registry_root(root: str | Path | None = None, paths: Paths | None = None) -> Path:
    """The registry folder: ``root``, else ``$BARTOPS_REGISTRY``, else ``paths.registry`` (without
    ``paths``: the params file's, or the default ``registry``)."""
    if root:
        return Path(root)
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return (paths or load_params_or_defaults().paths).registry


@dataclass(frozen=True)
class ProductionPointer:
    """What ``production.json`` says: the version and the sequence number of its event."""

    version: str
    seq: int


class RegistryError(RuntimeError):
    """A registry operation is not possible (unknown version, duplicate, nothing to roll back to)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def check_version_name(version: str) -> str:
    """Return ``version`` or raise ValueError: letters, digits, '.', '_', '-' only, ≤ 128 chars."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(
            f"invalid version name {version!r}: use letters, digits, '.', '_' or '-' (max 128), "
            "starting with a letter or digit"
        )
    return version


class Registry:
    """Policy bundles under ``root/versions`` and the production pointer (see module docs)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def path(self, version: str) -> Path:
        """Directory of a registered version; raises RegistryError if it is not registered."""
        p = self.versions_dir / check_version_name(version)
        if not p.is_dir():
            known = [v["version"] for v in self.list()]
            raise RegistryError(f"version {version!r} is not registered in {self.root} (known: {known})")
        return p

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's lock; first clean what a killed mutation left (every writer holds it)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self.recover_leftovers()
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def recover_leftovers(self) -> list[str]:
        """Remove the temporary files and half-copied versions of killed mutations; call with the lock held.

        Under the lock no other registry writer runs, so every temporary name in ``root``,
        ``versions/`` and each version's folder is a leftover, whatever process made it
        (including the names older code used: ``.incoming-<uuid>``, ``.<file>.<hex>.tmp``).
        """
        dirs = [self.root, self.versions_dir]
        dirs += [d for d in self.versions_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        done = recover_leftovers(*dirs, any_owner=True)
        for d in self.versions_dir.glob(".incoming-*"):
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"removed {d}")
        return done

    # ------------------------------------------------------------------ versions
    def register(self, bundle_dir: Path | str, version: str | None = None) -> str:
        """Copy a policy bundle in as ``versions/<version>``; returns the version name.

        The version defaults to ``policy.json``'s "version", else a timestamped name.  The copy's
        ``policy.json`` "version" is set to the registered name so served logs carry it.
        """
        bundle = Path(bundle_dir)
        if not bundle.is_dir():
            raise FileNotFoundError(f"bundle directory {bundle} does not exist")
        missing = [e for e in REQUIRED_BUNDLE_ENTRIES if not (bundle / e).exists()]
        if missing:
            raise ValueError(f"{bundle} is not a policy bundle: missing {missing}")
        try:
            policy = _read_json(bundle / "policy.json")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{bundle / 'policy.json'} is not valid JSON: {exc}") from None
        if not isinstance(policy, dict):
            raise ValueError(f"{bundle / 'policy.json'} must hold a JSON object")
        if version is None:
            version = policy.get("version") or (
                "v" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
            )
        check_version_name(str(version))
        with self._locked():
            final = self.versions_dir / version
            if final.exists():
                raise RegistryError(f"version {version!r} is already registered in {self.root}")
            tmp = temp_path(final)
            try:
                shutil.copytree(bundle, tmp)
                crash_point("registry:register:copied")
                write_json_atomic(tmp / "policy.json", {**policy, "version": version}, sort_keys=True)
                write_json_atomic(tmp / "registry.json", {
                    "version": version,
                    "registered_at": _now(),
                    "source": str(bundle.resolve()),
                    "source_version": policy.get("version"),
                }, sort_keys=True)
                os.rename(tmp, final)
                crash_point("registry:register:renamed")
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return version

    def list(self) -> list[dict]:
        """One summary per registered version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        prod = self.production()
        rows = []
        for d in self.versions_dir.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            reg = _safe_json(d / "registry.json") or {}
            gate = _safe_json(d / "gate.json")
            rows.append({
                "version": d.name,
                "registered_at": reg.get("registered_at"),
                "production": d.name == prod,
                "decision": None if gate is None else gate.get("decision"),
            })
        return sorted(rows, key=lambda r: (r["registered_at"] or "", r["version"]))

    def show(self, version: str) -> dict:
        """Everything recorded for a version: its JSON files, path, files and production status."""
        d = self.path(version)
        out: dict[str, Any] = {"version": version, "path": str(d), "production": version == self.production()}
        for name in BUNDLE_JSON_FILES:
            out[name.removesuffix(".json")] = _safe_json(d / name)
        out["files"] = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
        return out

    def record_decision(self, version: str, decision: dict) -> Path:
        """Store the gate decision (with its evidence) as ``versions/<version>/gate.json``."""
        if not isinstance(decision, dict):
            raise TypeError(f"decision must be a dict, got {type(decision).__name__}")
        target = self.path(version) / "gate.json"
        with self._locked():
            write_json_atomic(target, {**decision, "version": version, "recorded_at": _now()}, sort_keys=True)
        return target

    # ------------------------------------------------------------------ production pointer
    def _pointer(self) -> dict | None:
        """The pointer's JSON, checked: a RegistryError names the file, the problem and the fix."""
        p = self.root / POINTER
        if not p.exists():
            return None
        fix = f"rebuild it from {self.root / HISTORY} with `bartops registry repair`"
        try:
            ptr = _read_json(p)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"production pointer {p} is not valid JSON ({exc}); {fix}") from None
        if not isinstance(ptr, dict) or not isinstance(ptr.get("seq"), int) or not isinstance(ptr.get("event"), dict):
            raise RegistryError(f"production pointer {p} lacks an integer 'seq' or its 'event'; {fix}")
        try:
            check_version_name(ptr.get("version"))
        except ValueError as exc:
            raise RegistryError(f"production pointer {p} names no registered version: {exc}; {fix}") from None
        return ptr

    def pointer(self) -> ProductionPointer | None:
        """The production version and the sequence number of the event that set it (None: nothing yet)."""
        ptr = self._pointer()
        return None if ptr is None else ProductionPointer(ptr["version"], ptr["seq"])

    def production(self) -> str | None:
        """The production version, or None when nothing has been promoted."""
        ptr = self._pointer()
        return None if ptr is None else ptr["version"]

    def production_path(self) -> Path | None:
        """Directory of the production bundle, or None."""
        v = self.production()
        return None if v is None else self.versions_dir / v

    def promote(self, version: str, reason: str) -> dict:
        """Make ``version`` production (atomic pointer switch); returns the history event."""
        self.path(version)
        with self._locked():
            ptr = self._pointer()
            current = None if ptr is None else ptr["version"]
            stack = [] if ptr is None else list(ptr.get("stack", []))
            if current is not None and current != version:
                stack.append(current)
            return self._switch(ptr, "promote", version, current, stack, reason)

    def rollback(self, reason: str) -> dict:
        """Return production to the version it replaced; returns the history event."""
        with self._locked():
            ptr = self._pointer()
            if ptr is None:
                raise RegistryError("nothing is in production: nothing to roll back")
            stack = list(ptr.get("stack", []))
            if not stack:
                raise RegistryError(
                    f"production version {ptr['version']!r} has no earlier production version to roll back to"
                )
            target = stack.pop()
            if not (self.versions_dir / target).is_dir():
                raise RegistryError(f"previous production version {target!r} is missing from {self.versions_dir}")
            return self._switch(ptr, "rollback", target, ptr["version"], stack, reason)

    def _switch(self, ptr: dict | None, action: str, version: str, previous: str | None,
                stack: list[str], reason: str) -> dict:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a reason is required for promote and rollback")
        if ptr is not None and int(ptr["seq"]) not in {int(e["seq"]) for e in self._logged_events()}:
            self._append_history(ptr["event"])  # repair: a crash lost the previous event's line
        seq = 1 if ptr is None else int(ptr["seq"]) + 1
        event = {"seq": seq, "action": action, "version": version, "previous": previous,
                 "reason": reason.strip(), "at": _now()}
        write_json_atomic(self.root / POINTER, {"version": version, "seq": seq, "stack": stack, "event": event},
                          sort_keys=True)
        crash_point("registry:switched")
        self._append_history(event)  # after the commit: history() recovers it from the pointer if lost
        return event

    def _append_history(self, event: dict) -> None:
        p = self.root / HISTORY
        torn = p.exists() and p.stat().st_size > 0 and not p.read_bytes().endswith(b"\n")
        with open(p, "a", encoding="utf-8") as fh:
            fh.write(("\n" if torn else "") + json.dumps(event, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _logged_events(self) -> list[dict]:
        p = self.root / HISTORY
        out = []
        if p.exists():
            for line in p.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn line from a crash mid-append; the pointer still holds its event
        return out

    def repair_pointer(self) -> dict:
        """Rewrite ``production.json`` by replaying ``history.jsonl`` (for a lost or corrupt pointer);
        returns the new pointer.  Raises RegistryError when the history names no registered version."""
        with self._locked():
            events = sorted({int(e["seq"]): e for e in self._logged_events()}.items())
            if not events:
                raise RegistryError(f"{self.root / HISTORY} holds no promotion: nothing to rebuild the pointer from")
            current, stack = None, []
            for _, e in events:
                if e["action"] == "rollback" and stack and stack[-1] == e["version"]:
                    stack.pop()
                elif e["action"] != "rollback" and current is not None and current != e["version"]:
                    stack.append(current)
                current = e["version"]
            self.path(check_version_name(current))
            seq, last = events[-1]
            ptr = {"version": current, "seq": seq, "stack": stack, "event": last}
            write_json_atomic(self.root / POINTER, ptr, sort_keys=True)
            return ptr

    def history(self) -> list[dict]:
        """Committed promotions and rollbacks, oldest first."""
        events: dict[int, dict] = {}
        for e in self._logged_events():
            events.setdefault(int(e["seq"]), e)
        ptr = self._pointer()
        if ptr is not None:
            events.setdefault(int(ptr["seq"]), ptr["event"])
        return [events[k] for k in sorted(events)]


def _safe_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return _read_json(path)
    except json.JSONDecodeError as exc:
        return {"error": f"unreadable JSON: {exc}"}
