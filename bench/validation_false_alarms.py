"""False alarms of the batch-level validation checks on good served batches (issue 16's flaky test).

    python -m bench.validation_false_alarms [--replicates 400] [--gx 25] [--stale-pages 3] [--now ISO]

Rebuilds the closed-loop service test's setting offline: the small world of ``tests/conftest.py``
(SMALL, seed 3), a policy trained on its logs as ``tests/integration/test_service.py`` trains it, and
``--replicates`` served batches of 150 pages (each its own rng seed, timestamps = ``--now``, streams
drawn from the world's relevance × examination).  Counts, per replicate, the stream-rate drift
check as shipped (pages as units), the same band with cards as independent rows (the old
allowance), and the explored-share check; prints the batches' design effect.  ``--gx K`` also runs
the full ``validate_batch`` (every GX suite) on K replicates, each with ``--stale-pages`` extra pages
stamped 2026-11-20T08:15Z (what the service test's propensity test leaves in the shared log folder),
validated once as on 2026-11-26 and once as on ``--now``, and counts the failed checks.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ROOT

SMALL = dict(impressions=30_000, users=600, artists=80, items=1200, genres=8, moods=4)  # tests/conftest.py
POLICY = {"shelves": 6, "cards": 8, "epsilon_head": 0.1, "epsilon_fill": 0.1}
TRAIN = {"seed": 3, "features": {"embedding_dim": 8, "clusters": 8}, "reward": {"num_boost_round": 30, "baselines": []}}
STALE = pd.Timestamp("2026-11-20T08:15:00Z")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicates", type=int, default=400)
    ap.add_argument("--gx", type=int, default=0, help="full validate_batch on this many replicates")
    ap.add_argument("--stale-pages", type=int, default=3)
    ap.add_argument("--now", default=None, help="serving time (default: now)")
    args = ap.parse_args()

    now = pd.Timestamp(args.now) if args.now else pd.Timestamp.now(tz="UTC").floor("s")
    tmp = Path(tempfile.mkdtemp(prefix="bartops-false-alarms-"))
    try:
        print(json.dumps(_measure(args, now, tmp), indent=1, default=float))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(args: argparse.Namespace, now: pd.Timestamp, tmp: Path) -> dict:
    from bartops.config import Params, PolicyParams, SimParams, load_params
    from bartops.features.store import build_features
    from bartops.logs.schema import conform_impressions
    from bartops.policy.page import build_pages
    from bartops.reward.policy import candidate_policy
    from bartops.reward.train import train_reward_models
    from bartops.sim import World, sample_contexts, simulate
    from bartops.sim.simulate import pages_to_impressions
    from bartops.sim.store import write_simulation
    from bartops.validation import suites as S
    from bartops.validation import validate_batch
    from bartops.validation.checks import explored_share_stats

    world = World.generate(SimParams(**SMALL), seed=3)
    sim = simulate(world, SMALL["impressions"], seed=3, **POLICY)
    write_simulation(sim, tmp / "data", batch_name="sim-seed3")
    train = Params.from_mapping(TRAIN)
    features = build_features(tmp / "data", train)
    policy = candidate_policy(train_reward_models(features, sim.impressions, train).model, features,
                              PolicyParams(**POLICY), "v")
    params = load_params(ROOT / "params.yaml")
    sr = replace(params.validation.stream_rate, **S.reference_stream_rate(sim.impressions))  # the simulated batch
    params = replace(params, validation=replace(params.validation, stream_rate=sr))  # is the configured reference

    def served(seed: int, at: pd.Timestamp, n_pages: int = 150) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        ctx = sample_contexts(world, n_pages, rng).assign(timestamp=at)
        cands = features.candidates_for(ctx)
        pages = build_pages(policy, ctx, cands, rng)
        imp = pages_to_impressions(ctx, cands, pages, world.explanations, "v",
                                   np.array([f"r{seed}-{i}" for i in range(n_pages)], dtype=object))
        b, s, k = np.nonzero(pages.filled)
        p = world.relevance(ctx, cands)[pages.candidate[b, s, k]] * world.examination(s, k)
        imp["reward"] = (rng.random(len(p)) < p).astype(np.int64)
        imp["stream_seconds"] = np.where(imp["reward"] == 1, 60.0, np.nan)
        return imp

    fails = collections.Counter()
    rates, deffs, z_explored = [], [], []
    for r in range(args.replicates):
        imp = served(1000 + r, now)
        par = S.impression_parameters(imp, tmp / "data", params, now)
        m = float(imp["reward"].mean())
        rates.append(m)
        deffs.append(par["stream_rate_design_effect"])
        fails["stream_rate_drift"] += int(not par["stream_rate_min"] <= m <= par["stream_rate_max"])
        lo, hi = S.stream_rate_bounds(len(imp), sr.reference, sr.reference_rows, sr.rel_tolerance, sr.alpha)
        fails["stream_rate_drift, cards as independent rows (old)"] += int(not lo <= m <= hi)
        st = explored_share_stats(imp["explored"], imp["epsilon"])
        z_explored.append((st["observed"] - st["expected"]) / np.sqrt(st["variance"]))
        fails["explored_share"] += int(abs(z_explored[-1]) > par["explored_z"])
    rates = np.asarray(rates)
    binomial_var = rates.mean() * (1 - rates.mean()) / len(imp)
    out = {"replicates": args.replicates, "rows_per_batch": len(imp), "now": now.isoformat(),
           "failures": dict(fails), "stream_rate_mean": rates.mean(), "stream_rate_sd": rates.std(ddof=1),
           "design_effect_across_replicates": rates.var(ddof=1) / binomial_var,
           "design_effect_estimated_mean": float(np.mean(deffs)),
           "bounds_shipped": [par["stream_rate_min"], par["stream_rate_max"]], "bounds_old": [lo, hi],
           "explored_share_z_sd": float(np.std(z_explored, ddof=1))}
    if args.gx:
        for label, at in (("2026-11-26", pd.Timestamp("2026-11-26T15:00:00Z")), ("now", now)):
            failed = collections.Counter()
            rejected = 0
            for r in range(args.gx):
                parts = [served(5000 + r, at)]
                if args.stale_pages:
                    stale = served(9000 + r, STALE, args.stale_pages).assign(reward=0, stream_seconds=np.nan)
                    parts.append(stale)
                path = tmp / "batch.parquet"
                conform_impressions(pd.concat(parts, ignore_index=True)).to_parquet(path, index=False)
                report = validate_batch(path, tmp / "data", params, now=at + pd.Timedelta(seconds=1801))
                failed.update(o.check for o in report.failed)
                rejected += not report.passed
            out[f"gx_validated_as_of_{label}"] = {"batches": args.gx, "rejected": rejected, "failed_checks": dict(failed)}
    return out


if __name__ == "__main__":
    main()
