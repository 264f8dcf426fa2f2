"""The heavy steps on the executor that ``scale:`` picks (same signatures as the local steps).

Each step runs where it is fastest (docs/scale-out.md, "Which executor runs which step"):

- ``run_build_features``: ``build_features``'s per-partition work (history sums, the batches'
  response rows) in this process or on the cluster (``DaskExecutor``); the finish on the driver;
- ``run_training``: ``xgboost.train`` in this process, or ``xgboost.dask`` on page-aligned
  partitions of the validated batches (``bartops.scale.train``); the same outputs either way;
- ``run_evaluation``: the gate's evaluation (``bartops evaluate``, ``bartops.gate.evaluation``) with
  each batch file one partition in this process, or on page-aligned partitions on the cluster, DR's
  fold models by ``xgboost.dask`` (``bartops.scale.evaluate``).

Inside a Prefect task that runs on a Dask worker (``DaskTaskRunner``) a step uses that worker's
cluster; otherwise it connects to ``scale.scheduler`` or starts a LocalCluster for the step.
Validation always runs in this process (it gates one batch, and ingestion moves files here).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bartops.config import Params, ScaleSettings
from bartops.features.logstats import batches_version
from bartops.features.partitions import batch_files, page_partitions
from bartops.features.store import Features, load_features
from bartops.gate.evaluate import Evaluation, evaluate_bundle
from bartops.reward import pipeline as local
from bartops.reward.train import TrainingResult
from bartops.scale.cluster import DaskExecutor, close_client, dask_client, scale_settings
from bartops.scale.evaluate import dask_fold_models
from bartops.scale.train import train_reward_model_dask


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


def run_build_features(data_dir: Path, out_dir: Path, params: Params,
                       impressions_dir: Path | None = None) -> Features:
    """``bartops.reward.pipeline.run_build_features`` with its per-partition work on the backend."""
    settings = scale_settings(params)
    if not settings.dask:
        return local.run_build_features(data_dir, out_dir, params, impressions_dir)
    with scale_client(settings) as client:
        return local.run_build_features(data_dir, out_dir, params, impressions_dir, DaskExecutor(client),
                                        settings.partition_rows)


def run_training(features_dir: Path, impressions_dir: Path, model_dir: Path, params: Params,
                 metrics_path: Path | None = None, baselines_dir: Path | None = None,
                 bundle_dir: Path | None = None) -> tuple[TrainingResult, local.TrainingReport]:
    """``bartops.reward.pipeline.run_training`` on the configured backend (see module docs)."""
    settings = scale_settings(params)
    if not settings.dask:
        return local.run_training(features_dir, impressions_dir, model_dir, params, metrics_path, baselines_dir,
                                  bundle_dir)
    features = load_features(Path(features_dir))
    files = batch_files(Path(impressions_dir))
    data_version = batches_version(files)
    with scale_client(settings) as client:
        result = train_reward_model_dask(client, features, page_partitions(files, settings.partition_rows), params,
                                         data_version)
    return result, local.write_training_outputs(result, features, data_version, Path(features_dir),
                                                Path(impressions_dir), Path(model_dir), params, metrics_path,
                                                baselines_dir, bundle_dir, backend="dask")


def run_evaluation(bundle_dir: Path, params: Params, registry: Any, impressions_dir: Path,
                   data_dir: Path) -> tuple[Evaluation, list[Path]]:
    """(the gate's ``Evaluation`` of the bundle, the batch files) on the configured backend."""
    settings = scale_settings(params)
    files = batch_files(Path(impressions_dir))
    if not settings.dask:
        return evaluate_bundle(Path(bundle_dir), params, registry, files, Path(data_dir)), files
    with scale_client(settings) as client:
        return evaluate_bundle(Path(bundle_dir), params, registry, files, Path(data_dir), DaskExecutor(client),
                               settings.partition_rows, dask_fold_models), files
