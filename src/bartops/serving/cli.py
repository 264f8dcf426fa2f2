"""`bartops join` and `bartops package`: close the feedback loop and package the served policy."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from bartops.config import load_params


def join(
    log_dir: Optional[Path] = typer.Option(None, help="served logs (default: params serving/paths.serving_logs)"),
    out: Optional[Path] = typer.Option(None, help="where the batch goes (default: params paths.incoming)"),
    window: Optional[float] = typer.Option(None, help="attribution window in seconds (default: params serving)"),
    now: Optional[datetime] = typer.Option(None, help="treat this UTC time as now (default: the clock)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
    retire: Optional[str] = typer.Option(None, help="consumed log files: archive | delete | keep "
                                                    "(default: params serving.retire_joined)"),
) -> None:
    """Join served impressions with feedback into a reward-labelled batch (for `validate`).

    Each log file is read once; consumed files are then archived (``<log_dir>/archive/``), deleted or kept.
    """
    from bartops.serving.config import with_environment
    from bartops.serving.join import join_to_batch
    from bartops.serving.schemas import TimestampWindow

    params = load_params(params_file)
    cfg = with_environment(params.serving)
    try:
        result = join_to_batch(log_dir or Path(cfg.log_dir), out or params.paths.incoming,
                               window or cfg.attribution_window_seconds, now, retire=retire or cfg.retire_joined,
                               clock_skew=TimestampWindow.from_rules(params.validation.window).future_skew)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(result.to_dict(), indent=2))


def package(
    version: Optional[str] = typer.Argument(None, help="registry version (default: production)"),
    registry: Optional[Path] = typer.Option(None, help="registry root (default: params paths.registry)"),
    build: bool = typer.Option(True, help="also build the Bento (a no-op when it is already built)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
) -> None:
    """Store a registry version as a BentoML model (BENTOML_HOME, default build/bentoml) and build its Bento.

    Idempotent: a version already packaged from the same sources returns its stored Bento.
    """
    from bartops.registry import Registry
    from bartops.serving.package import package_version

    params = load_params(params_file)
    reg = Registry(registry or params.paths.registry)
    version = version or reg.production()
    if version is None:
        raise typer.BadParameter("no version given and the registry has no production version")
    result = package_version(reg.path(version), version, Path.cwd(), build=build)
    typer.echo(f"model: {result.model_tag}")
    if result.bento:
        typer.echo(f"bento: {result.bento}  ({'built' if result.built else 'already built'}; "
                   f"BENTOML_HOME={result.bentoml_home})")
