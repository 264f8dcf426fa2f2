"""Load shedding: a bound on the requests in flight per worker; beyond it, 503 with ``Retry-After``.

A worker runs its sync APIs on one thread, so a request it accepts waits behind every request it
already holds.  Without a bound, an offered rate above capacity grows that queue without limit and
every request waits (2 cores, 200 req/s offered: p50 3.3 s, p99 17 s).  With at most ``bound``
requests held per worker, an accepted request waits behind at most ``bound - 1`` others, and the
excess is told at once to come back later.

The bound is ``max_in_flight``, lowered when the worker is slow: a request admitted behind ``k``
others takes about ``(k + 1) * s``, where ``s`` (an exponential average) is the time between two
completions while requests were waiting, i.e. what one request costs the worker right now, other
work on the cores included.  So ``bound = clamp(target_latency / s, 1, max_in_flight)``: on a quiet
machine the cap rules; when the cores are shared, fewer requests are held rather than all of them
waiting longer.

BentoML's own ``traffic={"max_concurrency": N}`` was measured too (docs/performance.md): it bounds
the same thing, but answers 429 without ``Retry-After`` and sheds every path but its health
endpoints (our ``/version`` included), so this middleware is used instead.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHED_PATHS = ("/home", "/feedback")  # health, version and metrics endpoints are never shed
SHED_METRIC = "bartops_shed_requests"  # Prometheus counter (exposed as ..._total), labelled by path
_shed_counter = None


def count_shed(path: str) -> None:
    """Count one shed request in Prometheus (``bartops_shed_requests_total{path}`` on ``/metrics``).

    ``prometheus_client`` is imported at the first shed, inside the worker, after BentoML has set up
    its multiprocess collector, so the counts of every worker add up on ``/metrics``."""
    global _shed_counter
    if _shed_counter is None:
        from prometheus_client import Counter

        _shed_counter = Counter(SHED_METRIC, "Requests answered 503 + Retry-After by load shedding", ["path"])
    _shed_counter.labels(path=path).inc()


class LoadShedMiddleware:
    """ASGI middleware: at most ``bound`` requests to ``paths`` at once; others get a cheap 503.

    The state is per process (one event loop per worker), so no lock is needed: the check and the
    increment happen without an ``await`` in between.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_seconds: int = 1,
                 target_latency_ms: float | None = None, paths: Iterable[str] = SHED_PATHS,
                 clock: Callable[[], float] = time.monotonic,
                 on_shed: Callable[[str], None] | None = count_shed) -> None:
        if int(max_in_flight) < 1 or int(retry_after_seconds) < 1 or (target_latency_ms is not None
                                                                       and target_latency_ms <= 0):
            raise ValueError(f"max_in_flight and retry_after_seconds must be >= 1 and target_latency_ms > 0, got "
                             f"{max_in_flight!r}, {retry_after_seconds!r} and {target_latency_ms!r}")
        self.app = app
        self.max_in_flight = int(max_in_flight)
        self.retry_after = str(int(retry_after_seconds))
        self.target = None if target_latency_ms is None else target_latency_ms / 1e3
        self.paths = frozenset(paths)
        self.clock = clock
        self.on_shed = on_shed
        self.in_flight = 0
        self.shed = 0  # requests answered 503 by this worker since it started
        self.per_request: float | None = None  # average seconds between completions of a busy worker
        self._busy_from: float | None = None  # last completion that left requests waiting

    @property
    def bound(self) -> int:
        """Requests admitted at once now: ``max_in_flight``, lower while requests cost more."""
        if self.target is None or self.per_request is None:
            return self.max_in_flight
        return max(1, min(self.max_in_flight, int(self.target / self.per_request)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.bound:
            self.shed += 1
            if self.on_shed is not None:
                self.on_shed(scope["path"])
            return await self._reject(send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self._completed()

    def _completed(self) -> None:
        now = self.clock()
        if self._busy_from is not None:  # the worker went from one request straight to the next
            gap = now - self._busy_from
            self.per_request = gap if self.per_request is None else 0.8 * self.per_request + 0.2 * gap
        self._busy_from = now if self.in_flight > 0 else None

    async def _reject(self, send: Send) -> None:
        msg = f"overloaded: {self.in_flight} requests in flight in this worker (limit now {self.bound}); retry later"
        payload = json.dumps({"error": msg, "detail": [{"loc": ["server"], "msg": "overloaded"}]}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"retry-after", self.retry_after.encode())]})
        await send({"type": "http.response.body", "body": payload})
