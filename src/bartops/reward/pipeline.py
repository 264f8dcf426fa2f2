"""The two steps as plain functions (called by the Prefect flows and by the CLI).

- ``run_build_features``: raw data folder → ``build/features/`` snapshot;
- ``run_training``: snapshot + validated impression batches → ``build/model/`` (the weighted
  candidate), ``build/baselines/xgboost-unweighted/``, ``build/reports/reward_metrics.json`` and a
  policy bundle ``build/bundle/`` ready for the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bartops.config import Params
from bartops.features.logstats import load_impressions
from bartops.features.partitions import IN_PROCESS, Executor
from bartops.features.store import Features, build_features, load_features, save_features
from bartops.leftovers import recover_leftovers, write_json_atomic, write_text_atomic
from bartops.reward.model import RewardModel, save_model
from bartops.reward.policy import write_policy_bundle
from bartops.reward.train import TrainingResult, train_reward_models


@dataclass(frozen=True)
class TrainingReport:
    """A training run's summary: the candidate's version and lineage, every model's validation metrics
    (model name → log loss, AUC, ECE, calibration, per kind), the time-based split and the paths written.
    ``metrics_json`` is the content of ``reward_metrics.json``."""

    version: str
    candidate: str
    data_version: str
    features_version: str
    features_response_source: dict[str, Any]  # the validated logs the snapshot's logged-response table came from
    features_response_current: bool  # whether those are the logs the model was trained on
    backend: str
    models: dict[str, dict[str, Any]]
    split: dict[str, Any]
    written: dict[str, str]  # what → path: model, baselines by name, metrics, calibration, bundle

    def metrics_json(self) -> dict[str, Any]:
        """Everything but the paths written (the metrics file's content)."""
        out = asdict(self)
        del out["written"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_paths(params: Params) -> dict[str, Path]:
    """Where the steps read and write, from ``paths:`` in params.yaml."""
    p = params.paths
    build = p.build
    return {
        "data": p.data,
        "impressions": p.impressions,
        "features": build / "features",
        "model": build / "model",
        "baselines": build / "baselines",
        "metrics": build / "reports" / "reward_metrics.json",
        "bundle": build / "bundle",
    }


def run_build_features(data_dir: Path, out_dir: Path, params: Params, impressions_dir: Path | None = None,
                       executor: Executor = IN_PROCESS, partition_rows: int | None = None) -> Features:
    """Build the shared-layer snapshot from ``data_dir`` and the validated impression batches
    (``impressions_dir``, default params ``paths.impressions``) and save it to ``out_dir``
    (``build_features``'s per-partition work on ``executor``)."""
    impressions_dir = params.paths.impressions if impressions_dir is None else impressions_dir
    features = build_features(Path(data_dir), params, impressions_dir, executor, partition_rows)
    save_features(features, Path(out_dir))
    return features


def run_training(features_dir: Path, impressions_dir: Path, model_dir: Path, params: Params,
                 metrics_path: Path | None = None, baselines_dir: Path | None = None,
                 bundle_dir: Path | None = None) -> tuple[TrainingResult, TrainingReport]:
    """Train the candidate and baselines; write the model, metrics JSON and (optionally) a bundle.
    Returns the result and its report."""
    features = load_features(Path(features_dir))
    impressions, data_version = load_impressions(Path(impressions_dir))
    result = train_reward_models(features, impressions, params, data_version=data_version)
    return result, write_training_outputs(result, features, data_version, Path(features_dir), Path(impressions_dir),
                                          Path(model_dir), params, metrics_path, baselines_dir, bundle_dir)


def write_training_outputs(result: TrainingResult, features: Features, data_version: str, features_dir: Path,
                           impressions_dir: Path, model_dir: Path, params: Params,
                           metrics_path: Path | None = None, baselines_dir: Path | None = None,
                           bundle_dir: Path | None = None, backend: str = "local") -> TrainingReport:
    """Save the model (and baselines), the metrics JSON + calibration CSV and the policy bundle; their
    report.  Shared by the local and the Dask training."""
    save_model(result.model, Path(model_dir))
    written = {"model": str(model_dir)}
    if baselines_dir is not None:
        for name, b in result.baselines.items():
            if isinstance(b, RewardModel):
                save_model(b, Path(baselines_dir) / name)
                written[name] = str(Path(baselines_dir) / name)
    version = f"cand-{features.version[:8]}-{data_version[:8]}"
    source = features.params.get("response_source") or {}
    report = TrainingReport(version=version, candidate=result.model.name, data_version=data_version,
                            features_version=features.version, features_response_source=source,
                            # the snapshot's logged-response table should come from the same validated logs
                            features_response_current=source.get("data_version") == data_version,
                            backend=backend, models=result.metrics["models"], split=result.metrics["split"],
                            written={})
    if metrics_path is not None:
        recover_leftovers(Path(metrics_path).parent)
        write_json_atomic(Path(metrics_path), report.metrics_json())
        written["metrics"] = str(metrics_path)
        written["calibration"] = str(write_calibration_csv(report.models, Path(metrics_path).with_name("calibration.csv")))
    if bundle_dir is not None:
        write_policy_bundle(Path(model_dir), Path(features_dir), params.policy, Path(bundle_dir), version,
                            lineage={"impressions_dir": str(impressions_dir), "backend": backend})
        written["bundle"] = str(bundle_dir)
    return replace(report, written=written)


def write_calibration_csv(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Reliability-diagram data for ``dvc plots`` (model, predicted, observed, count) of each model's
    validation metrics, written atomically."""
    lines = ["model,predicted,observed,count"]
    for name, m in models.items():
        lines += [f"{name},{b['predicted']!r},{b['observed']!r},{b['count']}" for b in m.get("calibration") or []]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def metrics_table(report: TrainingReport) -> list[dict[str, Any]]:
    """One row per model: log loss, AUC, ECE on the validation part."""
    rows = []
    for name, m in report.models.items():
        rows.append({"model": name, "log_loss": m["log_loss"], "auc": m["auc"], "ece": m["ece"],
                     "rows": m["rows"]})
    return rows
