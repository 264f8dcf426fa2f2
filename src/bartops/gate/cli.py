"""``bartops evaluate``: off-policy evaluation and the gate decision without Prefect (the DVC stage).

Reads the registry only to know production; never registers, records or promotes (the
``evaluate-and-gate`` flow does that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def evaluate(
    bundle: Optional[Path] = typer.Option(None, help="candidate bundle (default: <paths.build>/bundle)"),
    impressions: Optional[Path] = typer.Option(None, help="validated batches (default: params paths.impressions)"),
    out: Optional[Path] = typer.Option(None, help="reports folder (default: <paths.build>/reports)"),
    registry_root: Optional[Path] = typer.Option(None, "--registry", help="registry whose production is the "
                                                 "baseline (default: $BARTOPS_REGISTRY, else params paths.registry)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
) -> None:
    """Evaluate the candidate against production on the validated logs; write ope.json and policy_value.csv.

    With `scale:` dask (or BARTOPS_DASK_SCHEDULER) the evaluation runs on page-aligned partitions."""
    from bartops.config import load_params
    from bartops.gate.evaluate import make_decision, validation_reports, write_reports
    from bartops.registry import Registry, registry_root as default_registry_root
    from bartops.scale.pipeline import run_evaluation

    params = load_params(params_file)
    paths = params.paths
    build = paths.build
    bundle = Path(bundle or build / "bundle")
    root = default_registry_root(registry_root, paths)
    try:
        reg = Registry(root) if root.is_dir() else None
        impressions_dir = Path(impressions or paths.impressions)
        ev, files = run_evaluation(bundle, params, reg, impressions_dir, paths.data)
        read = lambda name: json.loads((bundle / name).read_text()) if (bundle / name).is_file() else None  # noqa: E731
        version = (read("policy.json") or {}).get("version")
        decision = make_decision(ev, params, read("metrics.json"), validation_reports(files, build),
                                 read("lineage.json"), version)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ope_json, csv_path = write_reports(decision, Path(out or build / "reports"))
    for r in decision.ope.table:
        typer.echo(f"{r.policy:<24} {r.estimator:<6} {r.value:>9.4f}  [{r.ci_low:.4f}, {r.ci_high:.4f}]  ESS {r.ess:.0f}")
    typer.echo(decision.summary)
    if ev.backend == "dask":
        typer.echo(f"evaluated on dask: {ev.partitions} page-aligned partitions")
    typer.echo(f"wrote {ope_json} and {csv_path}")
