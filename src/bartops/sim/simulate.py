"""Listening history, page requests and impression logs of a simulated world, and true policy values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bartops.config import CandidateParams
from bartops.context import PLATFORMS
from bartops.features.candidates import candidate_table, candidates_for_requests
from bartops.logs.schema import conform_impressions
from bartops.policy.page import EMPTY, CandidateSet, PagePolicy, Pages, build_pages
from bartops.sim.world import World

PAGE_CHUNK = 4096  # pages built per vectorised batch


def simulate_history(world: World, rng: np.random.Generator, days: int = 60) -> pd.DataFrame:
    """Plays (user_id, item_id, timestamp, seconds) drawn from each user's true taste."""
    p = world.params
    n_items = p.items
    plays = rng.poisson(p.history_plays_per_user * world.users["activity"].to_numpy()) + 3
    users_out, items_out = [], []
    chunk = 512
    for lo in range(0, p.users, chunk):
        uid = np.arange(lo, min(lo + chunk, p.users))
        w = np.exp(2.0 * world.taste_logit_matrix(uid))
        cdf = np.cumsum(w, axis=1)
        cdf /= cdf[:, -1:]
        cdf += np.arange(len(uid))[:, None]  # row r's cdf lies in (r, r+1]
        n = plays[uid]
        row = np.repeat(np.arange(len(uid)), n)
        hit = np.searchsorted(cdf.ravel(), row + rng.random(n.sum()))
        users_out.append(uid[row])
        items_out.append(np.minimum(hit - row * n_items, n_items - 1))
    user_id = np.concatenate(users_out)
    start, _ = p.window
    offset_s = rng.uniform(0, days * 86400, len(user_id))
    history = pd.DataFrame({
        "user_id": user_id.astype(np.int64),
        "item_id": np.concatenate(items_out).astype(np.int64),
        "timestamp": start - pd.to_timedelta(offset_s, unit="s").round("s"),
        "seconds": np.round(rng.lognormal(4.8, 0.5, len(user_id)), 1),
    })
    return history.sort_values(["timestamp", "user_id"], ignore_index=True)


def sample_contexts(world: World, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Page requests: user ∝ activity, platform from the user's mix, time uniform in the window."""
    users = world.users
    act = users["activity"].to_numpy()
    uid = rng.choice(len(users), size=n, p=act / act.sum())
    mix = world.user_platform_mix[uid]
    platform = (mix.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    start, end = world.params.window
    seconds = np.sort(rng.uniform(0, (end - start).total_seconds(), n))
    return pd.DataFrame({
        "user_id": uid.astype(np.int64),
        "platform": pd.array(np.array(PLATFORMS, dtype=object)[platform], dtype="string"),
        "region": users["region"].to_numpy()[uid],
        "timestamp": start + pd.to_timedelta(np.floor(seconds), unit="s"),
    })


class PopularityAffinityScorer:
    """The default logging scorer: log popularity plus the user's play share of artist and genre."""

    def __init__(self, items: pd.DataFrame, history: pd.DataFrame) -> None:
        h = history.merge(items[["item_id", "artist_id", "genre"]], on="item_id")
        total = h.groupby("user_id").size()

        def share(column: str) -> pd.Series:
            counts = h.groupby(["user_id", column], observed=True).size()
            return counts / total.reindex(counts.index.get_level_values(0)).to_numpy()

        self.artist_share = share("artist_id")
        self.genre_share = share("genre")
        self.item_artist = items["artist_id"].to_numpy()
        self.item_genre = items["genre"].to_numpy(dtype=object)
        self.log_popularity = np.log(items["popularity"].to_numpy())

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        user = contexts["user_id"].to_numpy()[candidates.page]
        item = candidates.item_id
        a = self.artist_share.reindex(pd.MultiIndex.from_arrays([user, self.item_artist[item]])).fillna(0).to_numpy()
        g = self.genre_share.reindex(pd.MultiIndex.from_arrays([user, self.item_genre[item]])).fillna(0).to_numpy()
        return 0.5 * self.log_popularity[item] + 4.0 * a + 2.0 * g


@dataclass(frozen=True)
class TrueRelevanceScorer:
    """Scores with the simulator's true stream probability (the oracle's scorer)."""

    world: World

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        return self.world.relevance(contexts, candidates)


def page_value(world: World, contexts: pd.DataFrame, candidates: CandidateSet, pages: Pages) -> np.ndarray:
    """True expected streams of each built page: Σ over cards of relevance × examination."""
    rel = world.relevance(contexts, candidates)
    B, S, K = pages.candidate.shape
    shelf = np.broadcast_to(np.arange(S)[None, :, None], (B, S, K))
    pos = np.broadcast_to(np.arange(K)[None, None, :], (B, S, K))
    safe = np.where(pages.filled, pages.candidate, 0)
    value = np.where(pages.filled, rel[safe] * world.examination(shelf, pos), 0.0)
    return value.sum(axis=(1, 2))


def true_value(
    world: World,
    policy: PagePolicy,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    n_samples: int = 20,
    seed: int = 0,
) -> tuple[float, float]:
    """True expected streams per page view of a policy over the given contexts, with its MC error.

    Exact (standard error 0) for a greedy policy (both ε = 0); otherwise the mean over
    ``n_samples`` independent builds of every page, with the standard error of that mean.
    """
    scores = policy.scorer(contexts, candidates)
    rng = np.random.default_rng(seed)
    if policy.epsilon_head == 0 and policy.epsilon_fill == 0:
        pages = build_pages(policy, contexts, candidates, rng, scores=scores)
        return float(page_value(world, contexts, candidates, pages).mean()), 0.0
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 for a stochastic policy, got {n_samples}")
    means = [
        page_value(world, contexts, candidates, build_pages(policy, contexts, candidates, rng, scores=scores)).mean()
        for _ in range(n_samples)
    ]
    return float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(n_samples))


def pages_to_impressions(
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    pages: Pages,
    explanations: pd.DataFrame,
    policy_version: str,
    request_ids: np.ndarray,
) -> pd.DataFrame:
    """Impression rows (log schema, without reward) for built pages, in page/shelf/position order."""
    b, s, k = np.nonzero(pages.filled)
    cand = pages.candidate[b, s, k]
    request = np.asarray(request_ids, dtype=object)[b]
    return pd.DataFrame({
        "impression_id": pd.array(request + "-" + s.astype(str) + "-" + k.astype(str), dtype="string"),
        "request_id": pd.array(request, dtype="string"),
        "user_id": contexts["user_id"].to_numpy()[b],
        "timestamp": contexts["timestamp"].to_numpy()[b],
        "platform": pd.array(contexts["platform"].to_numpy()[b], dtype="string"),
        "region": pd.array(contexts["region"].to_numpy()[b], dtype="string"),
        "shelf": s.astype(np.int64),
        "position": k.astype(np.int64),
        "item_id": candidates.item_id[cand],
        "explanation_id": pd.array(explanations["explanation_id"].to_numpy()[candidates.explanation[cand]], dtype="string"),
        "propensity": pages.propensity[b, s, k],
        "epsilon": pages.epsilon[b, s, k],
        "explored": pages.explored[b, s, k],
        "policy_version": pd.array(np.full(len(b), policy_version, dtype=object), dtype="string"),
    })


@dataclass(frozen=True)
class SimulatedData:
    world: World
    history: pd.DataFrame
    candidates: pd.DataFrame  # candidate table (user_id, explanation, item_id)
    impressions: pd.DataFrame


def logging_policy(world: World, history: pd.DataFrame, shelves: int, cards: int,
                   epsilon_head: float, epsilon_fill: float) -> PagePolicy:
    """The default logging policy: BaRT pages over the popularity/affinity scorer."""
    return PagePolicy(PopularityAffinityScorer(world.items, history), shelves, cards,
                      epsilon_head, epsilon_fill, version="logging-popularity")


def oracle_policy(world: World, shelves: int, cards: int) -> PagePolicy:
    """True stream probability as the score, no exploration: the best this page construction can do."""
    return PagePolicy(TrueRelevanceScorer(world), shelves, cards, 0.0, 0.0, version="oracle")


def simulate_impressions(
    world: World,
    history: pd.DataFrame,
    table: pd.DataFrame,
    policy: PagePolicy,
    n_impressions: int,
    rng: np.random.Generator,
    batch: str = "sim",
) -> pd.DataFrame:
    """Log ≈ n_impressions cards served by ``policy`` with rewards drawn from the true model."""
    per_page = policy.shelves * policy.cards
    n_pages = max(1, int(np.ceil(n_impressions / per_page)))
    contexts = sample_contexts(world, n_pages, rng)
    frames = []
    for lo in range(0, n_pages, PAGE_CHUNK):
        ctx = contexts.iloc[lo: lo + PAGE_CHUNK].reset_index(drop=True)
        cands = candidates_for_requests(table, ctx["user_id"].to_numpy())
        pages = build_pages(policy, ctx, cands, rng)
        request_ids = np.array([f"{batch}-{i:08d}" for i in range(lo, lo + len(ctx))], dtype=object)
        imp = pages_to_impressions(ctx, cands, pages, world.explanations, policy.version, request_ids)
        b, s, k = np.nonzero(pages.filled)
        rel = world.relevance(ctx, cands)[pages.candidate[b, s, k]]
        p_stream = rel * world.examination(s, k)
        reward = (rng.random(len(p_stream)) < p_stream).astype(np.int64)
        imp["reward"] = reward
        imp["stream_seconds"] = np.where(reward == 1, np.round(rng.lognormal(4.9, 0.6, len(reward)), 1), np.nan)
        frames.append(imp)
    return conform_impressions(pd.concat(frames, ignore_index=True))


def simulate(world: World, n_impressions: int, shelves: int, cards: int,
             epsilon_head: float, epsilon_fill: float, seed: int,
             candidates: CandidateParams = CandidateParams()) -> SimulatedData:
    """History, candidates (generated with ``candidates``) and logged impressions of the default
    logging policy."""
    rng = np.random.default_rng([seed, 1])
    history = simulate_history(world, rng)
    start, _ = world.params.window
    table = candidate_table(world.users, world.items, history, world.explanations, now=start, params=candidates)
    check_page_shape(table, shelves)
    policy = logging_policy(world, history, shelves, cards, epsilon_head, epsilon_fill)
    logs = simulate_impressions(world, history, table, policy, n_impressions, rng, batch=f"sim{seed}")
    return SimulatedData(world, history, table, logs)


def check_page_shape(table: pd.DataFrame, shelves: int) -> None:
    """Raise if pages cannot have ``shelves`` shelves: more shelves than a user's explanations."""
    per_user = table.groupby("user_id")["explanation"].nunique()
    if len(per_user) == 0:
        raise ValueError("no candidates: the catalog has zero items or users")
    if shelves > per_user.max():
        raise ValueError(
            f"shelves ({shelves}) exceeds the number of explanations any user has ({per_user.max()})"
        )


__all__ = ["EMPTY", "simulate", "true_value", "oracle_policy", "logging_policy", "sample_contexts"]
