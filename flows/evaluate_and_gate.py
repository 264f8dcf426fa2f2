"""Prefect flow ``evaluate-and-gate``: off-policy evaluation of a candidate bundle and the promotion gate.

Registers the bundle, evaluates it against production (or the logging policy when nothing is in
production) on the validated impression logs, applies the ``gate:`` rules, optionally waits for a
reviewer, stores the decision as the version's gate.json, and promotes on success.
"""

from __future__ import annotations

import glob
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from bartops.config import load_params
from bartops.gate import GateParams, decide, ece_from_metrics
from bartops.ope.pipeline import OPEConfig, estimate_table, evaluate_policies, logging_marginals
from bartops.ope.slate import logged_pages
from bartops.registry import Registry
from bartops.registry.store import _read_json


class ApprovalInput(RunInput):
    """The reviewer's answer; the defaults mean NOT approved (a resume with {} rejects)."""

    approved: bool = False
    reviewer: str = ""
    comment: str = ""


@task(cache_policy=None)
def register_candidate(registry_root: str, bundle_dir: str, version: str | None) -> str:
    reg = Registry(Path(registry_root))
    if version is not None and (reg.versions_dir / version).is_dir():
        return version
    return reg.register(Path(bundle_dir), version)


@task(cache_policy=None)
def load_logs(impressions_dir: str, max_rows: int | None) -> pd.DataFrame:
    files = sorted(glob.glob(str(Path(impressions_dir) / "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no validated impression batches (*.parquet) in {impressions_dir}")
    logs = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if max_rows is not None and len(logs) > max_rows:  # keep whole pages: cut at a request boundary
        keep = logs["request_id"].isin(logs["request_id"].drop_duplicates().iloc[: max(1, max_rows // 48)])
        logs = logs[keep].reset_index(drop=True)
    return logs


def _logging_policy(version: str, data_dir: Path, registry: Registry, pol: dict):
    """The policy that served the logs: the simulator's logging policy or a registered bundle."""
    from bartops.reward.policy import load_policy_bundle
    from bartops.sim.simulate import PopularityAffinityScorer
    from bartops.policy.page import PagePolicy

    if version == "logging-popularity":
        items = pd.read_parquet(data_dir / "items.parquet")
        history = pd.read_parquet(data_dir / "history.parquet")
        return PagePolicy(PopularityAffinityScorer(items, history), pol["shelves"], pol["cards"],
                          pol["epsilon_head"], pol["epsilon_fill"], version=version), None
    if (registry.versions_dir / version).is_dir():
        return load_policy_bundle(registry.path(version))
    raise ValueError(f"the logs were served by policy {version!r}, which is neither the simulator's logging "
                     "policy nor a registered version: its probabilities cannot be recomputed")


@task(cache_policy=None)
def evaluate(registry_root: str, version: str, logs: pd.DataFrame, data_dir: str, params: dict) -> dict:
    from bartops.features.assemble import assemble_rows
    from bartops.reward.policy import load_policy_bundle

    reg = Registry(Path(registry_root))
    cfg = OPEConfig.from_dict(params.get("ope"))
    gp = GateParams.from_dict(params.get("gate"))
    cfg = OPEConfig(**{**cfg.__dict__, "probability": gp.probability})
    pol = params["policy"]
    versions = logs["policy_version"].astype(str).unique().tolist()
    if len(versions) != 1:
        raise ValueError(f"the logs mix policies {versions}; evaluate on logs of one logging policy")
    candidate, features = load_policy_bundle(reg.path(version))
    lp = logged_pages(logs, features.explanations)
    cand_c = features.candidates_for(lp.contexts)
    logging, log_feats = _logging_policy(versions[0], Path(data_dir), reg, pol)
    log_c = (log_feats or features).candidates_for(lp.contexts)
    marg = None
    if cfg.probability == "marginal":
        marg, _ = logging_marginals(logging, lp, log_c, cfg)
    targets: dict[str, Any] = {"candidate": (candidate, cand_c)}
    production = reg.production()
    if production is None or production == versions[0]:
        targets["production"] = None  # the logging policy itself: on-policy value
    else:
        prod, prod_feats = load_policy_bundle(reg.path(production))
        targets["production"] = (prod, prod_feats.candidates_for(lp.contexts))
    kinds = features.explanations["kind"].astype(str).to_numpy()[lp.explanation]

    def featurize(ctx, cards, shelf, position):
        return assemble_rows(features, ctx, cards, shelf, position)

    result = evaluate_policies(lp, marg, targets, cfg, candidate.shelves, candidate.cards, featurize, kinds)
    return {"result": result, "production": production, "logging_version": versions[0], "cfg": cfg.__dict__,
            "n_pages": lp.n_pages, "n_rows": len(lp)}


def _markdown(version: str, decision: dict, table: list[dict]) -> str:
    lines = [f"# Gate decision for `{version}`: **{decision['decision'].upper()}**", "",
             "| policy | estimator | value | 95% CI | ESS | max weight | support |", "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['policy']} | {r['estimator']} | {r['value']:.4f} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] "
                     f"| {r['ess']:.0f} | {r['max_weight']:.1f} | {r['support']:.3f} |")
    lines += ["", "| rule | value | threshold | passed | detail |", "|---|---|---|---|---|"]
    for r in decision["rules"]:
        lines.append(f"| {r['rule']} | {r['value']} | {r['threshold']} | {'yes' if r['passed'] else 'NO'} | {r['detail']} |")
    return "\n".join(lines)


@flow(name="evaluate-and-gate")
def evaluate_and_gate(
    bundle_dir: str,
    params_path: str | None = None,
    version: str | None = None,
    registry_root: str | None = None,
    impressions_dir: str | None = None,
    data_dir: str | None = None,
    validation_passed: bool | None = None,
    max_rows: int | None = None,
) -> dict:
    """Evaluate the bundle, decide, store gate.json and promote if every rule (and a reviewer) agrees."""
    logger = get_run_logger()
    params = load_params(params_path)
    paths = params.get("paths", {})
    registry_root = registry_root or paths.get("registry", "registry")
    impressions_dir = impressions_dir or paths.get("impressions", "data/impressions")
    data_dir = data_dir or paths.get("data", "data")
    gp = GateParams.from_dict(params.get("gate"))
    version = register_candidate(registry_root, bundle_dir, version)
    logs = load_logs(impressions_dir, max_rows)
    # batches in the impressions folder were accepted by validation (rejected ones are quarantined)
    if validation_passed is None:
        validation_passed = len(logs) > 0
    ev = evaluate(registry_root, version, logs, data_dir, params)
    result = ev["result"]
    reg = Registry(Path(registry_root))
    metrics = _read_json(reg.path(version) / "metrics.json") if (reg.path(version) / "metrics.json").exists() else None
    diff = result["differences"]["production"][gp.estimator]
    per_kind = {k: {"candidate": v["candidate"], "production": v["production"]} for k, v in result["per_kind"].items()}
    decision = decide(gp, validation_passed, diff.to_dict(), result["estimates"]["candidate"][gp.estimator].ess,
                      ece_from_metrics(metrics), per_kind)
    lineage = _read_json(reg.path(version) / "lineage.json") if (reg.path(version) / "lineage.json").exists() else {}
    table = estimate_table(result)
    decision.update({
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "production": ev["production"] or f"logging policy ({ev['logging_version']})",
        "logs": {"rows": ev["n_rows"], "pages": ev["n_pages"], "dir": str(impressions_dir),
                 "policy_version": ev["logging_version"]},
        "ope": {"config": ev["cfg"], "table": table, "diagnostics": result["diagnostics"],
                "per_kind": result["per_kind"]},
        "data_version": lineage.get("data_version"), "code_version": lineage.get("code_version"),
    })
    if decision["decision"] == "promote" and gp.human_approval:
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(
                    description=_markdown(version, decision, table), approved=False),
                timeout=int(gp.approval_timeout_s))
            decision["approval"] = {"approved": bool(answer.approved), "reviewer": answer.reviewer,
                                    "comment": answer.comment}
        except Exception as exc:  # prefect raises on timeout
            decision["approval"] = {"approved": False, "reviewer": "", "comment": f"no answer: {type(exc).__name__}"}
        if not decision["approval"]["approved"]:
            decision["decision"] = "reject"
            decision["failed"].append("approval")
    reg.record_decision(version, decision)
    create_markdown_artifact(key="gate-decision", markdown=_markdown(version, decision, table),
                             description=f"evaluate-and-gate: {version}")
    if decision["decision"] == "promote":
        reg.promote(version, reason="gate passed: " + ", ".join(r["rule"] for r in decision["rules"]))
    logger.info("gate decision for %s: %s (failed: %s)", version, decision["decision"], decision["failed"])
    return {"version": version, "decision": decision["decision"], "failed": decision["failed"],
            "production": reg.production()}


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(evaluate_and_gate(bundle_dir=sys.argv[1] if len(sys.argv) > 1 else "build/bundle"))
