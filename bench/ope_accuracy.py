"""Off-policy estimator accuracy against the simulator's truth, interval coverage, gate safety, speed.

    python -m bench.ope_accuracy [--sizes 10000,100000,1000000] [--coverage 20000:60,100000:30] [--workers 2]

1. Relative error of IPS, SNIPS and DR (``bartops.ope.pipeline``) for candidates close to the
   ε = 0.1 logging policy (its greedy version), moderately different (logging score + 1 × true
   relevance) and very different (+ 30 × true relevance ≈ the oracle), plus a worse one (− 1 ×), at
   each log size; the gate's decision (default params) for each against the truth.
2. Coverage of the 95 % intervals of each estimator over many log seeds at each ``--coverage`` size
   (impressions:seeds), with a Wilson interval for the coverage itself.  The truth is each policy's
   value over 100k fresh page views (``population_truth``, standard error reported), the estimand of
   the page bootstrap; coverage of the value on the logged contexts is reported too.
3. Speed: IPS + SNIPS + DR with 1,000 bootstrap resamples on 1M rows (48 per page), median of 3.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.common import save, table, timed
from bartops.features.candidates import candidates_for_requests
from bartops.gate import decide
from bartops.config import GateParams, OPEConfig, SimParams
from bartops.ope import DR, IPS, SNIPS, check_inputs, evaluate_many
from bartops.ope.pipeline import estimate_examination, evaluate_policies, logging_marginals
from bartops.ope.simulated import SimFeaturizer, blended
from bartops.ope.slate import logged_pages
from bartops.sim import World, simulate, true_value
from bartops.sim.simulate import logging_policy, sample_contexts, simulate_impressions

WORLD = SimParams(impressions=1000, users=1500, artists=150, items=2500, genres=10, moods=5)
CANDIDATES = {"close": 0.0, "moderate": 1.0, "very different": 30.0, "worse": -1.0}


def population_truth(world, sim, log, pages: int = 100_000, seed: int = 12345, chunk: int = 10_000
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """True value per page view of the logging policy and each candidate over ``pages`` fresh contexts
    (the estimand: the value on future traffic), and its standard error over contexts (from the spread
    of equal chunks' means).  Candidates are greedy, so each context's value is exact."""
    rng = np.random.default_rng([seed, 7])
    chunks: dict[str, list[float]] = {"logging": [], **{name: [] for name in CANDIDATES}}
    for _ in range(max(1, pages // chunk)):
        ctx = sample_contexts(world, chunk, rng)
        cands = candidates_for_requests(sim.candidates, ctx["user_id"].to_numpy())
        chunks["logging"].append(true_value(world, log, ctx, cands, n_samples=4, seed=len(chunks["logging"]))[0])
        for name, weight in CANDIDATES.items():
            chunks[name].append(true_value(world, blended(log, world, weight, name), ctx, cands)[0])
    value = {k: float(np.mean(v)) for k, v in chunks.items()}
    se = {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan") for k, v in chunks.items()}
    return value, se


def evaluate_all(world, sim, log, logs, cfg, gate: GateParams, population: dict[str, float],
                 truth_samples: int = 8, true_examination: bool = False) -> list[dict]:
    """Every candidate's estimates on ``logs`` against its population value (``population_truth``: what
    the intervals are for, since the page bootstrap resamples page views) and, for reference, its value
    on the logged contexts (conditional on them, so the intervals over-cover it for a close candidate).
    ``true_examination``: the simulator's κ instead of the one estimated from the logs (a diagnosis)."""
    lp = logged_pages(logs, world.explanations)
    cands = candidates_for_requests(sim.candidates, lp.contexts["user_id"].to_numpy())
    feat = SimFeaturizer(world, sim.history)
    if true_examination:
        kappa = world.examination(np.arange(log.shelves)[:, None], np.arange(log.cards)[None, :])
        kappa = kappa / kappa.max()
    else:
        kappa = estimate_examination(lp, feat, log.shelves, log.cards, cfg.seed)
    marg = logging_marginals(log, lp, cands, cfg, kappa)
    kinds = world.explanations["kind"].to_numpy()
    v_log = true_value(world, log, lp.contexts, cands, n_samples=truth_samples)[0]
    rows = []
    for name, weight in CANDIDATES.items():
        pol = blended(log, world, weight, name)
        res = evaluate_policies(lp, marg, {"candidate": (pol, cands), "production": None}, cfg, feat, kinds)
        truth, conditional = population[name], true_value(world, pol, lp.contexts, cands)[0]
        diff = res.differences["production"]
        d = decide(gate, True, diff[gate.estimator], res.estimates["candidate"][gate.estimator].ess, 0.0,
                   res.kind_lifts["production"], res.diagnostics["candidate"].support_share)
        row = {"candidate": name, "truth": truth, "true_lift": truth - population["logging"],
               "truth_logged_contexts": conditional, "true_lift_logged_contexts": conditional - v_log}
        for e, est in res.estimates["candidate"].items():
            row[f"{e}_rel_err"] = (est.value - truth) / truth
            row[f"{e}_interval"] = [est.ci_low, est.ci_high]
            row[f"{e}_covers"] = bool(est.ci_low <= truth <= est.ci_high)
            row[f"{e}_covers_logged_contexts"] = bool(est.ci_low <= conditional <= est.ci_high)
        row["support_share"] = res.diagnostics["candidate"].support_share
        row["decision"] = d.decision
        row["failed"] = ",".join(d.failed)
        row["unsafe"] = d.decision == "promote" and (truth < population["logging"] or conditional < v_log)
        rows.append(row)
    return rows


def speed(n_rows: int = 1_000_000, repeats: int = 3) -> dict:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 1, n_rows)
    q = rng.uniform(0, 1, n_rows)
    r = (rng.random(n_rows) < 0.1).astype(float)
    group = np.arange(n_rows) // 48
    pred, exp = np.full(n_rows, 0.1), np.full(n_rows, 0.1)
    d = check_inputs(r, p, q, group, np.arange(n_rows) % 48, pred, exp)
    med, times, _ = timed(lambda: evaluate_many([IPS(), SNIPS(), DR()], d, n_boot=1000), repeats)
    return {"rows": n_rows, "pages": int(group.max() + 1), "n_boot": 1000, "median_s": med, "times_s": times}


def setup():
    """The benchmark's world, its history and candidates, and the ε = 0.1 logging policy."""
    world = World.generate(WORLD, seed=11)
    sim = simulate(world, 500, 6, 8, 0.1, 0.1, seed=11)
    return world, sim, logging_policy(world, sim.history, 6, 8, 0.1, 0.1)


_WORKER: dict = {}


def coverage_seed(seed: int, size: int, population: dict[str, float]) -> list[dict]:
    """Every candidate's estimates on one fresh log of ``size`` impressions (log seed ``seed``)."""
    if not _WORKER:
        _WORKER["setup"] = setup()
    world, sim, log = _WORKER["setup"]
    logs = simulate_impressions(world, sim.history, sim.candidates, log, size, np.random.default_rng([seed, 2]))
    cfg = OPEConfig(n_boot=200, marginal_samples=100)
    return [{"seed": seed, **r} for r in evaluate_all(world, sim, log, logs, cfg, GateParams(), population,
                                                      truth_samples=4)]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (here: a coverage over seeds)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--coverage", default="20000:60,100000:30", help="impressions:seeds, comma-separated")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--truth-pages", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2, help="processes for the coverage seeds")
    args = ap.parse_args()
    t0 = time.time()
    world, sim, log = setup()
    gate = GateParams()  # the shipped defaults (DR, margin 0, min ESS 100, support share 0.5)
    population, population_se = population_truth(world, sim, log, args.truth_pages)
    print("population values (± s.e.):", {k: f"{v:.4f} ± {population_se[k]:.4f}" for k, v in population.items()},
          f"({time.time() - t0:.0f} s)", flush=True)
    cfg = OPEConfig(n_boot=args.n_boot, marginal_samples=100)
    accuracy = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        logs = simulate_impressions(world, sim.history, sim.candidates, log, size, np.random.default_rng([size, 1]))
        ts = time.time()
        for row in evaluate_all(world, sim, log, logs, cfg, gate, population):
            accuracy.append({"impressions": size, **row})
        print(f"size {size}: {time.time() - ts:.0f} s", flush=True)
    cols = ["impressions", "candidate", "truth", "ips_rel_err", "snips_rel_err", "dr_rel_err", "support_share",
            "decision"]
    print("\n## Relative error vs truth (and the gate's decision)\n")
    print(table([{c: r[c] for c in cols} for r in accuracy]))
    cov_rows: list[dict] = []
    coverage = []
    for spec in [c for c in args.coverage.split(",") if c]:
        size, seeds = (int(x) for x in spec.split(":"))
        ts = time.time()
        rows_now: list[dict] = []
        # spawn, not fork: the parent has run XGBoost's OpenMP threads
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for rows in pool.map(coverage_seed, range(seeds), [size] * seeds, [population] * seeds):
                rows_now += [{"impressions": size, **r} for r in rows]
        print(f"coverage at {size:,}: {seeds} seeds in {time.time() - ts:.0f} s ({args.workers} processes)", flush=True)
        cov_rows += rows_now
        for name in CANDIDATES:
            rs = [r for r in rows_now if r["candidate"] == name]
            row = {"impressions": size, "candidate": name, "seeds": len(rs)}
            for e in ("ips", "snips", "dr"):
                hits = int(sum(r[f"{e}_covers"] for r in rs))
                row[f"{e}_coverage"] = hits / len(rs)
                if e == "dr":
                    row["dr_coverage_95ci"] = "[{:.2f}, {:.2f}]".format(*wilson(hits, len(rs)))
            row.update({"dr_coverage_logged_contexts": float(np.mean([r["dr_covers_logged_contexts"] for r in rs])),
                        "dr_mean_rel_err": float(np.mean([r["dr_rel_err"] for r in rs])),
                        "promoted": int(sum(r["decision"] == "promote" for r in rs)),
                        "unsafe_promotions": int(sum(r["unsafe"] for r in rs))})
            coverage.append(row)
    print("\n## Coverage of 95% intervals (seeds at each size)\n")
    print(table(coverage))
    unsafe = sum(r["unsafe"] for r in accuracy + cov_rows)
    print(f"\nGate: {len(accuracy) + len(cov_rows)} decisions, unsafe promotions (true value below production): {unsafe}")
    sp = speed()
    print(f"\n## Speed: IPS+SNIPS+DR, 1,000 resamples, {sp['rows']:,} rows: median {sp['median_s']:.2f} s (floor < 10 s)")
    path = save("ope_accuracy", {"accuracy": accuracy, "coverage": coverage, "coverage_runs": cov_rows,
                                 "unsafe_promotions": int(unsafe), "speed": sp, "population_truth": population,
                                 "population_truth_se": population_se, "args": vars(args),
                                 "wall_s": time.time() - t0})
    print(f"\nsaved {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
