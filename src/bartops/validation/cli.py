"""``bartops validate PATH``: the validation flow's logic from the command line (no Prefect start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bartops.config import load_params


def validate(
    path: Path = typer.Argument(..., help="batch file (parquet, CSV, JSON lines) or folder of them"),
    params_file: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read"),
    data: Optional[Path] = typer.Option(None, help="raw data folder with the catalog (default paths.data)"),
    quarantine: Optional[Path] = typer.Option(None, help="quarantine folder (default paths.quarantine)"),
    impressions: Optional[Path] = typer.Option(None, help="accepted batches folder (default paths.impressions)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only validate: move nothing"),
    docs: bool = typer.Option(True, help="build GX Data Docs under build/validation/"),
    report_json: Optional[Path] = typer.Option(None, help="also write the report as JSON here"),
) -> None:
    """Validate an impression batch: accept it into the training data or quarantine it (exit 1)."""
    from bartops.validation import ValidationSetupError, ingest, validate_batch

    params = load_params(params_file)
    paths = params.paths
    data = Path(data or paths.data)
    docs_dir = paths.build / "validation" if docs else None
    try:
        store = Path(impressions or paths.impressions)
        if dry_run:
            report = validate_batch(path, data, params, docs_dir=docs_dir, impressions_dir=store)
        else:
            report = ingest(path, data, Path(quarantine or paths.quarantine), params,
                            impressions_dir=store, docs_dir=docs_dir)
    except ValidationSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if report_json:
        report_json.parent.mkdir(parents=True, exist_ok=True)
        report_json.write_text(report.to_json(), encoding="utf-8")
    typer.echo(report.to_markdown())
    if not report.passed:
        typer.echo(report.failure_message(), err=True)
        raise typer.Exit(1)
