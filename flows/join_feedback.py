"""Prefect flow `join-feedback`: served impressions + feedback → a reward-labelled batch in incoming/."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from bartops.config import load_params
from bartops.serving.config import ServingConfig
from bartops.serving.join import join_to_batch


@task(cache_policy=None)
def join_served_logs(log_dir: str, out_dir: str, attribution_window_seconds: float, now: str | None = None) -> dict:
    """Join closed impression files whose window has elapsed (each file exactly once)."""
    return join_to_batch(Path(log_dir), Path(out_dir), attribution_window_seconds, now).to_dict()


@flow(name="join-feedback")
def join_feedback_flow(log_dir: str | None = None, out_dir: str | None = None,
                       attribution_window_seconds: float | None = None, now: str | None = None,
                       params_file: str | None = None) -> dict:
    """Write the next reward-labelled batch (validate it next with the validation flow)."""
    params = load_params(params_file)
    cfg = ServingConfig.from_params(params).with_env()
    result = join_served_logs(log_dir or cfg.log_dir, out_dir or params["paths"]["incoming"],
                              attribution_window_seconds or cfg.attribution_window_seconds, now)
    create_markdown_artifact(
        key="join-feedback",
        markdown=(f"### Feedback join\n\n| batch | rows | rewards | files joined | files waiting |\n"
                  f"|---|---|---|---|---|\n| `{result['batch']}` | {result['rows']} | {result['rewards']} | "
                  f"{len(result['files'])} | {len(result['waiting_files'])} |"),
        description="served impressions joined with feedback",
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    print(join_feedback_flow())
