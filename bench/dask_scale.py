"""Local vs Dask (LocalCluster, 2 worker processes × 1 thread): validate → features → train → evaluate.

    python -m bench.dask_scale [--impressions 1000000] [--small-memory 2GiB] [--rounds N]

Simulates a batch once (cached under build/bench/dask-<N>/), then runs each mode in a fresh child
process so every peak RSS is that mode's own:

- ``local``: the local steps (train = the weighted candidate only, stacked as params.yaml says:
  ``train_reward_models`` without baselines; evaluate = prefix-weight IPS/SNIPS of the greedy logging
  policy over the whole log);
- ``dask``: features from history sums of user-aligned partitions (``build_features_dask``), train
  with ``xgboost.dask`` on page-aligned partitions, evaluate from per-partition sums;
- ``dask-small``: the same with a per-worker memory limit below the local peak (``--small-memory``)
  and smaller partitions: the data goes through with memory bounded per worker.

Dask modes validate on page-aligned partitions (``validate_partitioned``).  Reports wall time per
step and peak RSS of the driver and of each worker
(``resource.getrusage`` read in the worker via ``client.run``).  On 2 cores Dask is not faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, data: Path, rounds: int | None, memory: str, partition_rows: int) -> dict:
    import numpy as np
    import pandas as pd

    from bartops.config import load_params
    from bartops.features.store import build_features
    from bartops.gate.evaluate import SIM_LOGGING_VERSION, logging_policy_for
    from bartops.ope.estimators import IPS, SNIPS, evaluate_many
    from bartops.scale.ope import evaluate_many_partitioned, partition_prefix_data, partition_statistics, slot_strata
    from bartops.validation import validate_batch

    params = load_params(ROOT / "params.yaml")
    if rounds:
        params["reward"]["num_boost_round"] = rounds
    batch = data / "incoming" / "bench.parquet"
    steps: dict[str, float] = {}
    client = None
    if mode != "local":
        from bartops.scale.cluster import ScaleSettings, dask_client

        client = dask_client(ScaleSettings(backend="dask", workers=2, threads_per_worker=1, memory_limit=memory,
                                           partition_rows=partition_rows))
    t = time.perf_counter()
    if client is None:
        report = validate_batch(batch, data, params)
    else:
        from bartops.scale.validate import validate_partitioned

        report = validate_partitioned(client, batch, data, params, partition_rows)
    steps["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    if client is None:
        features = build_features(data, params, data / "incoming")
    else:
        from bartops.scale.features import build_features_dask

        features = build_features_dask(client, data, params, data / "incoming", partition_rows)
    steps["features"] = time.perf_counter() - t
    log_policy, _ = logging_policy_for(SIM_LOGGING_VERSION, data, None, params["policy"])
    target = dataclasses.replace(log_policy, epsilon_head=0.0, epsilon_fill=0.0, version="greedy")
    ests = [IPS(), SNIPS()]
    out: dict = {"mode": mode, "validation_passed": report.passed, "rows": report.rows}
    if mode == "local":
        from bartops.features.logstats import load_impressions
        from bartops.reward.train import train_reward_models

        t = time.perf_counter()
        imp, _ = load_impressions(data / "incoming")
        train_reward_models(features, imp, {**params, "reward": {**params["reward"], "baselines": []}})
        steps["train"] = time.perf_counter() - t
        t = time.perf_counter()
        strata = np.unique(slot_strata(imp["shelf"], imp["position"], target.cards))
        d, _ = partition_prefix_data(imp, features.explanations, target, features.candidates_for, strata)
        est = evaluate_many(ests, d, params["ope"]["n_boot"], seed=0)
        steps["evaluate"] = time.perf_counter() - t
        out["workers_peak_mib"] = []
    else:
        from bartops.scale.cluster import close_client
        from bartops.scale.partitions import page_partitions, read_partition
        from bartops.scale.train import train_reward_model_dask

        try:
            parts = page_partitions(data / "incoming", partition_rows)
            t = time.perf_counter()
            train_reward_model_dask(client, features, parts, params)
            steps["train"] = time.perf_counter() - t
            t = time.perf_counter()
            frame = pd.read_parquet(batch, columns=["shelf", "position"])
            strata = np.unique(slot_strata(frame["shelf"], frame["position"], target.cards))
            del frame
            explanations = features.explanations

            def stats_of(part):
                d, ids = partition_prefix_data(read_partition(part), explanations, target, features.candidates_for,
                                               strata)
                return partition_statistics(ests, d, ids)

            est = evaluate_many_partitioned(ests, client.gather(client.map(stats_of, parts, pure=False)),
                                            params["ope"]["n_boot"], seed=0)
            steps["evaluate"] = time.perf_counter() - t
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            out["workers_peak_mib"] = sorted(peaks.values())
            out["memory_limit"] = memory
            out["partitions"] = len(parts)
        finally:
            close_client(client)
    out.update(steps=steps, driver_peak_mib=_peak_mib(),
               estimates={k: round(v.value, 6) for k, v in est.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=None, help="boosting rounds (default: params reward.num_boost_round)")
    ap.add_argument("--memory", default="6GiB", help="per-worker memory limit of the dask run")
    ap.add_argument("--small-memory", default="2GiB", help="per-worker memory limit of the bounded run (above a worker's ~0.8 GiB import footprint)")
    ap.add_argument("--partition-rows", type=int, default=250_000)
    ap.add_argument("--small-partition-rows", type=int, default=100_000)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = ROOT / "build" / "bench" / f"dask-{args.impressions}"
    if args.child:
        mem, rows = (args.small_memory, args.small_partition_rows) if args.child == "dask-small" else \
            (args.memory, args.partition_rows)
        print(json.dumps(child(args.child, data, args.rounds, mem, rows)))
        return
    from bench.common import save, simulate_batch, table

    simulate_batch(args.impressions, data)
    runs = []
    for mode in ("local", "dask", "dask-small"):
        cmd = [sys.executable, "-m", "bench.dask_scale", "--child", mode, "--impressions", str(args.impressions),
               "--memory", args.memory, "--small-memory", args.small_memory,
               "--partition-rows", str(args.partition_rows), "--small-partition-rows", str(args.small_partition_rows)]
        if args.rounds:
            cmd += ["--rounds", str(args.rounds)]
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            runs.append({"mode": mode, "failed": res.stderr[-2000:], "wall_s": wall})
            print(f"{mode} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        runs.append({**json.loads(res.stdout.strip().splitlines()[-1]), "wall_s": wall})
    rows = []
    local = next((r for r in runs if r["mode"] == "local" and "steps" in r), None)
    for r in runs:
        if "steps" not in r:
            rows.append({"mode": r["mode"], "validate_s": "failed", "features_s": "", "train_s": "", "evaluate_s": "",
                         "train_vs_local": "", "driver_peak_MiB": "", "worker_peaks_MiB": "", "worker_limit": ""})
            continue
        s = r["steps"]
        rows.append({"mode": r["mode"], "validate_s": s["validate"], "features_s": s["features"], "train_s": s["train"],
                     "evaluate_s": s["evaluate"],
                     "train_vs_local": s["train"] / local["steps"]["train"] if local else float("nan"),
                     "driver_peak_MiB": r["driver_peak_mib"],
                     "worker_peaks_MiB": ", ".join(f"{m:.0f}" for m in r["workers_peak_mib"]) or "-",
                     "worker_limit": r.get("memory_limit", "-")})
    print(f"\n{args.impressions:,} impressions; one run per mode (each a fresh process)\n")
    print(table(rows))
    same = local is not None and all(r.get("estimates") == local["estimates"] for r in runs if "estimates" in r)
    print(f"\nOPE estimates identical across modes: {same}")
    path = save("dask_scale", {"impressions": args.impressions, "runs": runs, "estimates_identical": same,
                               "note": "single run per mode; machine shared with other jobs"})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
