"""Validation throughput: 1M simulated impressions through every GX suite.

    python -m bench.validation [--impressions 1000000] [--repeats 3] [--profile]

Simulates a batch once (cached under build/bench/), then, in a fresh child process (so the peak
memory is validation's own), runs ``validate_batch`` ``repeats`` times: reading and typing the
batch, the impressions suite (types, nulls, enums, ranges, catalog look-ups, page-level checks,
ε consistency, stream-rate drift), and the catalog and history suites.  Reports the median wall
time per phase, rows/s and the child's peak RSS.  ``--profile`` also times each impressions
expectation alone (minus an empty-suite baseline) to say where the time goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bartops.config import Params

ROOT = Path(__file__).resolve().parents[1]



def _child(data_dir: Path, repeats: int, profile: bool) -> dict:
    """Runs inside the child process; prints one JSON line."""
    from bartops.config import load_params
    from bartops.validation import validate_batch
    from bartops.validation import suites as S

    params = load_params(ROOT / "params.yaml")
    batch = data_dir / "incoming" / "bench.parquet"
    t0 = time.perf_counter()
    S._import_gx()
    gx_import = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        report = validate_batch(batch, data_dir, params)
        wall = time.perf_counter() - t
        runs.append({"wall": wall, **report.timings, "passed": report.passed, "rows": report.rows})
    out = {"gx_import_s": gx_import, "runs": runs,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if profile:
        out["per_expectation"] = _profile(batch, data_dir, params)
    return out


def _profile(batch: Path, data_dir: Path, params: Params) -> list[dict]:
    from bartops.validation import read_batch
    from bartops.validation import suites as S

    gx = S._import_gx()
    frame = read_batch(batch).frame
    p = S.impression_parameters(frame, data_dir, params)
    ctx = S.make_context()
    src = ctx.data_sources.add_pandas("profile")
    bd = src.add_dataframe_asset("a").add_batch_definition_whole_dataframe("w")

    def once(expectations: list, tag: str) -> float:
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"s-{tag}", expectations=expectations))
        vd = gx.ValidationDefinition(name=f"v-{tag}", data=bd, suite=suite)
        t = time.perf_counter()
        vd.run(batch_parameters={"dataframe": frame}, expectation_parameters=p)
        return time.perf_counter() - t

    data = S.load_suite_json("impressions")
    baseline = min(once([data["expectations"][0]], f"base{i}") for i in range(3))  # a row count: ~fixed cost
    rows = []
    for i, e in enumerate(data["expectations"]):
        rows.append({"check": e["meta"]["check"], "level": e["meta"]["level"],
                     "seconds_over_baseline": max(once([e], str(i)) - baseline, 0.0)})
    rows.sort(key=lambda r: -r["seconds_over_baseline"])
    return [{"check": "(baseline: one-expectation run)", "level": "-", "seconds_over_baseline": baseline}] + rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="time each impressions expectation alone")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.repeats, args.profile)))
        return

    from bench.common import save, simulate_batch, table

    data_dir = ROOT / "build" / "bench" / f"validation-{args.impressions}"
    t = time.perf_counter()
    simulate_batch(args.impressions, data_dir)
    sim_s = time.perf_counter() - t
    cmd = [sys.executable, "-m", "bench.validation", "--child", str(data_dir), "--repeats", str(args.repeats)]
    if args.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"validation child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = res["runs"]
    rows_n = runs[0]["rows"]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
    phases = [{"phase": k, "median_s": v} for k, v in med.items()]
    print(f"validation of {rows_n:,} impressions ({len(runs)} runs, all passed: {all(r['passed'] for r in runs)})")
    print(table(phases))
    print(f"\nrows/s (whole validate_batch, median): {rows_n / med['wall']:,.0f}")
    print(f"peak RSS of the validation process: {res['peak_rss_mib']:,.0f} MiB; "
          f"one-off `import great_expectations`: {res['gx_import_s']:.1f} s (not in the figures above)")
    if "per_expectation" in res:
        print("\nwhere the time goes (each impressions expectation alone, seconds over a one-expectation run):")
        print(table(res["per_expectation"][:20]))
    path = save("validation", {"impressions": rows_n, "repeats": len(runs), "median_s": med,
                               "rows_per_s": rows_n / med["wall"], "peak_rss_mib": res["peak_rss_mib"],
                               "gx_import_s": res["gx_import_s"], "runs": runs, "simulate_s": sim_s,
                               "per_expectation": res.get("per_expectation")})
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
