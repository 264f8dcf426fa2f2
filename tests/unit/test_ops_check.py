"""`bartops check`: each failure names what was asked and what was observed (against a tiny local server)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bartops.config import OpsParams
from bartops.ops.smoke import check_dashboard, check_prefect, check_service, check_stack


class Canned(BaseHTTPRequestHandler):
    routes: dict = {}

    def _answer(self) -> None:
        status, body = self.routes.get((self.command, self.path), (404, {"detail": "Not Found"}))
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "text/html" if isinstance(body, str) else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    routes: dict = {}
    handler = type("H", (Canned,), {"routes": routes})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", routes
    finally:
        srv.shutdown()
        srv.server_close()


def page(version: str, shelves: int) -> dict:
    return {"policy_version": version, "shelves": [{"title": "t", "cards": []}] * shelves}


def test_all_entry_points_answer(server):
    url, routes = server
    routes[("GET", "/api/deployments/name/retrain/nightly")] = (200, {"name": "nightly", "status": "READY",
                                                                      "paused": False})
    routes[("POST", "/home")] = (200, page("v2", 6))
    routes[("GET", "/")] = (200, "<html><td>v2</td></html>")
    routes[("GET", "/api/candidates")] = (200, {"production": {"version": "v2"}, "candidates": []})
    assert check_prefect(f"{url}/api").ok
    assert check_service(url, "v2", 6).ok
    assert check_dashboard(url, "v2").ok


def test_failures_name_what_failed_and_what_was_seen(server):
    url, routes = server
    r = check_prefect(f"{url}/api")
    assert not r.ok and f"GET {url}/api/deployments/name/retrain/nightly answered 404 (expected 200)" in r.detail
    assert "Not Found" in r.detail and r.line().startswith("FAIL  prefect")
    routes[("GET", "/api/deployments/name/retrain/nightly")] = (200, {"name": "nightly", "status": "NOT_READY",
                                                                      "paused": True})
    r = check_prefect(f"{url}/api")
    assert not r.ok and "status is 'NOT_READY', paused True (expected 'READY', False): no runner serves it" in r.detail

    routes[("POST", "/home")] = (200, page("v1", 5))
    r = check_service(url, "v2", 6)
    assert not r.ok and "policy_version 'v1', but production is 'v2'" in r.detail and "5 shelves (expected 6)" in r.detail
    routes[("POST", "/home")] = (503, {"error": "not ready"})
    assert "answered 503" in check_service(url, "v2", 6).detail and "not ready" in check_service(url, "v2", 6).detail

    routes[("GET", "/")] = (200, "<html>only v1 here</html>")
    r = check_dashboard(url, "v2")
    assert not r.ok and "does not mention production version 'v2'" in r.detail and "only v1 here" in r.detail
    routes[("GET", "/")] = (200, "<html>v2</html>")
    routes[("GET", "/api/candidates")] = (200, {"production": {"version": "v1"}})
    r = check_dashboard(url, "v2")
    assert not r.ok and "reports production 'v1', but the registry says 'v2'" in r.detail


def test_nothing_listening_and_no_production(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ops = OpsParams(host="127.0.0.1", prefect_port=port, service_port=port, dashboard_port=port)
    results = {r.name: r for r in check_stack(ops, tmp_path / "registry", 6)}
    assert not any(r.ok for r in results.values())
    assert "production.json does not exist" in results["registry"].detail
    assert f"POST http://127.0.0.1:{port}/home got no answer: ConnectError" in results["service"].detail
    assert "got no answer" in results["prefect"].detail
    assert "no production version" in results["dashboard"].detail
