"""Local vs Dask (LocalCluster, 2 worker processes × 1 thread): validate → features → train → evaluate.

    python -m bench.dask_scale [--impressions 1000000] [--small-memory 2GiB] [--rounds N] [--max-pages N]

Simulates a batch once (cached under build/bench/dask-<N>/, in a child process), then runs each mode in a
fresh child process so every peak RSS is that mode's own:

- ``local``: the local steps (train = the weighted candidate only, stacked as params.yaml says:
  ``train_reward_models`` without baselines; evaluate = the gate's evaluation as ``bartops evaluate``
  runs it: ``evaluate_bundle`` on the whole log);
- ``dask``: validate in this process (as every mode), features from history sums
  of user-aligned partitions (``build_features`` with ``DaskExecutor``), train with ``xgboost.dask`` on page-aligned
  partitions, evaluate with ``evaluate_bundle`` on the ``DaskExecutor`` (logging exposures, target pages and DR's reward
  model on the partitions; estimates from per-page sums);
- ``dask-small``: the same with a per-worker memory limit far below the local peak (``--small-memory``)
  and smaller partitions: the data goes through with memory bounded per worker.

Each mode writes its model and policy bundle under build/bench/dask-<N>/run-<mode>/ (step ``bundle``);
every mode evaluates the local mode's bundle (when it exists), so the three evaluations judge the same
candidate.  Reports wall time per step, peak RSS of the driver and of each worker (``resource.getrusage``,
read in the worker via ``client.run``), the in-memory size of the log, and the gate's table per mode:
production (on-policy, no Monte Carlo) must agree to the reported digits; the candidate's estimates are
other Monte-Carlo draws (partition-seeded) and, for DR, another reward model (xgboost.dask), so they agree
within their noise (see ``bartops.scale.evaluate``).  ``--max-pages`` evaluates a seeded subset of the
pages after the cut in every mode (``ope.max_pages``; the Monte-Carlo exposures cost time per page).
On 2 cores Dask is not faster.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, data: Path, rounds: int | None, memory: str, partition_rows: int,
          max_pages: int | None = None) -> dict:
    import gc

    from dataclasses import replace

    from bartops.config import load_params
    from bartops.features.logstats import batches_version
    from bartops.features.store import build_features, save_features
    from bartops.reward.pipeline import write_training_outputs
    from bartops.features.partitions import batch_files
    from bartops.validation import validate_batch

    params = load_params(ROOT / "params.yaml")
    if rounds:
        params = replace(params, reward=replace(params.reward, num_boost_round=rounds))
    if max_pages:
        params = replace(params, ope=replace(params.ope, max_pages=max_pages))
    incoming = data / "incoming"
    batch = incoming / "bench.parquet"
    run = data / f"run-{mode}"
    local_bundle = data / "run-local" / "bundle"
    bundle = local_bundle if mode != "local" and local_bundle.is_dir() else run / "bundle"
    version = batches_version(batch_files(incoming))
    steps: dict[str, float] = {}
    out: dict = {"mode": mode, "evaluated_bundle": str(bundle.relative_to(data))}
    client = None
    if mode != "local":
        from bartops.scale.cluster import dask_client
        from bartops.config import ScaleSettings

        client = dask_client(ScaleSettings(backend="dask", workers=2, threads_per_worker=1, memory_limit=memory,
                                           partition_rows=partition_rows))
    try:
        t = time.perf_counter()
        report = validate_batch(batch, data, params)  # every mode: validation runs in this process
        steps["validate"] = time.perf_counter() - t
        out.update(validation_passed=report.passed, rows=report.rows)
        t = time.perf_counter()
        if client is None:
            features = build_features(data, params, incoming)
        else:
            from bartops.scale import DaskExecutor

            features = build_features(data, params, incoming, DaskExecutor(client), partition_rows)
        steps["features"] = time.perf_counter() - t
        t = time.perf_counter()
        if client is None:
            from bartops.features.logstats import load_impressions
            from bartops.reward.train import train_reward_models

            imp, _ = load_impressions(incoming)
            out["log_gib"] = float(imp.memory_usage(deep=True).sum()) / GIB  # the log as the local steps hold it
            result = train_reward_models(features, imp, replace(params, reward=replace(params.reward, baselines=())),
                                         data_version=version)
            del imp
        else:
            from bartops.features.partitions import page_partitions
            from bartops.scale.train import train_reward_model_dask

            parts = page_partitions(incoming, partition_rows)
            result = train_reward_model_dask(client, features, parts, params, version)
            out["partitions"] = len(parts)
        steps["train"] = time.perf_counter() - t
        t = time.perf_counter()
        save_features(features, run / "features")
        write_training_outputs(result, features, version, run / "features", incoming, run / "model", params,
                               bundle_dir=run / "bundle", backend="local" if client is None else "dask")
        steps["bundle"] = time.perf_counter() - t
        del result, features
        gc.collect()
        t = time.perf_counter()
        from bartops.gate.evaluate import evaluate_bundle

        if client is None:
            ev = evaluate_bundle(bundle, params, None, incoming, data)
        else:
            from bartops.scale import DaskExecutor
            from bartops.scale.evaluate import dask_fold_models

            ev = evaluate_bundle(bundle, params, None, incoming, data, DaskExecutor(client), partition_rows,
                                 dask_fold_models)
        steps["evaluate"] = time.perf_counter() - t
        out.update(evaluated_rows=ev.n_rows, evaluated_pages=ev.n_pages, holdout_from=ev.holdout_from,
                   table=[asdict(r) for r in ev.result.table()])
        if client is not None:
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            out.update(workers_peak_mib=sorted(peaks.values()), memory_limit=memory)
        else:
            out["workers_peak_mib"] = []
    finally:
        if client is not None:
            from bartops.scale.cluster import close_client

            close_client(client)
    out.update(steps=steps, driver_peak_mib=_peak_mib())
    return out


def simulate_child(n: int, data: Path) -> dict:
    from bench.common import simulate_batch

    simulate_batch(n, data)
    return {"mode": "simulate", "peak_mib": _peak_mib()}


def _memory_bytes(text: str) -> float:
    from dask.utils import parse_bytes

    return float(parse_bytes(text))


def estimates_table(runs: list[dict]) -> tuple[list[dict], dict]:
    """The gate's table of every mode side by side, and the agreement checks."""
    done = [r for r in runs if "table" in r]
    rows, by = [], {r["mode"]: {(t["policy"], t["estimator"]): t for t in r["table"]} for r in done}
    if not done:
        return rows, {}
    keys = list(by[done[0]["mode"]])
    for key in keys:
        row = {"policy": key[0], "estimator": key[1]}
        for r in done:
            t = by[r["mode"]].get(key)
            row[r["mode"]] = "-" if t is None else f"{t['value']:.4f} [{t['ci_low']:.4f}, {t['ci_high']:.4f}]"
        rows.append(row)
    ref = by.get("local")
    checks = {}
    if ref is not None:
        prod = [k for k in keys if k[0] == "production"]
        checks["production_identical"] = all(by[m][k]["value"] == ref[k]["value"] and by[m][k]["ci_low"] ==
                                             ref[k]["ci_low"] for m in by for k in prod)
        # the candidate: |dask − local| in units of the local interval's half-width
        checks["candidate_shift_in_half_widths"] = {
            m: {f"{k[0]} {k[1]}": round(abs(by[m][k]["value"] - ref[k]["value"]) /
                                        max((ref[k]["ci_high"] - ref[k]["ci_low"]) / 2, 1e-12), 3)
                for k in keys if k[0] != "production"} for m in by if m != "local"}
    return rows, checks


MODES = ("local", "dask", "dask-small")


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=None, help="boosting rounds (default: params reward.num_boost_round)")
    ap.add_argument("--memory", default="6GiB", help="per-worker memory limit of the dask run")
    ap.add_argument("--small-memory", default="2GiB",
                    help="per-worker memory limit of the bounded run (above a worker's ~0.8 GiB import footprint)")
    ap.add_argument("--partition-rows", type=int, default=250_000)
    ap.add_argument("--small-partition-rows", type=int, default=100_000)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run (in this order)")
    ap.add_argument("--max-pages", type=int, default=None,
                    help="ope.max_pages of the evaluation (default: params.yaml's, null = every page after the cut)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = ROOT / "build" / "bench" / f"dask-{args.impressions}"
    if args.child:
        if args.child == "simulate":
            print(json.dumps(simulate_child(args.impressions, data)))
            return
        mem, rows = (args.small_memory, args.small_partition_rows) if args.child == "dask-small" else \
            (args.memory, args.partition_rows)
        print(json.dumps(child(args.child, data, args.rounds, mem, rows, args.max_pages)))
        return
    from bench.common import save, table

    load_start = os.getloadavg()
    base = [sys.executable, "-m", "bench.dask_scale", "--impressions", str(args.impressions)]
    sim = subprocess.run(base + ["--child", "simulate"], cwd=ROOT, capture_output=True, text=True)  # own process
    if sim.returncode != 0:
        sys.exit(f"simulation failed:\n{sim.stderr[-2000:]}")
    runs = []
    for mode in args.modes:
        cmd = base + ["--child", mode, "--memory", args.memory, "--small-memory", args.small_memory,
                      "--partition-rows", str(args.partition_rows),
                      "--small-partition-rows", str(args.small_partition_rows)]
        if args.rounds:
            cmd += ["--rounds", str(args.rounds)]
        if args.max_pages:
            cmd += ["--max-pages", str(args.max_pages)]
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            runs.append({"mode": mode, "failed": res.stderr[-2000:], "wall_s": wall})
            print(f"{mode} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        runs.append({**json.loads(res.stdout.strip().splitlines()[-1]), "wall_s": wall})
        partial = data / "runs-partial.json"  # each finished mode survives an interrupted run
        partial.with_suffix(".tmp").write_text(json.dumps(runs, indent=1))
        partial.with_suffix(".tmp").replace(partial)
    rows = []
    local = next((r for r in runs if r["mode"] == "local" and "steps" in r), None)
    for r in runs:
        if "steps" not in r:
            rows.append({"mode": r["mode"], "validate_s": "failed", "features_s": "", "train_s": "", "bundle_s": "",
                         "evaluate_s": "", "train_vs_local": "", "evaluate_vs_local": "", "driver_peak_MiB": "",
                         "worker_peaks_MiB": "", "worker_limit": ""})
            continue
        s = r["steps"]
        rows.append({"mode": r["mode"], "validate_s": s["validate"], "features_s": s["features"], "train_s": s["train"],
                     "bundle_s": s["bundle"], "evaluate_s": s["evaluate"],
                     "train_vs_local": s["train"] / local["steps"]["train"] if local else float("nan"),
                     "evaluate_vs_local": s["evaluate"] / local["steps"]["evaluate"] if local else float("nan"),
                     "driver_peak_MiB": r["driver_peak_mib"],
                     "worker_peaks_MiB": ", ".join(f"{m:.0f}" for m in r["workers_peak_mib"]) or "-",
                     "worker_limit": r.get("memory_limit", "-")})
    load_end = os.getloadavg()
    print(f"\n{args.impressions:,} impressions; one run per mode (each a fresh process); "
          f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end\n")
    print(table(rows))
    estimates, checks = estimates_table(runs)
    print("\nThe gate's table (value [95% interval]) per mode\n")
    print(table(estimates))
    small = next((r for r in runs if r["mode"] == "dask-small" and "steps" in r), None)
    if local is not None and small is not None:
        limit = _memory_bytes(small["memory_limit"]) / GIB
        checks["log_gib"] = round(local["log_gib"], 3)  # the log as pandas holds it (arrow-backed strings)
        checks["local_peak_gib"] = round(local["driver_peak_mib"] / 1024, 3)  # what the local steps need
        checks["small_worker_limit_gib"] = round(limit, 3)
        checks["local_peak_above_a_worker_limit"] = local["driver_peak_mib"] / 1024 > limit
        checks["small_workers_within_limit"] = max(small["workers_peak_mib"]) / 1024 < limit
    print(f"\nchecks: {json.dumps(checks, indent=1)}")
    path = save("dask_scale", {"impressions": args.impressions, "max_pages": args.max_pages, "runs": runs,
                               "estimates": estimates,
                               "checks": checks, "load_avg_start": load_start, "load_avg_end": load_end,
                               "note": "single run per mode; machine shared with other jobs"})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
