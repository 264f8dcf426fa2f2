"""The dashboard web app over a registry in tmp, through starlette's TestClient."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from fastapi.testclient import TestClient

from bartops.dashboard import create_app
from bartops.registry import Registry
from test_dashboard_support import gate_decision, shared_bundle

RUN_ID = "9f1c6a2e-0000-4000-8000-000000000002"


@pytest.fixture(scope="module")
def bundle(small_data_dir, small_sim, tmp_path_factory):
    return shared_bundle(tmp_path_factory, small_data_dir, small_sim.impressions)


@pytest.fixture()
def registry(bundle, tmp_path):
    reg = Registry(tmp_path / "registry")
    for v, status, lift in (("v1", "promoted", 0.05), ("v2", "rejected", -0.01), ("v3", "awaiting_approval", 0.04)):
        reg.register(bundle, v)
        reg.record_decision(v, gate_decision(status, RUN_ID if status == "awaiting_approval" else None, lift))
    reg.promote("v1", "first production")
    return reg


@pytest.fixture()
def resumed():
    return []


@pytest.fixture()
def client(registry, resumed):
    def resume(run_id, run_input):
        resumed.append((run_id, run_input))

    return TestClient(create_app(registry.root, resume=resume, reviewer="tester"))


def text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_index_lists_candidates_with_decisions_and_production(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    rows = re.findall(r'<tr data-version="([^"]+)" data-status="([^"]+)"', r.text)
    assert rows == [("v3", "awaiting_approval"), ("v2", "rejected"), ("v1", "promoted")]
    t = text(r.text)
    assert "production: v1" in t and "first production" in t
    assert "awaiting approval" in t and "rejected" in t
    assert "http://" not in r.text and "https://" not in r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_candidate_page_shows_every_section(client, registry):
    r = client.get("/candidates/v3")
    assert r.status_code == 200
    t = text(r.text)
    gate = registry.show("v3")["gate"]
    # OPE table: each estimator with candidate value, CI, ESS and the difference's interval
    ope = r.text[r.text.index('id="ope"'):r.text.index("</table>", r.text.index('id="ope"'))]
    for name in ("dr", "ips", "snips"):
        assert f"<td>{name}</td>" in ope
    assert "[0.03, 0.05]" in text(ope)  # dr difference 0.04 ± 0.01
    assert "5,000" in text(ope) and "30,000" in text(ope)
    # rules with figures, thresholds, pass/fail
    rules = text(r.text[r.text.index('id="rules"'):])
    for rule in gate["rules"]:
        assert rule["name"] in rules
    assert "pass" in rules
    # plots are inline SVG
    assert r.text.count("<svg") >= 3 and 'class="bin"' in r.text and 'class="bar"' in r.text
    assert "Validation pass" in t and "impressions/propensity_range" in t
    lineage = registry.show("v3")["lineage"]
    assert lineage["code_version"] in t and str(lineage["features_version"]) in t
    # the review form posts to the version's review route with both buttons
    assert 'action="/candidates/v3/review"' in r.text
    assert 'value="approve"' in r.text and 'value="reject"' in r.text and RUN_ID in t
    # the home-page preview: shelves with titles and named cards
    assert r.text.count('class="page"') == 4 and "(new user)" in t
    titles = re.findall(r'<div class="shelf"><h4>([^<]+)</h4>', r.text)
    assert len(titles) >= 4 and all(titles)


def test_non_awaiting_candidate_has_no_review_form(client):
    r = client.get("/candidates/v1")
    assert r.status_code == 200 and "/review" not in r.text and "promoted" in r.text


def test_missing_or_broken_sections_render_not_available(client, registry):
    vdir = registry.path("v2")
    (vdir / "gate.json").write_text("{broken")
    (vdir / "metrics.json").unlink()
    (vdir / "lineage.json").unlink()
    (vdir / "model" / "model.ubj").unlink()  # the preview cannot load the policy
    r = client.get("/candidates/v2")
    assert r.status_code == 200
    t = text(r.text)
    for what in ("OPE estimates", "gate rules", "calibration", "importance weights", "validation summary", "lineage"):
        assert f"{what}: not available" in t
    assert "preview not available: FileNotFoundError" in t
    assert client.get("/").status_code == 200


def test_unknown_or_invalid_version_is_404(client):
    r = client.get("/candidates/nope")
    assert r.status_code == 404 and "not registered" in r.text
    assert client.get("/candidates/..%2F..").status_code == 404
    assert client.get("/api/candidates/nope").json()["detail"].startswith("version 'nope'")


def test_approve_resumes_the_paused_run_and_reports(client, resumed):
    r = client.post("/candidates/v3/review", data={"decision": "approve", "comment": "ship it", "reviewer": "ana"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/candidates/v3?msg=")
    assert resumed == [(RUN_ID, {"approved": True, "comment": "ship it", "reviewer": "ana"})]
    page = client.get(r.headers["location"])
    assert 'id="flash"' in page.text and "Approved by ana" in text(page.text)


def test_reject_sends_approved_false(client, resumed):
    client.post("/candidates/v3/review", data={"decision": "reject", "comment": "", "reviewer": "bo"})
    assert resumed == [(RUN_ID, {"approved": False, "comment": "", "reviewer": "bo"})]


def test_review_errors_are_shown_not_raised(client, resumed):
    r = client.post("/candidates/v1/review", data={"decision": "approve", "reviewer": "ana"}, follow_redirects=False)
    assert r.status_code == 303 and "err=1" in r.headers["location"]
    page = client.get(r.headers["location"])
    assert 'class="flash err"' in page.text and "not awaiting approval" in text(page.text)
    assert client.post("/candidates/v3/review", data={"decision": "maybe", "reviewer": "a"}).status_code == 400
    assert client.post("/candidates/v3/review", data={"reviewer": "a"}).status_code == 422
    assert resumed == []


def test_api_mirrors_the_view_models(client):
    data = client.get("/api/candidates").json()
    assert data["production"]["version"] == "v1"
    assert [c["version"] for c in data["candidates"]] == ["v3", "v2", "v1"]
    d = client.get("/api/candidates/v3").json()
    assert d["status"] == "awaiting_approval" and d["flow_run_id"] == RUN_ID
    assert {r["estimator"] for r in d["ope"]} == {"dr", "ips", "snips"}
    json.dumps(d)
    assert client.get("/healthz").json()["production"] == "v1"


def test_empty_registry(tmp_path):
    c = TestClient(create_app(tmp_path / "nothing"))
    r = c.get("/")
    assert r.status_code == 200 and "No versions registered" in r.text and "No promotions yet" in r.text
