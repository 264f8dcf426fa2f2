"""``bartops scale``: show the executor the steps will use (params.yaml ``scale:``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bartops.config import load_params

app = typer.Typer(help="Scale out on Dask (params.yaml `scale:` or BARTOPS_DASK_SCHEDULER).", no_args_is_help=True)


@app.command("info")
def info(params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read")) -> None:
    """Print the backend the steps will use and the environment workers get."""
    from dataclasses import asdict

    from bartops.scale.cluster import scale_settings, worker_environment

    s = scale_settings(load_params(params_file))
    typer.echo(json.dumps({"settings": asdict(s), "cluster": s.scheduler or ("LocalCluster" if s.dask else None),
                           "worker_environment": worker_environment()}, indent=2))
