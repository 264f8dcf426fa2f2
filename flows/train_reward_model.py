"""Prefect flow `train-reward-model`: features + validated impressions → candidate model, baselines, bundle."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bartops.config import Params, load_params
from bartops.reward.pipeline import TrainingReport, default_paths, metrics_table
from bartops.scale.cluster import flow_task_runner
from bartops.scale.pipeline import run_training  # local or Dask, by params.yaml `scale:`


@task(cache_policy=None)
def train_and_save(features_dir: str, impressions_dir: str, model_dir: str, metrics_path: str,
                   baselines_dir: str, bundle_dir: str, params: Params) -> TrainingReport:
    """Train on one time-based split; write model, baselines, metrics JSON and the policy bundle."""
    _, report = run_training(Path(features_dir), Path(impressions_dir), Path(model_dir), params,
                             metrics_path=Path(metrics_path), baselines_dir=Path(baselines_dir),
                             bundle_dir=Path(bundle_dir))
    return report


@flow(name="train-reward-model", task_runner=flow_task_runner())
def train_reward_model_flow(features_dir: str | None = None, impressions_dir: str | None = None,
                            out_dir: str | None = None, params_file: str | None = None) -> TrainingReport:
    """Train the counterfactually weighted XGBoost candidate (defaults from params.yaml `paths:`).

    ``out_dir`` (default `build/`) receives `model/`, `baselines/`, `reports/reward_metrics.json`
    and `bundle/`.
    """
    params = load_params(params_file)
    paths = default_paths(params)
    if out_dir is not None:
        out = Path(out_dir)
        paths.update(model=out / "model", baselines=out / "baselines",
                     metrics=out / "reports" / "reward_metrics.json", bundle=out / "bundle")
    report = train_and_save(str(features_dir or paths["features"]), str(impressions_dir or paths["impressions"]),
                            str(paths["model"]), str(paths["metrics"]), str(paths["baselines"]),
                            str(paths["bundle"]), params)
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in metrics_table(report)]
    create_table_artifact(key="reward-model-metrics", table=rows,
                          description=f"validation metrics of {report.version} and its baselines")
    split = report.split
    create_markdown_artifact(
        key="reward-model",
        markdown=(f"### Reward model `{report.version}`\n\n"
                  f"- weighting: {split['weighting']} (clip {split['clip']}, normalise {split['normalize']}), "
                  f"effective sample share {split['ess_fraction']:.3f}\n"
                  f"- train rows {split['train_rows']}, validation rows {split['validation_rows']} "
                  f"(from {split['validation_from']})\n- bundle: `{report.written.get('bundle')}`"),
        description="candidate reward model",
    )
    return report


if __name__ == "__main__":  # pragma: no cover
    print(train_reward_model_flow())
