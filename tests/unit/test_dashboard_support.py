"""Helpers for the dashboard tests (no tests here): a real policy bundle and gate decisions.

The bundle is built by the real code path (features → small weighted XGBoost → write_policy_bundle);
the gate decisions are ``bartops.gate.GateDecision``s built with the gate's own types and rules.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.gate import Approval, GateDecision, decide
from bartops.config import GateParams, OPEConfig, Params, PolicyParams
from bartops.gate.decision import DIFFERENCE, EvaluatedLogs, OPEEvidence, PolicyWeights, WeightHistogram
from bartops.gate.evaluate import interval_scope
from bartops.ope.estimators import Estimate
from bartops.ope.pipeline import EstimateRow, LoggingSummary

POLICY = PolicyParams(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
TRAIN_PARAMS = Params.from_mapping({"seed": 3, "features": {"embedding_dim": 8, "clusters": 8},
                                   "reward": {"num_boost_round": 20, "baselines": []}})


def make_bundle(data_dir: Path, impressions: pd.DataFrame, out: Path, version: str = "v-test") -> Path:
    """A real policy bundle in ``out/bundle`` from the small simulated data."""
    from bartops.features.store import build_features, save_features
    from bartops.reward.model import save_model
    from bartops.reward.policy import write_policy_bundle
    from bartops.reward.train import train_reward_models

    features = build_features(data_dir, TRAIN_PARAMS)
    save_features(features, out / "features")
    result = train_reward_models(features, impressions, TRAIN_PARAMS)
    save_model(result.model, out / "model")
    bundle = write_policy_bundle(out / "model", out / "features", POLICY, out / "bundle", version)
    # calibration bins as the reward metrics carry them (equal-frequency bins on validation rows)
    metrics = json.loads((bundle / "metrics.json").read_text())
    metrics.setdefault("validation", {}).setdefault("calibration", calibration_bins(
        np.random.default_rng(0).uniform(0, 0.3, 2000)))
    (bundle / "metrics.json").write_text(json.dumps(metrics))
    return bundle


def shared_bundle(tmp_path_factory, data_dir: Path, impressions: pd.DataFrame) -> Path:
    """One bundle per test session (built on first use under the session's base temp dir)."""
    out = tmp_path_factory.getbasetemp() / "dashboard-bundle"
    if not (out / "bundle" / "policy.json").exists():
        make_bundle(data_dir, impressions, out, "v-src")
    return out / "bundle"


def calibration_bins(p: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-frequency bins of predictions p with outcomes drawn as Bernoulli(p) (well calibrated)."""
    rng = np.random.default_rng(1)
    y = rng.random(len(p)) < p
    order = np.argsort(p)
    return [{"predicted": float(p[b].mean()), "observed": float(y[b].mean()), "count": int(len(b))}
            for b in np.array_split(order, bins)]


def difference(value: float, half: float) -> Estimate:
    """A paired difference candidate − production as the OPE engine returns it."""
    return Estimate("dr", value, value - half, value + half, half / 1.96, 0.95, 30000, 625, 5000.0, 12.0, 0.97, 0.99,
                    1000, 0)


def gate_decision(status: str, flow_run_id: str | None = None, lift: float = 0.05) -> GateDecision:
    """A gate decision built by the gate's own types and rules: OPE rows per estimator (DR's paired
    difference ``lift`` ± 0.01), the rules' verdict, a weights histogram and a validation report.
    ``status`` is the review state: promoted / rejected (decided), awaiting_approval (paused run)."""
    rows = []
    for name, cand, prod, half in (("ips", 1.30, 1.25, 0.04), ("snips", 1.31, 1.25, 0.03), ("dr", 1.25 + lift, 1.25, 0.02)):
        rows += [EstimateRow("candidate", name, cand, cand - half, cand + half, half / 1.96, 5000.0, 12.0, 0.97),
                 EstimateRow("production", name, prod, prod - half, prod + half, half / 1.96, 30000.0, 1.0, 1.0),
                 EstimateRow(DIFFERENCE, name, round(cand - prod, 5), round(cand - prod - half / 2, 5),
                             round(cand - prod + half / 2, 5), half / 3.92, 5000.0, 12.0, 0.97)]
    edges = [x / 4 for x in range(-8, 5)]
    counts = [float(int(1000 * math.exp(-((e + 0.125) ** 2)))) for e in edges[:-1]]
    weights = PolicyWeights("v-test", 5000.0, 12.0, 29000, 0.97, 0.001, 48.0, 0.0, 1.0, 4,
                            WeightHistogram(edges, counts, True, 1000))
    params = GateParams(margin=0.01, min_ess=1000, max_ece=0.02)
    verdict = decide(params, True, difference(lift, 0.01), 5000.0, 0.004, {}, 0.97)
    logs = EvaluatedLogs(30000, 625, "logging-popularity", None, "2026-11-01T00:00:00+00:00", "2026-11-08T00:00:00+00:00")
    decision = GateDecision(
        decision=verdict.decision, summary=f"{verdict.decision}: dr candidate − production {lift:+.3f}",
        rules=verdict.rules, failed=verdict.failed, params=params, estimator="dr",
        production="logging policy (logging-popularity)", evaluated_at="2026-11-08T01:00:00+00:00", logs=logs,
        interval_scope=interval_scope(625, logs.first_page_view, logs.last_page_view),
        ope=OPEEvidence(OPEConfig(), rows, {"candidate": weights}, LoggingSummary([[1.0, 0.8]], 1.0, 0.01), {}, {}),
        validation=[{"batch": "sim-seed3.parquet", "passed": True, "decision": "accepted", "rows": 30000,
                     "pages": 625, "counts": {"expectations": 2, "failed": 0, "rows": 30000, "pages": 625},
                     "expectations": [
                         {"suite": "impressions", "check": "propensity_range", "expectation":
                          "expect_column_values_to_be_between", "level": "row", "success": True,
                          "column": "propensity", "element_count": 30000, "unexpected_count": 0},
                         {"suite": "impressions", "check": "unique_ids", "expectation":
                          "expect_column_values_to_be_unique", "level": "row", "success": True,
                          "column": "impression_id", "element_count": 30000, "unexpected_count": 0}]}],
        data_version="d-1", code_version="c-1")
    if status == "awaiting_approval":
        return decision.awaiting(flow_run_id or "9f1c6a2e-0000-4000-8000-00000000000f")
    return decision.approved_by(Approval(status == "promoted", "ana", "test"))


def loop_records(mismatch_round: int | None = 4) -> list:
    """A realistic six-round loop file's records: the live policy climbs from 72 % to 90 % of an oracle of
    ~7.6 streams per page view (logging policy ~5.5); round 0 serves no traffic; ``mismatch_round`` loses
    64 cards in validation."""
    from bartops.loop.record import RoundRecord

    nan = math.nan
    oracle = [7.61, 7.58, 7.63, 7.60, 7.57, 7.62]
    logging = [5.52, 5.49, 5.55, 5.50, 5.47, 5.53]
    share = [0.720, 0.722, 0.801, 0.848, 0.852, 0.900]
    live = ["v1", "v1", "v2", "v3", "v3", "v5"]
    cand = ["", "v2", "v3", "v4", "v5", "v6"]
    decision = ["", "promote", "promote", "reject", "promote", "reject"]
    dr = [nan, 0.58, 0.36, -0.02, 0.31, 0.05]
    true_lift = [nan, 0.61, 0.35, -0.04, 0.37, 0.02]
    out = []
    for r in range(6):
        tv = share[r] * oracle[r]
        pv = 0 if r == 0 else 2000
        cards = pv * 48
        online = nan if r == 0 else tv + (-0.06, 0.09, -0.03, 0.05, -0.08, 0.04)[r]
        half = nan if r == 0 else 0.13
        out.append(RoundRecord(
            round=r, live_version=live[r], page_views=pv, true_value=tv, true_value_se=0.012,
            logging_value=logging[r], oracle_value=oracle[r], oracle_share=share[r], online_rate=online,
            online_rate_lo=online - half, online_rate_hi=online + half, candidate_version=cand[r],
            decision=decision[r], dr_lift=dr[r], dr_lift_lo=dr[r] - 0.12, dr_lift_hi=dr[r] + 0.12,
            true_lift=true_lift[r], served=cards, logged=cards, joined=cards,
            accepted=cards - 64 if r == mismatch_round else cards, failed_requests=0, page_p50_ms=7.5,
            page_p99_ms=21.0, swap_seconds=1.2, traffic_seconds=95.0, truth_seconds=12.0, ingest_seconds=30.0,
            retrain_seconds=240.0, seconds=0.4 if r == 0 else 41.0 + 3 * r))
    return out
