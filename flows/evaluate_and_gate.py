"""Prefect flow ``evaluate-and-gate``: off-policy evaluation of a candidate bundle and the promotion gate.

Registers the bundle, evaluates it against production (or the logging policy when nothing is in
production) on the validated impression logs (``bartops.gate.evaluate``), applies the ``gate:``
rules, optionally waits for a reviewer (status ``awaiting_approval`` in gate.json, with the flow run
id the dashboard resumes), stores the final decision as the version's gate.json, and promotes on
success.  ``bartops evaluate`` runs the same evaluation without Prefect and without the registry.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from bartops.config import Params, load_params
from bartops.gate import Approval, GateDecision, GateOutcome
from bartops.gate.evaluate import make_decision, markdown, validation_reports, with_batches
from bartops.scale.pipeline import run_evaluation
from bartops.registry import Registry


class ApprovalInput(RunInput):
    """The reviewer's answer; the defaults mean NOT approved (a resume with {} rejects)."""

    approved: bool = False
    reviewer: str = ""
    comment: str = ""


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@task(cache_policy=None)
def register_candidate(registry_root: str, bundle_dir: str, version: str | None) -> str:
    """Register the bundle (idempotent: a version already registered is reused)."""
    reg = Registry(Path(registry_root))
    name = version or (_json(Path(bundle_dir) / "policy.json") or {}).get("version")
    if name and (reg.versions_dir / str(name)).is_dir():
        return str(name)
    return reg.register(Path(bundle_dir), name)


@task(cache_policy=None)
def evaluate_candidate(registry_root: str, version: str, impressions_dir: str, data_dir: str, build_dir: str,
                       params: Params) -> GateDecision:
    """OPE of the registered candidate against production, and the rule-based decision."""
    reg = Registry(Path(registry_root))
    ev, files = run_evaluation(reg.path(version), params, reg, Path(impressions_dir), Path(data_dir))
    d = reg.path(version)
    decision = make_decision(ev, params, _json(d / "metrics.json"), validation_reports(files, Path(build_dir)),
                             _json(d / "lineage.json"), version)
    return with_batches(decision, Path(impressions_dir), files)


def _wait_for_reviewer(reg: Registry, version: str, decision: GateDecision, timeout_s: int) -> Approval:
    """Record ``awaiting_approval`` with this run's id, pause, and return the reviewer's answer."""
    from prefect import runtime

    reg.record_decision(version, decision.awaiting(str(runtime.flow_run.get_id())).to_dict())
    try:
        answer = pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(description=markdown(decision), approved=False),
            timeout=timeout_s, poll_interval=2)
        return Approval(bool(answer.approved), answer.reviewer, answer.comment)
    except Exception as exc:  # noqa: BLE001 - Prefect raises on timeout: no answer means rejected
        return Approval(False, "", f"no answer within {timeout_s} s ({type(exc).__name__})")


@flow(name="evaluate-and-gate")
def evaluate_and_gate(
    bundle_dir: str | None = None,
    params_path: str = "params.yaml",
    auto_approve: bool | None = None,
    version: str | None = None,
    registry_root: str | None = None,
    impressions_dir: str | None = None,
    data_dir: str | None = None,
    params_file: str | None = None,
) -> GateOutcome:
    """Evaluate the bundle (default ``<paths.build>/bundle``), decide, store gate.json, promote on success.

    ``auto_approve``: None follows ``gate.human_approval``; True skips the reviewer; False always asks.
    ``params_file`` is an alias of ``params_path`` (the other flows' name).  Returns the ``GateOutcome``.
    A candidate that is already the production version is not evaluated again (decision
    ``already-production``; its gate.json is left as it was).
    """
    logger = get_run_logger()
    params = load_params(params_file or params_path)
    paths = params.paths
    build_dir = str(paths.build)
    bundle_dir = bundle_dir or str(paths.build / "bundle")
    registry_root = registry_root or str(paths.registry)
    gp = params.gate
    version = register_candidate(registry_root, bundle_dir, version)
    if Registry(Path(registry_root)).production() == version:
        # the same data and features trained the same candidate again (e.g. a second `make demo`):
        # comparing production with itself decides nothing and would overwrite its recorded evidence
        summary = f"candidate {version} is already production: not evaluated again"
        logger.info("gate: %s", summary)
        return GateOutcome(version, "already-production", False, summary, [], version)
    decision = evaluate_candidate(registry_root, version, impressions_dir or str(paths.impressions),
                                  data_dir or str(paths.data), build_dir, params)
    reg = Registry(Path(registry_root))
    ask = gp.human_approval if auto_approve is None else not auto_approve
    if decision.decision == "promote" and ask:
        approval = _wait_for_reviewer(reg, version, decision, int(gp.approval_timeout_s))
    elif decision.decision == "promote":
        approval = Approval(True, "auto", "no human approval required")
    else:
        approval = Approval(False, "", "rejected by the rules (not sent for review)")
    decision = decision.approved_by(approval)
    reg.record_decision(version, decision.to_dict())
    create_markdown_artifact(key="gate-decision", markdown=markdown(decision),
                             description=f"evaluate-and-gate: {version}")
    create_table_artifact(key="ope-table", table=[asdict(r) for r in decision.ope.table],
                          description=f"OPE of {version}")
    promoted = decision.decision == "promote"
    if promoted:
        reg.promote(version, reason="gate passed: " + decision.summary)
    logger.info("gate decision for %s: %s", version, decision.summary)
    return GateOutcome(version, decision.decision, promoted, decision.summary, list(decision.failed), reg.production())


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(evaluate_and_gate(bundle_dir=sys.argv[1] if len(sys.argv) > 1 else None, auto_approve=True))
