"""The shared layer: determinism, candidates, cold start, similar items, one assembly path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bartops.features.assemble import FEATURE_NAMES, assemble_impressions, assemble_rows
from bartops.features.store import build_features_from_frames, decay_weights, load_features, save_features
from bartops.config import FeatureParams
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


def test_rows_do_not_depend_on_the_assembly_block_or_the_hour_shortcut(small_sim, feats, monkeypatch):
    """Blocks of rows (``ROW_BLOCK``) give the same bits as one block; the local hour is ``local_hour``'s."""
    import bartops.features.assemble as assemble
    from bartops.context import REGIONS, local_hour

    logged = small_sim.impressions.iloc[:5000].reset_index(drop=True)
    whole = assemble_impressions(feats, logged)
    monkeypatch.setattr(assemble, "ROW_BLOCK", 777)  # blocks of every size, the last one short
    assert np.array_equal(assemble_impressions(feats, logged), whole)
    # hours across years, both sides of the epoch, every region's offset
    rng = np.random.default_rng(2)
    ts = pd.Series(pd.to_datetime(rng.integers(-2 * 10**9, 2 * 10**9, 400), unit="s", utc=True))
    ctx = pd.DataFrame({"user_id": np.full(400, int(feats.user_ids[0])), "platform": "ios",
                        "region": rng.choice(list(REGIONS), 400), "timestamp": ts})
    one = CandidateSet(page=np.arange(400), item_id=np.full(400, int(feats.item_ids[0])),
                       explanation=np.zeros(400, np.int64), n_pages=400, choosable=np.ones(400, bool))
    rows = assemble_rows(feats, ctx, one)
    assert np.array_equal(rows[:, FEATURE_NAMES.index("local_hour")], local_hour(ts, ctx["region"]))


def _reference_candidate_table(users, items, history, explanations, now, params):
    """The candidate table's specification in pandas joins (the implementation works on arrays)."""
    code = pd.Series(np.arange(len(explanations)), index=explanations["explanation_id"].to_numpy())
    h = history.merge(items[["item_id", "artist_id", "genre", "mood"]], on="item_id", how="inner")
    by_pop = items.sort_values(["popularity", "item_id"], ascending=[False, True])
    parts = []
    for column, kind, k, n in (("artist_id", "artist", params.top_artists, params.items_per_artist),
                               ("genre", "genre", params.top_genres, params.items_per_genre),
                               ("mood", "mood", params.top_moods, params.items_per_mood)):
        counts = h.groupby(["user_id", column]).size().rename("plays").reset_index()
        counts = counts.sort_values(["user_id", "plays", column], ascending=[True, False, True])
        top = counts.groupby("user_id", sort=False).head(k)[["user_id", column]]
        fallback = h[column].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:k]
        cold = users.loc[~users["user_id"].isin(top["user_id"]), ["user_id"]].merge(
            pd.DataFrame({column: list(fallback)}), how="cross")
        pairs = pd.concat([top, cold]).merge(by_pop.groupby(column, sort=False).head(n)[[column, "item_id"]], on=column)
        pairs["explanation"] = code.loc[kind + ":" + pairs[column].astype(str)].to_numpy()
        parts.append(pairs[["user_id", "explanation", "item_id"]])
    from bartops.features.candidates import regional_popularity

    top_region = (regional_popularity(items).sort_values(["region", "regional_popularity", "item_id"],
                                                         ascending=[True, False, True])
                  .groupby("region", sort=False).head(params.items_per_region))
    pairs = users[["user_id", "region"]].astype({"region": str}).merge(top_region[["region", "item_id"]], on="region")
    pairs["explanation"] = code.loc["region:" + pairs["region"]].to_numpy()
    parts.append(pairs[["user_id", "explanation", "item_id"]])
    release = pd.to_datetime(items["release_date"], utc=True)
    fresh = items[(release <= now) & (release > now - pd.Timedelta(days=params.new_release_days))]
    fresh = fresh.sort_values(["popularity", "item_id"], ascending=[False, True]).head(params.items_new)
    parts.append(users[["user_id"]].merge(fresh[["item_id"]], how="cross").assign(explanation=int(code.loc["new"])))
    out = pd.concat([p[["user_id", "explanation", "item_id"]] for p in parts], ignore_index=True).astype(np.int64)
    return out.drop_duplicates().sort_values(["user_id", "explanation", "item_id"], ignore_index=True)


def test_candidate_tables_equal_their_pandas_specification(small_sim, feats):
    from bartops.context import REGIONS
    from bartops.features.candidates import candidate_table, cold_start_table
    from bartops.config import CandidateParams

    w, now = small_sim.world, pd.Timestamp(feats.params["now"])
    # shuffled catalog, a user subset (the history also has users the table lacks), a sample of plays
    items = w.items.sample(frac=1, random_state=1)
    users = w.users.sample(frac=0.6, random_state=2)
    history = small_sim.history.sample(frac=0.5, random_state=3)
    for params in (CandidateParams(), CandidateParams(top_artists=0, top_genres=3, items_per_mood=10_000,
                                                      items_new=0, items_per_region=7)):
        want = _reference_candidate_table(users, items, history, w.explanations, now, params)
        pd.testing.assert_frame_equal(candidate_table(users, items, history, w.explanations, now, params), want)
        # cold start: a user per region (id -1 - region code) without plays of their own, so the whole
        # history's top keys; the history is given to another user so that it still counts
        pseudo = pd.DataFrame({"user_id": -1 - np.arange(len(REGIONS)), "region": list(REGIONS)})
        want = _reference_candidate_table(pseudo, items, history.assign(user_id=10**9), w.explanations, now, params)
        cold = cold_start_table(items, history, w.explanations, now, params)
        got = pd.DataFrame({"user_id": -1 - pd.Index(list(REGIONS)).get_indexer(cold["region"].astype(str)),
                            "explanation": cold["explanation"], "item_id": cold["item_id"]})
        pd.testing.assert_frame_equal(got.sort_values(["user_id", "explanation", "item_id"], ignore_index=True),
                                      want[want.user_id < 0].reset_index(drop=True))
    # a play-count table gives the pairs of its repeated rows
    counts = history.groupby(["user_id", "item_id"]).size().rename("plays").reset_index()
    pd.testing.assert_frame_equal(cold_start_table(items, counts, w.explanations, now),
                                  cold_start_table(items, history, w.explanations, now))
    with pytest.raises(KeyError, match="new"):
        candidate_table(users, items, history, w.explanations[w.explanations.kind != "new"], now)


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
    with pytest.raises(ValueError, match="unknown key.*'embedding_size'.*in 'features:'"):
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


def test_grouping_by_counting_or_sorting_gives_the_same_tables():
    """``group_codes`` equals ``np.unique`` for dense and for sparse keys, so user ids of any size give
    the same response tables (the sums over rows in order are bit-identical)."""
    from bartops.features.arrays import group_codes
    from bartops.features.logstats import response_table, response_tables

    rng = np.random.default_rng(7)
    for key in (rng.integers(-50, 50, 5000), rng.integers(0, 2**40, 5000), np.zeros(0, np.int64)):
        want = np.unique(key, return_inverse=True)
        got = group_codes(key)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1].ravel())
    n = 20_000
    user, kind = rng.integers(0, 300, n), rng.integers(0, 5, n)
    shelf, position, reward = rng.integers(0, 6, n), rng.integers(0, 8, n), (rng.random(n) < 0.2).astype(float)
    sources = [rng.random(n) < 0.7, np.ones(n, bool), np.zeros(n, bool)]
    dense = response_tables(user, kind, shelf, position, reward, sources)
    sparse = response_tables(user * 10**9, kind, shelf, position, reward, sources)
    for s, d, sp in zip(sources, dense, sparse):
        pd.testing.assert_frame_equal(d, sp.assign(user_id=sp.user_id // 10**9))
        if s.any():
            pd.testing.assert_frame_equal(d, response_table(user[s], kind[s], shelf[s], position[s], reward[s]))
    assert len(dense[2]) == 0


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
