"""The benchmarks' own machinery: the NumPy OPE reference, and VW examples from simulated logs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root holds the bench package

vowpalwabbit = pytest.importorskip("vowpalwabbit")

from bartops.features.logstats import page_folds  # noqa: E402
from bartops.features.store import build_features_from_frames
from bartops.config import FeatureParams
from bartops.ope import IPS, SNIPS, ips, snips  # noqa: E402
from bartops.policy.page import EMPTY  # noqa: E402
from bartops.reward.train import time_split, training_rows  # noqa: E402
from bench import ope_reference as ref  # noqa: E402
from bench import vw_peer  # noqa: E402

SHELVES, CARDS, EPS = 6, 8, 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_ips_snips_agree_with_bartops(seed):
    logs = ref.random_logs(48 * 400, seed=seed)
    r, p, t, g, s = (logs[k] for k in ("reward", "propensity", "target", "page", "slot"))
    one = np.zeros(len(r), np.int64)
    pairs = [
        (ref.reference_ips(r, p, t, g), ref.bartops_point(IPS(), logs), ips(r, p, t, groups=g, n_boot=10).value),
        (ref.reference_snips(r, p, t, g, s), ref.bartops_point(SNIPS(), logs),
         snips(r, p, t, groups=g, strata=s, n_boot=10).value),
        (ref.reference_snips(r, p, t, g, one), ref.bartops_point(SNIPS(), {**logs, "slot": one}),
         snips(r, p, t, groups=g, n_boot=10).value),
    ]
    for expected, point, boot in pairs:
        assert point == pytest.approx(expected, rel=ref.REL_TOLERANCE, abs=0)
        assert boot == pytest.approx(expected, rel=ref.REL_TOLERANCE, abs=0)
    # the reference is not trivially equal: per-page IPS differs from the per-row mean
    assert ref.reference_ips(r, p, t, g) == pytest.approx(48 * np.mean(t / p * r), rel=1e-12)
    assert ref.reference_snips(r, p, t, g, s) != pytest.approx(ref.reference_snips(r, p, t, g, one), rel=1e-6)


@pytest.fixture(scope="module")
def vw_inputs(small_sim):
    w = small_sim.world
    feats = build_features_from_frames(w.items, w.users, small_sim.history, FeatureParams(embedding_dim=8), seed=3,
                                       explanations=w.explanations)
    imp = small_sim.impressions.iloc[: 48 * 150].reset_index(drop=True)
    expl = feats.explanation_codes(imp["explanation_id"].to_numpy())
    sets = vw_peer.sample_action_sets(small_sim.candidates, imp, expl, SHELVES, CARDS, others=3, seed=0)
    return feats, imp, expl, sets


def test_action_sets_are_the_logging_policys_remaining_choices(vw_inputs):
    _, imp, expl, sets = vw_inputs
    pi = imp["propensity"].to_numpy()
    a = sets.remaining.astype(float)
    # every logged propensity is ε/|remaining| (explored) or 1 − ε + ε/|remaining| (greedy)
    assert np.all(np.isclose(pi, EPS / a, rtol=1e-12) | np.isclose(pi, 1 - EPS + EPS / a, rtol=1e-12))
    n_others = (sets.other_item != EMPTY).sum(axis=1)
    assert np.array_equal(n_others, np.minimum(3, sets.remaining - 1))
    q = n_others / np.maximum(sets.remaining - 1, 1)
    assert np.allclose(sets.probability, pi / (pi + (1 - pi) * q))
    # sampled pairs: never the logged pair nor an item placed before it; fills keep the shelf's title
    shelf, pos, item = (imp[c].to_numpy() for c in ("shelf", "position", "item_id"))
    request = imp["request_id"].to_numpy()
    for i in range(0, len(imp), 7):
        page = request == request[i]
        if pos[i] == 0:
            before = page & (pos == 0) & (shelf < shelf[i])
        else:
            before = page & ((pos == 0) | (shelf < shelf[i]) | ((shelf == shelf[i]) & (pos < pos[i])))
        others = sets.other_item[i][sets.other_item[i] != EMPTY]
        assert not np.any((sets.other_item[i] == item[i]) & (sets.other_explanation[i] == expl[i]))
        assert not set(others) & set(item[before])
        if pos[i] > 0:
            assert np.all(sets.other_explanation[i][: len(others)] == expl[i])


def test_vw_examples_round_trip_through_vw(vw_inputs, tmp_path):
    """Assembled rows → VW text → VW's parser gives back the same labels and feature values."""
    feats, imp, expl, sets = vw_inputs
    train = time_split(imp["timestamp"], 0.2)
    path = tmp_path / "train.vw"
    n = vw_peer.write_examples(path, feats, imp, train, 5, sets)
    assert n == train.sum()
    blocks = [b.splitlines() for b in path.read_text().split("\n\n") if b.strip()]
    assert len(blocks) == n
    # examples are written fold by fold; the logged action's row is bartops' training row
    fold = page_folds(imp["request_id"], 5)
    order = np.concatenate([np.nonzero(train & (fold == k))[0] for k in range(5)])
    rows = training_rows(feats, imp, train, 5)
    ws = vowpalwabbit.Workspace("--cb_explore_adf --quiet")
    for lines, i in list(zip(blocks, order))[::max(1, n // 60)]:
        assert lines[0].startswith(f"shared |u u{imp['user_id'].iloc[i]} |c ")
        assert f" s{imp['shelf'].iloc[i]} p{imp['position'].iloc[i]}" in lines[0]
        assert len(lines) == 2 + (sets.other_item[i] != EMPTY).sum()
        label = lines[1].split(" ", 1)[0].split(":")
        assert float(label[1]) == -imp["reward"].iloc[i] and f" i{imp['item_id'].iloc[i]} " in lines[1]
        exs = ws.parse(lines, vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
        assert exs[1].get_cbandits_cost(0) == -imp["reward"].iloc[i]
        assert exs[1].get_cbandits_probability(0) == pytest.approx(sets.probability[i], rel=1e-6)
        for e, line in zip(exs[1:], lines[1:]):
            text = dict(tok.split(":") for tok in line.split("|f", 1)[1].split())
            ns = [k for k in range(e.num_namespaces()) if e.namespace(k) == ord("f")][0]
            parsed = sorted(e.feature_weight(ns, k) for k in range(e.num_features_in(ns)))
            assert parsed == pytest.approx(sorted(float(v) for v in text.values()), rel=1e-6)  # VW parses floats to ~1 ulp
            if e is exs[1]:
                expected = {f"f{j}": rows[i, j] for j in vw_peer.NUMERIC if rows[i, j] != 0}
                assert {k: np.float32(v) for k, v in text.items()} == expected
        ws.finish_example(exs)
    ws.finish()
