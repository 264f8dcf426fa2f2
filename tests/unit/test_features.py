"""The shared layer: determinism, candidates, cold start, similar items, one assembly path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bartops.features.assemble import FEATURE_NAMES, assemble_impressions, assemble_rows
from bartops.features.store import (
    FeatureParams,
    build_features_from_frames,
    decay_weights,
    load_features,
    save_features,
)
from bartops.policy.page import CandidateSet
from bartops.sim import sample_contexts

PARAMS = FeatureParams(embedding_dim=12, clusters=12)


def _build(sim, seed=3):
    w = sim.world
    return build_features_from_frames(w.items, w.users, sim.history, PARAMS, seed=seed, explanations=w.explanations)


@pytest.fixture(scope="module")
def feats(small_sim):
    return _build(small_sim)


def test_deterministic_for_a_seed(small_sim, feats, tmp_path):
    again = _build(small_sim)
    a, b = save_features(feats, tmp_path / "a"), save_features(again, tmp_path / "b")
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["version"] == mb["version"] and ma["files"] == mb["files"]
    assert np.array_equal(feats.item_emb, again.item_emb) and np.array_equal(feats.cluster, again.cluster)
    other = _build(small_sim, seed=4)  # another seed changes the stochastic parts (k-means, SVD init)
    assert save_features(other, tmp_path / "c") and \
        json.loads((tmp_path / "c" / "manifest.json").read_text())["version"] != ma["version"]


def test_candidate_table_is_the_logging_policys(small_sim, feats):
    # the snapshot's reference time is the window start, so the pairs equal those the simulator logged from
    pd.testing.assert_frame_equal(feats.candidates.reset_index(drop=True),
                                  small_sim.candidates.reset_index(drop=True), check_dtype=False)
    logged = small_sim.impressions
    codes = feats.explanation_codes(logged["explanation_id"])
    pairs = pd.MultiIndex.from_arrays([feats.candidates.user_id, feats.candidates.explanation, feats.candidates.item_id])
    assert pairs.get_indexer(pd.MultiIndex.from_arrays([logged.user_id, codes, logged.item_id])).min() >= 0


def test_similar_items_share_genre_far_more_than_chance(feats):
    s = feats.similar_items
    assert (s.groupby("item_id").size() == PARAMS.similar_items).all()
    assert not (s["item_id"] == s["similar_item_id"]).any()
    genre = feats.items.set_index("item_id")["genre"]
    share = float((genre.loc[s.item_id].to_numpy() == genre.loc[s.similar_item_id].to_numpy()).mean())
    chance = float((genre.value_counts(normalize=True) ** 2).sum())  # P(two random items share a genre)
    # under chance the share of n items' neighbour lists has sd <= sqrt(chance(1-chance)/n) even when an
    # item's 10 neighbours are perfectly correlated; demand 10 such sd and twice the chance rate
    se = np.sqrt(chance * (1 - chance) / feats.items.shape[0])
    assert share > chance + 10 * se and share > 2 * chance, (share, chance)
    top = feats.similar_to(int(s.item_id.iloc[0]), n=3)
    assert len(top) == 3 and np.array_equal(top, s.similar_item_id.to_numpy()[:3])


def test_affinities_are_shares_and_decay_favours_recent_plays(feats):
    for table in (feats.user_artist, feats.user_genre, feats.user_mood, feats.user_cluster):
        sums = table.groupby("user_id")["affinity"].sum()
        assert np.allclose(sums, 1.0)
    now = pd.Timestamp("2026-10-01", tz="UTC")
    w = decay_weights(pd.Series(pd.to_datetime(["2026-10-01", "2026-09-01", "2026-08-02"], utc=True)), now, 30.0)
    assert w[0] == 1.0 and w[1] == pytest.approx(0.5, rel=1e-2) and w[2] == pytest.approx(0.25, rel=1e-2)


def test_cold_start_users_get_regional_candidates(feats):
    ctx = pd.DataFrame({"user_id": np.array([10**9, 10**9 + 1, 5]), "platform": ["ios", "web", "ios"],
                        "region": ["SE", "JP", str(feats.users.region.iloc[5])],
                        "timestamp": pd.to_datetime(["2026-10-26T10:00:00Z"] * 3)})
    c = feats.candidates_for(ctx)
    per_page = np.bincount(c.page, minlength=3)
    assert (per_page > 0).all()
    expl = feats.explanations["explanation_id"].to_numpy()
    se = set(expl[c.explanation[c.page == 0]])
    assert "region:SE" in se and "new" in se and any(e.startswith("genre:") for e in se)
    assert "region:JP" in set(expl[c.explanation[c.page == 1]])
    known = feats.candidates[feats.candidates.user_id == 5]
    assert np.array_equal(c.item_id[c.page == 2], known.item_id.to_numpy())
    rows = assemble_rows(feats, ctx, c)
    col = FEATURE_NAMES.index("user_known")
    assert np.isfinite(rows).all() and (rows[c.page == 0, col] == 0).all() and (rows[c.page == 2, col] == 1).all()


def test_one_assembly_path_batch_request_and_logs(small_sim, feats):
    """Offline batch, one request at a time (serving) and logged rows give identical features."""
    ctx = sample_contexts(small_sim.world, 25, np.random.default_rng(5))
    batch = assemble_rows(feats, ctx, feats.candidates_for(ctx))
    single = np.vstack([assemble_rows(feats, ctx.iloc[[i]].reset_index(drop=True),
                                      feats.candidates_for(ctx.iloc[[i]].reset_index(drop=True)))
                        for i in range(len(ctx))])
    assert batch.dtype == np.float32 and batch.shape[1] == len(FEATURE_NAMES)
    assert np.array_equal(batch, single)

    logged = small_sim.impressions.iloc[:300].reset_index(drop=True)
    offline = assemble_impressions(feats, logged)
    for i in range(0, 300, 37):  # the serving path: candidates of the request, row at the logged slot
        r = logged.iloc[[i]].reset_index(drop=True)
        c = feats.candidates_for(r)
        j = np.nonzero((c.item_id == r.item_id[0]) &
                       (c.explanation == feats.explanation_codes(r.explanation_id)[0]))[0][0]
        one = assemble_rows(feats, r, c, shelf=int(r.shelf[0]), position=int(r.position[0]))[j]
        assert np.array_equal(offline[i], one)


def test_snapshot_roundtrip_and_tamper_detection(small_sim, feats, tmp_path):
    out = save_features(feats, tmp_path / "f")
    back = load_features(out)
    ctx = sample_contexts(small_sim.world, 10, np.random.default_rng(1))
    assert np.array_equal(assemble_rows(feats, ctx, feats.candidates_for(ctx)),
                          assemble_rows(back, ctx, back.candidates_for(ctx)))
    assert not list(tmp_path.glob(".f.tmp-*"))
    np.save(out / "cluster.npy", np.zeros_like(feats.cluster))
    with pytest.raises(ValueError, match="does not match manifest"):
        load_features(out)
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        load_features(tmp_path / "nothing")


def test_unknown_items_and_explanations_are_errors(feats):
    ctx = pd.DataFrame({"user_id": [1], "platform": ["ios"], "region": ["SE"],
                        "timestamp": pd.to_datetime(["2026-10-26T10:00:00Z"])})
    bad = CandidateSet(np.array([0]), np.array([10**7]), np.array([0]), 1, np.array([True]))
    with pytest.raises(ValueError, match="not in the feature snapshot's catalog"):
        assemble_rows(feats, ctx, bad)
    with pytest.raises(ValueError, match="explanation id"):
        feats.explanation_codes(np.array(["artist:999999"]))
    with pytest.raises(ValueError, match="unknown features parameter"):
        FeatureParams.from_dict({"embedding_size": 3})


# ---------------------------------------------------------------------- logged response to explanation kinds
def _response_columns():
    names = ("user_kind_lift", "user_kind_log_shows", "user_lift", "user_log_shows")
    return [FEATURE_NAMES.index(n) for n in names]


def test_logged_response_training_rows_do_not_leak_labels(small_sim, feats):
    """A row's own reward never enters its own statistic; the statistic does react to other rows."""
    from bartops.features.logstats import page_folds
    from bartops.reward.train import time_split, training_rows

    imp = small_sim.impressions.reset_index(drop=True)
    train = time_split(imp["timestamp"], 0.2)
    base = training_rows(feats, imp, train, folds=5)
    fold0 = train & (page_folds(imp["request_id"], 5) == 0)
    # flip every label of one fold: that fold's rows (their own labels included) are bit-identical
    changed = imp.assign(reward=np.where(fold0, 1 - imp["reward"], imp["reward"]))
    again = training_rows(feats, changed, train, folds=5)
    assert np.array_equal(base[fold0], again[fold0])
    # ... while the other training rows of users with rows in that fold move (their user-level lift
    # counts the flipped streams), and only the logged-response columns do
    other = train & ~fold0 & imp["user_id"].isin(imp["user_id"][fold0]).to_numpy()
    assert other.sum() > 1000 and (base[other] != again[other]).any(axis=1).all()
    lift_columns = {FEATURE_NAMES.index("user_kind_lift"), FEATURE_NAMES.index("user_lift")}
    assert set(np.nonzero((base != again).any(axis=0))[0]) == lift_columns  # counts of shows do not move
    # validation rows see only training rows: flipping every validation label changes no row at all
    valid_flipped = imp.assign(reward=np.where(~train, 1 - imp["reward"], imp["reward"]))
    assert np.array_equal(training_rows(feats, valid_flipped, train, folds=5), base)


def test_logged_response_is_deterministic_and_order_free(small_sim, feats):
    from bartops.reward.train import time_split, training_rows

    imp = small_sim.impressions.reset_index(drop=True)
    train = time_split(imp["timestamp"], 0.2)
    a = training_rows(feats, imp, train, folds=5)
    assert np.array_equal(a, training_rows(feats, imp, train, folds=5))
    perm = np.random.default_rng(1).permutation(len(imp))  # folds follow page views, not row order
    b = training_rows(feats, imp.iloc[perm].reset_index(drop=True), train[perm], folds=5)
    assert np.array_equal(a[perm], b)
    with pytest.raises(ValueError, match="folds"):
        training_rows(feats, imp, train, folds=1)


def test_training_rows_equal_per_fold_assembly_and_work_on_partitions(small_sim, feats):
    """Rows assembled once with per-fold response columns equal ``assemble_impressions`` of each fold
    with that fold's table; ``rows_from_tables`` of any partition equals the whole set's rows."""
    from bartops.features.logstats import impressions_response_table, page_folds
    from bartops.reward.train import fold_response_tables, rows_from_tables, time_split, training_rows

    imp = small_sim.impressions.reset_index(drop=True)
    train = time_split(imp["timestamp"], 0.2)
    fold = page_folds(imp["request_id"], 4)
    rows = training_rows(feats, imp, train, folds=4)
    tables = fold_response_tables(feats, imp, train, folds=4)
    assert len(tables) == 5
    for k, (source, target) in enumerate([(train & (fold != j), train & (fold == j)) for j in range(4)]
                                         + [(train, ~train)]):
        table = impressions_response_table(feats.explanations, imp[source])
        pd.testing.assert_frame_equal(tables[k], table)
        assert np.array_equal(rows[target], assemble_impressions(feats.with_user_kind(table), imp[target]))
    part = np.random.default_rng(5).random(len(imp)) < 0.3  # any subset, e.g. a Dask partition
    assert np.array_equal(rows_from_tables(feats, imp[part], train[part], tables, 4), rows[part])
    with pytest.raises(ValueError, match="response tables"):
        rows_from_tables(feats, imp, train, tables[:-1], 4)
    with pytest.raises(ValueError, match="train mask"):
        training_rows(feats, imp, train[:-1], folds=4)


def test_snapshot_response_matches_counts_and_cold_users_get_the_prior(small_sim, feats, tmp_path):
    from bartops.features.logstats import explanation_kind_codes
    from bartops.features.store import with_response_stats

    from bartops.features.logstats import time_split

    imp = small_sim.impressions
    # by default only the logs before the training cut (the latest share stays unseen)
    train = time_split(imp["timestamp"], 0.2)
    default = with_response_stats(feats, imp, "test")
    assert default.params["response_source"]["rows"] == train.sum() == default.user_kind["shows"].sum()
    assert pd.Timestamp(default.params["response_source"]["before"]) > imp["timestamp"][train].max()
    f = with_response_stats(feats, imp, "test", validation_fraction=None)
    prior = PARAMS.response_prior
    # hand count for the busiest (user, kind): streams over the slot-and-kind expected streams
    kind = explanation_kind_codes(f.explanations)[f.explanation_codes(imp["explanation_id"])]
    cell_rate = imp.assign(kind=kind).groupby(["shelf", "position", "kind"])["reward"].transform("mean")
    d = imp.assign(kind=kind, expected=cell_rate)
    u, k = d.groupby(["user_id", "kind"]).size().idxmax()
    sel = d[(d.user_id == u) & (d.kind == k)]
    want = (sel.reward.sum() + prior) / (sel.expected.sum() + prior)
    got = f.response_stats(np.array([u]), np.array([k]))
    assert got["user_kind_lift"][0] == pytest.approx(want, rel=1e-12) and got["user_kind_shows"][0] == len(sel)

    # a user unknown to the logs (and to the snapshot) and a known user: rows through assemble_rows
    unknown = int(max(f.user_ids.max(), imp.user_id.max())) + 1
    ctx = pd.DataFrame({"user_id": [unknown, int(u)], "platform": ["ios", "web"], "region": ["SE", "US"],
                        "timestamp": pd.to_datetime(["2026-10-26T10:00:00Z"] * 2)})
    c = f.candidates_for(ctx)
    rows = assemble_rows(f, ctx, c)
    lift, shows, ulift, ushows = _response_columns()
    cold = c.page == 0
    assert (rows[cold, lift] == 1).all() and (rows[cold, shows] == 0).all()
    assert (rows[cold, ulift] == 1).all() and (rows[cold, ushows] == 0).all()
    assert (rows[~cold, ushows] == np.float32(np.log1p((imp.user_id == u).sum()))).all()
    # no logs at all: every user gets the prior
    assert (assemble_rows(feats, ctx, c)[:, [lift, ulift]] == 1).all()
    # the table travels with the snapshot
    back = load_features(save_features(f, tmp_path / "f"))
    assert np.array_equal(assemble_rows(back, ctx, c), rows)
    assert back.params["response_source"] == {"rows": len(imp), "data_version": "test", "before": None}


def test_logged_response_tracks_the_true_response(small_sim, feats):
    """The lift ranks users' true response to each kind: rank correlation above 4 null standard errors."""
    from scipy.stats import spearmanr

    from bartops.features.store import with_response_stats

    f = with_response_stats(feats, small_sim.impressions)
    t = f.user_kind[f.user_kind["shows"] >= 20]
    lift = f.response_stats(t.user_id.to_numpy(), t.kind.to_numpy())["user_kind_lift"]
    truth = small_sim.world.response[t.user_id.to_numpy(), t.kind.to_numpy()]
    # within each kind (the kind mean is divided out of the lift), pooled
    rho = np.mean([spearmanr(lift[t.kind == k], truth[t.kind == k])[0] for k in np.unique(t.kind)])
    # under no relation each kind's rho ≈ N(0, 1/n_k), so their mean ≈ N(0, 1/(K·mean n_k)) = N(0, 1/len(t))
    assert rho > 4 / np.sqrt(len(t)), (rho, len(t))
