"""Simulator throughput and page-construction speed.

    python -m bench.sim_policy [--repeats 3]

Simulator: impressions per second at 100k and 1M impressions (world of params.yaml defaults).
Page construction: pages per second building 10,000 pages of 6 shelves × 8 cards from ~300
candidates each (ε = 0.1), and the same for replaying logged pages (probability of logged choices).
"""

from __future__ import annotations

import argparse

import numpy as np

from bartops.features.candidates import candidates_for_requests
from bartops.policy.page import build_pages, logged_choice_probabilities
from bartops.sim import World, logging_policy, sample_contexts, simulate
from bartops.config import SimParams
from bench.common import save, table, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    params = SimParams()
    world = World.generate(params, seed=7)
    rows = []
    data = None
    for n in args.sizes:
        med, times, data = timed(lambda: simulate(world, n, 6, 8, 0.1, 0.1, seed=7), args.repeats)
        rows.append({"what": f"simulate {n:,} impressions", "median_s": med,
                     "per_second": len(data.impressions) / med, "runs": len(times)})

    ctx = sample_contexts(world, 10_000, np.random.default_rng(1))
    cands = candidates_for_requests(data.candidates, ctx["user_id"].to_numpy())
    policy = logging_policy(world, data.history, 6, 8, 0.1, 0.1)
    scores = policy.scorer(ctx, cands)
    rng = np.random.default_rng(2)
    med, times, pages = timed(lambda: build_pages(policy, ctx, cands, rng, scores=scores), args.repeats)
    rows.append({"what": f"build 10,000 pages 6x8 from {len(cands) / 10_000:.0f} candidates", "median_s": med,
                 "per_second": 10_000 / med, "runs": len(times)})
    b, s, k = np.nonzero(pages.filled)
    c = pages.candidate[b, s, k]
    med, times, _ = timed(lambda: logged_choice_probabilities(
        policy, ctx, cands, b, s, k, cands.item_id[c], cands.explanation[c]), args.repeats)
    rows.append({"what": "replay 10,000 logged pages (incl. scoring)", "median_s": med,
                 "per_second": 10_000 / med, "runs": len(times)})
    print(table(rows))
    print(f"saved {save('sim_policy', {'rows': rows})}")


if __name__ == "__main__":
    main()
