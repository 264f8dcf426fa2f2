"""The BentoML service ``HomePage``: ``POST /home`` builds a BaRT page, ``POST /feedback`` records rewards.

Which policy bundle is served (first match wins):

1. the BentoML model ``model_tag`` — a Bento argument (``bentoml build --arg model_tag=…``, recorded
   in the Bento and restored by ``bentoml serve <bento>``) or env ``BARTOPS_MODEL_TAG``; it is then
   declared at class scope as ``bentoml.models.BentoModel`` so ``bentoml build`` packages it;
2. the bundle directory in env ``BARTOPS_BUNDLE``;
3. the production version of the registry at env ``BARTOPS_REGISTRY`` (default ``registry/``) —
   what ``bentoml serve`` from the repository root serves.

A missing or corrupt bundle stops start-up with a message naming it.  The bundle is read
synchronously; the per-user feature blocks are precomputed in a background thread, and the worker's
start-up hook waits for them: a worker (a first one or one restarted) accepts connections only
once warm, so while it warms up the other workers take all the traffic.  Should warm-up fail, the
worker serves on and answers 503 (``/readyz``, and ``/home`` with the error) instead.  Every served
card is logged once, as an impression row (log schema, no reward) in rotating files under
``serving.log_dir``.

Overload: each worker holds at most ``serving.max_in_flight`` ``/home`` + ``/feedback`` requests
(fewer while requests are slow, ``serving.shed_target_ms``); beyond that it answers 503 with
``Retry-After`` at once (``bartops.serving.shedding``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import bentoml
from fastapi import FastAPI
from starlette.responses import JSONResponse

from bartops.serving.config import ENV_BUNDLE, ENV_MODEL_TAG, ENV_REGISTRY, load_serving_config
from bartops.config import ServingConfig
from bartops.registry import Registry
from bartops.serving.engine import BundleLoadError, PageEngine, verify_bundle_isolated
from bartops.serving.follow import RegistryFollower
from bartops.serving.logwriter import FEEDBACK, IMPRESSIONS, RotatingLogWriter, recover_partial_files
from bartops.serving.schemas import FeedbackRequest, FeedbackResponse, HomePageResponse, HomeRequest
from bartops.serving.shedding import LoadShedMiddleware

log = logging.getLogger("bartops.serving")
RECENT_PAGES = 50_000  # request ids remembered per worker to check feedback against the page


def configured_model_tag() -> Optional[str]:
    """The packaged policy's BentoML model tag (Bento argument ``model_tag`` or env), if any."""
    args = bentoml.use_arguments()
    return getattr(args, "model_tag", None) or os.environ.get(ENV_MODEL_TAG) or None


def packaged_model_path() -> Optional[str]:
    """Directory of the packaged BentoML model ``MODEL_TAG`` (None when no tag is configured)."""
    if not MODEL_TAG:
        return None
    stored = bentoml.models.BentoModel(MODEL_TAG).stored
    if stored is None:
        raise BundleLoadError(f"BentoML model {MODEL_TAG} is not in the model store "
                              f"(BENTOML_HOME={os.environ.get('BENTOML_HOME', '~/bentoml')})")
    return stored.path


def served_registry() -> Optional[Path]:
    """The registry whose production version is served (None when a packaged model or a bundle is)."""
    if MODEL_TAG or os.environ.get(ENV_BUNDLE):
        return None
    return Path(os.environ.get(ENV_REGISTRY) or "registry")


def resolve_bundle_dir(model_path: Optional[str] = None) -> tuple[Path, str]:
    """(bundle directory, where it came from); BundleLoadError when there is nothing to serve."""
    if model_path:
        return Path(model_path), f"BentoML model {MODEL_TAG}"
    root = served_registry()
    if root is None:
        return Path(os.environ[ENV_BUNDLE]), f"${ENV_BUNDLE}"
    if not root.exists():
        raise BundleLoadError(f"registry {root.resolve()} does not exist: set {ENV_REGISTRY} or {ENV_BUNDLE}")
    try:
        path = Registry(root).production_path()
    except Exception as exc:  # noqa: BLE001 - a broken pointer is a start-up error with its cause
        raise BundleLoadError(f"cannot read the production pointer of registry {root}: {exc}") from exc
    if path is None:
        raise BundleLoadError(f"registry {root.resolve()} has no production version: promote one "
                              f"(bartops registry promote <version>) or set {ENV_BUNDLE}")
    return Path(path), f"registry {root} production"


class BodyLimitMiddleware:
    """ASGI middleware: request bodies larger than ``max_bytes`` get 413 before any parsing."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(send, declared.decode(errors="replace"))
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(send, f"more than {len(body)}")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _reject(self, send, size: str) -> None:
        payload = json.dumps({"error": f"request body too large: {size} bytes, limit {self.max_bytes}",
                              "detail": [{"loc": ["body"], "msg": "body too large"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "detail": [{"loc": [field], "msg": message}]}, status_code=status)


MODEL_TAG = configured_model_tag()
CONFIG: ServingConfig = load_serving_config()
status_app = FastAPI(title="bartops service status")


@bentoml.asgi_app(status_app, path="/")
@bentoml.service(
    name="bartops-home",
    workers=CONFIG.workers,
    traffic={"timeout": 30},
    http={"host": "127.0.0.1"},  # loopback unless `bentoml serve --host` says otherwise
    logging={"access": {"enabled": False}},
)
class HomePage:
    """BaRT home pages from the production policy, with every served card logged."""

    if MODEL_TAG:  # packaged by `bentoml build`; resolved from the Bento's model store when served
        bundle_model = bentoml.models.BentoModel(MODEL_TAG)

    @bentoml.on_deployment
    def check_bundle() -> None:
        """Runs once before any worker starts: a missing or corrupt bundle stops `bentoml serve` here."""
        path, source = resolve_bundle_dir(packaged_model_path())
        verify_bundle_isolated(path)
        log.info("bartops: policy bundle %s (%s) loads", path, source)

    def __init__(self) -> None:
        self.config = load_serving_config()
        model_path = self.bundle_model.path if MODEL_TAG else None
        self.bundle_dir, self.source = resolve_bundle_dir(model_path)
        # read and check the bundle now: a missing or corrupt version fails start-up here
        engine = PageEngine.load(self.bundle_dir, precompute=False)
        root = None if model_path else served_registry()
        # serving the registry: follow its production pointer (a packaged model or a bundle stays fixed)
        self.follower = RegistryFollower(Registry(root), engine) if root is not None else None
        self._engine = engine
        self._stop = threading.Event()
        log_dir = Path(self.config.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        recover_partial_files(log_dir)
        self.impressions = RotatingLogWriter(log_dir, IMPRESSIONS, self.config.log_rotate_rows,
                                             self.config.log_rotate_seconds)
        self.feedback_log = RotatingLogWriter(log_dir, FEEDBACK, self.config.log_rotate_rows,
                                              self.config.log_rotate_seconds)
        self._recent: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._ready = threading.Event()
        self._warm_done = threading.Event()  # set when warm-up ends, ready or failed
        self.warmup_error: Optional[str] = None
        threading.Thread(target=self._warm_up, name="bartops-warmup", daemon=True).start()
        log.info("bartops: serving policy %s from %s (%s)", engine.version, self.bundle_dir, self.source)

    @property
    def engine(self) -> PageEngine:
        """The live engine: the registry's production version when following it."""
        return self.follower.engine if self.follower is not None else self._engine

    def _warm_up(self) -> None:
        try:
            self._engine.precompute()
            self._ready.set()
            log.info("bartops: ready (fast path %s, %s)", self._engine.fast_path, self._engine.load_seconds)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /home
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("bartops: warm-up failed")
            return
        finally:
            self._warm_done.set()
        if self.follower is not None:
            threading.Thread(target=self.follower.run, args=(self._stop, self.config.registry_poll_seconds),
                             name="bartops-follow-registry", daemon=True).start()

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    @bentoml.on_startup
    async def wait_until_warm(self) -> None:
        """Hold the worker's start-up until warm-up ends: uvicorn listens only after this returns, so
        a (re)started worker takes no traffic before it is ready (the others serve meanwhile)."""
        await asyncio.to_thread(self._warm_done.wait)

    @bentoml.on_shutdown
    def close_logs(self) -> None:
        """Stop following the registry; flush, fsync and close the open log files."""
        self._stop.set()
        self.impressions.close()
        self.feedback_log.close()

    @bentoml.api(route="/home", input_spec=HomeRequest, output_spec=HomePageResponse)
    def home(self, user_id: int, platform: str, region: str, timestamp: Optional[datetime] = None,
             shelves: Optional[int] = None, cards_per_shelf: Optional[int] = None,
             seed: Optional[int] = None) -> HomePageResponse:
        """A home page for one user; every card is logged with its propensity."""
        if not self._ready.is_set():
            msg = f"model is loading{'' if self.warmup_error is None else ' failed: ' + self.warmup_error}"
            return JSONResponse({"error": msg}, status_code=503, headers={"Retry-After": "1"})
        request_id = uuid.uuid4().hex
        seed = secrets.randbits(63) if seed is None else seed
        if timestamp is None:
            timestamp = datetime.now(timezone.utc)
        elif timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=timezone.utc)
        engine = self.engine  # one engine builds the whole page, whatever swaps meanwhile
        page = engine.build(user_id, platform, region, request_id, seed, timestamp, shelves, cards_per_shelf)
        self.impressions.write(page.impressions)
        with self._recent_lock:
            self._recent[request_id] = frozenset(r["item_id"] for r in page.impressions)
            if len(self._recent) > RECENT_PAGES:
                self._recent.popitem(last=False)
        return HomePageResponse.model_validate(page.response)

    @status_app.get("/version")
    def live_version(self) -> dict:
        """The version this worker (pid) serves, the one it is loading, and its recent swaps and refusals."""
        status = {"version": self.engine.version, "pending": None, "swaps": [], "refusals": []}
        if self.follower is not None:
            status = self.follower.status()
        return {"source": self.source, "ready": self._ready.is_set(), "worker": os.getpid(), **status}

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
    def feedback(self, request_id: str, item_id: int, streamed: bool,
                 seconds: Optional[float] = None) -> FeedbackResponse:
        """Record whether a served card was streamed (joined into rewards by ``bartops join``)."""
        with self._recent_lock:
            shown = self._recent.get(request_id)
        if shown is not None and item_id not in shown:
            return _error(422, "item_id", f"item {item_id} was not on page {request_id}")
        if seconds is not None and not streamed:
            return _error(422, "seconds", "seconds given for a card that was not streamed")
        self.feedback_log.write([{"request_id": request_id, "item_id": item_id, "streamed": streamed,
                                  "seconds": seconds, "timestamp": datetime.now(timezone.utc).isoformat()}])
        return FeedbackResponse(accepted=True, request_id=request_id, item_id=item_id)


# Load shedding is our middleware, not BentoML's `traffic={"max_concurrency": N}`: that one answers
# 429 without Retry-After and sheds /version too (shedding.py; measured in docs/performance.md).
# Added first, it is the outer one: an excess request is answered before its body is read.
HomePage.add_asgi_middleware(LoadShedMiddleware, max_in_flight=CONFIG.max_in_flight,
                             target_latency_ms=CONFIG.shed_target_ms, retry_after_seconds=CONFIG.retry_after_seconds)
HomePage.add_asgi_middleware(BodyLimitMiddleware, max_bytes=CONFIG.max_body_bytes)
