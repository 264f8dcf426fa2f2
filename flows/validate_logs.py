"""Prefect flow `validate-logs`: run the GX suites on an impression batch, then accept or quarantine it.

Accepted batches go (atomically, once) into ``paths.impressions``; rejected or unreadable ones move
whole into ``paths.quarantine`` beside their report, and the flow run ends Failed with a message
naming each failed expectation.  Each run publishes a markdown artifact and builds GX Data Docs
under ``build/validation/``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from bartops.config import Params, load_params
from bartops.validation import ValidationReport, ingest


@task(cache_policy=None)
def validate_and_ingest(path: str, data_dir: str, quarantine_dir: str, impressions_dir: str, docs_dir: str | None,
                        params: Params) -> ValidationReport:
    """Validate the batch and accept or quarantine it (side-effecting: never cached)."""
    return ingest(Path(path), Path(data_dir), Path(quarantine_dir), params,
                  impressions_dir=Path(impressions_dir), docs_dir=Path(docs_dir) if docs_dir else None)


@flow(name="validate-logs")
def validate_logs(path: str | None = None, params_file: str | None = None, data_dir: str | None = None,
                  quarantine_dir: str | None = None, impressions_dir: str | None = None, docs: bool = True):
    """Validate one batch (file or folder; default: every batch in ``paths.incoming``).  The run's state
    carries each batch's ``ValidationReport``; it is Failed, naming every failed expectation, when one
    was rejected."""
    params = load_params(params_file)
    paths = params.paths
    data = data_dir or str(paths.data)
    build = paths.build
    targets = [path] if path else sorted(str(p) for p in paths.incoming.iterdir()
                                         if not p.name.startswith("."))
    if not targets:
        return Completed(message="no batch to validate")
    results: list[ValidationReport] = []
    for target in targets:
        report = validate_and_ingest(target, data, quarantine_dir or str(paths.quarantine),
                                     impressions_dir or str(paths.impressions),
                                     str(build / "validation") if docs else None, params)
        create_markdown_artifact(key="validation-report", markdown=report.to_markdown(),
                                 description=f"validation of {target}")
        results.append(report)
    failures = [r.failure_message() for r in results if not r.passed]
    if failures:
        return Failed(message="\n\n".join(failures), data=results)
    return Completed(message=f"{len(results)} batch(es) accepted", data=results)


if __name__ == "__main__":  # pragma: no cover
    import sys

    validate_logs(sys.argv[1] if len(sys.argv) > 1 else None)
