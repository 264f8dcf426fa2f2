"""The running service follows the registry's production pointer: load beside, verify, swap atomically.

``RegistryFollower.poll`` reads ``production.json``; when it names another version than the live one,
the new bundle is verified in a child process (a damaged model can crash XGBoost's loader), loaded
and precomputed beside the live engine (which keeps serving), and only then swapped in with one
reference assignment.  A request takes ``follower.engine`` once and builds its whole page with it,
so every card of a page carries the version that built it.  A missing or corrupt version, or an
unreadable pointer, is refused: logged, kept in ``refusals`` (served by ``GET /version``), and the
live version keeps serving.  A refused (version, pointer sequence) is not retried; a new promotion
or rollback is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bartops.registry import Registry
from bartops.serving.engine import BundleLoadError, PageEngine, verify_bundle_isolated

log = logging.getLogger("bartops.serving")
MAX_EVENTS = 20  # swaps and refusals remembered for /version


def load_verified_engine(bundle_dir: Path) -> PageEngine:
    """Verify a bundle in a child process (at low CPU priority: requests come first), then load and
    precompute it in this one."""
    verify_bundle_isolated(bundle_dir, niceness=10)
    return PageEngine.load(bundle_dir, precompute=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SwapEvent:
    """A version change the follower made live, or refused."""

    version: str
    at: str
    seconds: float  # time spent verifying and loading
    error: str = ""  # empty for a swap; the reason for a refusal


@dataclass
class RegistryFollower:
    """Keeps ``engine`` equal to the registry's production version (see the module docs)."""

    registry: Registry
    engine: PageEngine
    loader: Callable[[Path], PageEngine] = load_verified_engine
    since: str = field(default_factory=_now)
    pending: str | None = None
    swaps: list[SwapEvent] = field(default_factory=list)
    refusals: list[SwapEvent] = field(default_factory=list)
    _refused: set[tuple[str, int]] = field(default_factory=set)

    @property
    def version(self) -> str:
        return self.engine.version

    def poll(self) -> SwapEvent | None:
        """One look at the pointer; swap or refuse when it names another version. Returns the event."""
        try:
            pointer = self.registry.pointer()
        except Exception as exc:  # noqa: BLE001 - an unreadable pointer never stops serving
            return self._refuse("production.json", -1, 0.0, f"{type(exc).__name__}: {exc}")
        if pointer is None or pointer.version == self.engine.version:
            return None
        key = (pointer.version, pointer.seq)
        if key in self._refused:
            return None
        t0 = time.perf_counter()
        self.pending = pointer.version
        try:
            engine = self.loader(self.registry.path(pointer.version))
            if engine.version != pointer.version:
                raise BundleLoadError(f"bundle of {pointer.version} says it is version {engine.version}")
        except Exception as exc:  # noqa: BLE001 - whatever fails, the live version keeps serving
            return self._refuse(pointer.version, pointer.seq, time.perf_counter() - t0,
                                f"{type(exc).__name__}: {exc}")
        finally:
            self.pending = None
        previous, self.engine = self.engine, engine  # the swap: one reference assignment
        self.since = _now()
        event = SwapEvent(engine.version, self.since, round(time.perf_counter() - t0, 3))
        self.swaps = [*self.swaps, event][-MAX_EVENTS:]
        log.info("bartops: now serving %s (was %s; loaded in %.1f s)", engine.version, previous.version, event.seconds)
        return event

    def _refuse(self, version: str, seq: int, seconds: float, error: str) -> SwapEvent:
        event = SwapEvent(version, _now(), round(seconds, 3), error)
        key = (version, seq)
        if key not in self._refused:
            self._refused.add(key)
            self.refusals = [*self.refusals, event][-MAX_EVENTS:]
            log.error("bartops: refused to serve %s, still serving %s: %s", version, self.engine.version, error)
        return event

    def run(self, stop: threading.Event, interval: float) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            self.poll()

    def status(self) -> dict:
        """What ``GET /version`` answers."""
        return {"version": self.engine.version, "since": self.since, "pending": self.pending,
                "swaps": [asdict(e) for e in self.swaps], "refusals": [asdict(e) for e in self.refusals]}
