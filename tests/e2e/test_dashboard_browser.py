"""The review dashboard in real headless Debian chromium, approving a real paused Prefect flow run.

The dashboard runs as ``bartops dashboard`` (uvicorn) in a subprocess against the test session's
Prefect API; a gate flow run pauses waiting for a reviewer; a reviewer is added with
``bartops dashboard add-reviewer``; the browser loads the candidate table, opens the candidate
awaiting approval, is refused the review until it logs in through the form, clicks Approve; the flow
resumes with the logged-in name and production changes.
A second test opens the Loop page over a written rounds file (chart and table) and screenshots it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bartops.gate import Approval as GateApproval
from bartops.registry import Registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_dashboard_support import gate_decision, loop_records, shared_bundle  # noqa: E402

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
PASSWORD = "e2e password, not a real one"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def _dashboard(registry_root: Path, *args: str, env: dict | None = None):
    """``bartops dashboard`` in a subprocess on a free port; yields its base URL once /healthz answers."""
    port = _free_port()
    bartops = Path(sys.executable).with_name("bartops")
    server = subprocess.Popen([str(bartops), "dashboard", "--host", "127.0.0.1", "--port", str(port),
                               "--registry", str(registry_root), *args], env={**os.environ, **(env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            if server.poll() is not None:
                raise AssertionError(f"dashboard exited: {server.stdout.read()}")
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, 60, "the dashboard to answer /healthz")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _gate_flow():
    """A minimal real gate flow: record 'awaiting approval' with its run id, pause, act on the answer."""
    from prefect import flow
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput
    from prefect.runtime import flow_run

    class Approval(RunInput):
        approved: bool = False  # an empty answer means "not approved"
        comment: str = ""
        reviewer: str = ""

    @flow(name="dashboard-e2e-gate")
    def gate(root: str, version: str, timeout: int = 240) -> bool:
        reg = Registry(root)
        decision = gate_decision("awaiting_approval", str(flow_run.get_id()))
        reg.record_decision(version, decision.to_dict())
        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(), timeout=timeout, poll_interval=2)
        decision = decision.approved_by(GateApproval(answer.approved, answer.reviewer, answer.comment))
        if decision.decision == "promote":
            reg.promote(version, f"approved by {answer.reviewer}: {answer.comment}")
        reg.record_decision(version, decision.to_dict())
        return answer.approved

    return gate


def _flow_run_paused(run_id: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return bool(state and state.is_paused())


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (`make browser` installs it)")
def test_approve_in_the_browser_promotes(prefect_api, small_data_dir, small_sim, tmp_path, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL
    from playwright.sync_api import expect, sync_playwright

    bundle = shared_bundle(tmp_path_factory, small_data_dir, small_sim.impressions)
    reg = Registry(tmp_path / "registry")
    reg.register(bundle, "v1")
    reg.record_decision("v1", gate_decision("promoted").to_dict())
    reg.promote("v1", "initial production")
    reg.register(bundle, "v2")

    # the paused gate flow run (real Prefect API of the test session)
    result: dict = {}
    gate = _gate_flow()
    runner = threading.Thread(target=lambda: result.setdefault("approved", gate(str(reg.root), "v2")), daemon=True)
    runner.start()
    run_id = _wait(lambda: (reg.show("v2")["gate"] or {}).get("flow_run_id"), 120, "the gate flow to record its run")
    _wait(lambda: _flow_run_paused(run_id), 120, "the gate flow run to pause")

    # a reviewer, added the way a user does it (the password on stdin, only its hash on disk)
    reviewers = tmp_path / "private" / "reviewers.json"
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "BARTOPS_REVIEWERS": str(reviewers)}
    added = subprocess.run([str(Path(sys.executable).with_name("bartops")), "dashboard", "add-reviewer",
                            "e2e-reviewer", "--password-stdin"], input=PASSWORD + "\n", text=True,
                           capture_output=True, env={**os.environ, **env}, timeout=120)
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in reviewers.read_text()

    try:
        with _dashboard(reg.root, env=env) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                table = page.locator("table#candidates")
                expect(table).to_be_visible()
                expect(table.locator("tbody tr")).to_have_count(2)
                expect(page.locator('tr[data-version="v2"]')).to_contain_text("awaiting approval")
                expect(page.locator('tr[data-version="v1"]')).to_contain_text("production")

                page.click('tr[data-version="v2"] >> text=v2')
                expect(page.locator("h1")).to_contain_text("v2")
                expect(page.locator("table#ope")).to_be_visible()
                expect(page.locator(".page .shelf h4").first).to_be_visible()
                # logged out: no review form, a login link instead
                expect(page.locator("button.approve")).to_have_count(0)
                page.click("#login-needed a")
                expect(page.locator("h1")).to_have_text("Reviewer log in")
                page.fill("input[name=name]", "e2e-reviewer")
                page.fill("input[name=password]", "not the password")
                page.click("button#login")
                expect(page.locator("#flash")).to_contain_text("wrong name or password")
                page.fill("input[name=password]", PASSWORD)
                page.click("button#login")
                expect(page.locator("h1")).to_contain_text("v2")  # back on the candidate
                expect(page.locator("header #user")).to_have_text("e2e-reviewer")
                cookie = next(c for c in page.context.cookies() if c["name"] == "bartops_session")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

                page.fill("textarea[name=comment]", "better on every estimator")
                page.click("button.approve")
                expect(page.locator("#flash")).to_contain_text("Approved by e2e-reviewer")

                _wait(lambda: reg.production() == "v2", 90, "production to switch to v2")
                runner.join(timeout=60)
                assert result.get("approved") is True
                gate_json = reg.show("v2")["gate"]
                assert gate_json["approval"] == {"approved": True, "comment": "better on every estimator",
                                                 "reviewer": "e2e-reviewer"}
                assert reg.history()[-1]["reason"] == "approved by e2e-reviewer: better on every estimator"

                page.goto(base + "/")
                expect(page.locator("header")).to_contain_text("production: v2")
                expect(page.locator('tr[data-version="v2"]')).to_contain_text("promoted")
                page.click("header button#logout")
                expect(page.locator("header #login-link")).to_be_visible()
            finally:
                browser.close()
    finally:
        if runner.is_alive():  # make sure a failed test does not leave the flow paused for long
            try:
                from prefect.flow_runs import resume_flow_run

                resume_flow_run(run_id, run_input={})
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
            runner.join(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (`make browser` installs it)")
def test_loop_page_in_the_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from bartops.loop.record import write_rounds

    root = tmp_path / "registry"
    (root / "versions" / "v2").mkdir(parents=True)  # a registered version: linked from the table
    loop_file = write_rounds(loop_records(mismatch_round=4), tmp_path / "loop" / "rounds.csv")
    with _dashboard(root, "--loop-file", str(loop_file)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(base + "/")
            page.click("header a#loop-link")
            expect(page.locator("h1")).to_have_text("Loop")
            assert page.url == base + "/loop"

            chart = page.locator("#loop-chart svg")
            expect(chart).to_be_visible()
            assert chart.bounding_box()["width"] >= 700
            expect(chart.locator("circle.true-point")).to_have_count(6)
            expect(chart.locator("circle.online-point")).to_have_count(5)  # round 0 served no traffic
            expect(chart.locator("line.ref")).to_have_count(2)
            expect(chart.locator("text.legend")).to_have_count(4)
            # the oracle's line lies above the logging policy's (SVG y grows downwards)
            y_oracle = float(chart.locator("line.ref.oracle").get_attribute("y1"))
            assert y_oracle < float(chart.locator("line.ref.logging").get_attribute("y1"))

            rows = page.locator("table#rounds tbody tr")
            expect(rows).to_have_count(6)
            expect(page.locator('tr[data-round="5"] td.true-value')).to_contain_text("6.858")
            expect(page.locator('tr[data-round="5"]')).to_contain_text("reject")
            expect(page.locator('tr[data-round="1"] a[href="/candidates/v2"]')).to_have_text("v2")
            mismatch = page.locator('tr[data-round="4"] td.mismatch')
            expect(mismatch).to_have_count(4)
            assert mismatch.first.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 235, 233)"
            expect(page.locator('tr[data-round="3"] td.mismatch')).to_have_count(0)
            page.screenshot(path=str(tmp_path / "loop.png"), full_page=True)

            # the page reads the file on every request: a broken file becomes an error box
            loop_file.write_text("round,live_version\n0,v1\n")
            page.reload()
            expect(page.locator("#loop-error")).to_contain_text(str(loop_file))
            expect(page.locator("#loop-chart")).to_have_count(0)
        finally:
            browser.close()
    assert (tmp_path / "loop.png").stat().st_size > 10_000
