"""View-model functions and SVG plots of the review dashboard (pure; no web layer)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

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
    home_preview,
    lineage_view,
    ope_rows,
    production_view,
    read_gate,
    sample_contexts,
    submit_review,
    validation_summary,
)
from bartops.gate import Approval, GateDecision
from bartops.gate.decision import WeightHistogram
from bartops.registry import Registry
from test_dashboard_support import gate_decision, shared_bundle


# ---------------------------------------------------------------------- gate.json as the gate writes it
def test_gate_json_round_trips():
    for status in ("promoted", "rejected", "awaiting_approval"):
        g = gate_decision(status, "run-1")
        again = GateDecision.from_dict(json.loads(json.dumps(g.to_dict())))
        assert again == g, f"{status}: gate.json does not read back as written"


def test_gate_json_of_the_earlier_layout_still_reads():
    """Decisions recorded before the typed form: no ``status``, κ under ``diagnostics.logging_marginals``."""
    g = gate_decision("promoted")
    old = g.to_dict()
    del old["status"]
    old["ope"]["diagnostics"]["logging_marginals"] = old["ope"].pop("logging")
    gate, problem = read_gate(old)
    assert problem is None and gate == g, problem


@pytest.mark.parametrize("stored, expected", [
    (None, PENDING),
    ({"decision": "pending", "status": "pending"}, PENDING),  # what write_policy_bundle starts with
    ({"decision": "pending", "evidence": None}, PENDING),  # the same, as bundles written before 2026-12 have it
    (gate_decision("promoted").to_dict(), PROMOTED),
    (gate_decision("rejected", lift=-0.01).to_dict(), REJECTED),
    (gate_decision("awaiting_approval", "x").to_dict(), AWAITING),
    (gate_decision("awaiting_approval", "x").approved_by(Approval(False, "ana", "no")).to_dict(), REJECTED),
    (gate_decision("awaiting_approval", "x").approved_by(Approval(True, "ana", "ok")).to_dict(), PROMOTED),
])
def test_review_status(stored, expected):
    gate, problem = read_gate(stored)
    assert problem is None, f"a valid gate.json was refused: {problem}"
    assert gate.review_status == expected, f"status of {stored and stored.get('decision')}: {gate.review_status}"


def test_a_reviewer_who_does_not_approve_rejects_with_the_reason():
    g = gate_decision("awaiting_approval", "x").approved_by(Approval(False, "ana", "too risky"))
    assert (g.decision, g.status, g.failed[-1]) == ("reject", "decided", "approval"), (g.decision, g.failed)
    assert g.summary.startswith("reject:") and "not approved (too risky)" in g.summary, g.summary


@pytest.mark.parametrize("stored, words", [
    ({"error": "unreadable JSON: Expecting value"}, "unreadable JSON"),
    ({"decision": "promote", "rulez": []}, "unknown key(s) 'rulez' (did you mean 'rules'?) in 'gate.json:'"),
    ({"decision": "maybe"}, "decision must be one of"),
    ({"decision": "promote", "rules": [{"rule": "ess"}]}, "rules[0]: missing key(s)"),
    ({"decision": "promote", "ope": {"table": "x"}}, "ope.table must be a list"),
    ([1, 2], "must be an object"),
])
def test_an_unreadable_gate_json_reads_as_not_gated_and_says_why(stored, words):
    gate, problem = read_gate(stored)
    assert gate.review_status == PENDING and problem is not None and words in problem, problem


# ---------------------------------------------------------------------- OPE table
def test_ope_rows_per_estimator_and_the_headline():
    gate = gate_decision("promoted", lift=0.07)
    rows = {r.estimator: r for r in ope_rows(gate)}
    assert list(rows) == ["ips", "snips", "dr"], list(rows)
    assert rows["dr"].candidate.value == pytest.approx(1.32) and rows["dr"].production.value == 1.25
    assert (rows["dr"].difference.ci_low, rows["dr"].difference.ci_high) == pytest.approx((0.06, 0.08))
    h = gate.headline()
    assert h.estimator == "dr" and h.value == pytest.approx(0.07), h
    assert replace(gate, estimator="ips").headline().value == pytest.approx(0.05)
    assert ope_rows(GateDecision.pending()) == [] and GateDecision.pending().headline() is None


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


def test_weight_histogram_counts_every_weight_once():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.lognormal(0, 1.5, 5000), np.zeros(7)])
    h = WeightHistogram.of(w)
    assert h.log_x and h.zeros == 7, h.zeros
    assert sum(h.counts) == 5000, sum(h.counts)
    assert h.edges[0] <= np.log10(w[w > 0].min()) and h.edges[-1] >= np.log10(w.max()), (h.edges[0], h.edges[-1])
    assert len(h.edges) == 31 and WeightHistogram.of(np.zeros(0)) is None


def test_validation_and_lineage_views():
    gate = gate_decision("promoted")
    v = validation_summary(gate)
    assert v["passed"] is True and v["source"] == "gate" and v["counts"]["rows"] == 30000
    assert v["results"][0]["name"].startswith("impressions/propensity_range")
    assert v["results"][0]["detail"] == "0 unexpected of 30,000"
    assert validation_summary(GateDecision.pending()) is None
    by_rule = validation_summary(replace(gate, validation=None))
    assert by_rule["source"] == "gate rule" and by_rule["passed"] is True and by_rule["counts"]["rows"] == 30000
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
                                             if status == "awaiting_approval" else None, lift).to_dict())
    reg.promote("v1", "first")
    return reg


def test_candidate_rows_and_production(registry):
    rows = candidate_rows(registry)
    assert [r["version"] for r in rows] == ["v3", "v2", "v1"]  # newest first
    by = {r["version"]: r for r in rows}
    assert by["v1"]["production"] and not by["v2"]["production"]
    assert (by["v1"]["status"], by["v2"]["status"], by["v3"]["status"]) == (PROMOTED, REJECTED, AWAITING)
    assert by["v3"]["can_review"] and not by["v1"]["can_review"]
    assert by["v2"]["headline"].value == pytest.approx(-0.01)
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
    assert d["status"] == PENDING and d["ope"] == [] and d["rules"] == [] and "cannot be read" in d["gate_error"]
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
