"""LoadShedMiddleware over a fake ASGI app whose requests stay in flight until the test releases them."""

from __future__ import annotations

import asyncio
import json

import pytest

from bartops.config import ServingConfig
from bartops.serving.shedding import LoadShedMiddleware


class HeldApp:
    """A fake ASGI app: each request waits on ``release`` and then answers 200."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers, body) of one GET/POST through ``app``."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_excess_requests_get_503_with_retry_after_and_accepted_ones_complete():
    counted: list[str] = []

    async def scenario():
        inner = HeldApp()
        app = LoadShedMiddleware(inner, max_in_flight=3, retry_after_seconds=2, on_shed=counted.append)
        held = [asyncio.create_task(call(app, "/home" if i % 2 else "/feedback")) for i in range(3)]
        await settle()
        assert inner.entered == 3 and app.in_flight == 3, f"held requests: entered {inner.entered}, in flight {app.in_flight}"
        excess = [await call(app, p) for p in ("/home", "/feedback")]
        inner.release.set()
        done = await asyncio.gather(*held)
        after = await call(app, "/home")
        return app, inner, excess, done, after

    app, inner, excess, done, after = asyncio.run(scenario())
    for status, headers, body in excess:
        assert status == 503, f"excess request answered {status}, expected 503"
        assert headers.get(b"retry-after") == b"2", f"Retry-After {headers.get(b'retry-after')!r}, expected b'2'"
        assert json.loads(body)["error"].startswith("overloaded"), f"503 body {body!r}"
        assert int(headers[b"content-length"]) == len(body), f"content-length {headers[b'content-length']!r} vs {len(body)}"
    assert [d[0] for d in done] == [200, 200, 200], f"accepted requests answered {[d[0] for d in done]}"
    assert after[0] == 200, f"a request after the load answered {after[0]}, expected 200"
    assert inner.entered == 4, f"the app saw {inner.entered} requests, expected 4 (3 held + 1 after)"
    assert app.in_flight == 0 and app.shed == 2, f"in flight {app.in_flight} (expected 0), shed {app.shed} (expected 2)"
    assert counted == ["/home", "/feedback"], f"shed requests reported to the metric hook: {counted}"


@pytest.mark.parametrize("path", ["/readyz", "/livez", "/healthz", "/version", "/metrics"])
def test_status_endpoints_are_never_shed(path):
    async def scenario():
        inner = HeldApp()
        app = LoadShedMiddleware(inner, max_in_flight=1)
        held = asyncio.create_task(call(app, "/home"))
        await settle()
        status_call = asyncio.create_task(call(app, path))
        await settle()
        inner.release.set()
        return app, await held, await status_call

    app, held, status = asyncio.run(scenario())
    assert held[0] == 200 and status[0] == 200, f"/home answered {held[0]}, {path} answered {status[0]} (both expected 200)"
    assert app.shed == 0, f"{app.shed} requests shed, expected none"


def test_a_failing_request_releases_its_slot():
    async def boom(scope, receive, send):
        raise RuntimeError("boom")

    async def scenario():
        app = LoadShedMiddleware(boom, max_in_flight=1)
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await call(app, "/home")
        return app

    app = asyncio.run(scenario())
    assert app.in_flight == 0 and app.shed == 0, f"in flight {app.in_flight}, shed {app.shed} after 3 failures (expected 0, 0)"


def test_non_http_scopes_pass_through():
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(LoadShedMiddleware(inner, max_in_flight=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"], f"lifespan scope reached the app as {seen}"


def test_bounds_are_validated():
    with pytest.raises(ValueError, match="max_in_flight"):
        LoadShedMiddleware(HeldApp(), max_in_flight=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        ServingConfig(max_in_flight=0)
    with pytest.raises(ValueError, match="retry_after_seconds"):
        ServingConfig(retry_after_seconds=1.5)
    cfg = ServingConfig.from_dict({"max_in_flight": 6, "retry_after_seconds": 2})
    assert (cfg.max_in_flight, cfg.retry_after_seconds) == (6, 2), f"config read {cfg.max_in_flight}, {cfg.retry_after_seconds}"


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bound_drops_while_requests_are_slow_and_recovers_when_they_are_fast():
    async def finish_in_turn(app: LoadShedMiddleware, per_request: float, n: int) -> list[int]:
        """Hold ``n`` requests; release them one at a time, ``per_request`` fake seconds apart."""
        gates = [asyncio.Event() for _ in range(n)]

        async def gated(scope, receive, send):
            await gates[int(scope["path"].rsplit("/", 1)[1])].wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app.app = gated
        app.paths = frozenset(f"/home/{i}" for i in range(n))
        tasks = [asyncio.create_task(call(app, f"/home/{i}")) for i in range(n)]
        await settle()
        for gate in gates:
            clock.now += per_request
            gate.set()
            await settle()
        return [(await t)[0] for t in tasks]

    clock = Clock()

    async def scenario():
        app = LoadShedMiddleware(HeldApp(), max_in_flight=8, target_latency_ms=50, clock=clock)
        start = app.bound
        slow = await finish_in_turn(app, 0.020, 6)  # 20 ms a request: 50 / 20 -> 2 held at most
        slow_bound, slow_cost = app.bound, app.per_request
        fast = []
        for _ in range(15):  # 4 ms a request, two held at a time: the average comes down, the bound back to 8
            fast += await finish_in_turn(app, 0.004, 2)
        return start, slow, slow_bound, slow_cost, fast, app.bound

    start, slow, slow_bound, slow_cost, fast, fast_bound = asyncio.run(scenario())
    assert start == 8, f"bound {start} before any measurement, expected max_in_flight 8"
    assert slow == [200] * 6, f"held requests answered {slow}"
    assert abs(slow_cost - 0.020) < 1e-9 and slow_bound == 2, \
        f"at 20 ms a request: cost estimate {slow_cost:.4f} s, bound {slow_bound} (expected 0.020 s, 2)"
    assert fast == [200] * 30 and fast_bound == 8, f"at 4 ms a request: answers {fast}, bound {fast_bound} (expected 8)"


def test_slow_worker_sheds_below_the_cap():
    clock = Clock()

    async def scenario():
        inner = HeldApp()
        app = LoadShedMiddleware(inner, max_in_flight=8, target_latency_ms=50, clock=clock)
        app.per_request = 0.030  # 30 ms a request: one held at most (50 / 30)
        first = asyncio.create_task(call(app, "/home"))
        await settle()
        second = await call(app, "/home")
        inner.release.set()
        return app, (await first)[0], second[0]

    app, first, second = asyncio.run(scenario())
    assert (first, second) == (200, 503), f"answers {first}, {second} with bound {app.bound} (expected 200, 503)"
