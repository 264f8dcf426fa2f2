"""Prefect flow `retrain`: validate → build features → train → evaluate and gate → package.

The parent flow only wires the step flows (each also runnable alone, and each the same code that the
DVC stages call).  Steps that touch nothing outside this machine's files and are deterministic get no
retries; packaging (which shells out to `bentoml build`) retries once.  A rejected batch stops the
run before anything downstream; a candidate the gate rejects is not packaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from bartops.gate import GateOutcome
from bartops.serving.package import Packaged
from flows.build_features import build_features_flow
from flows.evaluate_and_gate import evaluate_and_gate
from flows.join_feedback import join_feedback_flow
from flows.package_service import package_service
from flows.train_reward_model import train_reward_model_flow
from flows.validate_logs import validate_logs


@dataclass(frozen=True)
class RetrainResult:
    """What one round produced: the gate's outcome and, if the candidate was promoted and packaged,
    its Bento (None otherwise)."""

    gate: GateOutcome
    packaged: Packaged | None


@flow(name="retrain")
def retrain(params_file: str | None = None, auto_approve: bool | None = None, package: bool = True):
    """One round of counterfactual retraining on every batch waiting in ``paths.incoming``; the run's
    state carries its ``RetrainResult``."""
    validation = validate_logs(params_file=params_file, return_state=True)
    if validation.is_failed():
        return Failed(message=f"validation rejected a batch; nothing downstream ran.\n{validation.message}")
    features = build_features_flow(params_file=params_file)
    training = train_reward_model_flow(params_file=params_file)
    decision = evaluate_and_gate(params_file=params_file, auto_approve=auto_approve)
    promoted = decision.promoted
    packaged = None
    if promoted and package:
        packaged = package_service.with_options(retries=1, retry_delay_seconds=5)(
            version=decision.version, params_file=params_file)
    create_markdown_artifact(
        key="retrain-summary",
        markdown=(
            "### Retrain\n\n| step | result |\n|---|---|\n"
            f"| validate | {validation.message or 'accepted'} |\n"
            f"| features | snapshot `{features.version}` ({features.candidates} candidate pairs) |\n"
            f"| train | model `{training.version}` |\n"
            f"| gate | {'promoted' if promoted else 'not promoted'}: {decision.summary} |\n"
            f"| package | {packaged.bento if packaged else 'skipped'} |\n"
        ),
        description="one retraining round",
    )
    return Completed(message=f"candidate {decision.version} {'promoted' if promoted else 'not promoted'}",
                     data=RetrainResult(decision, packaged))


@flow(name="ingest-served-logs")
def ingest_served_logs(params_file: str | None = None, now: str | None = None):
    """Join what the service logged with its feedback, then validate the new batch.

    ``now`` (ISO time, default the clock) decides whose attribution window has elapsed: a caller that
    knows every stream has been reported (the simulated listeners of the loop) may pass a later time.
    """
    joined = join_feedback_flow(params_file=params_file, now=now)
    if not joined.batch:
        return Completed(message="no served logs past their attribution window")
    return validate_logs(path=joined.batch, params_file=params_file, return_state=True)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="Run one retraining round now.")
    ap.add_argument("--params", default=None)
    ap.add_argument("--auto-approve", action="store_true", help="skip the human approval step")
    ap.add_argument("--no-package", action="store_true", help="stop after the gate (no Bento build)")
    args = ap.parse_args()
    state = retrain(params_file=args.params, auto_approve=True if args.auto_approve else None,
                    package=not args.no_package, return_state=True)
    print(state.message)
    raise SystemExit(0 if state.is_completed() else 1)
