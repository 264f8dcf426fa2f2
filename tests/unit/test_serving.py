"""Serving library: page engine vs offline page construction, request models, log files, join, packaging."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from bartops.features.store import build_features, save_features
from bartops.logs.schema import conform_impressions
from bartops.policy.page import build_pages
from bartops.reward.model import save_model
from bartops.reward.policy import write_policy_bundle
from bartops.reward.train import train_reward_models
from bartops.config import Params, PolicyParams, ServingConfig
from bartops.serving.config import with_environment
from bartops.serving.engine import BundleLoadError, PageEngine, load_bundle
from bartops.serving.join import join_feedback, join_to_batch, label_impressions
from bartops.serving.logwriter import RotatingLogWriter, closed_files, read_rows, recover_partial_files
from bartops.serving.schemas import FeedbackRequest, HomeRequest

POLICY = PolicyParams(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)
TRAIN = Params.from_mapping({"seed": 3, "features": {"embedding_dim": 8, "clusters": 8}, "reward": {"num_boost_round": 30, "baselines": [], "stack": "logistic"}})  # as params.yaml: stacked


def make_bundle(data_dir: Path, impressions: pd.DataFrame, out: Path, version: str = "v-test-1") -> Path:
    """features → small weighted XGBoost model → write_policy_bundle (the real functions)."""
    features = build_features(data_dir, TRAIN)
    save_features(features, out / "features")
    save_model(train_reward_models(features, impressions, TRAIN).model, out / "model")
    return write_policy_bundle(out / "model", out / "features", POLICY, out / "bundle", version)


@pytest.fixture(scope="module")
def bundle(small_sim, small_data_dir, tmp_path_factory) -> Path:
    return make_bundle(small_data_dir, small_sim.impressions, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def engine(bundle) -> PageEngine:
    return PageEngine.load(bundle)


def offline_page(engine: PageEngine, user_id, platform, region, ts, seed, shelves=None, cards=None):
    """The same request built offline: Features.candidates_for + the policy's scorer + build_pages."""
    import dataclasses

    pol = engine.policy
    pol = dataclasses.replace(pol, shelves=shelves or pol.shelves, cards=cards or pol.cards)
    ctx = pd.DataFrame({"user_id": [user_id], "platform": [platform], "region": [region], "timestamp": [ts]})
    cands = engine.features.candidates_for(ctx)
    return build_pages(pol, ctx, cands, np.random.default_rng(seed)), cands


@pytest.mark.parametrize("user_id,platform,region,seed,shelves,cards", [
    (5, "ios", "SE", 1, None, None),
    (17, "web", "JP", 2, 3, 4),
    (123, "desktop", "BR", 3, None, 12),  # more cards than some explanations hold: empty slots
    (10**9, "android", "US", 4, None, None),  # unknown user: cold start
])
def test_served_page_equals_offline_construction(engine, user_id, platform, region, seed, shelves, cards):
    assert engine.fast_path, "precomputed rows must equal assemble_rows + the policy's scorer"
    ts = pd.Timestamp("2026-11-03T18:20:00Z")
    page = engine.build(user_id, platform, region, "req-1", seed, ts, shelves, cards)
    ref, cands = offline_page(engine, user_id, platform, region, ts, seed, shelves, cards)
    b, s, k = np.nonzero(ref.filled)
    rows = page.impressions
    assert [(r["shelf"], r["position"]) for r in rows] == list(zip(s.tolist(), k.tolist()))
    assert [r["item_id"] for r in rows] == cands.item_id[ref.candidate[b, s, k]].tolist()
    assert np.array_equal([r["propensity"] for r in rows], ref.propensity[b, s, k])
    assert [r["explored"] for r in rows] == ref.explored[b, s, k].tolist()
    assert page.response["cold_start"] == (user_id == 10**9)
    served = [c["propensity"] for sh in page.response["shelves"] for c in sh["cards"]]
    assert served == [r["propensity"] for r in rows]


def test_page_shape_titles_and_log_rows(engine):
    page = engine.build(5, "ios", "SE", "req-2", 7)
    shelves = page.response["shelves"]
    assert len(shelves) == 6 and all(len(sh["cards"]) == 8 for sh in shelves)
    titles = engine.features.explanations.set_index("explanation_id")["title"]
    assert [sh["title"] for sh in shelves] == [titles[sh["explanation_id"]] for sh in shelves]
    assert len({sh["explanation_id"] for sh in shelves}) == 6
    items = [c["item_id"] for sh in shelves for c in sh["cards"]]
    assert len(set(items)) == len(items)
    df = conform_impressions(pd.DataFrame(page.impressions), require_reward=False)
    assert df["impression_id"].is_unique and len(df) == 48
    assert ((df["propensity"] > 0) & (df["propensity"] <= 1)).all()
    assert (df["policy_version"] == "v-test-1").all()
    names = engine.features.items.set_index("item_id")["name"]
    assert [c["name"] for c in shelves[0]["cards"]] == [names[i] for i in items[:8]]


def test_seed_fixes_the_page_and_exploration_matches_epsilon(engine):
    a = engine.build(9, "web", "GB", "r", 11).impressions
    b = engine.build(9, "web", "GB", "r", 11).impressions
    assert [r["item_id"] for r in a] == [r["item_id"] for r in b]
    explored = [r["explored"] for s in range(300) for r in engine.build(9, "web", "GB", "r", s).impressions]
    n, share = len(explored), float(np.mean(explored))
    # each slot explores with probability ε = 0.1 (a slot with one remaining choice still counts)
    assert abs(share - 0.1) < 5 * np.sqrt(0.1 * 0.9 / n)


def test_missing_and_corrupt_bundles_fail_clearly(bundle, tmp_path):
    with pytest.raises(BundleLoadError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "features" / "items.parquet").write_bytes(b"garbage")
    with pytest.raises(BundleLoadError, match="items.parquet"):
        load_bundle(bad)


# ---------------------------------------------------------------- request models
@pytest.mark.parametrize("body,field", [
    ({"platform": "ios", "region": "SE"}, "user_id"),
    ({"user_id": "abc", "platform": "ios", "region": "SE"}, "user_id"),
    ({"user_id": True, "platform": "ios", "region": "SE"}, "user_id"),
    ({"user_id": 1, "platform": "fridge", "region": "SE"}, "platform"),
    ({"user_id": 1, "platform": "ios", "region": "XX"}, "region"),
    ({"user_id": 1, "platform": "ios", "region": "SE", "shelves": 1000}, "shelves"),
    ({"user_id": 1, "platform": "ios", "region": "SE", "cards_per_shelf": 0}, "cards_per_shelf"),
    ({"user_id": 1, "platform": "ios", "region": "SE", "timestamp": "yesterday"}, "timestamp"),
    ({"user_id": 1, "platform": "ios", "region": "SE", "colour": "red"}, "colour"),
])
def test_home_request_errors_name_the_field(body, field):
    with pytest.raises(ValidationError) as exc:
        HomeRequest.model_validate_json(json.dumps(body))
    assert field in [str(e["loc"][0]) for e in exc.value.errors()]


def test_feedback_request_validation():
    FeedbackRequest.model_validate({"request_id": "abc", "item_id": 3, "streamed": True, "seconds": 12.5})
    for body, field in [({"request_id": "a b", "item_id": 3, "streamed": True}, "request_id"),
                        ({"request_id": "abc", "item_id": -1, "streamed": True}, "item_id"),
                        ({"request_id": "abc", "item_id": 1, "streamed": "yes"}, "streamed"),
                        ({"request_id": "abc", "item_id": 1, "streamed": True, "seconds": -4}, "seconds")]:
        with pytest.raises(ValidationError) as exc:
            FeedbackRequest.model_validate_json(json.dumps(body))
        assert exc.value.errors()[0]["loc"][0] == field


def test_serving_config():
    cfg = Params.from_mapping({"paths": {"serving_logs": "x-logs"}, "serving": {"workers": 2}}).serving
    assert cfg.log_dir == "x-logs" and cfg.workers == 2, f"log_dir/workers not read: {cfg}"
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'wokers' \(did you mean 'workers'\?\) in 'serving:'"):
        Params.from_mapping({"serving": {"wokers": 2}})
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServingConfig.from_dict({"max_body_bytes": 0})
    assert with_environment(cfg, {"BARTOPS_SERVING_LOGS": "/tmp/z"}).log_dir == "/tmp/z", "env override ignored"


# ---------------------------------------------------------------- log files
def test_log_writer_rotates_closes_and_writes_each_row_once(tmp_path):
    w = RotatingLogWriter(tmp_path, "impressions", rotate_rows=50, rotate_seconds=3600, background=False)

    def writer(t):
        for i in range(40):
            w.write([{"impression_id": f"{t}-{i}-{j}", "n": j} for j in range(3)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(tmp_path.glob("*.part"))  # the current file is still open
    w.close()
    assert not list(tmp_path.glob("*.part"))
    files = closed_files(tmp_path, "impressions")
    rows = read_rows(files)
    ids = [r["impression_id"] for r in rows]
    assert len(ids) == 4 * 40 * 3 == len(set(ids))
    assert len(files) == int(np.ceil(480 / 51))  # a file closes at the first write reaching 50 rows
    with pytest.raises(RuntimeError, match="closed"):
        w.write([{"x": 1}])


def test_log_writer_closes_idle_files_by_age(tmp_path):
    w = RotatingLogWriter(tmp_path, "feedback", rotate_rows=1000, rotate_seconds=0.2)
    w.write([{"a": 1}])
    deadline = datetime.now() + timedelta(seconds=10)
    while not closed_files(tmp_path, "feedback") and datetime.now() < deadline:
        threading.Event().wait(0.05)
    assert len(closed_files(tmp_path, "feedback")) == 1
    w.close()


def test_recover_partial_file_of_a_dead_writer(tmp_path):
    dead = tmp_path / "impressions-20260101T000000000000-999999999-000001.jsonl.part"
    dead.write_text('{"a":1}\n{"a":2}\n{"a":')  # torn last line
    ours = tmp_path / f"impressions-20260101T000000000000-{os.getpid()}-000001.jsonl.part"
    ours.write_text('{"a":1}\n')
    recovered = recover_partial_files(tmp_path)
    assert [p.name for p in recovered] == [dead.name.replace(".part", "")]
    assert [r["a"] for r in read_rows(recovered)] == [1, 2]
    assert ours.exists()


# ---------------------------------------------------------------- join
def _served(n_pages=3, when="2026-11-20T10:00:00Z", prefix="p") -> list[dict]:
    ts = pd.Timestamp(when)
    return [{"impression_id": f"{prefix}{p}-0-{k}", "request_id": f"{prefix}{p}", "user_id": p, "timestamp": ts.isoformat(),
             "platform": "ios", "region": "SE", "shelf": 0, "position": k, "item_id": 100 * p + k,
             "explanation_id": "new", "propensity": 0.9, "epsilon": 0.1, "explored": False, "policy_version": "v1"}
            for p in range(n_pages) for k in range(2)]


def test_join_labels_streams_within_the_window(tmp_path):
    imp = RotatingLogWriter(tmp_path, "impressions", background=False)
    fb = RotatingLogWriter(tmp_path, "feedback", background=False)
    imp.write(_served())
    t0 = pd.Timestamp("2026-11-20T10:00:00Z")
    fb.write([
        {"request_id": "p0", "item_id": 0, "streamed": True, "seconds": 30.0, "timestamp": (t0 + pd.Timedelta("5min")).isoformat()},
        {"request_id": "p0", "item_id": 0, "streamed": True, "seconds": 90.0, "timestamp": (t0 + pd.Timedelta("6min")).isoformat()},
        {"request_id": "p1", "item_id": 100, "streamed": True, "seconds": 10.0, "timestamp": (t0 + pd.Timedelta("2h")).isoformat()},
        {"request_id": "p1", "item_id": 101, "streamed": False, "seconds": None, "timestamp": (t0 + pd.Timedelta("1min")).isoformat()},
        {"request_id": "p2", "item_id": 999, "streamed": True, "seconds": 5.0, "timestamp": (t0 + pd.Timedelta("1min")).isoformat()},
    ])
    imp.close()  # feedback stays open: its complete lines still count
    out = join_feedback(tmp_path, timedelta(minutes=30), now=t0 + pd.Timedelta("1h"))
    got = out.set_index("impression_id")
    assert got.loc["p0-0-0", "reward"] == 1 and got.loc["p0-0-0", "stream_seconds"] == 90.0
    assert got["reward"].sum() == 1  # too late, not streamed, other item: 0
    assert got.loc["p0-0-1", "stream_seconds"] != got.loc["p0-0-1", "stream_seconds"]  # NaN
    assert len(join_feedback(tmp_path, 1800, now=t0 + pd.Timedelta("10min"))) == 0  # window not over yet
    fb.close()


def test_join_to_batch_consumes_each_file_once(tmp_path):
    logs, incoming = tmp_path / "logs", tmp_path / "incoming"
    w = RotatingLogWriter(logs, "impressions", rotate_rows=4, background=False)
    w.write(_served(2, "2026-11-20T10:00:00Z"))
    w.write(_served(1, "2026-11-20T12:00:00Z", prefix="q"))
    w.close()
    now = pd.Timestamp("2026-11-20T11:00:00Z")
    first = join_to_batch(logs, incoming, 1800, now)
    assert first.rows == 4 and len(first.files) == 1 and len(first.waiting_files) == 1
    again = join_to_batch(logs, incoming, 1800, now)
    assert again.batch is None and again.files == []
    later = join_to_batch(logs, incoming, 1800, pd.Timestamp("2026-11-21T00:00:00Z"))
    assert later.rows == 2
    batches = sorted(incoming.glob("*.parquet"))
    total = pd.concat([pd.read_parquet(p) for p in batches])
    assert len(batches) == 2 and total["impression_id"].is_unique and len(total) == 6


def test_label_impressions_without_feedback():
    imp = conform_impressions(pd.DataFrame(_served(1)), require_reward=False)
    empty = pd.DataFrame({"request_id": pd.Series([], dtype="string"), "item_id": pd.Series([], dtype=np.int64),
                          "streamed": pd.Series([], dtype=bool), "seconds": pd.Series([], dtype=float),
                          "timestamp": pd.Series([], dtype="datetime64[ns, UTC]")})
    out = label_impressions(imp, empty, pd.Timedelta("30min"))
    assert (out["reward"] == 0).all()


# ---------------------------------------------------------------- packaging
def test_store_bundle_as_bentoml_model_is_idempotent(bundle, tmp_path):
    import shutil

    from bartops.serving.package import model_tag_for, store_bundle_as_bentoml_model

    home = tmp_path / "bentoml"
    tag = store_bundle_as_bentoml_model(bundle, "v-test-1", bentoml_home=home)
    assert tag == "bartops-policy:v-test-1"
    stored = home / "models" / "bartops-policy" / "v-test-1"
    assert (stored / "policy.json").exists() and (stored / "model" / "model.ubj").exists()
    assert store_bundle_as_bentoml_model(bundle, "v-test-1", bentoml_home=home) == tag
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="different content"):
        store_bundle_as_bentoml_model(other, "v-test-1", bentoml_home=home)
    with pytest.raises(FileNotFoundError, match="lacks"):
        store_bundle_as_bentoml_model(tmp_path, "v2", bentoml_home=home)
    assert model_tag_for("V 2026/11") != model_tag_for("v-2026-11")
    assert model_tag_for("V 2026/11").startswith("bartops-policy:v-2026-11-")
