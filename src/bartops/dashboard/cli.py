"""``bartops dashboard``: serve the review dashboard with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def dashboard(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8050, help="port to listen on"),
    registry: Optional[Path] = typer.Option(None, "--registry",
                                            help="registry folder (default: $BARTOPS_REGISTRY, else params paths.registry)"),
    preview_users: int = typer.Option(3, help="known users in the home-page preview (plus one new user)"),
    seed: int = typer.Option(0, help="seed of the preview's users and pages"),
    loop_file: Optional[Path] = typer.Option(
        None, "--loop-file", help="the loop's rounds CSV (default: <params paths.build>/loop/rounds.csv)"),
) -> None:
    """Serve the review dashboard (candidates, gate evidence, previews, approve/reject, the loop's rounds)."""
    from bartops.dashboard.app import serve

    if registry is None:
        env = os.environ.get("BARTOPS_REGISTRY")
        if env:
            registry = Path(env)
        else:
            from bartops.config import load_params

            try:
                registry = Path(load_params().get("paths", {}).get("registry", "registry"))
            except FileNotFoundError:
                registry = Path("registry")
    typer.echo(f"review dashboard: http://{host}:{port}/  (registry {registry.resolve()})")
    serve(registry, host=host, port=port, preview_users=preview_users, seed=seed, loop_file=loop_file)
