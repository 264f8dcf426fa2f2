"""The shared layer: affinities, co-listening embeddings, clusters, similar items and candidates.

``build_features`` is pure (data frames in, a ``Features`` snapshot out); ``save_features`` writes
the snapshot as parquet + .npy files + ``manifest.json`` (with a content hash as its version) atomically,
and ``load_features`` reads it back.  No pickles.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bartops.config import FeatureParams, Params
from bartops.context import REGIONS, region_code
from bartops.faults import crash_point
from bartops.features.candidates import (
    candidate_pairs,
    candidates_for_requests,
    cold_start_pairs,
    explanation_table,
    regional_popularity,
)
from bartops.leftovers import OLD, make_temp_dir, recover_leftovers, temp_path
from bartops.features.logstats import (
    USER_KIND_COLUMNS,
    batches_version,
    empty_user_kind,
    explanation_kind_codes,
    impressions_response_table,
    lift,
    time_split,
)
from bartops.features.partitions import (IN_PROCESS, Executor, Partition, page_partitions, parquet_columns,
                                         read_partition, read_user_partition, user_partitions)
from bartops.features.arrays import native_threads
from bartops.policy.page import CandidateSet

FORMAT_VERSION = 2  # 2: adds user_kind (response to explanation kinds from the impression logs)
SNAPSHOT_TABLES = ("items", "explanations", "users", "candidates", "cold_candidates",
                   "user_artist", "user_genre", "user_mood", "user_item", "user_cluster",
                   "similar_items", "item_stats", "user_kind")
SNAPSHOT_ARRAYS = ("item_ids", "item_emb", "user_ids", "user_emb", "user_plays", "cluster")




def _sorted_lookup(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each query in the sorted unique ``keys``."""
    if len(keys) == 0:
        return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
    pos = np.searchsorted(keys, query)
    pos_c = np.minimum(pos, len(keys) - 1)
    return pos_c, keys[pos_c] == query


@dataclass(frozen=True)
class SnapshotSummary:
    """What a feature build wrote (the `build-features` flow's result): where, which version, its sizes."""

    out: str
    version: str
    items: int
    users: int
    candidates: int  # (user, explanation, item) pairs
    clusters: int
    now: str | None  # the snapshot's reference time
    logged_rows: int  # validated impressions behind the logged response to explanation kinds

    @staticmethod
    def of(features: "Features", out: str | Path) -> "SnapshotSummary":
        return SnapshotSummary(str(out), features.version, len(features.item_ids), len(features.user_ids),
                               len(features.candidates), int(features.cluster.max()) + 1,
                               features.params.get("now"), int(features.params["response_source"]["rows"]))


@dataclass
class Features:
    """A shared-layer snapshot.  Tables are pandas frames, dense arrays numpy; ids are int64.

    - ``items``/``explanations``: the catalog (explanation code = row number);
    - ``users`` (user_id, region); ``candidates`` (user_id, explanation, item_id), canonical order;
      ``cold_candidates`` (region, explanation, item_id) for users the table does not know;
    - affinities ``user_artist`` (user_id, artist_id, affinity), ``user_genre``, ``user_mood``,
      ``user_item`` (time-decayed plays), ``user_cluster`` (share of decayed plays per cluster);
    - ``item_emb`` (items × d, rows in ``item_ids`` order), ``user_emb`` (rows in ``user_ids``
      order), ``cluster`` per item, ``similar_items`` (item_id, rank, similar_item_id, score),
      ``item_stats`` (item_id, plays, log_popularity, ...);
    - ``user_kind`` (user_id, kind, shows, streams, expected): each user's logged response to each
      explanation kind (``bartops.features.logstats``); empty when no validated logs were given.
    """

    items: pd.DataFrame
    explanations: pd.DataFrame
    users: pd.DataFrame
    candidates: pd.DataFrame
    cold_candidates: pd.DataFrame
    user_artist: pd.DataFrame
    user_genre: pd.DataFrame
    user_mood: pd.DataFrame
    user_item: pd.DataFrame
    user_cluster: pd.DataFrame
    similar_items: pd.DataFrame
    item_stats: pd.DataFrame
    item_ids: np.ndarray
    item_emb: np.ndarray
    user_ids: np.ndarray
    user_emb: np.ndarray
    user_plays: np.ndarray
    cluster: np.ndarray
    user_kind: pd.DataFrame = field(default_factory=empty_user_kind)
    params: dict[str, Any] = field(default_factory=dict)
    version: str = "unsaved"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ lookups
    def item_index(self, item_id: np.ndarray) -> np.ndarray:
        """Row of each item in the catalog arrays; ValueError naming items the catalog lacks."""
        pos, found = _sorted_lookup(self.item_ids, np.asarray(item_id, np.int64))
        if not found.all():
            bad = np.unique(np.asarray(item_id)[~found])[:5].tolist()
            raise ValueError(f"item id(s) {bad} are not in the feature snapshot's catalog (version {self.version})")
        return pos

    def user_index(self, user_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in user arrays, known) per user; unknown users are cold start."""
        return _sorted_lookup(self.user_ids, np.asarray(user_id, np.int64))

    def pair_value(self, table: str, user_id: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Value of a (user_id, key) affinity table for each query pair, 0 where absent."""
        if table not in self._cache:
            df = getattr(self, table)
            cols = list(df.columns)
            u = df[cols[0]].to_numpy(np.int64)
            k = df[cols[1]].to_numpy(np.int64)
            combined = u * (1 << 32) + k
            order = np.argsort(combined, kind="stable")
            self._cache[table] = (combined[order], df[cols[2]].to_numpy(np.float64)[order])
        keys, values = self._cache[table]
        q = np.asarray(user_id, np.int64) * (1 << 32) + np.asarray(key, np.int64)
        pos, found = _sorted_lookup(keys, q)
        return np.where(found, values[pos] if len(values) else 0.0, 0.0)

    def response_stats(self, user_id: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
        """Logged response of each (user, kind code): ``user_kind_lift``, ``user_kind_shows``,
        ``user_lift`` and ``user_shows`` (all kinds); users without logs get lift 1 and 0 shows."""
        if "user_kind" not in self._cache:
            t = self.user_kind
            u = t["user_id"].to_numpy(np.int64)
            keys = u * 16 + t["kind"].to_numpy(np.int64)
            order = np.argsort(keys, kind="stable")
            uu, uinv = np.unique(u, return_inverse=True)
            per_user = {c: np.bincount(uinv, weights=t[c].to_numpy(np.float64), minlength=len(uu))
                        for c in ("shows", "streams", "expected")}
            self._cache["user_kind"] = (keys[order], {c: t[c].to_numpy(np.float64)[order] for c in ("shows", "streams", "expected")},
                                        uu, per_user)
        keys, vals, uu, per_user = self._cache["user_kind"]
        prior = float(self.params.get("response_prior", FeatureParams.response_prior))
        user_id = np.asarray(user_id, np.int64)
        pos, found = _sorted_lookup(keys, user_id * 16 + np.asarray(kind, np.int64))
        get = lambda d, c, p, f: np.where(f, d[c][p] if len(d[c]) else 0.0, 0.0)  # noqa: E731
        upos, ufound = _sorted_lookup(uu, user_id)
        return {
            "user_kind_lift": lift(get(vals, "streams", pos, found), get(vals, "expected", pos, found), prior),
            "user_kind_shows": get(vals, "shows", pos, found),
            "user_lift": lift(get(per_user, "streams", upos, ufound), get(per_user, "expected", upos, ufound), prior),
            "user_shows": get(per_user, "shows", upos, ufound),
        }

    def with_user_kind(self, table: pd.DataFrame, source: dict[str, Any] | None = None) -> "Features":
        """A copy of the snapshot whose logged-response table is ``table`` (other tables shared).

        ``source`` (e.g. rows and data version) is recorded in ``params["response_source"]``.
        """
        missing = [c for c in USER_KIND_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"user_kind table lacks column(s) {missing}")
        params = dict(self.params)
        if source is not None:
            params["response_source"] = source
        cache = {k: v for k, v in self._cache.items() if k != "user_kind"}
        return replace(self, user_kind=table[list(USER_KIND_COLUMNS)].reset_index(drop=True),
                       params=params, version="unsaved", _cache=cache)

    def code_of(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes per catalog row, vocabulary) for a categorical item column (genre, mood)."""
        key = ("code", column)
        if key not in self._cache:
            vocab, codes = np.unique(self.items[column].astype(str).to_numpy(), return_inverse=True)
            self._cache[key] = (codes.astype(np.int64), vocab)
        return self._cache[key]

    def release_ns(self) -> np.ndarray:
        """Release date of each catalog row as UTC nanoseconds."""
        if "release_ns" not in self._cache:
            rel = pd.to_datetime(self.items["release_date"], utc=True).dt.tz_convert(None)
            self._cache["release_ns"] = rel.to_numpy("datetime64[ns]").astype(np.int64)
        return self._cache["release_ns"]

    def home_region_code(self) -> np.ndarray:
        """Home region code of each catalog row."""
        if "home_region" not in self._cache:
            self._cache["home_region"] = region_code(self.items["home_region"].astype(str).to_numpy())
        return self._cache["home_region"]

    def explanation_codes(self, explanation_id: np.ndarray | pd.Series) -> np.ndarray:
        """Integer codes of explanation ids; ValueError naming unknown ids.

        Each distinct id is looked up once (``pd.factorize``), so a million logged rows cost little.
        """
        if "explanation_index" not in self._cache:
            self._cache["explanation_index"] = pd.Index(self.explanations["explanation_id"].astype(str))
        values = explanation_id if isinstance(explanation_id, pd.Series) else np.asarray(explanation_id, dtype=object)
        inverse, distinct = pd.factorize(values, use_na_sentinel=False)
        ids = np.asarray(distinct, dtype=object).astype(str)
        found = self._cache["explanation_index"].get_indexer(ids)
        if (found < 0).any():
            bad = sorted(set(ids[found < 0]))[:5]
            raise ValueError(f"explanation id(s) {bad} are not in the feature snapshot (version {self.version})")
        return found.astype(np.int64)[inverse]

    def kind_codes(self, explanation: np.ndarray) -> np.ndarray:
        """Kind code (index in ``EXPLANATION_KINDS``) of explanation codes (``explanation_codes``)."""
        if "kind_of_explanation" not in self._cache:
            self._cache["kind_of_explanation"] = explanation_kind_codes(self.explanations)
        return self._cache["kind_of_explanation"][explanation]

    # ------------------------------------------------------------------ candidates
    def candidates_for(self, contexts: pd.DataFrame) -> CandidateSet:
        """One page of candidates per context row; users the table lacks get the cold-start set.

        Cold start = the region's popular items, new releases and the globally most played
        artists, genres and moods (``cold_candidates`` of the context's region).
        """
        for col in ("user_id", "region"):
            if col not in contexts.columns:
                raise ValueError(f"contexts lack column {col!r}")
        if "combined" not in self._cache:
            cold = self.cold_candidates
            rc = region_code(cold["region"]) if len(cold) else np.zeros(0, np.int64)
            cold_tab = pd.DataFrame({"user_id": -1 - rc, "explanation": cold["explanation"].to_numpy(np.int64),
                                     "item_id": cold["item_id"].to_numpy(np.int64)})
            both = pd.concat([cold_tab, self.candidates[["user_id", "explanation", "item_id"]]], ignore_index=True)
            both = both.sort_values(["user_id", "explanation", "item_id"], ignore_index=True)
            self._cache["combined"] = both
            self._cache["table_users"] = np.unique(self.candidates["user_id"].to_numpy(np.int64))
        uid = contexts["user_id"].to_numpy(np.int64)
        _, known = _sorted_lookup(self._cache["table_users"], uid)
        key = uid.copy()
        if (~known).any():
            key[~known] = -1 - region_code(contexts["region"].to_numpy()[~known])
        return candidates_for_requests(self._cache["combined"], key)

    def similar_to(self, item_id: int, n: int = 10) -> np.ndarray:
        """The ``n`` items most similar to ``item_id`` (stored table; at most features.similar_items)."""
        self.item_index(np.array([item_id]))
        s = self.similar_items
        rows = s[s["item_id"] == item_id].sort_values("rank")
        return rows["similar_item_id"].to_numpy(np.int64)[:n]


# ---------------------------------------------------------------------- building
def decay_weights(timestamps: pd.Series, now: pd.Timestamp, half_life_days: float) -> np.ndarray:
    """exp(-ln2 · age / half-life) for each play (age in days before ``now``, at least 0)."""
    ts = pd.to_datetime(timestamps, utc=True)
    age = np.maximum((now - ts).dt.total_seconds().to_numpy() / 86400.0, 0.0)
    return np.exp(-np.log(2.0) * age / half_life_days)


def _affinity(h: pd.DataFrame, column: str) -> pd.DataFrame:
    """(user_id, column, affinity): a user's share of decayed plays on each key."""
    g = h.groupby(["user_id", column], observed=True, sort=True)["w"].sum().rename("affinity").reset_index()
    total = g.groupby("user_id")["affinity"].transform("sum")
    g["affinity"] = (g["affinity"] / total).astype(np.float64)
    return g


def co_listening_embeddings(user_idx: np.ndarray, item_idx: np.ndarray, weight: np.ndarray,
                            n_users: int, n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """User and item embeddings from a truncated SVD of the log-weighted user × item matrix.

    Cells are log1p(decayed plays), columns scaled by 1/sqrt(item user count) (down-weights hits).
    Returns (user_emb U·√Σ, item_emb V·√Σ) so that their dot product approximates the matrix.
    """
    from sklearn.utils.extmath import randomized_svd

    m = sp.coo_matrix((weight, (user_idx, item_idx)), shape=(n_users, n_items)).tocsr()
    m.sum_duplicates()
    m.data = np.log1p(m.data)
    users_per_item = np.asarray((m > 0).sum(axis=0)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(users_per_item, 1))
    m = m @ sp.diags(scale)
    k = int(min(dim, max(1, min(n_users, n_items) - 1)))
    u, s, vt = randomized_svd(m, n_components=k, n_iter=6, random_state=seed)
    # fix the sign of each component so the result does not depend on the solver's sign choice
    sign = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    sign[sign == 0] = 1
    u, vt = u * sign, vt * sign[:, None]
    root = np.sqrt(s)
    user_emb = np.zeros((n_users, dim), np.float32)
    item_emb = np.zeros((n_items, dim), np.float32)
    user_emb[:, :k] = u * root
    item_emb[:, :k] = vt.T * root
    return user_emb, item_emb


def content_matrix(items: pd.DataFrame) -> np.ndarray:
    """Standardised audio features plus one-hot genre, mood and tags (one row per item)."""
    audio_cols = [c for c in ("danceability", "energy", "valence", "acousticness", "tempo") if c in items]
    audio = items[audio_cols].to_numpy(np.float64) if audio_cols else np.zeros((len(items), 0))
    if audio.shape[1]:
        audio = (audio - audio.mean(0)) / np.maximum(audio.std(0), 1e-9)
    parts = [audio]
    tags = items["tags"].astype(str).str.get_dummies(sep=",") if "tags" in items else None
    for col in ("genre", "mood"):
        if col in items:
            parts.append(pd.get_dummies(items[col].astype(str)).to_numpy(np.float64))
    if tags is not None and tags.shape[1]:
        parts.append(0.5 * tags.to_numpy(np.float64))
    return np.hstack(parts)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)


def most_similar(item_emb: np.ndarray, content: np.ndarray, n: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` most similar items of every item (itself excluded), with cosine scores.

    Similarity is the cosine of the co-listening embeddings; items never played (zero embedding)
    fall back to the cosine of their content vectors.  Ties go to the lower row.
    """
    emb = _normalise(item_emb.astype(np.float64))
    con = _normalise(content)
    cold = ~(np.abs(item_emb).sum(axis=1) > 0)
    N = len(emb)
    n = min(n, N - 1)
    idx_out = np.zeros((N, n), np.int64)
    score_out = np.zeros((N, n))
    for lo in range(0, N, chunk):
        hi = min(lo + chunk, N)
        sim = emb[lo:hi] @ emb.T
        c = cold[lo:hi]
        if c.any():
            sim[c] = con[lo:hi][c] @ con.T
        sim[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
        part = np.argpartition(-sim, n - 1, axis=1)[:, :n] if n < N else np.argsort(-sim, axis=1)
        ps = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)
        idx_out[lo:hi] = np.take_along_axis(part, order, axis=1)
        score_out[lo:hi] = np.take_along_axis(ps, order, axis=1)
    return idx_out, score_out


def item_clusters(item_emb: np.ndarray, content: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster of each item on [normalised embedding, normalised content]."""
    from sklearn.cluster import KMeans

    x = np.hstack([_normalise(item_emb.astype(np.float64)), 0.5 * _normalise(content)])
    k = int(min(k, len(x)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed, max_iter=200)
    return km.fit_predict(x).astype(np.int64)


def midnight_after(last_play: pd.Timestamp) -> pd.Timestamp:
    """The midnight after ``last_play`` (UTC; itself when it is a midnight)."""
    last = pd.Timestamp(last_play)
    last = last.tz_localize("UTC") if last.tzinfo is None else last.tz_convert("UTC")
    return last.ceil("D") if last != last.floor("D") else last


def snapshot_now(params: FeatureParams, last_play: pd.Timestamp | None) -> pd.Timestamp:
    """The snapshot's reference time (UTC): ``features.now``, else the midnight after the last play."""
    if params.now:
        now = pd.Timestamp(params.now)
        return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    if last_play is None or pd.isna(last_play):
        raise ValueError("history is empty: cannot choose the snapshot's reference time (set features.now)")
    return midnight_after(last_play)


HISTORY_SUM_COLUMNS = ("user_id", "item_id", "plays", "w")


def history_sums(history: pd.DataFrame, item_ids: np.ndarray, now: pd.Timestamp, half_life_days: float
                 ) -> pd.DataFrame:
    """(user_id, item_id, plays, w) of the plays of catalog items, sorted by key: the play count and
    the summed decay weight (``decay_weights``) of each user × item pair.

    Everything the snapshot takes from the history derives from this table.  The tables of a history
    split by user (each user's plays in one part, in order) concatenate to the whole history's table
    exactly (``add_history_sums``): a partitioned build reduces them and finishes locally.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in history.columns]
    if missing:
        raise ValueError(f"history table lacks column(s) {missing}")
    h = history.loc[history["item_id"].isin(np.asarray(item_ids, np.int64)), ["user_id", "item_id", "timestamp"]]
    h = h.assign(w=decay_weights(h["timestamp"], now, half_life_days))
    g = h.groupby(["user_id", "item_id"], sort=True)["w"].agg(plays="size", w="sum").reset_index()
    return g.astype({"user_id": np.int64, "item_id": np.int64, "plays": np.int64, "w": np.float64})


def add_history_sums(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The ``history_sums`` of the union of history parts (plays and weights added by key, sorted)."""
    frame = pd.concat([t[list(HISTORY_SUM_COLUMNS)] for t in tables], ignore_index=True)
    g = frame.groupby(["user_id", "item_id"], sort=True)[["plays", "w"]].sum().reset_index()
    return g.astype({"user_id": np.int64, "item_id": np.int64, "plays": np.int64, "w": np.float64})


def _check_catalog(items: pd.DataFrame, users: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    for name, df, cols in (("items", items, ("item_id", "artist_id", "genre", "mood", "popularity",
                                             "release_date", "home_region")),
                           ("users", users, ("user_id", "region"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}")
    if len(items) == 0:
        raise ValueError("items table is empty: no catalog to build features from")
    items = items.sort_values("item_id", ignore_index=True)
    users = users.sort_values("user_id", ignore_index=True)
    if items["item_id"].duplicated().any():
        raise ValueError("items table has duplicate item_id values")
    return items, users


def build_features_from_frames(
    items: pd.DataFrame,
    users: pd.DataFrame,
    history: pd.DataFrame,
    params: FeatureParams,
    seed: int = 0,
    explanations: pd.DataFrame | None = None,
) -> Features:
    """The shared-layer snapshot from catalog, users and listening history (pure).

    ``features_from_history_sums`` of the history's ``history_sums``.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in history.columns]
    if missing:
        raise ValueError(f"history table lacks column(s) {missing}")
    items, users = _check_catalog(items, users)
    last = pd.to_datetime(history["timestamp"], utc=True).max() if len(history) else None
    now = snapshot_now(params, last)
    sums = history_sums(history, items["item_id"].to_numpy(np.int64), now, params.half_life_days)
    return features_from_history_sums(items, users, sums, now, params, seed, explanations)


def features_from_history_sums(
    items: pd.DataFrame,
    users: pd.DataFrame,
    sums: pd.DataFrame,
    now: pd.Timestamp,
    params: FeatureParams,
    seed: int = 0,
    explanations: pd.DataFrame | None = None,
) -> Features:
    """The snapshot from the catalog, users and the history's ``history_sums`` (the local finishing:
    affinities, SVD embeddings, k-means clusters, similar items, item statistics, candidate tables).

    Runs with one native thread (``native_threads``): faster at these sizes, and core-count free.
    """
    missing = [c for c in HISTORY_SUM_COLUMNS if c not in sums.columns]
    if missing:
        raise ValueError(f"history sums lack column(s) {missing}")
    with native_threads():
        return _features_from_history_sums(items, users, sums, now, params, seed, explanations)


def _features_from_history_sums(items: pd.DataFrame, users: pd.DataFrame, sums: pd.DataFrame, now: pd.Timestamp,
                                params: FeatureParams, seed: int, explanations: pd.DataFrame | None) -> Features:
    items, users = _check_catalog(items, users)
    explanations = explanation_table(items) if explanations is None else explanations.reset_index(drop=True)
    item_ids = items["item_id"].to_numpy(np.int64)
    user_ids = users["user_id"].to_numpy(np.int64)
    sums = sums.sort_values(["user_id", "item_id"], ignore_index=True)

    h = sums[sums["item_id"].isin(item_ids) & sums["user_id"].isin(user_ids)]
    h = h.merge(items[["item_id", "artist_id", "genre", "mood"]], on="item_id", how="inner")

    # affinities (shares of decayed plays); genre and mood as codes of their sorted names
    ui = np.searchsorted(user_ids, h["user_id"].to_numpy(np.int64))
    ii = np.searchsorted(item_ids, h["item_id"].to_numpy(np.int64))
    user_artist = _affinity(h, "artist_id")
    genre_names, genre_of_item = np.unique(items["genre"].astype(str).to_numpy(), return_inverse=True)
    mood_names, mood_of_item = np.unique(items["mood"].astype(str).to_numpy(), return_inverse=True)
    genre_codes = {g: i for i, g in enumerate(genre_names)}
    mood_codes = {m: i for i, m in enumerate(mood_names)}
    hg = h[["user_id", "w"]].assign(genre=genre_of_item.astype(np.int64)[ii], mood=mood_of_item.astype(np.int64)[ii])
    user_genre = _affinity(hg, "genre")
    user_mood = _affinity(hg, "mood")
    user_item = h[["user_id", "item_id", "w"]].rename(columns={"w": "plays"}).reset_index(drop=True)

    # embeddings, clusters, similar items
    user_emb, item_emb = co_listening_embeddings(ui, ii, h["w"].to_numpy(), len(user_ids), len(item_ids),
                                                 params.embedding_dim, seed)
    content = content_matrix(items)
    cluster = item_clusters(item_emb, content, params.clusters, seed)
    sim_idx, sim_score = most_similar(item_emb, content, params.similar_items)
    k = sim_idx.shape[1]
    similar = pd.DataFrame({
        "item_id": np.repeat(item_ids, k),
        "rank": np.tile(np.arange(k, dtype=np.int64), len(item_ids)),
        "similar_item_id": item_ids[sim_idx.ravel()],
        "score": sim_score.ravel(),
    })
    hc = h.assign(cluster=cluster[ii])
    user_cluster = _affinity(hc, "cluster")

    # item statistics and user activity
    plays = h["plays"].to_numpy(np.float64)
    plays_per_item = np.bincount(ii, weights=plays, minlength=len(item_ids))
    release = pd.to_datetime(items["release_date"], utc=True)
    item_stats = pd.DataFrame({
        "item_id": item_ids,
        "plays": plays_per_item,
        "log_popularity": np.log(np.maximum(items["popularity"].to_numpy(np.float64), 1e-12)),
        "release_age_days": ((now - release).dt.total_seconds() / 86400.0).to_numpy(),
    })
    user_plays = np.bincount(ui, weights=plays, minlength=len(user_ids)).astype(np.float64)

    # candidates count plays per user and key (the play counts of every user × item pair of the history)
    cand = candidate_pairs(users["user_id"].to_numpy(np.int64), users["region"].to_numpy(), items, sums,
                           explanations, now=now, params=params.candidates)
    cold = cold_start_pairs(items, sums, explanations, now=now, params=params.candidates)

    return Features(
        items=items, explanations=explanations, users=users[["user_id", "region"]].copy(),
        candidates=cand, cold_candidates=cold,
        user_artist=user_artist, user_genre=user_genre, user_mood=user_mood, user_item=user_item,
        user_cluster=user_cluster, similar_items=similar, item_stats=item_stats,
        item_ids=item_ids, item_emb=item_emb, user_ids=user_ids, user_emb=user_emb,
        user_plays=user_plays, cluster=cluster, user_kind=empty_user_kind(),
        params={**params.to_dict(), "response_source": {"rows": 0, "data_version": None}, "seed": int(seed), "now": now.isoformat(),
                "genres": list(genre_codes), "moods": list(mood_codes)},
    )


def with_response_stats(features: Features, impressions: pd.DataFrame, data_version: str | None = None,
                        validation_fraction: float | None = 0.2) -> Features:
    """The snapshot with ``user_kind`` from the logged impressions before the training cut.

    The cut is ``time_split(timestamps, validation_fraction)`` — the split training uses — so
    the latest share of the logs never informs the snapshot (``None`` = use every row).
    """
    before = None
    if validation_fraction is not None and len(impressions):
        train = time_split(impressions["timestamp"], validation_fraction)
        before = pd.to_datetime(impressions["timestamp"], utc=True)[~train].min().isoformat()
        columns = [c for c in ("user_id", "explanation_id", "shelf", "position", "reward") if c in impressions]
        impressions = impressions.loc[train, columns]  # only the columns the table reads
    table = impressions_response_table(features.explanations, impressions)
    return features.with_user_kind(table, {"rows": int(len(impressions)), "data_version": data_version,
                                           "before": before})


RESPONSE_ROW_COLUMNS = ["timestamp", "user_id", "explanation_id", "shelf", "position", "reward"]


def partition_last_play(part: Partition) -> pd.Timestamp | None:
    """The latest play of a history partition (None when it is empty)."""
    ts = read_user_partition(part, ["timestamp"])["timestamp"]
    return pd.to_datetime(ts, utc=True).max() if len(ts) else None


def partition_history_sums(part: Partition, item_ids: np.ndarray, now: pd.Timestamp,
                           half_life_days: float) -> pd.DataFrame:
    """``history_sums`` of a history partition's plays."""
    return history_sums(read_user_partition(part, ["item_id", "timestamp"]), item_ids, now, half_life_days)


def partition_response_rows(part: Partition) -> pd.DataFrame:
    """The columns of a batch partition (conformed) that the logged-response table reads."""
    return read_partition(part)[RESPONSE_ROW_COLUMNS]


def build_features(data_dir: Path, params: Params, impressions_dir: Path | None = None,
                   executor: Executor = IN_PROCESS, partition_rows: int | None = None) -> Features:
    """Features from the raw data folder (items, users, explanations, history parquet) and the
    validated impression batches in ``impressions_dir``.

    Reads ``params.features``, ``params.seed`` and ``params.reward.validation_fraction``.  Without
    validated batches (first run, or ``impressions_dir`` None) ``user_kind`` is empty: every user gets
    the prior.  ``executor`` runs the per-partition work (``history_sums`` of user partitions of the
    history, about ``partition_rows`` rows each, and the batches' response rows); the catalog, the users and the finish run here.  Each user's plays lie
    in one partition, so the snapshot is the same whatever the partitions.
    """
    data_dir = Path(data_dir)
    frames = {}
    for name in ("items", "users", "explanations"):
        path = data_dir / f"{name}.parquet"
        if not path.exists():
            if name == "explanations":
                frames[name] = None
                continue
            raise FileNotFoundError(f"{path} not found: run `bartops simulate` (or provide the catalog) first")
        frames[name] = pd.read_parquet(path)
    history = data_dir / "history.parquet"
    if not history.exists():
        raise FileNotFoundError(f"{history} not found: run `bartops simulate` (or provide the catalog) first")
    missing = sorted({"user_id", "item_id", "timestamp"} - set(parquet_columns(history)))
    if missing:
        raise ValueError(f"history table lacks column(s) {missing}")
    fp = params.features
    items, users = _check_catalog(frames["items"], frames["users"])
    parts = user_partitions(history, partition_rows)
    last = None if fp.now else max((t for t in executor.map(partition_last_play, parts) if t is not None), default=None)
    now = snapshot_now(fp, last)
    sums = add_history_sums(executor.map(partition_history_sums, parts, item_ids=items["item_id"].to_numpy(np.int64),
                                         now=now, half_life_days=fp.half_life_days))
    features = features_from_history_sums(items, users, sums, now, fp, seed=params.seed,
                                          explanations=frames["explanations"])
    files = sorted(Path(impressions_dir).glob("*.parquet")) if impressions_dir is not None else []
    if not files:
        return features.with_user_kind(empty_user_kind(), {"rows": 0, "data_version": None})
    rows = executor.map(partition_response_rows, page_partitions(files, partition_rows))
    return with_response_stats(features, pd.concat(rows, ignore_index=True), batches_version(files),
                               params.reward.validation_fraction)


# ---------------------------------------------------------------------- persistence
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_RENAMEAT2: Any = None  # libc's renameat2, looked up on first use (False: not available)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _RENAMEAT2
    if _RENAMEAT2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _RENAMEAT2 = fn
        except (OSError, AttributeError):
            _RENAMEAT2 = False
    if _RENAMEAT2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def atomic_replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a fully written temporary directory into place, replacing an old one, with no gap.

    Where the file system can swap two paths atomically (Linux ``renameat2``), ``out_dir`` is
    never missing: the swap puts the new tree in place and the old one under ``tmp``'s name, which
    is then deleted (a crash there leaves ``tmp``, named by ``bartops.leftovers.make_temp_dir``
    after this process, for ``recover_leftovers`` to remove).  Elsewhere the old tree is first
    renamed to ``.<name>.old-<pid>-…``; a crash between the two renames leaves ``out_dir`` missing
    and ``recover_leftovers`` moves the old tree back.
    """

    tmp, out_dir = Path(tmp), Path(out_dir)
    crash_point(f"replace-dir:{out_dir.name}:before")
    if not (out_dir.exists() or out_dir.is_symlink()):
        os.replace(tmp, out_dir)
        return
    if _exchange(tmp, out_dir):
        crash_point(f"replace-dir:{out_dir.name}:swapped")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = temp_path(out_dir, OLD)
    os.replace(out_dir, old)
    crash_point(f"replace-dir:{out_dir.name}:moved-aside")
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_features(features: Features, out_dir: Path) -> Path:
    """Write the snapshot (parquet tables, ``<array>.npy``, ``manifest.json``) atomically; returns out_dir.

    The manifest's ``version`` is a hash of every file's content, so equal snapshots share a version.
    """

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(out_dir.parent)
    tmp = make_temp_dir(out_dir)
    try:
        files = {}
        for name in SNAPSHOT_TABLES:
            path = tmp / f"{name}.parquet"
            getattr(features, name).to_parquet(path, index=False)
            files[path.name] = _sha256(path)
        crash_point(f"write-dir:{out_dir.name}:partial")
        # one .npy per array (not .npz, whose zip entries carry write times): equal data, equal bytes
        for name in SNAPSHOT_ARRAYS:
            path = tmp / f"{name}.npy"
            np.save(path, np.ascontiguousarray(getattr(features, name)), allow_pickle=False)
            files[path.name] = _sha256(path)
        params_blob = json.dumps(features.params, sort_keys=True, default=str)
        digest = hashlib.sha256((params_blob + json.dumps(files, sort_keys=True)).encode()).hexdigest()
        manifest = {"format": FORMAT_VERSION, "version": digest[:16], "content_sha256": digest,
                    "files": files, "params": features.params,
                    "counts": {"items": len(features.item_ids), "users": len(features.user_ids),
                               "candidates": len(features.candidates)}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    features.version = manifest["version"]
    return out_dir


def load_features(dir: Path) -> Features:
    """Read a snapshot written by ``save_features``; checks every file against the manifest."""
    d = Path(dir)
    mpath = d / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"no feature snapshot in {d} (manifest.json missing): run `bartops features`")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"feature snapshot {d} has format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    for name, digest in manifest["files"].items():
        path = d / name
        if not path.exists() or _sha256(path) != digest:
            raise ValueError(f"feature snapshot {d}: {name} is missing or does not match manifest.json")
    tables = {name: pd.read_parquet(d / f"{name}.parquet") for name in SNAPSHOT_TABLES}
    arrays = {name: np.load(d / f"{name}.npy", allow_pickle=False) for name in SNAPSHOT_ARRAYS}
    return Features(**tables, **arrays, params=manifest["params"], version=manifest["version"])


__all__ = ["Features", "build_features", "build_features_from_frames", "features_from_history_sums",
           "history_sums", "add_history_sums", "snapshot_now", "save_features", "load_features", "with_response_stats",
           "most_similar", "item_clusters", "co_listening_embeddings", "REGIONS", "regional_popularity"]
