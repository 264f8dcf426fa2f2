"""`bartops up | down | status`: the local stack of the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bartops.config import load_params
from bartops.ops import processes
from bartops.ops.stack import SERVICE_ORDER, services

app = typer.Typer(add_completion=False, help="Start, check and stop the local services.")


def _stack(params_file: Optional[Path]):
    ops = load_params(params_file).ops
    root = Path.cwd()
    return services(ops, root), root / ops.run_dir


@app.command("up")
def up(
    names: Optional[List[str]] = typer.Argument(None, help=f"services to start (default: all of {', '.join(SERVICE_ORDER)})"),
    params_file: Optional[Path] = typer.Option(None, "--params"),
) -> None:
    """Start services (in dependency order) and wait until each is healthy."""
    defs, run_dir = _stack(params_file)
    wanted = names or list(SERVICE_ORDER)
    unknown = [n for n in wanted if n not in defs]
    if unknown:
        raise typer.BadParameter(f"unknown service(s) {unknown}; choose from {list(SERVICE_ORDER)}")
    for name in SERVICE_ORDER:
        if name in wanted:
            try:
                address = processes.start(defs[name], run_dir)
            except (RuntimeError, TimeoutError) as exc:
                typer.echo(f"{name}: failed: {exc}", err=True)
                raise typer.Exit(1) from None
            typer.echo(f"{name:<12} up   {address}")


@app.command("down")
def down(params_file: Optional[Path] = typer.Option(None, "--params")) -> None:
    """Stop every service started by `bartops up` (reverse order)."""
    defs, run_dir = _stack(params_file)
    for name in reversed(SERVICE_ORDER):
        if processes.stop(name, run_dir):
            typer.echo(f"{name:<12} stopped")


@app.command("status")
def status(params_file: Optional[Path] = typer.Option(None, "--params")) -> None:
    """Which services are running and healthy."""
    defs, run_dir = _stack(params_file)
    for name in SERVICE_ORDER:
        ok = processes.is_up(defs[name], run_dir)
        typer.echo(f"{name:<12} {'healthy' if ok else 'down':<8} {defs[name].address}")


@app.command("check")
def check(params_file: Optional[Path] = typer.Option(None, "--params")) -> None:
    """Does each entry point answer (Prefect deployment, service /home, dashboard) with the registry's production?"""
    from bartops.ops.smoke import check_stack

    params = load_params(params_file)
    results = check_stack(params.ops, params.paths.registry, params.policy.shelves)
    for r in results:
        typer.echo(r.line(), err=not r.ok)
    failed = [r.name for r in results if not r.ok]
    if failed:
        typer.echo(f"check failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
