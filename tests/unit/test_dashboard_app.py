"""The dashboard web app over a registry in tmp, through starlette's TestClient."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from fastapi.testclient import TestClient

from bartops.dashboard import auth, create_app
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
        reg.record_decision(v, gate_decision(status, RUN_ID if status == "awaiting_approval" else None, lift).to_dict())
    reg.promote("v1", "first production")
    return reg


@pytest.fixture()
def resumed():
    return []


PASSWORD = "correct horse battery"


@pytest.fixture()
def reviewers_file(tmp_path):
    return auth.add_reviewer(tmp_path / "private" / "reviewers.json", "ana", PASSWORD)


@pytest.fixture()
def client(registry, resumed, reviewers_file):
    def resume(run_id, run_input):
        resumed.append((run_id, run_input))

    return TestClient(create_app(registry.root, resume=resume, reviewers_file=reviewers_file))


def login(client, name="ana", password=PASSWORD):
    r = client.post("/login", data={"name": name, "password": password, "next": "/candidates/v3"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return r


def csrf(client, version="v3"):
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/candidates/{version}").text).group(1)


@pytest.fixture()
def reviewer(client):
    """The client logged in as ana; returns the session's CSRF token."""
    login(client)
    return csrf(client)


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
    assert "page views like the 625 evaluated ones logged from 2026-11-01" in t, "what the intervals are for"
    assert "5,000" in text(ope) and "0.97" in text(ope)
    # rules with figures, thresholds, pass/fail
    rules = text(r.text[r.text.index('id="rules"'):])
    for rule in gate["rules"]:
        assert rule["rule"] in rules
    assert "pass" in rules
    # plots are inline SVG
    assert r.text.count("<svg") >= 3 and 'class="bin"' in r.text and 'class="bar"' in r.text
    assert "Validation pass" in t and "impressions/propensity_range" in t
    lineage = registry.show("v3")["lineage"]
    assert lineage["code_version"] in t and str(lineage["features_version"]) in t
    # logged out, the review section asks for a login; logged in, the form posts with both buttons
    assert RUN_ID in t and 'action="/candidates/v3/review"' not in r.text and 'href="/login?next=/candidates/v3"' in r.text
    login(client)
    r = client.get("/candidates/v3")
    assert 'action="/candidates/v3/review"' in r.text and 'name="reviewer"' not in r.text
    assert 'value="approve"' in r.text and 'value="reject"' in r.text and "Reviewing as ana" in text(r.text)
    # the home-page preview: shelves with titles and named cards
    assert r.text.count('class="page"') == 4 and "(new user)" in t
    titles = re.findall(r'<div class="shelf"><h4>([^<]+)</h4>', r.text)
    assert len(titles) >= 4 and all(titles)


def test_non_awaiting_candidate_has_no_review_form(client, reviewer):
    r = client.get("/candidates/v1")
    assert r.status_code == 200 and 'action="/candidates/v1/review"' not in r.text and "promoted" in r.text


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


def test_approve_resumes_with_the_logged_in_name_not_the_form_field(client, resumed, reviewer):
    r = client.post("/candidates/v3/review", follow_redirects=False,
                    data={"decision": "approve", "comment": "ship it", "reviewer": "head-of-ml", "csrf_token": reviewer})
    assert r.status_code == 303 and r.headers["location"].startswith("/candidates/v3?msg=")
    assert resumed == [(RUN_ID, {"approved": True, "comment": "ship it", "reviewer": "ana"})]
    page = client.get(r.headers["location"])
    assert 'id="flash"' in page.text and "Approved by ana" in text(page.text)


def test_reject_sends_approved_false(client, resumed, reviewer):
    client.post("/candidates/v3/review", data={"decision": "reject", "comment": "", "csrf_token": reviewer})
    assert resumed == [(RUN_ID, {"approved": False, "comment": "", "reviewer": "ana"})]


def test_review_errors_are_shown_not_raised(client, resumed, reviewer):
    r = client.post("/candidates/v1/review", data={"decision": "approve", "csrf_token": reviewer},
                    follow_redirects=False)
    assert r.status_code == 303 and "err=1" in r.headers["location"]
    page = client.get(r.headers["location"])
    assert 'class="flash err"' in page.text and "not awaiting approval" in text(page.text)
    assert client.post("/candidates/v3/review", data={"decision": "maybe", "csrf_token": reviewer}).status_code == 400
    assert client.post("/candidates/v3/review", data={"csrf_token": reviewer}).status_code == 400
    assert client.post("/candidates/nope/review", data={"decision": "approve", "csrf_token": reviewer}).status_code == 404
    assert resumed == []


# ---------------------------------------------------------------------- who may approve
def test_review_without_login_is_refused_and_does_not_resume(client, resumed):
    r = client.post("/candidates/v3/review", data={"decision": "approve", "reviewer": "head-of-ml"})
    assert r.status_code == 401 and "log in" in text(r.text)
    assert resumed == []
    assert (client.get("/api/candidates/v3").json()["status"]) == "awaiting_approval"


def test_wrong_password_or_unknown_name_is_401_and_sets_no_cookie(client, resumed):
    for name, password in (("ana", "wrong password"), ("head-of-ml", PASSWORD), ("ana", "")):
        r = client.post("/login", data={"name": name, "password": password}, follow_redirects=False)
        assert r.status_code == 401 and "wrong name or password" in text(r.text)
        assert "set-cookie" not in r.headers
    r = client.post("/candidates/v3/review", data={"decision": "approve"})
    assert r.status_code == 401 and resumed == []


def test_session_cookie_is_signed_httponly_and_samesite_strict(client, resumed):
    r = login(client)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=") and PASSWORD not in cookie
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=strict" and attrs["path"] == "Path=/"
    assert r.headers["location"] == "/candidates/v3"
    # a tampered cookie (another name in the payload) is no session
    value = client.cookies[auth.SESSION_COOKIE]
    client.cookies.set(auth.SESSION_COOKIE, "x" + value)
    assert "signed in as" not in text(client.get("/").text)
    assert client.post("/candidates/v3/review", data={"decision": "approve"}).status_code == 401
    assert resumed == []


def test_missing_or_wrong_csrf_token_is_403(client, resumed, reviewer):
    for data in ({"decision": "approve"}, {"decision": "approve", "csrf_token": reviewer[:-2] + "AA"},
                 {"decision": "approve", "csrf_token": ""}):
        r = client.post("/candidates/v3/review", data=data)
        assert r.status_code == 403 and "CSRF token" in text(r.text)
    assert resumed == []
    # logging in again starts a new session with a new token: the old one stops working
    login(client)
    assert client.post("/candidates/v3/review", data={"decision": "approve", "csrf_token": reviewer}).status_code == 403
    assert resumed == []


def test_foreign_origin_or_referer_is_403(client, resumed, reviewer):
    data = {"decision": "approve", "csrf_token": reviewer}
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                    {"referer": "http://evil.example/candidates/v3"}, {"origin": "http://testserver:8080"}):
        r = client.post("/candidates/v3/review", data=data, headers=headers)
        assert r.status_code == 403 and "cross-origin request refused" in text(r.text), headers
    r = client.post("/login", data={"name": "ana", "password": PASSWORD}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert resumed == []
    r = client.post("/candidates/v3/review", data=data, headers={"origin": "http://testserver",
                                                                 "referer": "http://testserver/candidates/v3"})
    assert r.status_code == 200 and resumed[0][1]["reviewer"] == "ana"


def test_logout_needs_the_token_and_ends_the_session(client, resumed, reviewer):
    assert client.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    assert "signed in as ana" in text(client.get("/").text)
    r = client.post("/logout", data={"csrf_token": reviewer}, follow_redirects=False)
    assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
    assert auth.SESSION_COOKIE not in client.cookies
    assert client.post("/candidates/v3/review", data={"decision": "approve", "csrf_token": reviewer}).status_code == 401
    assert resumed == []


def test_a_removed_reviewer_loses_the_session(client, resumed, reviewer, reviewers_file):
    auth.add_reviewer(reviewers_file, "bo", PASSWORD)
    assert auth.remove_reviewer(reviewers_file, "ana")
    assert client.post("/candidates/v3/review", data={"decision": "approve", "csrf_token": reviewer}).status_code == 401
    assert resumed == []


def test_without_reviewers_the_page_says_how_to_add_one_and_review_is_403(registry, resumed, tmp_path):
    c = TestClient(create_app(registry.root, resume=lambda *a, **k: resumed.append(a),
                              reviewers_file=tmp_path / "none" / "reviewers.json"))
    page = c.get("/candidates/v3")
    assert page.status_code == 200 and "bartops dashboard add-reviewer NAME" in text(page.text)
    assert 'id="no-reviewers"' in page.text and "disabled" in page.text and 'action="/candidates/v3/review"' not in page.text
    r = c.post("/candidates/v3/review", data={"decision": "approve", "reviewer": "head-of-ml"})
    assert r.status_code == 403 and "no reviewers are configured" in text(r.text)
    assert "bartops dashboard add-reviewer NAME" in text(r.text)
    assert c.post("/login", data={"name": "ana", "password": PASSWORD}).status_code == 403
    assert resumed == [] and not (tmp_path / "none").exists()  # reading creates nothing


def test_reads_stay_open_without_login(client):
    assert client.get("/").status_code == 200 and "v3" in client.get("/").text
    assert client.get("/api/candidates").status_code == 200 and client.get("/loop").status_code == 200
    assert 'id="login-link"' in client.get("/").text
    assert client.get("/login?next=//evil.example").text.count('name="next" value="/"') == 1


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
