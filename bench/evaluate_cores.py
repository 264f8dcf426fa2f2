"""The gate's whole local evaluation on one core against every core, side by side.

    python -m bench.evaluate_cores [--repeats 3] [--rounds 2]

Runs ``bartops.gate.evaluate.evaluate_bundle`` on the project's validated impressions and bundle
(``make demo`` or ``dvc repro`` builds them) in child processes pinned to one core and to every core
(``os.sched_setaffinity`` before anything is imported), alternating ``--rounds`` times; each child
warms up once (imports, numba's cache) and reports the median of ``--repeats`` evaluations.
``bench.exposures`` times the logging exposures alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.common import ROOT, save, table


def worker(cores: list[int], repeats: int) -> dict:
    """In a child: pin to ``cores``, then time ``evaluate_bundle`` (median of ``repeats`` after a warm-up)."""
    os.sched_setaffinity(0, cores)
    import time

    from bartops.config import load_params
    from bartops.gate.evaluate import evaluate_bundle

    params = load_params(ROOT / "params.yaml")
    paths = params.paths
    logs = ROOT / paths.impressions
    bundle = ROOT / paths.build / "bundle"
    evaluate_bundle(bundle, params, None, logs, ROOT / paths.data)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ev = evaluate_bundle(bundle, params, None, logs, ROOT / paths.data)
        times.append(time.perf_counter() - t)
    return {"cores": len(cores), "pages": ev.n_pages, "times_s": times, "median_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of one core and every core")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker([int(c) for c in args.worker.split(",")], args.repeats)))
        return
    every = sorted(os.sched_getaffinity(0))
    runs = []
    for _ in range(args.rounds):
        for cores in ([every[0]], every):
            out = subprocess.run([sys.executable, "-m", "bench.evaluate_cores", "--repeats", str(args.repeats),
                                  "--worker", ",".join(map(str, cores))], cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the evaluation on cores {cores} failed:\n{out.stderr[-2000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(table([runs[-1]]), flush=True)
    one = statistics.median(r["median_s"] for r in runs if r["cores"] == 1)
    many = statistics.median(r["median_s"] for r in runs if r["cores"] == len(every))
    print(f"\nevaluate_bundle on {runs[0]['pages']} pages: 1 core {one:.2f} s, {len(every)} cores {many:.2f} s, "
          f"speed-up {one / many:.2f}x")
    print(f"saved {save('evaluate_cores', {'runs': runs, 'one_core_s': one, 'every_core_s': many, 'speedup': one / many})}")


if __name__ == "__main__":
    main()
