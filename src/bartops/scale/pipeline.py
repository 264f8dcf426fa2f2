"""The pipeline steps with the backend chosen by ``scale:`` (same signatures as the local steps).

``run_build_features`` builds the snapshot locally or, with the Dask backend, reduces the history
and the impression logs on the cluster (``bartops.scale.features``) and finishes on the driver.
``run_training`` trains locally (``bartops.reward.pipeline.run_training``) or, with the Dask
backend, with ``xgboost.dask`` on page-aligned partitions of the validated batches, and writes the
same outputs (model, metrics JSON, policy bundle).  Inside a Prefect task that runs on a Dask worker
(``DaskTaskRunner``) the step uses that worker's cluster; otherwise it connects to ``scale.scheduler``
or starts a LocalCluster for the step.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bartops.scale.cluster import ScaleSettings, close_client, dask_client, scale_settings


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


def batches_version(files: list[Path]) -> str:
    """The data version of the validated batches (as ``load_impressions``: names and bytes, sha256)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def run_build_features(data_dir: Path, out_dir: Path, params: dict[str, Any], impressions_dir: Path | None = None):
    """``bartops.reward.pipeline.run_build_features`` on the configured backend (see module docs)."""
    from bartops.reward import pipeline as local

    settings = scale_settings(params)
    if not settings.dask:
        return local.run_build_features(data_dir, out_dir, params, impressions_dir)
    from bartops.features.store import save_features
    from bartops.scale.features import build_features_dask

    with scale_client(settings) as client:
        features = build_features_dask(client, Path(data_dir), params, impressions_dir, settings.partition_rows)
    save_features(features, Path(out_dir))
    return features


def run_training(features_dir: Path, impressions_dir: Path, model_dir: Path, params: dict[str, Any],
                 metrics_path: Path | None = None, baselines_dir: Path | None = None,
                 bundle_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """``bartops.reward.pipeline.run_training`` on the configured backend (see module docs)."""
    from bartops.reward import pipeline as local

    settings = scale_settings(params)
    if not settings.dask:
        return local.run_training(features_dir, impressions_dir, model_dir, params, metrics_path, baselines_dir,
                                  bundle_dir)
    from bartops.features.store import load_features
    from bartops.reward.model import save_model, write_json_atomic
    from bartops.reward.policy import write_policy_bundle
    from bartops.scale.partitions import batch_files, page_partitions
    from bartops.scale.train import train_reward_model_dask

    features = load_features(Path(features_dir))
    files = batch_files(Path(impressions_dir))
    data_version = batches_version(files)
    with scale_client(settings) as client:
        result = train_reward_model_dask(client, features, page_partitions(files, settings.partition_rows), params,
                                         data_version)
    save_model(result.model, Path(model_dir))
    written = {"model": str(model_dir)}
    version = f"cand-{features.version[:8]}-{data_version[:8]}"
    source = features.params.get("response_source") or {}
    report = {"version": version, "candidate": result.model.name, "data_version": data_version,
              "features_version": features.version, "features_response_source": source,
              "features_response_current": source.get("data_version") == data_version, "backend": "dask",
              **result.metrics}
    if metrics_path is not None:
        write_json_atomic(Path(metrics_path), report)
        written["metrics"] = str(metrics_path)
        written["calibration"] = str(local.write_calibration_csv(report, Path(metrics_path).with_name("calibration.csv")))
    if bundle_dir is not None:
        write_policy_bundle(Path(model_dir), Path(features_dir), params["policy"], Path(bundle_dir), version,
                            lineage={"impressions_dir": str(impressions_dir), "backend": "dask"})
        written["bundle"] = str(bundle_dir)
    return result, {**report, "written": written}
