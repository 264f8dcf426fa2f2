"""Prefect flow `join-feedback`: served impressions + feedback → a reward-labelled batch in incoming/.

Each log file is read once: joined impression files and fully read feedback files are then retired
(``serving.retire_joined``: archive | delete | keep); feedback that matches no served card is dropped
and counted (see ``bartops.serving.join``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bartops.config import load_params
from bartops.serving.config import with_environment
from bartops.serving.join import JoinResult, join_to_batch
from bartops.serving.schemas import TimestampWindow


@task(cache_policy=None)
def join_served_logs(log_dir: str, out_dir: str, attribution_window_seconds: float, now: str | None = None,
                     retire: str = "archive", clock_skew_seconds: float = 300.0) -> JoinResult:
    """Join closed impression files whose window has elapsed (each file exactly once), then retire them."""
    return join_to_batch(Path(log_dir), Path(out_dir), attribution_window_seconds, now, retire=retire,
                         clock_skew=clock_skew_seconds)


@flow(name="join-feedback")
def join_feedback_flow(log_dir: str | None = None, out_dir: str | None = None,
                       attribution_window_seconds: float | None = None, now: str | None = None,
                       params_file: str | None = None, retire: str | None = None) -> JoinResult:
    """Write the next reward-labelled batch (validate it next with the validation flow)."""
    params = load_params(params_file)
    cfg = with_environment(params.serving)
    skew = TimestampWindow.from_rules(params.validation.window).future_skew.total_seconds()
    result = join_served_logs(log_dir or cfg.log_dir, out_dir or str(params.paths.incoming),
                              attribution_window_seconds or cfg.attribution_window_seconds, now,
                              retire or cfg.retire_joined, skew)
    get_run_logger().info(
        "joined %d impression file(s) into %s (%d rows, %d rewards); %d waiting; feedback: %d read, %d used "
        "(%d repeats counted once), %d carried, %d dropped (no served card); %d file(s) retired (%s)",
        len(result.files), result.batch, result.rows, result.rewards, len(result.waiting_files),
        result.feedback_read, result.feedback_used, result.feedback_repeats, result.feedback_carried,
        result.feedback_dropped, len(result.retired), result.retire)
    create_markdown_artifact(
        key="join-feedback",
        markdown=(f"### Feedback join\n\n| batch | rows | rewards | files joined | files waiting | feedback read "
                  f"| used | repeats | carried | dropped | files retired |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
                  f"| `{result.batch}` | {result.rows} | {result.rewards} | {len(result.files)} | "
                  f"{len(result.waiting_files)} | {result.feedback_read} | {result.feedback_used} | "
                  f"{result.feedback_repeats} | {result.feedback_carried} | {result.feedback_dropped} | "
                  f"{len(result.retired)} ({result.retire}) |"),
        description="served impressions joined with feedback",
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    print(join_feedback_flow())
