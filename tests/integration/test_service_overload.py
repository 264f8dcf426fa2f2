"""Load shedding in a real `bentoml serve`: beyond ``serving.max_in_flight`` requests held by the
worker, the excess gets 503 with Retry-After at once, and the accepted requests still succeed.

Requests are held in flight deterministically: their headers are sent (the worker dispatches them)
but their bodies only when the test says so.  No timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bartops.config import Params, PolicyParams, read_params_file
from bartops.features.store import build_features, save_features
from bartops.reward.model import save_model
from bartops.reward.policy import write_policy_bundle
from bartops.reward.train import train_reward_models

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
TRAIN = Params.from_mapping({"seed": 3, "features": {"embedding_dim": 8, "clusters": 8}, "reward": {"num_boost_round": 30, "baselines": []}})
MAX_IN_FLIGHT, RETRY_AFTER = 2, 3
BODY = json.dumps({"user_id": 5, "platform": "ios", "region": "SE"}).encode()


def free_port(lo: int = 3300, hi: int = 3400) -> int:
    """A free loopback port in [lo, hi)."""
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")


@pytest.fixture(scope="module")
def server(small_sim, small_data_dir, tmp_path_factory):
    """One worker with max_in_flight 2, serving a small bundle; stopped only after it was ready."""
    tmp = tmp_path_factory.mktemp("overload")
    features = build_features(small_data_dir, TRAIN)
    save_features(features, tmp / "features")
    save_model(train_reward_models(features, small_sim.impressions, TRAIN).model, tmp / "model")
    bundle = write_policy_bundle(tmp / "model", tmp / "features", PolicyParams(), tmp / "bundle", "v-overload")
    params = read_params_file(ROOT / "params.yaml")
    params["serving"] = {**params.get("serving", {}), "workers": 1, "max_in_flight": MAX_IN_FLIGHT,
                         "retry_after_seconds": RETRY_AFTER}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "BARTOPS_BUNDLE": str(bundle), "BARTOPS_SERVING_LOGS": str(tmp / "logs"),
           "BARTOPS_PARAMS": str(tmp / "params.yaml"), "BENTOML_HOME": str(tmp / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("BARTOPS_MODEL_TAG", None)
    env.pop("BARTOPS_REGISTRY", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([BENTOML, "serve", "bartops.serving.service:HomePage", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, ready = time.monotonic() + 180, False
        while not ready and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {(tmp / 'server.log').read_text()[-3000:]}")
            try:
                ready = httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        if not ready:
            raise TimeoutError(f"{url} not ready after 180 s: {(tmp / 'server.log').read_text()[-3000:]}")
        yield url, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def start_held_request(port: int) -> socket.socket:
    """A POST /home whose headers and half its body are sent: in flight until ``finish`` sends the rest."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /home HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY[: len(BODY) // 2]))
    return sock


def finish(sock: socket.socket) -> tuple[int, dict]:
    """Send the rest of a held request's body; (status, JSON body) of its response."""
    sock.sendall(BODY[len(BODY) // 2:])
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"!"
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(body)} of {length} body bytes"
        body += chunk
    sock.close()
    return int(head.split()[1]), json.loads(body)


def test_excess_requests_get_503_with_retry_after_and_accepted_ones_succeed(server):
    url, port = server
    held = [start_held_request(port) for _ in range(MAX_IN_FLIGHT)]
    try:
        # the worker dispatches the held requests on its own schedule: probe until it sheds one
        probes = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(200):
                probe = client.post("/home", json={"user_id": 6, "platform": "web", "region": "DE"})
                probes.append(probe.status_code)
                if probe.status_code == 503:
                    break
                time.sleep(0.05)
            assert probes[-1] == 503, f"no 503 with {MAX_IN_FLIGHT} requests held; probes answered {probes}"
            assert set(probes) <= {200, 503}, f"probes answered {probes}"
            assert probe.headers.get("retry-after") == str(RETRY_AFTER), \
                f"Retry-After {probe.headers.get('retry-after')!r}, expected {RETRY_AFTER!r}"
            assert probe.json()["error"].startswith("overloaded"), f"503 body {probe.text!r}"
            fb = client.post("/feedback", json={"request_id": "r1", "item_id": 1, "streamed": False})
            assert fb.status_code == 503 and fb.headers.get("retry-after") == str(RETRY_AFTER), \
                f"/feedback while saturated answered {fb.status_code} (Retry-After {fb.headers.get('retry-after')!r})"
            for path in ("/readyz", "/livez", "/version", "/metrics"):
                status = client.get(path).status_code
                assert status == 200, f"{path} answered {status} while the worker was saturated (never shed)"
            metrics = client.get("/metrics").text
            counted = {p: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                              if line.startswith(f'bartops_shed_requests_total{{path="{p}"}}'))
                       for p in ("/home", "/feedback")}
            assert counted["/home"] >= 1 and counted["/feedback"] >= 1, \
                f"shed requests not counted on /metrics (bartops_shed_requests_total): {counted}"
    finally:
        answers = [finish(sock) for sock in held]
    assert [a[0] for a in answers] == [200] * MAX_IN_FLIGHT, f"held requests answered {[a[0] for a in answers]}"
    assert all(len(a[1]["shelves"]) == 6 for a in answers), "an accepted request returned a short page"
    after = httpx.post(url + "/home", json={"user_id": 7, "platform": "ios", "region": "SE"}, timeout=60)
    assert after.status_code == 200, f"a request after the held ones finished answered {after.status_code}: {after.text}"
