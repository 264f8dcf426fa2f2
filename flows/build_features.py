"""Prefect flow `build-features`: raw data (catalog, users, history) → the shared-layer snapshot."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from bartops.config import Params, load_params
from bartops.features.store import SnapshotSummary
from bartops.reward.pipeline import default_paths
from bartops.scale.pipeline import run_build_features  # local or Dask, by params.yaml `scale:`


@task(cache_policy=None)
def build_and_save(data_dir: str, out_dir: str, params: Params, impressions_dir: str) -> SnapshotSummary:
    """Build the snapshot and write it atomically; returns its summary."""
    return SnapshotSummary.of(run_build_features(Path(data_dir), Path(out_dir), params, Path(impressions_dir)),
                              out_dir)


@flow(name="build-features")
def build_features_flow(data_dir: str | None = None, out_dir: str | None = None,
                        params_file: str | None = None, impressions_dir: str | None = None) -> SnapshotSummary:
    """Build `build/features/` from the raw data and the validated impression batches (for the
    logged response to explanation kinds); defaults from params.yaml `paths:`."""
    params = load_params(params_file)
    paths = default_paths(params)
    summary = build_and_save(str(data_dir or paths["data"]), str(out_dir or paths["features"]), params,
                             str(impressions_dir or paths["impressions"]))
    create_markdown_artifact(
        key="build-features",
        markdown=("### Feature snapshot\n\n| version | items | users | candidate pairs | clusters | reference time "
                  "| logged impressions |\n|---|---|---|---|---|---|---|\n"
                  f"| `{summary.version}` | {summary.items} | {summary.users} | {summary.candidates} | "
                  f"{summary.clusters} | {summary.now} | {summary.logged_rows} |"),
        description="shared-layer feature snapshot",
    )
    return summary


if __name__ == "__main__":  # pragma: no cover
    print(build_features_flow())
