"""κ recovery: the examination profile the gate estimates from logs, against the simulator's own.

Deterministic (fixed world, log and model seeds, fixed threads): these tests cannot alarm by chance; a
failure means the estimator changed.  The bounds come from 20 seeds of each world at the same size
(30k impressions, ε = 0.1; `python -m bench.examination`): the mean absolute log
error of κ over the 48 slots (after removing the scale, which the weights ignore) was 0.044–0.160 on
the steep world and 0.016–0.053 on the flat one, and the bounds on it sit above every seed.  The
estimator before the logistic base gave 0.148–0.302 on the steep world (0.217 on this seed).  The
bottom-right slot relative to the top-left scatters more (log error sd 0.21 on the steep world, mean
+0.05); the old estimator had it 2.3× too large on average and 1.62× on this seed, the current one
0.98×: its bound (1.4×) holds for this seed and fails the old flatness.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bartops.config import Params
from bartops.features.assemble import assemble_rows
from bartops.features.store import build_features_from_frames
from bartops.ope.pipeline import estimate_examination
from bartops.ope.slate import logged_pages
from bartops.sim import World, simulate
from conftest import SHAPE, SMALL

WORLDS = {  # (position_decay_shelf, position_decay_card), bound on the mean |log error|, on the bottom-right's
    "steep": ((1.5, 1.0), 0.17, np.log(1.4)),  # bottom-right looked at 0.0085 as often as the top-left
    "flat": ((0.05, 0.05), 0.06, np.log(1.15)),  # 0.82 as often
}


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_examination_profile_recovers_the_simulators_on_steep_and_flat_worlds(name):
    (shelf_decay, card_decay), mean_bound, corner_bound = WORLDS[name]
    world = World.generate(replace(SMALL, position_decay_shelf=shelf_decay, position_decay_card=card_decay), seed=0)
    sim = simulate(world, SMALL.impressions, seed=0, **SHAPE)
    features = build_features_from_frames(world.items, world.users, sim.history, Params().features, seed=0,
                                          explanations=world.explanations)
    logs = logged_pages(sim.impressions, world.explanations)
    kappa = estimate_examination(logs, lambda c, cards, s, p: assemble_rows(features, c, cards, s, p),
                                 SHAPE["shelves"], SHAPE["cards"], seed=0)
    truth = world.examination(np.arange(SHAPE["shelves"])[:, None], np.arange(SHAPE["cards"])[None, :])
    assert kappa.shape == truth.shape and kappa.max() == 1.0, f"κ must be (shelves, cards), max 1: {kappa}"
    log_error = np.log(kappa / truth)
    log_error -= log_error.mean()  # the scale is free: the exposure weights are ratios
    mean_abs = float(np.abs(log_error).mean())
    assert mean_abs <= mean_bound, (
        f"{name} world: κ's mean |log error| over the slots is {mean_abs:.3f}, above {mean_bound}; "
        f"worst slot {tuple(int(i) for i in np.unravel_index(np.abs(log_error).argmax(), truth.shape))} off by "
        f"{np.exp(np.abs(log_error).max()):.2f}×")
    corner = float(np.log(kappa[-1, -1] / kappa[0, 0]) - np.log(truth[-1, -1] / truth[0, 0]))
    assert abs(corner) <= corner_bound, (
        f"{name} world: bottom-right / top-left estimated {kappa[-1, -1] / kappa[0, 0]:.4f}, true "
        f"{truth[-1, -1] / truth[0, 0]:.4f} ({np.exp(corner):.2f}×, bound {np.exp(corner_bound):.2f}×)")
