"""``bartops dashboard``: serve the review dashboard with uvicorn, or manage its reviewers.

``bartops dashboard`` serves; ``bartops dashboard add-reviewer NAME`` asks for a password (or reads one
line from stdin with ``--password-stdin``) and stores its salted hash in the reviewers file;
``bartops dashboard remove-reviewer NAME`` removes one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

ACTIONS = ("serve", "add-reviewer", "remove-reviewer")


def dashboard(
    action: str = typer.Argument("serve", help="serve (default), add-reviewer NAME or remove-reviewer NAME"),
    name: Optional[str] = typer.Argument(None, help="the reviewer's name (add-reviewer, remove-reviewer)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8050, help="port to listen on"),
    registry: Optional[Path] = typer.Option(None, "--registry",
                                            help="registry folder (default: $BARTOPS_REGISTRY, else params paths.registry)"),
    preview_users: int = typer.Option(3, help="known users in the home-page preview (plus one new user)"),
    seed: int = typer.Option(0, help="seed of the preview's users and pages"),
    loop_file: Optional[Path] = typer.Option(
        None, "--loop-file", help="the loop's rounds CSV (default: <params paths.build>/loop/rounds.csv)"),
    reviewers: Optional[Path] = typer.Option(
        None, "--reviewers", help="reviewers file (default: $BARTOPS_REVIEWERS, else .bartops/reviewers.json)"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="add-reviewer: read the password from stdin"),
) -> None:
    """Serve the review dashboard (candidates, gate evidence, previews, approve/reject, the loop's rounds).

    Approving needs a reviewer: `bartops dashboard add-reviewer NAME` (then log in on the dashboard).
    """
    from bartops.dashboard import auth

    if action not in ACTIONS:
        raise typer.BadParameter(f"{action!r} is not one of {', '.join(ACTIONS)}", param_hint="ACTION")
    reviewers = reviewers or auth.default_reviewers_file()
    if action != "serve":
        if not name:
            raise typer.BadParameter(f"{action} needs the reviewer's NAME", param_hint="NAME")
        _manage_reviewer(action, name, reviewers, password_stdin)
        return

    from bartops.dashboard.app import serve

    from bartops.registry import registry_root

    registry = registry_root(registry)
    typer.echo(f"review dashboard: http://{host}:{port}/  (registry {registry.resolve()}, reviewers {reviewers})")
    serve(registry, host=host, port=port, preview_users=preview_users, seed=seed, loop_file=loop_file,
          reviewers_file=reviewers)


def _manage_reviewer(action: str, name: str, reviewers: Path, password_stdin: bool) -> None:
    from bartops.dashboard import auth

    try:
        if action == "remove-reviewer":
            if not auth.remove_reviewer(reviewers, name):
                typer.echo(f"{name!r} is not a reviewer in {reviewers}", err=True)
                raise typer.Exit(1)
            typer.echo(f"removed reviewer {name} from {reviewers}; their sessions end now")
            return
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
        path = auth.add_reviewer(reviewers, name, password)
    except auth.AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"reviewer {name} can log in to the dashboard (stored as a salted scrypt hash in {path})")
