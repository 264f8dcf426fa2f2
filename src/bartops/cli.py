"""The ``bartops`` command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from bartops.config import load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help="bartops: BaRT-style home-page personalisation.")


@app.callback()
def _root() -> None:
    """bartops: BaRT-style home-page personalisation (simulate, validate, train, evaluate, serve)."""


@app.command()
def simulate(
    impressions: Optional[int] = typer.Option(None, help="logged impressions (default: params sim.impressions)"),
    seed: Optional[int] = typer.Option(None, help="random seed (default: params seed)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: params paths.data)"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
    summary_json: Optional[Path] = typer.Option(None, help="also write the summary as JSON here"),
) -> None:
    """Simulate a music service: catalog, users, history, and one logged impression batch."""
    from bartops.sim import World, simulate as run_simulation
    from bartops.sim.store import format_summary, summarise, write_simulation

    try:
        params = load_params(params_file)
        sim_params = params.sim if impressions is None else replace(params.sim, impressions=impressions)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    seed = params.seed if seed is None else seed
    out = Path(out or params.paths.data)
    pol = params.policy
    world = World.generate(sim_params, seed)
    data = run_simulation(world, sim_params.impressions, pol.shelves, pol.cards, pol.epsilon_head, pol.epsilon_fill, seed)
    paths = write_simulation(data, out, batch_name=f"sim-seed{seed}")
    summary = summarise(data, pol.shelves, pol.cards, pol.epsilon_head, pol.epsilon_fill, seed=seed)
    typer.echo(format_summary(summary))
    typer.echo(f"world and history: {paths['world']}\nimpression batch:  {paths['batch']}")
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2))


from bartops.reward.cli import features as _features, train as _train  # noqa: E402

app.command("features")(_features)
app.command("train")(_train)

from bartops.gate.cli import evaluate as _evaluate  # noqa: E402

app.command("evaluate")(_evaluate)

from bartops.registry.cli import app as _registry_app  # noqa: E402

app.add_typer(_registry_app, name="registry")


from bartops.ops.cli import check, down, status, up  # noqa: E402

app.command("up")(up)
app.command("down")(down)
app.command("status")(status)
app.command("check")(check)

from bartops.dashboard.cli import dashboard as _dashboard  # noqa: E402

app.command("dashboard")(_dashboard)

from bartops.serving.cli import join as _join, package as _package  # noqa: E402

app.command("join")(_join)
app.command("package")(_package)

from bartops.validation.cli import validate as _validate  # noqa: E402

app.command("validate")(_validate)

from bartops.scale.cli import app as _scale_app  # noqa: E402

app.add_typer(_scale_app, name="scale")


def main() -> None:
    """The console entry: an invalid params file is one line naming the key and the fix, exit status 2."""
    from bartops.config import ParamsError

    try:
        app()
    except ParamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
