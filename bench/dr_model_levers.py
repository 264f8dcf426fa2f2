"""Two diagnoses of DR's reward model on the robustness grid's logs (docs/robustness.md, session 18).

    python -m bench.dr_model_levers [--worlds steep,big-candidates] [--seeds 20] [--refits 30]

On each of ``--seeds`` fresh logs of 20k impressions per world (the same logs as ``bench.robustness``'s
grid) and for each candidate of ``bench.ope_accuracy``, DR as shipped and:

- **refits**: the cross-fitted fold models refitted ``--refits`` times on Poisson-resampled pages (same
  rows, features and booster), DR recomputed on the original pages each time; the shipped interval
  widened by the refits' spread in quadrature (what the page bootstrap, which holds the model fixed,
  leaves out);
- **weighted**: the fold models trained with each logged card's weight under the candidate, clipped to
  [lo, hi], as sample weights (an importance-weighted regression), for the clips of ``CLIPS``.

Both swap ``bartops.ope.pipeline.cross_fit`` for the run (a diagnosis, not a product setting).  Prints
coverage, mean error and mean absolute error against the population truth per world and candidate;
saves ``bench/results/dr-model-levers.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import xgboost as xgb

import bartops.ope.pipeline as ope_pipeline
from bartops.config import OPEConfig
from bartops.features.candidates import candidates_for_requests
from bartops.ope.reward import CROSS_FIT_DEPTH, CROSS_FIT_ROUNDS, cross_fit, cross_fit_params, page_folds, predict_folds
from bartops.ope.simulated import SimFeaturizer, blended
from bartops.ope.slate import logged_pages
from bartops.sim.simulate import simulate_impressions
from bench.common import save, table
from bench.ope_accuracy import CANDIDATES, population_truth
from bench.robustness import LOG_IMPRESSIONS, WORLDS, world_setup

CLIPS = {"w0.1-100": (0.1, 100.0), "w1-100": (1.0, 100.0), "w1-10": (1.0, 10.0), "w0.1-1000": (0.1, 1000.0)}


def fit_with_page_weights(page_weight_of, x_logged, reward, group, x_target, target_row, n_folds=2, seed=0,
                          rounds=CROSS_FIT_ROUNDS, depth=CROSS_FIT_DEPTH):
    """``cross_fit`` with sample weights ``page_weight_of(page code per row, n_pages)`` on the training rows."""
    x_logged, x_target = np.asarray(x_logged, np.float32), np.asarray(x_target, np.float32)
    reward = np.asarray(reward, np.float64)
    _, g = np.unique(group, return_inverse=True)
    fold = page_folds(g.max() + 1, n_folds, seed)[g]
    w = page_weight_of(g, g.max() + 1)
    models = []
    for f in range(n_folds):
        train = (fold != f) & (w > 0)
        models.append(xgb.train(cross_fit_params(seed, depth),
                                xgb.DMatrix(x_logged[train], label=reward[train], weight=w[train] / w[train].mean()),
                                num_boost_round=rounds))
    return predict_folds(models, x_logged, fold), predict_folds(models, x_target, fold[target_row])


def dr_value(lp, marg, targets, cfg, feat, fit=None) -> tuple[float, float, float]:
    """DR's (value, interval low, interval high) of the candidate, with ``fit`` as DR's cross-fit."""
    ope_pipeline.cross_fit = fit or cross_fit
    try:
        e = ope_pipeline.evaluate_policies(lp, marg, targets, cfg, feat).estimates["candidate"]["dr"]
    finally:
        ope_pipeline.cross_fit = cross_fit
    return e.value, e.ci_low, e.ci_high


_SETUP: dict[str, tuple] = {}


def evaluate_seed(name: str, seed: int, population: dict[str, float], refits: int) -> list[dict]:
    """Every candidate's shipped, refit-widened and weighted DR on one fresh log of world ``name``."""
    if name not in _SETUP:
        _SETUP[name] = world_setup(WORLDS[name])
    world, sim, log = _SETUP[name]
    logs = simulate_impressions(world, sim.history, sim.candidates, log, LOG_IMPRESSIONS,
                                np.random.default_rng([seed, 2]))
    cfg = OPEConfig(n_boot=200, marginal_samples=100)
    lp = logged_pages(logs, world.explanations)
    cands = candidates_for_requests(sim.candidates, lp.contexts["user_id"].to_numpy())
    feat = SimFeaturizer(world, sim.history)
    kappa = ope_pipeline.estimate_examination(lp, feat, log.shelves, log.cards, cfg.seed)
    marg = ope_pipeline.logging_marginals(log, lp, cands, cfg, kappa)
    rows = []
    for cand, weight in CANDIDATES.items():
        targets = {"candidate": (blended(log, world, weight, cand), cands), "production": None}
        res = ope_pipeline.evaluate_policies(lp, marg, targets, cfg, feat)
        e = res.estimates["candidate"]["dr"]
        out = {"world": name, "seed": seed, "candidate": cand, "truth": population[cand],
               "shipped": (e.value, e.ci_low, e.ci_high)}
        spread = []
        for r in range(refits):
            rng = np.random.default_rng([seed, r, 77])
            resample = lambda g, n, rng=rng: rng.poisson(1.0, n).astype(float)[g]  # noqa: E731
            spread.append(dr_value(lp, marg, targets, cfg, feat,
                                   lambda *a, **k: fit_with_page_weights(resample, *a, **k))[0])
        sd = float(np.std(spread, ddof=1)) if refits > 1 else 0.0
        z = 1.959964
        out["refits"] = (e.value, e.value - np.hypot(e.value - e.ci_low, z * sd),
                         e.value + np.hypot(e.ci_high - e.value, z * sd))
        out["refit_sd_over_se"] = sd / e.se
        w_card = res.diagnostics["candidate"].weights
        for label, (lo, hi) in CLIPS.items():
            by_row = lambda g, n, lo=lo, hi=hi: np.clip(w_card, lo, hi)  # noqa: E731
            out[label] = dr_value(lp, marg, targets, cfg, feat, lambda *a, **k: fit_with_page_weights(by_row, *a, **k))
        rows.append(out)
    return rows


def summarise(rows: list[dict], variants: list[str]) -> list[dict]:
    out = []
    for world in dict.fromkeys(r["world"] for r in rows):
        for cand in [*CANDIDATES, "pooled"]:
            rs = [r for r in rows if r["world"] == world and (cand == "pooled" or r["candidate"] == cand)]
            row = {"world": world, "candidate": cand, "logs": len(rs)}
            for v in variants:
                row[f"{v}_coverage"] = float(np.mean([r[v][1] <= r["truth"] <= r[v][2] for r in rs]))
                row[f"{v}_mean_rel_err"] = float(np.mean([(r[v][0] - r["truth"]) / r["truth"] for r in rs]))
                row[f"{v}_mean_abs_rel_err"] = float(np.mean([abs(r[v][0] - r["truth"]) / r["truth"] for r in rs]))
            row["refit_sd_over_se"] = float(np.mean([r["refit_sd_over_se"] for r in rs]))
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="steep,big-candidates")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--refits", type=int, default=30)
    ap.add_argument("--truth-pages", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0, rows = time.time(), []
    for name in [w for w in args.worlds.split(",") if w]:
        world, sim, log = world_setup(WORLDS[name])
        population, _ = population_truth(world, sim, log, args.truth_pages)
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += [r for rs in pool.map(evaluate_seed, [name] * args.seeds, range(args.seeds),
                                          [population] * args.seeds, [args.refits] * args.seeds) for r in rs]
    summary = summarise(rows, ["shipped", "refits", *CLIPS])
    print(table(summary))
    path = save("dr-model-levers", {"summary": summary, "runs": rows, "args": vars(args), "wall_s": time.time() - t0})
    print(f"\nsaved {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
