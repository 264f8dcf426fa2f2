"""``bartops registry list|show|register|promote|rollback|history``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bartops.registry.store import Registry, RegistryError, registry_root

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The policy registry and its production pointer.")

RootOption = typer.Option(None, "--root", help="registry folder (default: $BARTOPS_REGISTRY, else params paths.registry)")


def _registry(root: Optional[Path]) -> Registry:
    return Registry(registry_root(root))


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


@app.command("list")
def list_versions(root: Optional[Path] = RootOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered versions, oldest first ('*' marks production)."""
    try:
        rows = _registry(root).list()
    except RegistryError as exc:  # a broken production pointer: the message names the file and the fix
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no versions registered")
        return
    width = max(len(r["version"]) for r in rows)
    for r in rows:
        mark = "*" if r["production"] else " "
        typer.echo(f"{mark} {r['version']:<{width}}  {r['registered_at'] or '-':<25}  gate: {r['decision'] or '-'}")


@app.command()
def show(version: str, root: Optional[Path] = RootOption) -> None:
    """Everything recorded for one version (policy, metrics, gate decision, lineage) as JSON."""
    try:
        typer.echo(json.dumps(_registry(root).show(version), indent=2, default=str))
    except (RegistryError, ValueError) as exc:
        _fail(exc)


@app.command()
def register(bundle: Path, version: Optional[str] = typer.Option(None, help="version name (default: policy.json's)"),
             root: Optional[Path] = RootOption) -> None:
    """Copy a policy bundle into the registry."""
    try:
        typer.echo(_registry(root).register(bundle, version))
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def promote(version: str, reason: str = typer.Option(..., help="why (stored in the history)"),
            force: bool = typer.Option(False, help="promote although the gate did not decide 'promote'"),
            root: Optional[Path] = RootOption) -> None:
    """Switch production to VERSION (needs a 'promote' gate decision unless --force)."""
    reg = _registry(root)
    try:
        gate = reg.show(version)["gate"]
        decision = None if gate is None else gate.get("decision")
        if decision != "promote" and not force:
            _fail(RegistryError(f"the gate decision for {version!r} is {decision!r}, not 'promote'; use --force to override"))
        event = reg.promote(version, reason if decision == "promote" else f"[forced] {reason}")
    except (RegistryError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"production: {event['version']} (was {event['previous']})")


@app.command()
def bootstrap(reason: str = typer.Option("bootstrap: no production policy yet", help="why (stored in the history)"),
              root: Optional[Path] = RootOption) -> None:
    """Put the newest version into production when nothing is: an operator's forced, recorded decision.

    Off-policy evaluation can only vouch for candidates close to what produced the logs; the very
    first model has nothing in production to be compared with, so a person starts the loop.  Does
    nothing when a production version exists.
    """
    reg = _registry(root)
    if reg.production() is not None:
        typer.echo(f"production is {reg.production()}; nothing to bootstrap")
        return
    versions = reg.list()
    if not versions:
        _fail(RegistryError(f"registry {reg.root} has no versions to bootstrap from"))
    newest = versions[-1]["version"]
    try:
        reg.promote(newest, f"[forced] {reason}")
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"bootstrapped production with {newest} (forced; recorded in the history)")


@app.command()
def repair(root: Optional[Path] = RootOption) -> None:
    """Rebuild a lost or corrupt production pointer from the history of promotions and rollbacks."""
    try:
        ptr = _registry(root).repair_pointer()
    except (RegistryError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"production: {ptr['version']} (pointer rebuilt from the history, event {ptr['seq']})")


@app.command()
def rollback(reason: str = typer.Option(..., help="why (stored in the history)"), root: Optional[Path] = RootOption) -> None:
    """Switch production back to the version it replaced."""
    try:
        event = _registry(root).rollback(reason)
    except (RegistryError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"production: {event['version']} (rolled back from {event['previous']})")


@app.command()
def history(root: Optional[Path] = RootOption) -> None:
    """Promotions and rollbacks, oldest first."""
    try:
        events = _registry(root).history()
    except RegistryError as exc:
        _fail(exc)
    for e in events:
        typer.echo(f"{e['seq']:>4}  {e['at']}  {e['action']:<8}  {e['previous'] or '-'} -> {e['version']}  {e['reason']}")
