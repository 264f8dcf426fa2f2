"""Gate rules and decisions on simulator evidence (PagePolicy candidates with known truth)."""

from __future__ import annotations

import numpy as np
import pytest

from bartops.gate import GateParams, decide, ece_from_metrics
from bartops.ope.pipeline import OPEConfig
from bartops.sim.simulate import logging_policy, simulate_impressions


def test_params_validation():
    with pytest.raises(ValueError, match="unknown gate parameter"):
        GateParams.from_dict({"estimatr": "dr"})
    with pytest.raises(ValueError, match="gate.estimator"):
        GateParams.from_dict({"estimator": "magic"})
    assert ece_from_metrics({"validation": {"ece": 0.02}}) == 0.02
    assert ece_from_metrics({}) is None


def test_each_rule_can_fail():
    gp = GateParams(estimator="ips", min_ess=10, max_ece=0.05, explanation_tolerance=0.1)
    good = dict(validation_passed=True, difference={"ci_low": 0.1, "value": 0.2, "level": 0.95}, ess=50,
                ece=0.01, per_kind={"artist": {"candidate": 1.0, "production": 1.0}}, support_share=0.6)
    assert decide(gp, **good)["decision"] == "promote"
    for change, rule in [({"validation_passed": False}, "validation"), ({"ess": 5}, "ess"),
                         ({"difference": {"ci_low": -0.01, "value": 0.2, "level": 0.95}}, "lift"),
                         ({"ece": None}, "calibration"), ({"ece": 0.2}, "calibration"),
                         ({"per_kind": {"artist": {"candidate": 0.8, "production": 1.0}}}, "explanations"),
                         ({"support_share": 0.2}, "support"), ({"support_share": None}, "support")]:
        d = decide(gp, **{**good, **change})
        assert d["decision"] == "reject" and d["failed"] == [rule]


def test_worse_rejected_and_clearly_better_promoted(small_sim):
    """On a small simulated world with known truth: logs of an ε = 0.5 logging policy (exploration
    gives the logs something to check a candidate with), a candidate that re-scores the logging
    policy with −1 × true relevance (truly worse) and one with +3 × true relevance (truly better by
    about a quarter).  DR's paired lower bound decides; the support threshold is lowered to what
    such logs offer (measured support shares 0.09–0.16)."""
    from bartops.ope.simulated import blended, evaluate_simulated

    w = small_sim.world
    log = logging_policy(w, small_sim.history, 6, 8, 0.5, 0.5)
    logs = simulate_impressions(w, small_sim.history, small_sim.candidates, log, 30000, np.random.default_rng(1))
    cfg = OPEConfig(n_boot=300, marginal_samples=30, seed=0)
    gp = GateParams(estimator="dr", min_ess=100, min_support_share=0.05, explanation_tolerance=1.0)
    out = {}
    for name, weight in (("worse", -1.0), ("better", 3.0)):
        res = evaluate_simulated(w, small_sim.history, small_sim.candidates, log, logs,
                                 {"candidate": blended(log, w, weight, name), "production": None}, cfg)
        truth = res["truth"]["candidate"] - res["truth"]["production"]
        diff = res["differences"]["production"]["dr"]
        out[name] = (truth, decide(gp, True, diff.to_dict(), res["estimates"]["candidate"]["dr"].ess, 0.01,
                                   {k: {"candidate": v["candidate"], "production": v["production"]}
                                    for k, v in res["per_kind"].items()},
                                   res["diagnostics"]["candidate"]["support_share"]))
    assert out["worse"][0] < 0 < out["better"][0]
    assert out["worse"][1]["decision"] == "reject" and "lift" in out["worse"][1]["failed"]
    assert out["better"][1]["decision"] == "promote", out["better"][1]["rules"]


def test_the_gate_evaluates_on_productions_own_logs_among_others():
    from bartops.gate.evaluate import evaluated_policy

    assert evaluated_policy(["logging-popularity", "v1", "v2"], "v2") == "v2"
    assert evaluated_policy(["logging-popularity"], None) == "logging-popularity"
    assert evaluated_policy(["v1"], "v2") == "v1", "logs of one earlier policy are still evaluable"
    with pytest.raises(ValueError, match=r"mix policies \['v1', 'v3'\] and none is production \(v2\)"):
        evaluated_policy(["v3", "v1"], "v2")
