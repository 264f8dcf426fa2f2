"""The pipeline steps with the backend chosen by ``scale:`` (same signatures as the local steps).

``run_build_features`` builds the snapshot with its per-partition work in this process or, with the
Dask backend, on the cluster (``DaskExecutor``), and finishes on the driver.
``run_training`` trains locally (``bartops.reward.pipeline.run_training``) or, with the Dask
backend, with ``xgboost.dask`` on page-aligned partitions of the validated batches, and writes the
same outputs (model, metrics JSON, policy bundle).  Inside a Prefect task that runs on a Dask worker
(``DaskTaskRunner``) the step uses that worker's cluster; otherwise it connects to ``scale.scheduler``
or starts a LocalCluster for the step.  ``run_evaluation`` is the gate's evaluation (``bartops evaluate``):
``bartops.gate.evaluate.evaluate_bundle`` on the whole log, or ``bartops.scale.evaluate`` on
page-aligned partitions.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bartops.scale.cluster import DaskExecutor, ScaleSettings, close_client, dask_client, scale_settings

if TYPE_CHECKING:
    from bartops.gate.evaluate import Evaluation


@contextmanager
def scale_client(settings: ScaleSettings) -> Iterator[Any]:
    """A client of the cluster this code runs on (inside a Dask task: ``worker_client``, which secedes
    from the worker's thread pool), else of ``settings`` (a LocalCluster closed afterwards)."""
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        client = dask_client(settings)
        try:
            yield client
        finally:
            close_client(client)
        return
    with worker_client() as client:
        yield client


def run_build_features(data_dir: Path, out_dir: Path, params: dict[str, Any], impressions_dir: Path | None = None):
    """``bartops.reward.pipeline.run_build_features`` with its per-partition work on the configured
    backend (history sums by user partition, the batches' response rows by page partition)."""
    from bartops.reward import pipeline as local

    settings = scale_settings(params)
    if not settings.dask:
        return local.run_build_features(data_dir, out_dir, params, impressions_dir)
    with scale_client(settings) as client:
        return local.run_build_features(data_dir, out_dir, params, impressions_dir, DaskExecutor(client),
                                        settings.partition_rows)


def run_training(features_dir: Path, impressions_dir: Path, model_dir: Path, params: dict[str, Any],
                 metrics_path: Path | None = None, baselines_dir: Path | None = None,
                 bundle_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """``bartops.reward.pipeline.run_training`` on the configured backend (see module docs)."""
    from bartops.reward import pipeline as local

    settings = scale_settings(params)
    if not settings.dask:
        return local.run_training(features_dir, impressions_dir, model_dir, params, metrics_path, baselines_dir,
                                  bundle_dir)
    from bartops.features.logstats import batches_version
    from bartops.features.store import load_features
    from bartops.features.partitions import batch_files, page_partitions
    from bartops.scale.train import train_reward_model_dask

    features = load_features(Path(features_dir))
    files = batch_files(Path(impressions_dir))
    data_version = batches_version(files)
    with scale_client(settings) as client:
        result = train_reward_model_dask(client, features, page_partitions(files, settings.partition_rows), params,
                                         data_version)
    return result, local.write_training_outputs(result, features, data_version, Path(features_dir),
                                                Path(impressions_dir), Path(model_dir), params, metrics_path,
                                                baselines_dir, bundle_dir, backend="dask")


def run_evaluation(bundle_dir: Path, params: dict[str, Any], registry: Any, impressions_dir: Path,
                   data_dir: Path) -> tuple[Evaluation, list[Path]]:
    """(the gate's ``Evaluation`` of the bundle, the batch files) on the configured backend."""
    from bartops.gate import evaluate as local

    settings = scale_settings(params)
    if not settings.dask:
        logs, files = local.load_impressions(Path(impressions_dir))
        return local.evaluate_bundle(Path(bundle_dir), params, registry, logs, Path(data_dir)), files
    from bartops.scale.evaluate import evaluate_bundle_dask
    from bartops.features.partitions import batch_files

    files = batch_files(Path(impressions_dir))
    with scale_client(settings) as client:
        ev = evaluate_bundle_dask(client, Path(bundle_dir), params, registry, files, Path(data_dir),
                                  settings.partition_rows)
    return ev, files
