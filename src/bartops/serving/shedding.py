"""Load shedding: a bound on the requests in flight per worker; beyond it, 503 with ``Retry-After``.

A worker runs its sync APIs on one thread, so a request it accepts waits behind every request it
already holds.  Without a bound, an offered rate above capacity grows that queue without limit and
every request waits (2 cores, 200 req/s offered: p50 3.3 s, p99 17 s).  With at most
``max_in_flight`` requests held per worker, an accepted request waits behind at most
``max_in_flight - 1`` others, and the excess is told at once to come back later.

BentoML's own ``traffic={"max_concurrency": N}`` was measured too (docs/performance.md): it bounds
the same thing, but answers 429 without ``Retry-After`` and sheds every path but its health
endpoints (our ``/version`` included), so this middleware is used instead.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHED_PATHS = ("/home", "/feedback")  # health, version and metrics endpoints are never shed


class LoadShedMiddleware:
    """ASGI middleware: at most ``max_in_flight`` requests to ``paths`` at once; others get a cheap 503.

    The count is per process (one event loop per worker), so no lock is needed: the check and the
    increment happen without an ``await`` in between.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_seconds: int = 1,
                 paths: Iterable[str] = SHED_PATHS) -> None:
        if int(max_in_flight) < 1 or int(retry_after_seconds) < 1:
            raise ValueError(f"max_in_flight and retry_after_seconds must be >= 1, got "
                             f"{max_in_flight!r} and {retry_after_seconds!r}")
        self.app = app
        self.max_in_flight = int(max_in_flight)
        self.retry_after = str(int(retry_after_seconds))
        self.paths = frozenset(paths)
        self.in_flight = 0
        self.shed = 0  # requests answered 503 by this worker since it started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            return await self._reject(send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _reject(self, send: Send) -> None:
        msg = f"overloaded: {self.in_flight} requests in flight in this worker (limit {self.max_in_flight}); retry later"
        payload = json.dumps({"error": msg, "detail": [{"loc": ["server"], "msg": "overloaded"}]}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"retry-after", self.retry_after.encode())]})
        await send({"type": "http.response.body", "body": payload})
