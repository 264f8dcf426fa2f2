"""``bartops scale``: show the resolved Dask setting; run a step on the configured cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bartops.config import Paths, load_params

app = typer.Typer(help="Scale out on Dask (params.yaml `scale:` or BARTOPS_DASK_SCHEDULER).", no_args_is_help=True)


@app.command("info")
def info(params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read")) -> None:
    """Print the backend the steps will use and the environment workers get."""
    from dataclasses import asdict

    from bartops.scale.cluster import scale_settings, worker_environment

    s = scale_settings(load_params(params_file))
    typer.echo(json.dumps({"settings": asdict(s), "cluster": s.scheduler or ("LocalCluster" if s.dask else None),
                           "worker_environment": worker_environment()}, indent=2))


@app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="parquet batch (file or folder)"),
    data: Optional[Path] = typer.Option(None, help="raw data folder (default: params paths.data)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
) -> None:
    """Validate a batch on page-aligned partitions on the cluster (moves nothing); exit 1 if it fails."""
    from bartops.scale.cluster import scale_settings
    from bartops.scale.pipeline import scale_client
    from bartops.scale.validate import validate_partitioned

    params = load_params(params_file)
    s = scale_settings(params)
    with scale_client(s) as client:
        report = validate_partitioned(client, path, data or Paths.from_params(params).data, params, s.partition_rows)
    typer.echo(report.to_markdown())
    raise typer.Exit(0 if report.passed else 1)


@app.command("train")
def train(
    features_dir: Optional[Path] = typer.Option(None, "--features", help="snapshot (default: <paths.build>/features)"),
    impressions: Optional[Path] = typer.Option(None, help="validated batches (default: params paths.impressions)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
) -> None:
    """`bartops train` on the configured backend (xgboost.dask when `scale:` says dask)."""
    from bartops.reward.pipeline import default_paths
    from bartops.scale.pipeline import run_training

    params = load_params(params_file)
    paths = default_paths(params)
    try:
        _, report = run_training(features_dir or paths["features"], impressions or paths["impressions"],
                                 paths["model"], params, metrics_path=paths["metrics"],
                                 baselines_dir=paths["baselines"], bundle_dir=paths["bundle"])
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    m = report["models"][report["candidate"]]
    typer.echo(f"candidate {report['version']} ({report.get('backend', 'local')}): validation log loss "
               f"{m['log_loss']:.4f}, AUC {m['auc']:.4f}")
    for k, v in report["written"].items():
        typer.echo(f"{k:<10} {v}")
