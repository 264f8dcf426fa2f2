"""Evaluate a candidate bundle on the validated impression logs and decide: shared by the
``evaluate-and-gate`` flow and ``bartops evaluate`` (no registry side effects here).

Production is the registry's production version, or — when nothing is in production, or the logs
were served by production itself — the logging policy recorded in the logs (on-policy value).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bartops.config import OPEConfig, Params, PolicyParams
from bartops.features.candidates import candidates_for_requests
from bartops.features.partitions import IN_PROCESS, Executor, page_partitions
from bartops.gate.decision import EvaluatedLogs, GateDecision, OPEEvidence, PolicyWeights
from bartops.gate.evaluation import (EvaluationSetup, FitFolds, evaluate_partitions, local_fold_models,
                                     scan_partition)
from bartops.gate.rules import decide, ece_from_metrics
from bartops.leftovers import recover_leftovers, write_text_atomic
from bartops.ope.pipeline import PolicyEvaluation
from bartops.policy.page import CandidateSet, PagePolicy
from bartops.registry import Registry
from bartops.reward.policy import load_policy_bundle
from bartops.sim.simulate import PopularityAffinityScorer
from bartops.sim.store import LOGGING_CANDIDATES

log = logging.getLogger(__name__)

SIM_LOGGING_VERSION = "logging-popularity"
CHECKED_SHARE = 0.95  # below this support share the decision says its intervals leave out the model's error


def validation_reports(files: list[Path], build_dir: Path | None = None) -> list[dict]:
    """Stored validation reports of the batches (``<batch>.report.json`` beside it or under
    ``<build>/reports/validation/``); batches without one are listed as accepted (they are in the
    validated folder only because validation passed)."""
    out = []
    for f in files:
        cands = [f.with_suffix(".report.json"), f.parent / f"{f.stem}.json"]
        if build_dir is not None:
            cands.append(Path(build_dir) / "reports" / "validation" / f"{f.stem}.json")
        rep = next((json.loads(c.read_text()) for c in cands if c.is_file()), None)
        out.append(rep if isinstance(rep, dict) else
                   {"batch": f.name, "passed": True, "decision": "accepted",
                    "detail": "accepted into the validated impressions folder (no stored report)"})
    return out


@dataclass(frozen=True)
class LoggedCandidates:
    """The candidate sets a logging policy had when it logged (a table of user_id, explanation, item_id)."""

    table: pd.DataFrame

    def candidates_for(self, contexts: pd.DataFrame) -> CandidateSet:
        """One page of the logged-time candidates per context row."""
        return candidates_for_requests(self.table, contexts["user_id"].to_numpy())


def logging_policy_for(version: str, data_dir: Path, registry: Registry | None, policy_params: PolicyParams
                       ) -> tuple[PagePolicy, Any]:
    """The policy that served the logs and what gives its log-time candidate sets (``.candidates_for``):
    a registered bundle's own feature snapshot, or the simulator's recorded candidate table.  None
    (an old simulation without the table) means the current snapshot's sets stand in, with a warning."""
    if version == SIM_LOGGING_VERSION:

        items = pd.read_parquet(Path(data_dir) / "items.parquet")
        history = pd.read_parquet(Path(data_dir) / "history.parquet")
        p = policy_params
        policy = PagePolicy(PopularityAffinityScorer(items, history), p.shelves, p.cards, p.epsilon_head,
                            p.epsilon_fill, version=version)
        table = Path(data_dir) / LOGGING_CANDIDATES
        if not table.is_file():
            log.warning("%s is missing: the logging policy's support is computed on the current snapshot's "
                        "candidate sets (re-run `bartops simulate` to record the log-time sets)", table)
            return policy, None
        return policy, LoggedCandidates(pd.read_parquet(table))
    if registry is not None and (registry.versions_dir / version).is_dir():
        return load_policy_bundle(registry.path(version))
    raise ValueError(f"the logs were served by policy {version!r}, which is neither the simulator's logging "
                     "policy nor a registered version: its probabilities cannot be recomputed")


def evaluated_policy(versions: list[str], production: str | None) -> str:
    """The policy whose logs the gate evaluates on: production when it served any of them (its own
    exploration logs), else the one policy that served them all."""
    if production is not None and production in versions:
        return production
    if len(set(versions)) != 1:
        raise ValueError(f"the logs mix policies {sorted(set(versions))} and none is production ({production}); "
                         "evaluate on logs of one logging policy")
    return versions[0]


@dataclass(frozen=True)
class Evaluation:
    """A candidate's off-policy evaluation against production, from either executor."""

    result: PolicyEvaluation
    production: str | None  # the registry's production version (None: nothing in production)
    logging_version: str  # the policy that served the evaluated logs
    config: OPEConfig
    n_pages: int
    n_rows: int
    holdout_from: str | None  # the candidate's training cut: only later page views were evaluated
    first_page_view: str
    last_page_view: str
    backend: str = "local"
    partitions: int = 1

    def logs(self) -> EvaluatedLogs:
        return EvaluatedLogs(self.n_rows, self.n_pages, self.logging_version, self.holdout_from,
                             self.first_page_view, self.last_page_view)


def evaluation_setup(bundle_dir: Path, params: Params, registry, data_dir: Path, logging_version: str) -> EvaluationSetup:
    """The candidate bundle, the logging policy and production (a target unless it logged the logs)."""
    cfg = params.ope
    holdout_from = training_cut(Path(bundle_dir)) if cfg.holdout_only else None
    candidate, features = load_policy_bundle(Path(bundle_dir))
    logging, log_feats = logging_policy_for(logging_version, Path(data_dir), registry, params.policy)
    targets: dict[str, Any] = {"candidate": (candidate, features)}
    production = registry.production() if registry is not None else None
    targets["production"] = (None if production is None or production == logging_version
                             else load_policy_bundle(registry.path(production)))
    return EvaluationSetup(cfg, holdout_from, features, logging, log_feats or features, targets,
                           features.explanations["kind"].astype(str).to_numpy())


def evaluate_bundle(bundle_dir: Path, params: Params, registry: Registry | None, impressions: Path | Sequence[Path],
                    data_dir: Path, executor: Executor = IN_PROCESS, partition_rows: int | None = None,
                    fit_folds: FitFolds = local_fold_models) -> Evaluation:
    """OPE of the bundle (and production) on the validated batches ``impressions`` (a folder or files):
    ``evaluate_partitions`` on their page-aligned partitions (each file whole when ``partition_rows`` is
    None), the passes on ``executor``, DR's fold models by ``fit_folds``."""
    parts = page_partitions(impressions, partition_rows)
    cfg = params.ope
    holdout_from = training_cut(Path(bundle_dir)) if cfg.holdout_only else None
    scans = executor.map(scan_partition, parts, holdout_from=holdout_from)
    if holdout_from is not None and sum(len(s["page"]) for s in scans) == 0:
        raise ValueError(f"no logged impressions after the candidate's training cut {holdout_from}: "
                         "nothing it has not been trained on to evaluate it with")
    versions = sorted(set().union(*[s["versions"] for s in scans]))
    production = registry.production() if registry is not None else None
    version = evaluated_policy(versions, production)
    if len(versions) > 1:  # production's own logs among others': scan again for its pages alone
        scans = executor.map(scan_partition, parts, holdout_from=holdout_from, version=version)
    setup = evaluation_setup(Path(bundle_dir), params, registry, Path(data_dir), version)
    ev = evaluate_partitions(executor, parts, setup, scans, fit_folds)
    return Evaluation(ev.result, production, version, cfg, ev.n_pages, ev.n_rows,
                      None if holdout_from is None else holdout_from.isoformat(),
                      _iso(ev.first_page_view), _iso(ev.last_page_view), backend=executor.name,
                      partitions=len(parts))


def _iso(timestamp) -> str:
    return pd.Timestamp(timestamp).isoformat()


def interval_scope(n_pages: int, first: str | None, last: str | None, support: float | None = None,
                   joined: bool = False) -> str:
    """What the decision's intervals are for, in a sentence or two (gate.json, artifact, dashboard).

    ``support``: the share of the candidate's examination the logs check (the support rule's figure);
    below ``CHECKED_SHARE`` the rest is the reward model's prediction, which the capped interval takes
    as exact (``joined``, ``ope.dr_interval``: the interval also holds the uncapped DR's).
    """
    span = f" logged from {first} to {last}" if first and last else ""
    text = (f"The intervals are for the value per page view over page views like the {n_pages:,} evaluated "
            f"ones{span} (the page bootstrap resamples them): the contexts of that window, not a forecast of "
            "future traffic, which may differ if users, catalog or season drift.")
    if support is not None and support < CHECKED_SHARE and joined:
        text += (f" The logs check {support:.0%} of the candidate's examination under the weight cap; the interval "
                 "also holds the uncapped DR's, which checks the rest with large weights (wide, and not for cards "
                 "the logging policy could not show) (docs/robustness.md).")
    elif support is not None and support < CHECKED_SHARE:
        text += (f" The logs check {support:.0%} of the candidate's examination; the rest (capped weights, or "
                 "cards the logging policy could not show) is the reward model's prediction, whose error the "
                 "interval leaves out, so the interval is narrower than the candidate's true uncertainty "
                 "(docs/robustness.md).")
    return text


def training_cut(bundle_dir: Path) -> pd.Timestamp | None:
    """The first timestamp the bundle's model was NOT trained on (metrics.json split.validation_from)."""
    path = Path(bundle_dir) / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    cut = (m.get("split") or {}).get("validation_from") or ((m.get("validation") or {}).get("split") or {}).get(
        "validation_from")
    return None if cut is None else pd.Timestamp(cut).tz_convert("UTC") if pd.Timestamp(cut).tzinfo else \
        pd.Timestamp(cut, tz="UTC")


def make_decision(ev: Evaluation, params: Params, metrics: dict | None, validation: list[dict] | None,
                  lineage: dict | None = None, version: str | None = None) -> GateDecision:
    """The gate decision with its evidence (the content of gate.json)."""
    gp = params.gate
    result = ev.result
    validation_passed = None if validation is None else all(bool(r.get("passed")) for r in validation)
    diff = result.differences["production"][gp.estimator]
    cand = result.estimates["candidate"][gp.estimator]
    kind_lifts = result.kind_lifts["production"]
    cand_diag = result.diagnostics["candidate"]  # support: what the logs check, within what the logger could show
    support = min(cand_diag.support_share, cand_diag.log_time_support)
    verdict = decide(gp, validation_passed, diff, cand.ess, ece_from_metrics(metrics), kind_lifts, support)
    lin = lineage or {}
    summary = (f"{verdict.decision}: {gp.estimator} candidate − production {diff.value:+.3f} "
               f"[{diff.ci_low:+.3f}, {diff.ci_high:+.3f}] streams/page"
               + (f"; failed {', '.join(verdict.failed)}" if verdict.failed else ""))
    ope = OPEEvidence(ev.config, result.table(),
                      {name: PolicyWeights.of(d, histogram=name == "candidate") for name, d in result.diagnostics.items()},
                      result.logging, result.per_kind, kind_lifts)
    return GateDecision(
        decision=verdict.decision, version=version, summary=summary, rules=verdict.rules, failed=verdict.failed,
        params=gp, estimator=gp.estimator, production=ev.production or f"logging policy ({ev.logging_version})",
        evaluated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), logs=ev.logs(),
        interval_scope=interval_scope(ev.n_pages, ev.first_page_view, ev.last_page_view, support,
                                      gp.estimator == "dr" and ev.config.dr_interval == "joined"), ope=ope,
        validation=validation, data_version=lin.get("data_version"), code_version=lin.get("code_version"))


def with_batches(decision: GateDecision, impressions_dir: Path, files: list[Path]) -> GateDecision:
    """The decision with the folder and the batch files its logs came from."""
    if decision.logs is None:
        raise ValueError(f"gate decision for {decision.version!r} names no evaluated logs to add the batches to")
    return replace(decision, logs=replace(decision.logs, dir=str(impressions_dir), batches=[f.name for f in files]))


def markdown(decision: GateDecision) -> str:
    """The OPE table and rule results as Markdown (Prefect artifact, approval description)."""
    lines = [f"# Gate decision for `{decision.version}`: **{decision.decision.upper()}**", "", decision.summary,
             "", decision.interval_scope, "", "| policy | estimator | value | 95% CI | ESS | max weight | support |",
             "|---|---|---|---|---|---|---|"]
    for r in decision.ope.table if decision.ope else []:
        lines.append(f"| {r.policy} | {r.estimator} | {r.value:.4f} | [{r.ci_low:.4f}, {r.ci_high:.4f}] "
                     f"| {r.ess:.0f} | {r.max_weight:.1f} | {r.support:.3f} |")
    lines += ["", "| rule | value | threshold | passed | detail |", "|---|---|---|---|---|"]
    for r in decision.rules:
        lines.append(f"| {r.rule} | {r.value} | {r.threshold} | {'yes' if r.passed else 'NO'} | {r.detail} |")
    return "\n".join(lines)


def write_reports(decision: GateDecision, out_dir: Path) -> tuple[Path, Path]:
    """``ope.json`` (DVC metrics: the OPE table and the decision) and ``policy_value.csv`` (DVC plot
    data: estimator, policy, value, lower, upper), each written atomically."""
    out_dir = Path(out_dir)
    recover_leftovers(out_dir)  # what a killed earlier run left
    full = decision.to_dict()
    metrics = {k: full[k] for k in ("decision", "summary", "failed", "rules", "estimator", "production", "logs")}
    metrics.update({k: full["ope"][k] for k in ("table", "diagnostics", "logging")})
    ope_json = out_dir / "ope.json"
    write_text_atomic(ope_json, json.dumps(metrics, indent=2))
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["estimator", "policy", "value", "lower", "upper"])
    for r in decision.ope.table if decision.ope else []:
        wr.writerow([r.estimator, r.policy, r.value, r.ci_low, r.ci_high])
    csv_path = out_dir / "policy_value.csv"
    write_text_atomic(csv_path, buf.getvalue())
    return ope_json, csv_path
