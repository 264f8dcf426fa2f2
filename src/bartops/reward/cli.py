"""``bartops features`` and ``bartops train`` (registered by ``bartops.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bartops.config import load_params


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


def features(
    data: Optional[Path] = typer.Option(None, help="raw data folder (default: params paths.data)"),
    out: Optional[Path] = typer.Option(None, help="snapshot folder (default: <paths.build>/features)"),
    impressions: Optional[Path] = typer.Option(None, help="validated batches for the logged response to "
                                                          "explanation kinds (default: params paths.impressions)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
) -> None:
    """Build the shared-layer feature snapshot (affinities, embeddings, clusters, similar items, candidates);
    on Dask when params.yaml `scale:` (or BARTOPS_DASK_SCHEDULER) says so."""
    from bartops.reward.pipeline import default_paths
    from bartops.scale.pipeline import run_build_features  # local or Dask, by params.yaml `scale:`

    params = load_params(params_file)
    paths = default_paths(params)
    try:
        f = run_build_features(data or paths["data"], out or paths["features"], params, impressions)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"feature snapshot {f.version}: {len(f.item_ids)} items, {len(f.user_ids)} users, "
               f"{len(f.candidates)} candidate pairs, {f.params['response_source']['rows']} logged impressions "
               f"-> {out or paths['features']}")


def train(
    features_dir: Optional[Path] = typer.Option(None, "--features", help="snapshot (default: <paths.build>/features)"),
    impressions: Optional[Path] = typer.Option(None, help="validated batches (default: params paths.impressions)"),
    out: Optional[Path] = typer.Option(None, help="output folder for model/, baselines/, reports/, bundle/ "
                                                  "(default: params paths.build)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics report as JSON"),
) -> None:
    """Train the weighted XGBoost reward model and its baselines; write the candidate policy bundle
    (on Dask, with xgboost.dask and no baselines, when params.yaml `scale:` says so)."""
    from bartops.reward.pipeline import default_paths, metrics_table
    from bartops.scale.pipeline import run_training  # local or Dask, by params.yaml `scale:`

    params = load_params(params_file)
    paths = default_paths(params)
    if out is not None:
        paths.update(model=out / "model", baselines=out / "baselines",
                     metrics=out / "reports" / "reward_metrics.json", bundle=out / "bundle")
    try:
        _, report = run_training(features_dir or paths["features"], impressions or paths["impressions"],
                                 paths["model"], params, metrics_path=paths["metrics"],
                                 baselines_dir=paths["baselines"], bundle_dir=paths["bundle"])
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    typer.echo(f"candidate {report.version} ({report.candidate}), validation metrics:")
    typer.echo(f"{'model':<20} {'log_loss':>9} {'auc':>7} {'ece':>7}")
    for r in metrics_table(report):
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
        typer.echo(f"{r['model']:<20} {r['log_loss']:>9.4f} {auc:>7} {r['ece']:>7.4f}")
    for k, v in report.written.items():
        typer.echo(f"{k:<20} {v}")
