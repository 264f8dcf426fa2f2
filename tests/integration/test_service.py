"""The real service: `bentoml serve` subprocesses over HTTP, the feedback loop, the built Bento."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from bartops.config import Params, PolicyParams, read_params_file
from bartops.features.assemble import assemble_impressions
from bartops.features.store import build_features, load_features, save_features
from bartops.policy.page import CandidateSet, build_pages
from bartops.registry import Registry
from bartops.reward.model import save_model
from bartops.reward.policy import load_policy_bundle, write_policy_bundle
from bartops.reward.train import train_reward_models

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
POLICY = PolicyParams(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
TRAIN = Params.from_mapping({"seed": 3, "features": {"embedding_dim": 8, "clusters": 8}, "reward": {"num_boost_round": 30, "baselines": []}})


def make_bundle(data_dir: Path, impressions: pd.DataFrame, out: Path, version: str) -> Path:
    features = build_features(data_dir, TRAIN)
    save_features(features, out / "features")
    save_model(train_reward_models(features, impressions, TRAIN).model, out / "model")
    return write_policy_bundle(out / "model", out / "features", POLICY, out / "bundle", version)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve <target>` in its own process group, stopped only after it was ready."""

    def __init__(self, target: str, env: dict, cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["BARTOPS_SERVING_LOGS"]).parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen([BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> list[int]:
        codes, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {Path(self.log.name).read_text()[-3000:]}")
            try:
                code = httpx.get(self.url + "/readyz", timeout=2).status_code
                codes.append(code)
                if code == 200:
                    return codes
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def setup(small_sim, small_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    bundle = make_bundle(small_data_dir, small_sim.impressions, tmp / "work", "v-int-1")
    reg = Registry(tmp / "registry")
    version = reg.register(bundle)
    reg.promote(version, "integration test")
    params = read_params_file(ROOT / "params.yaml")
    # one worker: the early "item not on this page" feedback check is per worker (with several, a
    # worker that did not serve the page accepts the feedback and the join drops it)
    params["serving"] = {**params.get("serving", {}), "log_rotate_seconds": 1, "workers": 1}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "BARTOPS_REGISTRY": str(tmp / "registry"), "BARTOPS_SERVING_LOGS": str(tmp / "logs"),
           "BARTOPS_PARAMS": str(tmp / "params.yaml"), "BENTOML_HOME": str(tmp / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("BARTOPS_BUNDLE", None)
    env.pop("BARTOPS_MODEL_TAG", None)
    return {"tmp": tmp, "registry": reg, "version": version, "env": env, "params": params}


@pytest.fixture(scope="module")
def server(setup):
    srv = Server("bartops.serving.service:HomePage", setup["env"])
    try:
        srv.codes = srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(url: str, path: str, body) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(url + path, json=body, timeout=30)


def test_home_page_over_http(server, setup):
    assert set(server.codes) <= {503, 200}  # not ready (503) until the model is loaded, then ready
    r = post(server.url, "/home", {"user_id": 5, "platform": "ios", "region": "SE"})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["policy_version"] == setup["version"] and page["epsilon"] == {"head": 0.1, "fill": 0.1}
    assert len(page["shelves"]) == 6 and all(len(s["cards"]) == 8 for s in page["shelves"])
    assert all(s["title"] for s in page["shelves"]) and not page["cold_start"]
    card = page["shelves"][0]["cards"][0]
    assert set(card) == {"item_id", "name", "artist", "score", "propensity", "explored"}
    cold = post(server.url, "/home", {"user_id": 987654321, "platform": "web", "region": "BR",
                                      "shelves": 2, "cards_per_shelf": 3}).json()
    assert cold["cold_start"] and len(cold["shelves"]) == 2 and all(len(s["cards"]) == 3 for s in cold["shelves"])


def test_http_propensities_equal_offline_computation(server, setup):
    policy, features = load_policy_bundle(setup["registry"].production_path())
    for user, platform, region, seed in [(11, "android", "DE", 5), (42, "desktop", "IN", 6), (10**8, "ios", "MX", 7)]:
        ts = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        page = post(server.url, "/home", {"user_id": user, "platform": platform, "region": region,
                                          "timestamp": ts, "seed": seed}).json()
        ctx = pd.DataFrame({"user_id": [user], "platform": [platform], "region": [region],
                            "timestamp": [pd.Timestamp(ts)]})
        cands = features.candidates_for(ctx)
        ref = build_pages(policy, ctx, cands, np.random.default_rng(seed))
        b, s, k = np.nonzero(ref.filled)
        served = [(c["item_id"], c["propensity"], c["explored"]) for sh in page["shelves"] for c in sh["cards"]]
        offline = list(zip(cands.item_id[ref.candidate[b, s, k]].tolist(), ref.propensity[b, s, k].tolist(),
                           ref.explored[b, s, k].tolist()))
        assert served == offline


@pytest.mark.parametrize("path,body,status,field", [
    ("/home", {"platform": "ios", "region": "SE"}, 400, "user_id"),
    ("/home", {"user_id": "five", "platform": "ios", "region": "SE"}, 400, "user_id"),
    ("/home", {"user_id": 5, "platform": "ios", "region": "Mars"}, 400, "region"),
    ("/home", {"user_id": 5, "platform": "ios", "region": "SE", "shelves": 10_000}, 400, "shelves"),
    ("/home", {"user_id": 5, "platform": "ios", "region": "SE", "cards_per_shelf": -1}, 400, "cards_per_shelf"),
    ("/home", {"user_id": 5, "platform": "ios", "region": "SE", "extra": 1}, 400, "extra"),
    ("/home", b'{"user_id": 5, "platform": ', 400, "json_invalid"),
    ("/home", b'[1, 2, 3]', 400, "type"),
    ("/home", {"user_id": 5, "platform": "ios", "region": "SE", "pad": "x" * 20_000}, 413, "body"),
    ("/feedback", {"request_id": "r1", "item_id": 3}, 400, "streamed"),
    ("/feedback", {"request_id": "r1", "item_id": 3, "streamed": "maybe"}, 400, "streamed"),
])
def test_bad_requests_get_4xx_naming_the_field(server, path, body, status, field):
    r = post(server.url, path, body)
    assert r.status_code == status, r.text
    assert field in r.text


def test_feedback_for_an_item_not_on_the_page_is_rejected(server):
    page = post(server.url, "/home", {"user_id": 7, "platform": "web", "region": "US", "shelves": 1,
                                      "cards_per_shelf": 2}).json()
    shown = {c["item_id"] for c in page["shelves"][0]["cards"]}
    other = next(i for i in range(10_000) if i not in shown)
    r = post(server.url, "/feedback", {"request_id": page["request_id"], "item_id": other, "streamed": True})
    assert r.status_code == 422 and "item_id" in r.text


def test_closed_loop_serve_feedback_join_validate_retrain(server, setup, small_sim, small_data_dir, prefect_api):
    """Pages for simulated users; streams drawn from the simulator's true model; join; validate; retrain."""
    from bartops.sim import sample_contexts
    from bartops.validation import validate_batch
    from flows.join_feedback import join_feedback_flow

    world = small_sim.world
    rng = np.random.default_rng(11)
    ctx = sample_contexts(world, 150, rng)
    served = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for row in ctx.itertuples():
            page = client.post("/home", json={"user_id": int(row.user_id), "platform": str(row.platform),
                                              "region": str(row.region)}).json()
            for s, shelf in enumerate(page["shelves"]):
                for k, card in enumerate(shelf["cards"]):
                    served.append((page["request_id"], int(row.user_id), str(row.platform), str(row.region),
                                   s, k, card["item_id"], shelf["explanation_id"]))
        df = pd.DataFrame(served, columns=["request_id", "user_id", "platform", "region", "shelf", "position",
                                           "item_id", "explanation_id"])
        code = pd.Series(np.arange(len(world.explanations)), index=world.explanations["explanation_id"])
        n = len(df)
        cands = CandidateSet(np.arange(n), df["item_id"].to_numpy(), code[df["explanation_id"]].to_numpy(), n,
                             np.ones(n, bool))
        contexts = df[["user_id", "platform", "region"]].assign(timestamp=pd.Timestamp.now(tz="UTC"))
        p = world.relevance(contexts, cands) * world.examination(df["shelf"].to_numpy(), df["position"].to_numpy())
        streamed = rng.random(n) < p
        for i in np.nonzero(streamed)[0]:
            r = client.post("/feedback", json={"request_id": df["request_id"][i], "item_id": int(df["item_id"][i]),
                                               "streamed": True, "seconds": 60.0})
            assert r.status_code == 200, r.text
    logs = Path(setup["env"]["BARTOPS_SERVING_LOGS"])
    deadline = time.monotonic() + 30  # files close once they are log_rotate_seconds (1 s) old
    while list(logs.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(logs.glob("*.part"))

    now = (datetime.now(timezone.utc) + timedelta(seconds=1801)).isoformat()
    incoming = setup["tmp"] / "incoming"
    result = join_feedback_flow(log_dir=str(logs), out_dir=str(incoming), attribution_window_seconds=1800,
                                now=now, params_file=setup["env"]["BARTOPS_PARAMS"])
    batch = pd.read_parquet(result.batch)
    mine = batch[batch["request_id"].isin(df["request_id"])].set_index(["request_id", "item_id"]).sort_index()
    assert len(mine) == n  # every served card exactly once
    expected = pd.Series(streamed.astype(int), index=pd.MultiIndex.from_frame(df[["request_id", "item_id"]])).sort_index()
    assert (mine["reward"].to_numpy() == expected.to_numpy()).all()

    report = validate_batch(Path(result.batch), small_data_dir, Params.from_mapping(setup["params"]))
    assert report.passed, report.failure_message()

    features = load_features(setup["registry"].production_path() / "features")
    retrained = train_reward_models(features, batch, TRAIN)
    assert retrained.model.booster.num_boosted_rounds() == 30
    p_new = retrained.model.predict_rows(assemble_impressions(features, batch))
    assert np.isfinite(p_new).all() and ((p_new > 0) & (p_new < 1)).all()


def test_package_service_flow_builds_a_bento_that_serves(setup, prefect_api):
    from flows.package_service import package_service

    env = setup["env"]
    out = package_service(registry=str(setup["tmp"] / "registry"), project_dir=str(ROOT),
                          bentoml_home=env["BENTOML_HOME"], params_file=env["BARTOPS_PARAMS"])
    assert out.model_tag == f"bartops-policy:{setup['version']}" and out.version == setup["version"], out
    # serve the Bento with no registry in sight: the packaged model must be what it serves
    bento_env = {**env, "BARTOPS_REGISTRY": str(setup["tmp"] / "no-registry"),
                 "BARTOPS_SERVING_LOGS": str(setup["tmp"] / "bento-logs")}
    srv = Server(out.bento, bento_env, cwd=setup["tmp"])
    try:
        srv.wait_ready()
        page = post(srv.url, "/home", {"user_id": 3, "platform": "ios", "region": "SE"}).json()
        assert page["policy_version"] == setup["version"] and len(page["shelves"]) == 6
    finally:
        srv.stop()


@pytest.mark.parametrize("case", ["no-production", "corrupt-model"])
def test_missing_or_corrupt_model_fails_at_start_up(setup, case):
    env = {**setup["env"], "BARTOPS_SERVING_LOGS": str(setup["tmp"] / f"logs-{case}")}
    if case == "no-production":
        (setup["tmp"] / "empty-registry").mkdir(exist_ok=True)
        env["BARTOPS_REGISTRY"] = str(setup["tmp"] / "empty-registry")
        expected = "has no production version"
    else:
        bad = setup["tmp"] / "corrupt"
        shutil.copytree(setup["registry"].production_path(), bad)
        data = (bad / "model" / "model.ubj").read_bytes()
        (bad / "model" / "model.ubj").write_bytes(data[: len(data) // 3])
        env["BARTOPS_BUNDLE"] = str(bad)
        # a truncated model file makes XGBoost's loader raise or, depending on where it is cut, crash the
        # loading (child) process: either way start-up fails with a message naming the bundle
        expected = (f"cannot load policy bundle {bad}", f"policy bundle {bad} is corrupt: loading it crashed")
    proc = subprocess.run([BENTOML, "serve", "bartops.serving.service:HomePage", "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"bentoml serve started with a {case} bundle: {output[-2000:]}"
    assert any(e in output for e in ([expected] if isinstance(expected, str) else expected)), \
        f"start-up error does not say {expected!r}: {output[-2000:]}"


def test_version_swap_under_steady_traffic_and_refusal_of_a_corrupt_version(setup):
    """Two workers follow the registry while a client requests pages non-stop: promote → every worker
    swaps with no failed request; each card's log row carries the version its page was built by; a
    corrupt version is refused (visible in /version) while the live one keeps serving."""
    import threading

    from bartops.serving.join import read_impressions
    from bartops.serving.logwriter import IMPRESSIONS, closed_files
    from flows.loop import wait_for_version

    tmp = setup["tmp"]
    reg = Registry(tmp / "swap-registry")
    src = setup["registry"].production_path()
    reg.register(src, "swap-v1")
    reg.register(src, "swap-v2")
    bad = tmp / "swap-bad"
    shutil.copytree(src, bad)
    data = (bad / "model" / "model.ubj").read_bytes()
    (bad / "model" / "model.ubj").write_bytes(data[: len(data) // 3])
    reg.register(bad, "swap-v3-bad")
    reg.promote("swap-v1", "start")
    params = {**setup["params"], "serving": {**setup["params"]["serving"], "workers": 2, "registry_poll_seconds": 0.5}}
    (tmp / "swap-params.yaml").write_text(yaml.safe_dump(params))
    env = {**setup["env"], "BARTOPS_REGISTRY": str(reg.root), "BARTOPS_SERVING_LOGS": str(tmp / "swap-logs"),
           "BARTOPS_PARAMS": str(tmp / "swap-params.yaml")}
    srv = Server("bartops.serving.service:HomePage", env)
    pages, stop = [], threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/home", json={"user_id": len(pages) % 500, "platform": "ios", "region": "SE"})
                body = r.json() if r.status_code == 200 else {}
                pages.append((r.status_code, body.get("request_id"), body.get("policy_version"),
                              sum(len(s["cards"]) for s in body.get("shelves", []))))

    try:
        srv.wait_ready()
        listener = threading.Thread(target=listen)
        listener.start()
        time.sleep(2)
        reg.promote("swap-v2", "better")
        wait_for_version(srv.url, "swap-v2", workers=2, timeout=120)
        swapped = len(pages)  # every worker serves swap-v2 from here on
        reg.promote("swap-v3-bad", "a corrupt bundle reaches production")
        deadline, refused = time.monotonic() + 120, 0
        while refused < 10 and time.monotonic() < deadline:  # 10 answers in a row: both workers refused
            status = httpx.get(srv.url + "/version", timeout=5).json()
            refused = refused + 1 if [r["version"] for r in status["refusals"]] == ["swap-v3-bad"] else 0
            time.sleep(0.1)
        time.sleep(1)
        stop.set()
        listener.join(timeout=60)
    finally:
        stop.set()
        srv.stop()
    assert refused >= 10, f"the corrupt version's refusal is not visible in /version: {status}"
    assert status["version"] == "swap-v2", f"a refused version replaced the live one: {status}"
    failed = [p for p in pages if p[0] != 200]
    assert not failed, f"{len(failed)} of {len(pages)} requests failed during the swaps, e.g. {failed[:3]}"
    versions = [p[2] for p in pages]
    assert set(versions) == {"swap-v1", "swap-v2"}, f"pages were built by {sorted(set(versions))}"
    late = [v for v in versions[swapped:] if v != "swap-v2"]
    assert not late, f"{len(late)} pages built by {sorted(set(late))} after every worker reported swap-v2"
    logged = read_impressions(closed_files(tmp / "swap-logs", IMPRESSIONS))  # stop() closed every file
    by_request = {rid: set(v) for rid, v in logged.groupby("request_id")["policy_version"]}
    wrong = [(rid, v, by_request.get(rid)) for _, rid, v, _ in pages if by_request.get(rid) != {v}]
    assert not wrong, f"{len(wrong)} pages logged under another version than they were built by, e.g. {wrong[:3]}"
    assert len(logged) == sum(p[3] for p in pages), f"served {sum(p[3] for p in pages)} cards, logged {len(logged)}"


def test_bentoml_serve_listens_on_loopback_unless_told_otherwise(setup):
    """`bentoml serve …:HomePage --port N` (no --host, as a user types it) binds 127.0.0.1 only."""
    port = free_port()
    env = {**setup["env"], "BARTOPS_SERVING_LOGS": str(setup["tmp"] / "logs-host")}
    proc = subprocess.Popen([BENTOML, "serve", "bartops.serving.service:HomePage", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, bound = time.monotonic() + 180, set()
        while not bound and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    address, hex_port = local.rsplit(":", 1)
                    if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                        bound.add(address)
        assert bound == {"0100007F"}, f"port {port} listens on {sorted(bound)} (hex, little-endian); " \
                                      "expected 127.0.0.1 (0100007F) only"
    finally:
        if proc.poll() is None:
            # wait for readiness before stopping (stopping a starting server can hang)
            ready_by = time.monotonic() + 120
            while time.monotonic() < ready_by and proc.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
