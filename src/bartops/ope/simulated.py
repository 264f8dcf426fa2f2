"""OPE on the simulator (known truth): observable reward-model features, test candidates, one call.

Used by the statistical tests and ``bench/ope_accuracy.py``.  The featurizer sees only what a real
system could (history shares, popularity, audio, context, slot), never the simulator's hidden truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bartops.context import local_hour, platform_code
from bartops.features.candidates import candidates_for_requests
from bartops.ope.pipeline import PolicyEvaluation, estimate_examination, evaluate_policies, logging_marginals
from bartops.config import OPEConfig
from bartops.ope.slate import logged_pages
from bartops.policy.page import CandidateSet, PagePolicy, build_pages
from bartops.sim.simulate import PopularityAffinityScorer, true_value
from bartops.sim.world import World


class SimFeaturizer:
    """Reward-model inputs for simulated logs: slot, kind, context, popularity, history shares, audio."""

    def __init__(self, world: World, history: pd.DataFrame) -> None:
        self.world = world
        self.shares = PopularityAffinityScorer(world.items, history)
        items = world.items
        self.audio = items[["danceability", "energy", "valence", "acousticness"]].to_numpy(np.float32)
        self.log_pop = np.log(items["popularity"].to_numpy()).astype(np.float32)

    def __call__(self, contexts: pd.DataFrame, cards: CandidateSet, shelf, position) -> np.ndarray:
        rows, item = cards.page, cards.item_id
        user = contexts["user_id"].to_numpy()[rows]
        s = self.shares
        a = s.artist_share.reindex(pd.MultiIndex.from_arrays([user, s.item_artist[item]])).fillna(0).to_numpy()
        g = s.genre_share.reindex(pd.MultiIndex.from_arrays([user, s.item_genre[item]])).fillna(0).to_numpy()
        hour = local_hour(contexts["timestamp"], contexts["region"])[rows]
        cols = [np.broadcast_to(np.asarray(shelf, np.float32), len(cards)),
                np.broadcast_to(np.asarray(position, np.float32), len(cards)),
                self.world.explanation_kind_code[cards.explanation], platform_code(contexts["platform"])[rows],
                np.cos(2 * np.pi * (hour - 14) / 24), self.log_pop[item], a, g]
        return np.column_stack([np.asarray(c, np.float32) for c in cols] + [self.audio[item]])


@dataclass(frozen=True)
class BlendScorer:
    """``base`` score + ``weight`` × true relevance: candidates at a controlled distance from logging."""

    base: object
    world: World
    weight: float

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        return self.base(contexts, candidates) + self.weight * self.world.relevance(contexts, candidates)


def blended(logging: PagePolicy, world: World, weight: float, version: str, greedy: bool = True) -> PagePolicy:
    """The logging policy re-scored with ``weight`` × true relevance (negative: a worse policy)."""
    eps = dict(epsilon_head=0.0, epsilon_fill=0.0) if greedy else {}
    return replace(logging, scorer=BlendScorer(logging.scorer, world, weight), version=version, **eps)


def evaluate_simulated(world: World, history: pd.DataFrame, table: pd.DataFrame, logging: PagePolicy,
                       logs: pd.DataFrame, targets: dict[str, PagePolicy | None], cfg: OPEConfig
                       ) -> tuple[PolicyEvaluation, dict[str, float]]:
    """``evaluate_policies`` on simulated logs, and each target's true value on the same contexts."""
    lp = logged_pages(logs, world.explanations)
    cands = candidates_for_requests(table, lp.contexts["user_id"].to_numpy())
    featurize = SimFeaturizer(world, history)
    kappa = estimate_examination(lp, featurize, logging.shelves, logging.cards, cfg.seed)
    marg = logging_marginals(logging, lp, cands, cfg, kappa)
    specs = {k: (None if v is None else (v, cands)) for k, v in targets.items()}
    res = evaluate_policies(lp, marg, specs, cfg, featurize, world.explanations["kind"].to_numpy())
    truth = {k: true_value(world, logging if v is None else v, lp.contexts, cands, n_samples=8)[0]
             for k, v in targets.items()}
    return res, truth


def true_kind_values(world: World, policy: PagePolicy, contexts: pd.DataFrame, candidates: CandidateSet,
                     n_samples: int = 8, seed: int = 0) -> dict[str, float]:
    """True streams per shown card of each explanation kind under ``policy`` on these contexts
    (Σ relevance × examination of its cards over their number, over ``n_samples`` builds of every page;
    one build when the policy is greedy)."""
    rel = world.relevance(contexts, candidates)
    kind = world.explanations["kind"].astype(str).to_numpy()[candidates.explanation]
    greedy = policy.epsilon_head == 0 and policy.epsilon_fill == 0
    rng = np.random.default_rng(seed)
    streams: dict[str, float] = {}
    cards: dict[str, float] = {}
    for _ in range(1 if greedy else n_samples):
        pages = build_pages(policy, contexts, candidates, rng)
        b, s, k = np.nonzero(pages.filled)
        c = pages.candidate[b, s, k]
        value = rel[c] * world.examination(s, k)
        for name in np.unique(kind[c]):
            on = kind[c] == name
            streams[name] = streams.get(name, 0.0) + float(value[on].sum())
            cards[name] = cards.get(name, 0.0) + float(on.sum())
    return {name: streams[name] / cards[name] for name in streams}
