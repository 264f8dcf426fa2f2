"""The gate's logging exposures E₀ (``bartops.ope.pipeline.logging_marginals``): time per page and per core.

    python -m bench.exposures [--pages 400] [--samples 100] [--repeats 3]

Simulated logs of the default world (ε = 0.1, pages of 6 × 8 from ~310 candidates), E₀ of every
logged card with ``ope.marginal_samples`` draws per page, as the gate computes it; medians of
``--repeats`` after one warm-up call (the first call in a fresh checkout compiles the kernels, about
15 s, then numba's cache serves them).  Run on 1 thread and on every core (``numba.set_num_threads``):
the speed-up is the local evaluation's use of the machine.
"""

from __future__ import annotations

import argparse
import os

import numba
import numpy as np

from bartops.features.candidates import candidates_for_requests
from bartops.ope.pipeline import logging_marginals
from bartops.config import OPEConfig, SimParams
from bartops.ope.slate import logged_pages
from bartops.sim import World, simulate
from bartops.sim.simulate import logging_policy
from bench.common import save, table, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sp = SimParams(impressions=48 * args.pages)
    world = World.generate(sp, seed=7)
    sim = simulate(world, sp.impressions, seed=7, shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
    log = logging_policy(world, sim.history, 6, 8, 0.1, 0.1)
    lp = logged_pages(sim.impressions, world.explanations)
    cands = candidates_for_requests(sim.candidates, lp.contexts["user_id"].to_numpy())
    kappa = world.examination(np.arange(6)[:, None], np.arange(8)[None, :])
    cfg = OPEConfig(marginal_samples=args.samples)

    def run() -> np.ndarray:
        return logging_marginals(log, lp, cands, cfg, kappa).exposure

    cores = numba.config.NUMBA_NUM_THREADS
    rows, one = [], None
    for threads in sorted({1, cores}):
        numba.set_num_threads(threads)
        run()  # warm-up (loads the compiled kernels)
        median, _, _ = timed(run, args.repeats)
        one = median if threads == 1 else one
        rows.append({"threads": threads, "pages": lp.n_pages, "candidates per page": round(len(cands) / lp.n_pages),
                     "samples": args.samples, "seconds (median)": round(median, 3),
                     "ms per page": round(1e3 * median / lp.n_pages, 2), "speed-up": round(one / median, 2)})
    print(f"\nE0 of {lp.n_pages} logged pages ({os.cpu_count()} cores; medians of {args.repeats})")
    print(table(rows))
    print(f"saved {save('exposures', {'rows': rows, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
