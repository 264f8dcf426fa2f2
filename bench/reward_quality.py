"""Reward-model quality against the simulator's truth, and the cost of features + training.

    python -m bench.reward_quality [--sizes 100000 1000000] [--contexts 2000] [--repeats 1]

Quality: the true value (expected streams per page view, exact for ε = 0) of the candidate policy
— the BaRT page policy with each reward model as scorer, ε = 0 — divided by the oracle's (true
stream probability as scorer), on a fixed set of sampled contexts, for models trained on the first
100k and on 1M logged impressions of one simulation (params.yaml world; 80 % train by time).
The logging policy's value (ε as logged) sits beside them.

Each size's feature snapshot carries the logged response to explanation kinds computed from that
size's impressions (``with_response_stats``), as ``build_features`` does from the validated logs;
training rows get the same statistic out of fold.

Speed: wall time of building the features (shared layer + logged-response table) plus training the
weighted model (rows assembled once with per-fold response columns, weights, the stacked logistic
regression if ``reward.stack``, QuantileDMatrix, xgboost.train, validation metrics) at the largest
size, against a bare ``xgboost.train`` (QuantileDMatrix + train) with the same parameters on the
final training matrix (with its base margin when stacked).  The machine is shared: XGBoost's two
threads slow down most under load, so compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import xgboost as xgb

from bartops.config import Params, load_params
from bartops.features.assemble import FEATURE_NAMES
from bartops.features.store import Features, build_features_from_frames, with_response_stats
from bartops.policy.page import CandidateSet
from bartops.reward.policy import candidate_policy
from bartops.reward.train import fit_stack_margin, ips_weights, time_split, train_reward_models, training_rows
from bartops.sim import World, logging_policy, oracle_policy, sample_contexts, simulate, true_value
from bartops.sim.simulate import SimulatedData
from bench.common import save, table


def first_impressions(impressions, n: int):
    """The earliest ≈ n impressions, whole page views only."""
    if n >= len(impressions):
        return impressions
    last_request = impressions["request_id"].iloc[n - 1]
    cut = int(np.nonzero(impressions["request_id"].to_numpy() == last_request)[0].max()) + 1
    return impressions.iloc[:cut].reset_index(drop=True)


@dataclass
class Setup:
    """One simulation (params.yaml world), its shared-layer snapshot and the fixed scoring contexts."""

    params: Params
    world: World
    data: SimulatedData
    features: Features  # shared layer without logged-response statistics
    features_s: float  # wall time of building ``features``
    contexts: pd.DataFrame
    candidates: CandidateSet
    oracle_value: float
    logging_value: float
    logging_se: float

    def snapshot(self, impressions: pd.DataFrame | None = None) -> Features:
        """A freshly built shared layer; with the logged-response table of ``impressions`` if given."""
        return build_snapshot(self.params, self.world, self.data.history, impressions)

    def with_stats(self, impressions: pd.DataFrame) -> Features:
        """``features`` with the logged-response table of ``impressions`` (pre-cut rows)."""
        return with_response_stats(self.features, impressions, None, validation_fraction(self.params))


def validation_fraction(params: Params) -> float:
    """``reward.validation_fraction`` (snapshot logs: before the training cut)."""
    return params.reward.validation_fraction


def build_snapshot(params: Params, world: World, history: pd.DataFrame,
                   impressions: pd.DataFrame | None = None) -> Features:
    """The shared layer of the simulated world; with the logged-response table of ``impressions`` if given."""
    f = build_features_from_frames(world.items, world.users, history, params.features,
                                   seed=params.seed, explanations=world.explanations)
    return f if impressions is None else with_response_stats(f, impressions, None, validation_fraction(params))


def setup(n_impressions: int, n_contexts: int) -> Setup:
    """Simulate ``n_impressions`` with params.yaml's world, build features, score oracle and logging."""
    params = load_params()
    seed, pol = params.seed, params.policy
    sim = replace(params.sim, impressions=n_impressions)
    world = World.generate(sim, seed)
    t0 = time.perf_counter()
    data = simulate(world, n_impressions, pol.shelves, pol.cards, pol.epsilon_head, pol.epsilon_fill, seed)
    print(f"simulated {len(data.impressions):,} impressions in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    feats = build_snapshot(params, world, data.history)
    t_features = time.perf_counter() - t0
    ctx = sample_contexts(world, n_contexts, np.random.default_rng([seed, 99]))
    cands = feats.candidates_for(ctx)
    v_oracle, _ = true_value(world, oracle_policy(world, pol.shelves, pol.cards), ctx, cands)
    v_log, se_log = true_value(world, logging_policy(world, data.history, pol.shelves, pol.cards,
                                                     pol.epsilon_head, pol.epsilon_fill),
                               ctx, cands, n_samples=10, seed=1)
    return Setup(params, world, data, feats, t_features, ctx, cands, v_oracle, v_log, se_log)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--contexts", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the speed measurement (median)")
    ap.add_argument("--clip", type=float, nargs="*", default=None,
                    help="also evaluate the weighted model at these clips (weighting evidence)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the speed runs, profile one more run of the timed region (cProfile) and print "
                         "its N costliest bartops / XGBoost / scikit-learn calls (not part of the medians)")
    args = ap.parse_args()
    s = setup(max(args.sizes), args.contexts)
    params, world, data = s.params, s.world, s.data
    ctx, cands, v_oracle, v_log, se_log, t_features = (s.contexts, s.candidates, s.oracle_value, s.logging_value,
                                                       s.logging_se, s.features_s)
    pol, seed = params.policy, params.seed
    features = s.snapshot
    greedy = replace(pol, epsilon_head=0.0, epsilon_fill=0.0)
    quality = []
    for n in args.sizes:
        imp = first_impressions(data.impressions, n)
        t0 = time.perf_counter()
        f_n = s.with_stats(imp)
        result = train_reward_models(f_n, imp, params)
        t_train = time.perf_counter() - t0
        models = result.predictors()
        for clip in args.clip or []:
            p2 = replace(params, reward=replace(params.reward, clip=clip, baselines=()))
            models[f"xgboost-weighted clip={clip:g}"] = train_reward_models(f_n, imp, p2).model
        row = {"impressions": len(imp), "logging": v_log / v_oracle}
        for name, m in models.items():
            v, _ = true_value(world, candidate_policy(m, f_n, greedy), ctx, cands)
            row[name] = v / v_oracle
        row["train_all_s"] = t_train
        quality.append(row)
        print(table([row]), flush=True)

    # speed at the largest size: features + weighted training vs bare xgboost.train
    rp = params.reward
    imp = first_impressions(data.impressions, max(args.sizes))
    only_weighted = replace(params, reward=replace(rp, baselines=()))
    ours, bare = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        f = features(imp)
        t_feat = time.perf_counter() - t0
        t1 = time.perf_counter()
        train_reward_models(f, imp, only_weighted)
        ours.append({"features_s": t_feat, "train_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0})
        tr = time_split(imp["timestamp"], rp.validation_fraction)
        rows = training_rows(f, imp, tr, rp.response_folds)
        w = ips_weights(imp["propensity"].to_numpy()[tr], rp.clip, rp.normalize)
        x, y = np.ascontiguousarray(rows[tr]), imp["reward"].to_numpy()[tr]
        margin = fit_stack_margin(x, y, rp, seed)  # stacked: the final matrix includes the base margin
        base_margin = None if margin is None else margin.decision(x)
        t0 = time.perf_counter()
        d = xgb.QuantileDMatrix(x, label=y, weight=w, base_margin=base_margin, feature_names=list(FEATURE_NAMES))
        xgb.train(rp.booster_params(seed), d, num_boost_round=rp.num_boost_round)
        bare.append(time.perf_counter() - t0)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        train_reward_models(features(imp), imp, only_weighted)
        prof.disable()
        print("\nprofile of one more run of the timed region (features + weighted training), by cumulative time")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(r"bartops|xgboost/(core|training)|sklearn", args.profile)
    med = {k: statistics.median(o[k] for o in ours) for k in ours[0]}
    speed = [{"what": f"features + weighted training, {len(imp):,} impressions", "median_s": med["total_s"]},
             {"what": "  of which feature building", "median_s": med["features_s"]},
             {"what": "  of which training (assemble, weights, stacked logistic, DMatrix, train, metrics)",
              "median_s": med["train_s"]},
             {"what": "bare xgboost.train (QuantileDMatrix + train) on the final matrix",
              "median_s": statistics.median(bare)},
             {"what": "ratio", "median_s": med["total_s"] / statistics.median(bare)}]
    print("\nquality: true value / oracle (ε = 0 candidate policies)")
    print(table(quality))
    print(f"\noracle value {v_oracle:.3f} streams per page; logging {v_log:.3f} ± {se_log:.3f}; "
          f"features built in {t_features:.1f} s")
    print("\nspeed")
    print(table(speed))
    print(f"saved {save('reward_quality', {'quality': quality, 'speed': speed, 'oracle_value': v_oracle, 'logging_value': v_log, 'contexts': args.contexts, 'params': {'features': dataclasses.asdict(params.features), 'reward': dataclasses.asdict(rp)}})}")


if __name__ == "__main__":
    main()
