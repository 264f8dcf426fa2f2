"""Validation of a batch on page-aligned partitions, with the same verdict and counts as local.

Each partition (whole pages of one parquet file) is typed as ``read_batch`` types a batch and runs
the GX ``impressions`` suite with the batch's global parameters; the driver reduces:

- row- and page-level checks: unexpected and element counts add up (pages never straddle
  partitions); examples come from the first failing partitions;
- ``impression_id_unique``: from the ids' 64-bit hashes of all partitions (a duplicate may sit in
  two partitions), counting every row whose id occurs more than once, as GX does;
- batch-level checks: schema checks must pass in every partition; the explored share (Σ explored,
  Σε, Σε(1−ε)) and the stream rate (Σ reward / rows, its bounds from per-page sums) are recomputed from reduced sums with the
  suite's rules; the batch window from the latest timestamp of every partition.

The catalog and history suites do not depend on the batch and run once on the driver.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bartops.features.partitions import Partition, batch_files, page_partitions, read_partition
from bartops.validation.checks import explored_share_stats, page_reward_sums
from bartops.validation.reader import BatchReadError, coerce_impressions, digest_files
from bartops.validation.report import ExpectationOutcome, ValidationReport

_CONTEXT: dict[str, Any] = {}  # one GX context per worker process


def _context():
    from bartops.validation import suites as S

    if "gx" not in _CONTEXT:
        _CONTEXT["gx"] = S.make_context(None)
    return _CONTEXT["gx"]


def partition_batch_stats(part: Partition, window_end: pd.Timestamp) -> dict[str, Any]:
    """Pass 0: rows, pages, Σ reward, explored-share sums, latest timestamp ≤ window_end, id hashes."""
    frame = coerce_impressions(read_partition(part, conform=False))
    ts = frame["timestamp"]
    ok = pd.api.types.is_datetime64_any_dtype(ts)
    latest = ts[ts <= window_end].max() if ok else None
    reward = pd.to_numeric(frame["reward"], errors="coerce")
    return {"rows": len(frame), "pages": int(frame["request_id"].nunique()), "reward_sum": float(reward.sum()),
            "reward_count": int(reward.notna().sum()), "explored": explored_share_stats(frame["explored"], frame["epsilon"]),
            "page_sums": page_reward_sums(frame["reward"], frame["request_id"]),
            "latest": None if latest is None or pd.isna(latest) else pd.Timestamp(latest),
            "id_hash": pd.util.hash_array(frame["impression_id"].astype(str).to_numpy(dtype=object))}


def partition_outcomes(part: Partition, parameters: dict[str, Any], examples: int) -> list[ExpectationOutcome]:
    """Pass 1: the impressions suite on this partition with the batch's parameters."""
    from bartops.validation import suites as S

    frame = coerce_impressions(read_partition(part, conform=False))
    run, _ = S.run_suite(_context(), "impressions", frame, parameters, examples=examples)
    return run.outcomes


def _combine_counts(name: str, runs: list[ExpectationOutcome], examples: int) -> ExpectationOutcome:
    unexpected = sum(o.unexpected_count or 0 for o in runs)
    elements = sum(o.element_count or 0 for o in runs)
    rows = [e for o in runs for e in o.examples][:examples]
    error = next((o.error for o in runs if o.error), None)
    return replace(runs[0], success=all(o.success for o in runs), element_count=elements, unexpected_count=unexpected,
                   unexpected_percent=100.0 * unexpected / elements if elements else 0.0, examples=rows, error=error)


def _reduce(outcomes: list[list[ExpectationOutcome]], stats: list[dict], parameters: dict[str, Any],
            examples: int) -> list[ExpectationOutcome]:
    rows = sum(s["rows"] for s in stats)
    by_check: dict[str, list[ExpectationOutcome]] = {}
    for run in outcomes:
        for o in run:
            by_check.setdefault(o.check, []).append(o)
    out = []
    for check, runs in by_check.items():
        first = runs[0]
        if check == "non_empty":
            out.append(replace(first, success=rows >= 1, observed_value=rows))
        elif check == "impression_id_unique":
            h = np.concatenate([s["id_hash"] for s in stats])
            _, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
            dup = int((counts[inv] > 1).sum())
            o = _combine_counts(check, runs, examples)
            out.append(replace(o, success=dup == 0, unexpected_count=dup,
                               unexpected_percent=100.0 * dup / rows if rows else 0.0))
        elif check == "explored_share":
            e = {k: sum(s["explored"][k] for s in stats) for k in ("rows", "observed", "expected", "variance")}
            z = float(parameters["explored_z"])
            sd = math.sqrt(e["variance"])
            dev = e["observed"] - e["expected"]
            # the rule of ExpectExploredShareToMatchEpsilon (bartops.validation.expectations) on summed stats
            out.append(replace(first, success=bool(abs(dev) <= z * sd + 1e-9) and not any(o.error for o in runs),
                               observed_value=e["observed"] / max(e["rows"], 1),
                               details={**first.details, "explored": e["observed"], "expected_explored": round(e["expected"], 3),
                                        "sd": sd, "tolerance": z * sd, "rows": e["rows"]}))
        elif check == "stream_rate_drift":
            n = sum(s["reward_count"] for s in stats)
            mean = sum(s["reward_sum"] for s in stats) / n if n else float("nan")
            ok = n > 0 and parameters["stream_rate_min"] <= mean <= parameters["stream_rate_max"]
            out.append(replace(first, success=bool(ok) and not any(o.error for o in runs), observed_value=mean))
        elif first.level == "batch":  # schema checks: the same file schema in every partition
            out.append(replace(first, success=all(o.success for o in runs),
                               error=next((o.error for o in runs if o.error), None)))
        else:
            out.append(_combine_counts(check, runs, examples))
    return out


def batch_parameters(stats: list[dict], data_dir: Path, params: dict[str, Any], now: pd.Timestamp) -> dict[str, Any]:
    """The suite parameters of the whole batch from the partitions' reduced statistics."""
    from bartops.validation import suites as S

    latest = [s["latest"] for s in stats if s["latest"] is not None]
    stand_in = pd.DataFrame({"timestamp": pd.Series(latest, dtype="datetime64[ns, UTC]")})
    parameters = S.impression_parameters(stand_in, data_dir, params, now)
    # pages never straddle partitions, so the page sums of the stream rate's variance add up
    sums = {k: sum(s["page_sums"][k] for s in stats) for k in ("rows", "pages", "y", "y2", "ym", "m2")}
    vparams = params.get("validation") or {}  # this path checks no accepted store: the configured reference
    reference = S.stream_rate_reference([], S.store_stream_rates(None), vparams)
    return {**parameters, **S.batch_stream_rate_bounds(sums, vparams, reference)}


def validate_partitioned(client, path: Path, data_dir: Path, params: dict[str, Any], partition_rows: int, *,
                         now: pd.Timestamp | None = None) -> ValidationReport:
    """``validate_batch`` of a parquet batch (file or folder) on page-aligned partitions (moves nothing)."""
    from bartops.validation import suites as S
    from bartops.validation.core import check_reference

    t0 = time.perf_counter()
    path, data_dir = Path(path), Path(data_dir)
    check_reference(data_dir)
    report = ValidationReport(batch=str(path), passed=False, decision="validated",
                              created_at=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"))
    now = pd.Timestamp(now if now is not None else pd.Timestamp.now(tz="UTC"))
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    v = params.get("validation") or {}
    window_end = now + pd.Timedelta(seconds=float((v.get("window") or {}).get("future_skew_seconds", 300)))
    try:
        files = batch_files(path)
        parts = page_partitions(files, partition_rows)
        stats = client.gather(client.map(partition_batch_stats, parts, window_end=window_end, pure=False))
    except (BatchReadError, FileNotFoundError) as exc:
        report.decision, report.error_kind = "unreadable", getattr(exc, "kind", "missing")
        report.error = getattr(exc, "message", str(exc))
        return report
    report.rows, report.pages, report.fmt = sum(s["rows"] for s in stats), sum(s["pages"] for s in stats), "parquet"
    report.files, report.digest = [str(f) for f in files], digest_files(files)
    parameters = batch_parameters(stats, data_dir, params, now)
    report.parameters = parameters
    examples = int(v.get("examples", 3))
    outcomes = client.gather(client.map(partition_outcomes, parts, parameters=parameters, examples=examples,
                                        pure=False))
    reduced = _reduce(outcomes, stats, parameters, examples)
    report.expectations += reduced
    report.suites["impressions"] = {"rows": report.rows, "evaluated": len(reduced),
                                    "failed": sum(not o.success for o in reduced), "partitions": len(parts)}
    context = S.make_context(None)
    for name in ("catalog", "history"):
        file = "items.parquet" if name == "catalog" else "history.parquet"
        run, _ = S.run_suite(context, name, pd.read_parquet(data_dir / file), parameters, examples=examples)
        report.expectations += run.outcomes
        report.suites[name] = {"rows": run.rows, "evaluated": len(run.outcomes),
                               "failed": sum(not o.success for o in run.outcomes)}
    report.passed = not report.failed
    report.timings["total"] = time.perf_counter() - t0
    return report
