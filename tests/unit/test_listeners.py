"""The simulated listeners honour load shedding (503 + Retry-After) and report other failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bartops.loop.listeners import post_concurrently


@pytest.fixture()
def server():
    """A local HTTP server whose answers follow ``script`` (status, headers) in turn, then 200."""
    script: list[tuple[int, dict]] = []
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            status, headers = script.pop(0) if script else (200, {})
            payload = json.dumps({"echo": body} if status == 200 else {"error": "busy"}).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script, seen
    httpd.shutdown()
    httpd.server_close()


def test_a_shed_request_is_asked_again_after_retry_after(server):
    url, script, seen = server
    script += [(503, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    answers, failed, ms, shed = post_concurrently(url, "/home", [{"user_id": 1}, {"user_id": 2}], 1, 5.0)
    assert failed == [], f"shed requests were reported as failures: {failed}"
    assert shed == 2, f"expected 2 shed answers retried, counted {shed}"
    assert [a["echo"]["user_id"] for a in answers] == [1, 2], f"answers out of order or missing: {answers}"
    assert [b["user_id"] for b in seen] == [1, 1, 1, 2], f"requests the server saw: {seen}"
    assert len(ms) == 2, f"one latency per answered request expected, got {len(ms)}"


def test_a_request_shed_past_the_retry_deadline_fails(server):
    url, script, seen = server
    script += [(503, {"Retry-After": "0"})] * 100_000  # shed for longer than the listener keeps asking
    answers, failed, _, shed = post_concurrently(url, "/home", [{"user_id": 7}], 1, 5.0, retry_for=0.3)
    assert answers == [None] and len(failed) == 1, f"answers {answers}, failures {failed}"
    assert "503" in failed[0] and "attempt" in failed[0], f"failure line: {failed[0]}"
    assert shed == len(seen) - 1 and shed >= 1, f"shed {shed}, requests {len(seen)}"


def test_other_errors_are_not_retried(server):
    url, script, seen = server
    script += [(503, {}), (400, {})]  # 503 without Retry-After is an outage, not shedding
    answers, failed, _, shed = post_concurrently(url, "/feedback", [{"a": 1}, {"a": 2}], 1, 5.0)
    assert answers == [None, None] and shed == 0, f"answers {answers}, shed {shed}"
    assert len(failed) == 2 and "503" in failed[0] and "400" in failed[1], f"failures {failed}"
    assert len(seen) == 2, f"a failed request was retried: the server saw {len(seen)} requests"
