"""Open Bandit Dataset adapter: a small OBD-format file written here → log schema → estimators."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bartops.logs.obd import obd_explanations, read_obd
from bartops.logs.schema import SchemaError
from bartops.ope import ips, snips
from bartops.ope.slate import logged_pages


def _write_obd(tmp_path, n_pages=40, n_items=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_pages):
        items = rng.choice(n_items, size=3, replace=False)
        for k, it in enumerate(items):
            rows.append({"timestamp": f"2019-11-24 00:{t // 60:02d}:{t % 60:02d}.{t:06d}+00:00", "item_id": int(it),
                         "position": k + 1, "click": int(rng.random() < 0.2), "propensity_score": 1 / n_items,
                         "user_feature_0": f"u{t % 7:x}", "user_feature_1": "81ce123c",
                         **{f"user-item_affinity_{j}": 0.0 for j in range(n_items)}})
    df = pd.DataFrame(rows)
    path = tmp_path / "all.csv"
    df.to_csv(path)  # OBD files carry an unnamed index column
    ctx = tmp_path / "item_context.csv"
    pd.DataFrame({"item_id": range(n_items), "item_feature_0": [f"c{i % 2}" for i in range(n_items)],
                  "item_feature_1": 1.0}).to_csv(ctx)
    return path, ctx, df


def test_obd_rows_map_to_schema_and_pages(tmp_path):
    path, ctx, raw = _write_obd(tmp_path)
    logs = read_obd(path, ctx)
    assert len(logs) == len(raw)
    assert logs["position"].tolist() == (raw["position"] - 1).tolist()
    assert logs["reward"].tolist() == raw["click"].tolist()
    assert logs["request_id"].nunique() == 40  # three positions of one recommendation share a page
    assert set(logs["explanation_id"]) == {"genre:c0", "genre:c1"}
    assert (logs["platform"] == "web").all() and (logs["region"] == "JP").all()
    lp = logged_pages(logs, obd_explanations(logs))
    assert lp.n_pages == 40 and len(lp) == 120


def test_estimators_run_on_obd_logs(tmp_path):
    """Uniform random logging (p = 1/5 per slot); evaluating the logging policy itself returns the
    on-policy clicks per page, and a target that always shows item 0 at slot 0 gives the hand IPS."""
    path, ctx, raw = _write_obd(tmp_path)
    logs = read_obd(path, ctx)
    p = logs["propensity"].to_numpy()
    on = ips(logs["reward"], p, p, logs["request_id"], n_boot=50)
    assert on.value == pytest.approx(raw["click"].sum() / 40)
    target = ((logs["item_id"] == 0) & (logs["position"] == 0)).to_numpy(float)
    e = ips(logs["reward"], p, target, logs["request_id"], n_boot=50)
    hand = (raw["click"] * ((raw["item_id"] == 0) & (raw["position"] == 1)) * 5).sum() / 40
    assert e.value == pytest.approx(hand)
    s = snips(logs["reward"], p, target, logs["request_id"], strata=logs["position"], n_boot=50)
    assert 0 <= s.value <= 3


def test_bad_obd_files_are_named(tmp_path):
    path, ctx, raw = _write_obd(tmp_path)
    raw.drop(columns=["propensity_score"]).to_csv(tmp_path / "bad.csv")
    with pytest.raises(SchemaError, match="propensity_score"):
        read_obd(tmp_path / "bad.csv")
    raw.assign(propensity_score=0.0).to_csv(tmp_path / "zero.csv")
    with pytest.raises(SchemaError, match=r"\(0, 1\]"):
        read_obd(tmp_path / "zero.csv")
    pd.DataFrame({"item_id": [0], "item_feature_0": ["a"]}).to_csv(tmp_path / "ctx.csv")
    with pytest.raises(SchemaError, match="missing from"):
        read_obd(path, tmp_path / "ctx.csv")
