"""κ recovery: the gate's examination profile against the simulator's, over seeds and worlds.

    python -m bench.examination [--worlds steep,default,flat] [--seeds 20] [--impressions 30000]

For each world (the test suite's small world with the examination decay of ``DECAYS``) and seed: a
fresh world, ``--impressions`` logged by its ε = 0.1 logging policy, the shared-layer features, then
``bartops.ope.pipeline.estimate_examination`` on the logs through the real feature assembly, exactly
as the gate calls it.  Against the true κ(shelf, position) it reports, with the scale removed (the
exposure weights are ratios): the mean and the largest absolute log error over the 48 slots, and the
log error of the bottom-right slot relative to the top-left (the decay's full range).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from bartops.config import Params, SimParams
from bartops.features.assemble import assemble_rows
from bartops.features.store import build_features_from_frames
from bartops.ope.pipeline import estimate_examination
from bartops.ope.slate import logged_pages
from bartops.sim import World, simulate
from bench.common import save, table

# the test suite's small world and page shape (tests/conftest.py), so the bounds of
# tests/unit/test_examination.py can be read against these figures
SMALL = SimParams(impressions=30_000, users=600, artists=80, items=1200, genres=8, moods=4)
SHAPE = dict(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
DECAYS = {"steep": (1.5, 1.0), "default": (0.35, 0.25), "flat": (0.05, 0.05)}  # (shelf, card) exponents


def recovery(world_name: str, seed: int, impressions: int) -> dict:
    """κ's errors on one fresh world and log (``seed``)."""
    shelf_decay, card_decay = DECAYS[world_name]
    world = World.generate(replace(SMALL, impressions=impressions, position_decay_shelf=shelf_decay,
                                   position_decay_card=card_decay), seed=seed)
    sim = simulate(world, impressions, seed=seed, **SHAPE)
    features = build_features_from_frames(world.items, world.users, sim.history, Params().features, seed=0,
                                          explanations=world.explanations)
    t0 = time.perf_counter()
    kappa = estimate_examination(logged_pages(sim.impressions, world.explanations),
                                 lambda c, cards, s, p: assemble_rows(features, c, cards, s, p),
                                 SHAPE["shelves"], SHAPE["cards"], seed=0)
    seconds = time.perf_counter() - t0
    truth = world.examination(np.arange(SHAPE["shelves"])[:, None], np.arange(SHAPE["cards"])[None, :])
    error = np.log(kappa / truth)
    error -= error.mean()
    return {"world": world_name, "seed": seed, "mean_abs_log_err": float(np.abs(error).mean()),
            "max_abs_log_err": float(np.abs(error).max()),
            "corner_log_err": float(np.log(kappa[-1, -1] / kappa[0, 0]) - np.log(truth[-1, -1] / truth[0, 0])),
            "true_corner": float(truth[-1, -1] / truth[0, 0]), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="steep,default,flat")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--impressions", type=int, default=30_000)
    args = ap.parse_args()
    names = [w for w in args.worlds.split(",") if w]
    unknown = sorted(set(names) - set(DECAYS))
    if unknown:
        ap.error(f"unknown world(s) {unknown}; known: {sorted(DECAYS)}")
    runs = [recovery(name, seed, args.impressions) for name in names for seed in range(args.seeds)]
    summary = []
    for name in names:
        rs = [r for r in runs if r["world"] == name]
        mean_abs = np.array([r["mean_abs_log_err"] for r in rs])
        corner = np.array([r["corner_log_err"] for r in rs])
        summary.append({"world": name, "seeds": len(rs), "true_bottom_right": rs[0]["true_corner"],
                        "mean_abs_log_err (mean)": float(mean_abs.mean()),
                        "mean_abs_log_err (min–max)": f"{mean_abs.min():.3f}–{mean_abs.max():.3f}",
                        "max_abs_log_err (mean)": float(np.mean([r["max_abs_log_err"] for r in rs])),
                        "corner_log_err (mean ± sd)": f"{corner.mean():+.3f} ± {corner.std(ddof=1):.3f}",
                        "seconds (median)": float(np.median([r["seconds"] for r in rs]))})
    print(table(summary))
    print(f"\nsaved {save('examination', {'summary': summary, 'runs': runs, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
