"""View-model functions and SVG plots of the review dashboard (pure; no web layer)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bartops.dashboard import svg
from bartops.dashboard.views import (
    AWAITING,
    PENDING,
    PROMOTED,
    REJECTED,
    ReviewError,
    calibration_points,
    candidate_detail,
    candidate_rows,
    decision_status,
    estimate,
    flow_run_id,
    gate_rules,
    headline,
    histogram_of,
    home_preview,
    lineage_view,
    ope_rows,
    production_view,
    sample_contexts,
    submit_review,
    validation_summary,
    weight_histogram,
)
from bartops.registry import Registry
from test_dashboard_support import gate_decision, shared_bundle


# ---------------------------------------------------------------------- statuses
@pytest.mark.parametrize("gate, expected", [
    (None, PENDING),
    ({"decision": "pending", "evidence": None}, PENDING),  # what write_policy_bundle starts with
    ({"decision": "promote"}, PROMOTED),
    ({"decision": "reject"}, REJECTED),
    ({"decision": "promote", "status": "awaiting_approval", "flow_run_id": "x"}, AWAITING),
    ({"decision": "promote", "approval": {"status": "waiting", "flow_run_id": "x"}}, AWAITING),
    ({"decision": "promote", "approval": {"status": "awaiting_approval"}}, AWAITING),
    ({"decision": "promote", "approval": {"approved": False, "comment": "no"}}, REJECTED),
    ({"decision": "promote", "approval": {"approved": True}}, PROMOTED),
    ({"decision": "promote", "status": "rejected", "approval": {"approved": False}}, REJECTED),
    ({"error": "unreadable JSON"}, PENDING),
])
def test_decision_status(gate, expected):
    assert decision_status(gate) == expected


def test_flow_run_id_top_level_or_under_approval():
    assert flow_run_id({"flow_run_id": "a"}) == "a"
    assert flow_run_id({"approval": {"flow_run_id": "b"}}) == "b"
    assert flow_run_id({"decision": "promote"}) is None
    assert flow_run_id(None) is None


# ---------------------------------------------------------------------- OPE table
def test_estimate_accepts_interval_variants():
    assert estimate({"value": 1.0, "ci": [0.5, 1.5]}).ci_low == 0.5
    e = estimate({"estimate": 2.0, "lower": 1.0, "upper": 3.0, "ess": 10, "support": 0.9})
    assert (e.value, e.ci_low, e.ci_high, e.ess, e.coverage) == (2.0, 1.0, 3.0, 10.0, 0.9)
    assert estimate(0.25).value == 0.25
    assert estimate({"value": float("nan")}) is None
    assert estimate("text") is None


def test_ope_rows_by_estimator_shape():
    gate = gate_decision("promoted")
    rows = {r["estimator"]: r for r in ope_rows(gate)}
    assert set(rows) == {"ips", "snips", "dr"}
    d = gate["ope"]["dr"]
    assert rows["dr"]["candidate"].value == d["candidate"]["value"]
    assert rows["dr"]["production"].ci_high == d["production"]["ci_high"]
    assert rows["dr"]["difference"].ci_low == d["difference"]["ci_low"]
    assert rows["dr"]["candidate"].coverage == d["candidate"]["support"]


def test_ope_rows_role_first_and_list_shapes_agree():
    gate = gate_decision("promoted")
    by_est = ope_rows(gate)
    role_first = {"evidence": {"ope": {role: {name: v[role] for name, v in gate["ope"].items()}
                                       for role in ("candidate", "production", "difference")}}}
    role_lists = {"ope": {alias: [v[role] for v in gate["ope"].values()]
                          for alias, role in (("candidate", "candidate"), ("baseline", "production"),
                                              ("difference", "difference"))}}
    flat = {"ope": [{**v[role], "policy": role} for v in gate["ope"].values()
                    for role in ("candidate", "production", "difference")]}
    key = lambda rows: sorted((r["estimator"], r["candidate"], r["production"], r["difference"]) for r in rows)  # noqa: E731
    assert key(ope_rows(role_first)) == key(by_est)
    assert key(ope_rows(role_lists)) == key(by_est)
    assert key(ope_rows(flat)) == key(by_est)
    assert ope_rows({"ope": "garbage"}) == [] and ope_rows(None) == []


def test_headline_uses_the_gate_estimator():
    gate = gate_decision("promoted", lift=0.07)
    h = headline(gate)
    assert h["estimator"] == "dr" and h["value"] == pytest.approx(0.07)
    gate["estimator"] = "ips"
    assert headline(gate)["value"] == pytest.approx(0.05)


# ---------------------------------------------------------------------- rules, calibration, weights
def test_gate_rules_list_and_mapping():
    rules = gate_rules(gate_decision("rejected", lift=0.0))
    by = {r["name"]: r for r in rules}
    assert by["lift_lower_bound"]["passed"] is False and by["lift_lower_bound"]["threshold"] == 0.01
    assert by["min_ess"]["op"] == ">=" and by["validation_passed"]["value"] == "yes"
    mapping = gate_rules({"checks": {"ess": {"observed": 12.0, "minimum": 100, "status": "fail"}, "valid": True}})
    assert mapping == [
        {"name": "ess", "value": 12.0, "threshold": 100.0, "op": None, "passed": False, "detail": None},
        {"name": "valid", "value": None, "threshold": None, "op": None, "passed": True, "detail": None},
    ]
    assert gate_rules(None) == [] and gate_rules({"rules": 3}) == []


def test_calibration_points_from_bins_and_parallel_lists():
    bins = [{"predicted": 0.2, "observed": 0.25, "count": 10}, {"predicted": 0.1, "observed": 0.05, "count": 5}]
    pts = calibration_points({"validation": {"ece": 0.01, "calibration": bins}})
    assert [p["predicted"] for p in pts] == [0.1, 0.2]  # sorted by prediction
    par = calibration_points({"calibration": {"mean_predicted": [0.1, 0.2], "fraction_positive": [0.05, 0.25],
                                              "count": [5, 10]}})
    assert par == pts
    multi = {"models": {"a": {"calibration": bins[:1]}, "b": {"calibration": bins}}}
    assert len(calibration_points(multi, "b")) == 2 and len(calibration_points(multi, "a")) == 1
    assert calibration_points({"validation": {"ece": 0.01}}) is None
    assert calibration_points(None) is None


def test_histogram_of_counts_every_weight_once():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.lognormal(0, 1.5, 5000), np.zeros(7)])
    h = histogram_of(w.tolist(), bins=20)
    assert h["log_x"] and h["zeros"] == 7
    assert sum(h["counts"]) == 5000
    assert h["edges"][0] <= np.log10(w[w > 0].min()) and h["edges"][-1] >= np.log10(w.max())
    assert len(h["edges"]) == 21


def test_weight_histogram_stored_or_raw():
    gate = gate_decision("promoted")
    h = weight_histogram(gate)
    assert h["edges"] == gate["weight_histogram"]["edges"] and h["log_x"] is True
    raw = weight_histogram({"evidence": {"weights": [0.5, 1.0, 2.0, 4.0]}})
    assert sum(raw["counts"]) == 4
    assert weight_histogram({"decision": "promote"}) is None


def test_validation_and_lineage_views():
    gate = gate_decision("promoted")
    v = validation_summary({"gate": gate, "lineage": None})
    assert v["passed"] is True and v["source"] == "gate" and v["counts"]["rows"] == 30000
    assert v["results"][0]["name"].startswith("impressions/propensity_range")
    assert v["results"][0]["detail"] == "0 unexpected of 30,000"
    assert validation_summary({"gate": {"decision": "promote"}, "lineage": {"x": 1}}) is None
    lin = lineage_view({"data_version": "abc", "code_version": "123", "features_version": "f1",
                        "params": {"seed": 1}, "created": "now"})
    assert (lin["data_version"], lin["code_version"], lin["params"]) == ("abc", "123", {"seed": 1})
    assert lin["facts"]["created"] == "now"
    assert lineage_view(None) is None and lineage_view({"error": "unreadable JSON"}) is None


# ---------------------------------------------------------------------- SVG
def test_reliability_svg_places_points_on_the_diagonal_scale():
    pts = [{"predicted": 0.1, "observed": 0.1, "count": 1}, {"predicted": 0.4, "observed": 0.4, "count": 4}]
    out = svg.reliability_svg(pts)
    assert out.startswith("<svg") and out.count('class="bin"') == 2
    # a perfectly calibrated point lies on the dashed diagonal: same pixel relation for both points
    cs = [(float(x), float(y)) for x, y in re.findall(r'class="bin" cx="([\d.]+)" cy="([\d.]+)"', out)]
    (x1, y1), (x2, y2) = cs
    d = re.search(r'class="diagonal" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"', out).groups()
    dx1, dy1, dx2, dy2 = map(float, d)
    slope = (dy2 - dy1) / (dx2 - dx1)
    for x, y in cs:
        assert y == pytest.approx(dy1 + slope * (x - dx1), abs=0.15)
    assert "no data" in svg.reliability_svg([])


def test_histogram_svg_bar_heights_follow_counts():
    out = svg.histogram_svg([0, 1, 2, 3], [10, 20, 5], title="w <&>")
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', out)]
    assert len(heights) == 3
    assert heights[1] / heights[0] == pytest.approx(2.0, rel=0.01)
    assert heights[2] / heights[0] == pytest.approx(0.5, rel=0.01)
    assert "w &lt;&amp;&gt;" in out and "w <&>" not in out
    assert "no data" in svg.histogram_svg([0, 1], [1, 2])


def test_interval_svg_draws_one_interval_per_row():
    out = svg.interval_svg([{"label": "dr", "value": 0.1, "ci_low": 0.05, "ci_high": 0.15},
                            {"label": "ips", "value": float("nan")}], margin=0.01)
    assert out.count("<circle") == 1 and 'class="margin"' in out


# ---------------------------------------------------------------------- registry-backed views
@pytest.fixture(scope="module")
def bundle(small_data_dir, small_sim, tmp_path_factory):
    return shared_bundle(tmp_path_factory, small_data_dir, small_sim.impressions)


@pytest.fixture()
def registry(bundle, tmp_path):
    reg = Registry(tmp_path / "registry")
    for v, status, lift in (("v1", "promoted", 0.05), ("v2", "rejected", -0.01), ("v3", "awaiting_approval", 0.04)):
        reg.register(bundle, v)
        reg.record_decision(v, gate_decision(status, "9f1c6a2e-0000-4000-8000-000000000001"
                                             if status == "awaiting_approval" else None, lift))
    reg.promote("v1", "first")
    return reg


def test_candidate_rows_and_production(registry):
    rows = candidate_rows(registry)
    assert [r["version"] for r in rows] == ["v3", "v2", "v1"]  # newest first
    by = {r["version"]: r for r in rows}
    assert by["v1"]["production"] and not by["v2"]["production"]
    assert (by["v1"]["status"], by["v2"]["status"], by["v3"]["status"]) == (PROMOTED, REJECTED, AWAITING)
    assert by["v3"]["can_review"] and not by["v1"]["can_review"]
    assert by["v2"]["headline"]["value"] == pytest.approx(-0.01)
    registry.promote("v3", "second")
    registry.rollback("bad")
    prod = production_view(registry)
    assert prod["version"] == "v1"
    assert [e["action"] for e in prod["history"]] == ["rollback", "promote", "promote"]
    assert {r["version"]: r for r in candidate_rows(registry)}["v3"]["was_production"]


def test_candidate_detail_survives_missing_and_broken_sections(registry):
    d = candidate_detail(registry, "v3")
    assert d["can_review"] and d["estimator"] == "dr" and len(d["ope"]) == 3
    assert d["calibration"] and d["lineage"]["code_version"] and d["validation"]["passed"] is True
    vdir = registry.path("v2")
    (vdir / "gate.json").write_text("{not json")
    (vdir / "metrics.json").unlink()
    (vdir / "lineage.json").write_text(json.dumps(["not", "a", "dict"]))
    d = candidate_detail(registry, "v2")
    assert d["status"] == PENDING and d["ope"] == [] and d["rules"] == []
    assert d["calibration"] is None and d["weights"] is None and d["lineage"] is None and d["validation"] is None


def test_submit_review_resumes_with_the_reviewers_answer(registry):
    calls = []

    def resume(run_id, run_input):
        calls.append((run_id, run_input))

    sent = submit_review(registry, "v3", True, "  looks good ", "ana", resume)
    assert calls == [("9f1c6a2e-0000-4000-8000-000000000001",
                      {"approved": True, "comment": "looks good", "reviewer": "ana"})]
    assert sent["flow_run_id"] == calls[0][0]
    with pytest.raises(ReviewError, match="not awaiting approval"):
        submit_review(registry, "v1", True, "", "ana", resume)
    with pytest.raises(ReviewError, match="reviewer name"):
        submit_review(registry, "v3", False, "", "  ", resume)

    def refuse(run_id, run_input):
        raise RuntimeError("Cannot resume a run that isn't paused!")

    with pytest.raises(ReviewError, match="isn't paused"):
        submit_review(registry, "v3", False, "no", "ana", refuse)
    gate = registry.show("v3")["gate"]
    del gate["flow_run_id"]
    registry.record_decision("v3", gate)
    with pytest.raises(ReviewError, match="no flow_run_id"):
        submit_review(registry, "v3", True, "", "ana", resume)
    assert len(calls) == 1


# ---------------------------------------------------------------------- home-page preview
def test_home_preview_builds_valid_pages(bundle):
    from bartops.reward.policy import load_policy_bundle

    policy, features = load_policy_bundle(bundle)
    ctx = sample_contexts(features, n=3, seed=5, timestamp="2026-11-01T20:00:00Z")
    assert len(ctx) == 4 and list(ctx.columns) == ["user_id", "platform", "region", "timestamp"]
    pages = home_preview(policy, features, ctx, seed=1)
    assert pages == home_preview(policy, features, ctx, seed=1)  # seeded: reproducible
    assert [p["cold_start"] for p in pages] == [False, False, False, True]
    items = features.items.set_index("item_id")
    titles = dict(zip(features.explanations["explanation_id"], features.explanations["title"]))
    for page in pages:
        assert 1 <= len(page["shelves"]) <= policy.shelves
        on_page = [c["item_id"] for sh in page["shelves"] for c in sh["cards"]]
        assert len(on_page) == len(set(on_page))  # an item appears once per page
        seen_titles = [sh["title"] for sh in page["shelves"]]
        assert len(seen_titles) == len(set(seen_titles))  # one shelf per explanation
        for sh in page["shelves"]:
            assert sh["title"] == titles[sh["explanation_id"]]
            assert 1 <= len(sh["cards"]) <= policy.cards
            for c in sh["cards"]:
                assert c["name"] == items.loc[c["item_id"], "name"]
                assert c["artist"] == items.loc[c["item_id"], "artist"]
                assert 0 < c["propensity"] <= 1
    # candidates of each page are the feature layer's: every card is a valid (item, explanation) pair
    cands = features.candidates_for(ctx)
    codes = dict(zip(features.explanations["explanation_id"], range(len(features.explanations))))
    for b, page in enumerate(pages):
        valid = set(zip(cands.explanation[cands.page == b].tolist(), cands.item_id[cands.page == b].tolist()))
        for sh in page["shelves"]:
            assert all((codes[sh["explanation_id"]], c["item_id"]) in valid for c in sh["cards"])


def test_reads_the_gate_modules_own_decision():
    from bartops.gate import GateParams, decide

    from test_dashboard_support import estimate as est
    from test_gate import kind_lift

    params = GateParams(margin=0.01, min_ess=1000)
    out = decide(params, True, est("dr", 0.005, 0.01), 5000.0, 0.2,
                 {"artist": kind_lift("artist", 0.0, -0.1, 0.1)})
    rules = {r["name"]: r for r in gate_rules(out)}
    assert set(rules) == {r["rule"] for r in out["rules"]}
    assert rules["lift"]["passed"] is False and rules["lift"]["threshold"] == 0.01
    assert rules["calibration"]["passed"] is False and rules["ess"]["passed"] is True
    assert decision_status(out) == REJECTED
    from bartops.dashboard.views import failed_rules, gate_margin

    assert failed_rules(out) == out["failed"] and gate_margin(out) == 0.01


def test_reads_the_gate_flows_ope_table_and_validation_rule():
    """gate.json as flows/evaluate_and_gate.py writes it: decide() + the OPE estimate_table + logs."""
    from bartops.gate import GateParams, decide
    from bartops.ope.estimators import ips, snips
    from bartops.ope.pipeline import estimate_table

    rng = np.random.default_rng(0)
    n = 2000
    reward = (rng.random(n) < 0.2).astype(float)
    propensity = rng.uniform(0.2, 1.0, n)
    q_cand, q_prod = rng.uniform(0, 1, n), propensity.copy()
    result = {"estimates": {"candidate": {"ips": ips(reward, propensity, q_cand, n_boot=50),
                                          "snips": snips(reward, propensity, q_cand, n_boot=50)},
                            "production": {"ips": ips(reward, propensity, q_prod, n_boot=50)}},
              "differences": {"production": {"ips": ips(reward, propensity, q_cand * 0.5, n_boot=50)}}}
    table = estimate_table(result)
    gate = decide(GateParams(estimator="ips", min_ess=10), True, result["differences"]["production"]["ips"].to_dict(),
                  result["estimates"]["candidate"]["ips"].ess, 0.01, {})
    gate.update({"production": "logging policy (logging-popularity)", "ope": {"table": table, "diagnostics": {}},
                 "logs": {"rows": n, "pages": 50, "dir": "build/impressions", "policy_version": "logging-popularity"},
                 "status": "awaiting_approval", "flow_run_id": "abc"})
    rows = {r["estimator"]: r for r in ope_rows(gate)}
    assert set(rows) == {"ips", "snips"}
    t = {(r["policy"], r["estimator"]): r for r in table}
    assert rows["ips"]["candidate"].value == t[("candidate", "ips")]["value"]
    assert rows["ips"]["production"].ci_low == t[("production", "ips")]["ci_low"]
    assert rows["ips"]["difference"].ci_high == t[("candidate - production", "ips")]["ci_high"]
    assert rows["snips"]["production"] is None and rows["snips"]["candidate"].coverage == t[("candidate", "snips")]["support"]
    assert headline(gate)["estimator"] == "ips"
    assert decision_status(gate) == AWAITING and flow_run_id(gate) == "abc"
    v = validation_summary({"gate": gate})
    assert v["passed"] is True and v["source"] == "gate rule" and v["counts"] == {"rows": float(n), "pages": 50.0}
