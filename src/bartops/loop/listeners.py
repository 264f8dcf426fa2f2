"""Simulated listeners: request home pages over HTTP, stream cards with the world's true probabilities.

A listener is a context drawn from the simulator (user by activity, platform by the user's mix,
region by home).  Its page comes from the live service (``POST /home``); each card shown is
streamed with the true probability ``relevance × examination(shelf, position)``; every stream is
reported to ``POST /feedback``.  Pages are requested first (concurrently), then all streams drawn
in one vectorised step, then reported (concurrently): the service sees the same requests as from
real clients, only faster.  Like a well-behaved client, a listener whose request is shed (503 with
``Retry-After``) waits that long and asks again on a new connection (which may reach a less busy
worker), for up to ``RETRY_FOR_S``; a shed request is refused before the service does anything, so
asking again never serves or records twice.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from bartops.policy.page import CandidateSet
from bartops.sim import World, sample_contexts

RETRY_FOR_S = 120.0  # how long a listener keeps asking while the service sheds its request (503 + Retry-After)
MAX_RETRY_AFTER_S = 5.0  # the longest Retry-After a listener honours

CARD_COLUMNS = ("request_id", "user_id", "platform", "region", "timestamp", "shelf", "position", "item_id",
                "explanation_id", "policy_version", "propensity")


@dataclass(frozen=True)
class Traffic:
    """What the listeners were served and streamed in one round."""

    cards: pd.DataFrame  # one row per card received (CARD_COLUMNS + p_stream, streamed)
    pages: int  # pages received
    failed: list[str]  # one line per request that did not get a 200 (status and body), retries spent
    shed: int  # 503 + Retry-After answers that were retried (load shedding, not failures)
    page_ms: np.ndarray  # latency of each /home request
    feedback_ms: np.ndarray  # latency of each /feedback request

    def contexts(self) -> pd.DataFrame:
        """One row per page received: user, platform, region and the served timestamp."""
        first = self.cards.drop_duplicates("request_id")
        return first[["request_id", "user_id", "platform", "region", "timestamp"]].reset_index(drop=True)

    def streams_per_page(self) -> pd.Series:
        """Streams of each page received (request id → count)."""
        return self.cards.groupby("request_id", sort=False)["streamed"].sum()


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before asking again, for a shed request (503 with ``Retry-After``); else None."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return None
    try:
        return min(max(float(response.headers["retry-after"]), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


def _post_each(url: str, path: str, bodies: list[dict], timeout: float, retry_for: float):
    """POST each body in turn: (JSON answers, None where a request failed), failure lines, latencies, sheds."""
    answers, failed, ms, shed = [], [], [], 0
    client = httpx.Client(base_url=url, timeout=timeout)
    try:
        for body in bodies:
            deadline, attempt = time.monotonic() + retry_for, 0
            while True:
                attempt += 1
                t0 = time.perf_counter()
                try:
                    r = client.post(path, json=body)
                except httpx.HTTPError as exc:
                    failed.append(f"{path} {body}: {type(exc).__name__}: {exc}")
                    answers.append(None)
                    break
                wait = _retry_after(r)
                if wait is not None and time.monotonic() + wait < deadline:
                    shed += 1  # ask again after Retry-After, on a new connection (it may reach another worker)
                    client.close()
                    client = httpx.Client(base_url=url, timeout=timeout)
                    time.sleep(wait)
                    continue
                ms.append(1e3 * (time.perf_counter() - t0))
                if r.status_code != 200:
                    failed.append(f"{path} {body}: {r.status_code} {r.text[:200]} (attempt {attempt})")
                    answers.append(None)
                else:
                    answers.append(r.json())
                break
    finally:
        client.close()
    return answers, failed, ms, shed


def post_concurrently(url: str, path: str, bodies: list[dict], threads: int, timeout: float,
                      retry_for: float = RETRY_FOR_S):
    """``bodies`` split over ``threads`` clients: (answers in order, failure lines, latencies in ms, sheds)."""
    step = max(1, -(-len(bodies) // threads))
    chunks = [bodies[lo: lo + step] for lo in range(0, len(bodies), step)]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda chunk: _post_each(url, path, chunk, timeout, retry_for), chunks))
    return ([a for p in parts for a in p[0]], [f for p in parts for f in p[1]],
            np.array([m for p in parts for m in p[2]]), sum(p[3] for p in parts))


def _card_rows(body: dict, page: dict) -> list[tuple]:
    return [(page["request_id"], body["user_id"], body["platform"], body["region"], page["timestamp"], s, k,
             card["item_id"], shelf["explanation_id"], page["policy_version"], card["propensity"])
            for s, shelf in enumerate(page["shelves"]) for k, card in enumerate(shelf["cards"])]


def stream_probability(world: World, cards: pd.DataFrame) -> np.ndarray:
    """The true probability that each shown card is streamed (relevance × examination)."""
    n = len(cards)
    code = pd.Series(np.arange(len(world.explanations)), index=world.explanations["explanation_id"].astype(str))
    cands = CandidateSet(np.arange(n, dtype=np.int64), cards["item_id"].to_numpy(np.int64),
                         code[cards["explanation_id"].astype(str)].to_numpy(np.int64), n, np.ones(n, bool))
    ctx = cards[["user_id", "platform", "region"]].assign(timestamp=pd.to_datetime(cards["timestamp"], utc=True))
    return world.relevance(ctx, cands) * world.examination(cards["shelf"].to_numpy(), cards["position"].to_numpy())


def play_listeners(url: str, world: World, page_views: int, rng: np.random.Generator, threads: int = 4,
                   timeout: float = 30.0) -> Traffic:
    """``page_views`` simulated page views against the service at ``url`` (see the module docs)."""
    if page_views < 1:
        raise ValueError(f"page_views must be at least 1, got {page_views}")
    contexts = sample_contexts(world, page_views, rng)
    bodies = [{"user_id": int(u), "platform": str(p), "region": str(r)}
              for u, p, r in zip(contexts["user_id"], contexts["platform"], contexts["region"])]
    pages, failed, page_ms, page_shed = post_concurrently(url, "/home", bodies, threads, timeout)
    rows = [row for body, page in zip(bodies, pages) if page is not None for row in _card_rows(body, page)]
    cards = pd.DataFrame(rows, columns=list(CARD_COLUMNS))
    cards["p_stream"] = stream_probability(world, cards) if len(cards) else np.zeros(0)
    cards["streamed"] = rng.random(len(cards)) < cards["p_stream"].to_numpy()
    streams = cards[cards["streamed"]]
    seconds = np.round(rng.lognormal(4.9, 0.6, len(streams)), 1)
    reports = [{"request_id": str(rid), "item_id": int(item), "streamed": True, "seconds": float(sec)}
               for rid, item, sec in zip(streams["request_id"], streams["item_id"], seconds)]
    _, feedback_failed, feedback_ms, feedback_shed = post_concurrently(url, "/feedback", reports, threads, timeout)
    return Traffic(cards, int(cards["request_id"].nunique()), failed + feedback_failed, page_shed + feedback_shed,
                   page_ms, feedback_ms)
