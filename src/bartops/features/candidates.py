"""Valid explanations per user and their candidate items: the (item, explanation) pairs of a page.

One implementation, used by the simulator's logging policy, by training, off-policy evaluation and
the service.  Explanations come from the catalog (``explanation_table``); which of them a user gets,
and their items, come from the user's listening history, region and the catalog.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bartops.config import CandidateParams
from bartops.context import REGIONS
from bartops.features.arrays import group_codes
from bartops.policy.page import CandidateSet

EXPLANATION_KINDS: tuple[str, ...] = ("artist", "genre", "mood", "region", "new")
REGION_NAMES = {"SE": "Sweden", "US": "the US", "GB": "the UK", "DE": "Germany", "BR": "Brazil",
                "JP": "Japan", "IN": "India", "MX": "Mexico"}




def explanation_table(items: pd.DataFrame) -> pd.DataFrame:
    """Every explanation the catalog allows: id, kind, key, human-readable shelf title.

    The row number is the explanation's integer code.
    """
    artists = items.drop_duplicates("artist_id").sort_values("artist_id")
    genres = sorted(items["genre"].unique())
    moods = sorted(items["mood"].unique())
    rows = (
        [(f"artist:{a}", "artist", str(a), f"Because you listened to {n}")
         for a, n in zip(artists["artist_id"], artists["artist"])]
        + [(f"genre:{g}", "genre", g, f"Your {g} mix") for g in genres]
        + [(f"mood:{m}", "mood", m, f"{m.capitalize()} picks for you") for m in moods]
        + [(f"region:{r}", "region", r, f"Popular in {REGION_NAMES[r]}") for r in REGIONS]
        + [("new", "new", "", "New releases for you")]
    )
    return pd.DataFrame(rows, columns=["explanation_id", "kind", "key", "title"])


def _explanation_codes(explanations: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """Row of each explanation id in ``explanations`` (-1 where it has none)."""
    return pd.Index(explanations["explanation_id"].astype(str)).get_indexer(pd.Index(ids, dtype=object))


def _require(codes: np.ndarray, ids: list[str], used: np.ndarray) -> None:
    """KeyError naming the explanation ids that used keys lack."""
    missing = sorted({ids[k] for k in np.unique(used) if codes[k] < 0})
    if missing:
        raise KeyError(f"explanation id(s) {missing[:5]} are not in the explanation table")


def _group_ranks(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, … within each run of equal values of a grouped (sorted) array."""
    n = len(group)
    if n == 0:
        return np.zeros(0, np.int64)
    first = np.r_[True, group[1:] != group[:-1]]
    return np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))


def _expand(owner: np.ndarray, key: np.ndarray, start: np.ndarray, count: np.ndarray,
            members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, member) pairs: each (owner, key) row joined with ``members[start[key]:start[key] + count[key]]``."""
    n = count[key]
    total = int(n.sum())
    offset = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    return np.repeat(owner, n), members[np.repeat(start[key], n) + offset]


def _pools(key: np.ndarray, n_keys: int, by_pop: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, count, item rows): the ``n`` most popular catalog rows of each key, in popularity order."""
    k = key[by_pop]
    order = np.argsort(k, kind="stable")
    rows, grouped = by_pop[order], k[order]
    return np.searchsorted(grouped, np.arange(n_keys)), np.minimum(np.bincount(grouped, minlength=n_keys), n), rows


def _top_keys(play_user: np.ndarray, play_key: np.ndarray, plays: np.ndarray, n_keys: int, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(user, key) of each user's ``k`` most played keys (ties: lower key first)."""
    users, uinv = group_codes(play_user)
    pairs, pinv = group_codes(uinv * n_keys + play_key)
    count = np.bincount(pinv, weights=plays, minlength=len(pairs))
    user, key = pairs // n_keys, pairs % n_keys
    order = np.lexsort((key, -count, user))
    keep = order[_group_ranks(user[order]) < k]
    return users[user[keep]], key[keep]


def _global_top(play_key: np.ndarray, plays: np.ndarray, n_keys: int, k: int) -> np.ndarray:
    """The ``k`` most played keys of the whole history (ties: lower key first)."""
    present = np.nonzero(np.bincount(play_key, minlength=n_keys) > 0)[0]
    count = np.bincount(play_key, weights=plays, minlength=n_keys)[present]
    return present[np.lexsort((present, -count))][:k]


def candidate_pairs(
    user_id: np.ndarray,
    region: np.ndarray,
    items: pd.DataFrame,
    plays: pd.DataFrame,
    explanations: pd.DataFrame,
    now: pd.Timestamp,
    params: CandidateParams = CandidateParams(),
    own_history: bool = True,
) -> pd.DataFrame:
    """``candidate_table`` of users given as arrays, from a play-count table ``plays`` (user_id, item_id,
    plays): each user's top keys, or with ``own_history=False`` every user gets the global top keys
    (the cold-start pairs).  Users the history has but ``user_id`` lacks keep their artist, genre and
    mood pairs, as in ``candidate_table``.
    """
    user_id = np.asarray(user_id, np.int64)
    item_ids = items["item_id"].to_numpy(np.int64)
    by_id = np.argsort(item_ids, kind="stable")
    p_item = plays["item_id"].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(item_ids[by_id], p_item), max(len(item_ids) - 1, 0))
    ok = item_ids[by_id][pos] == p_item if len(item_ids) else np.zeros(len(p_item), bool)
    p_row = by_id[pos[ok]]  # catalog row of each play of a catalog item
    p_user = plays["user_id"].to_numpy(np.int64)[ok]
    p_count = plays["plays"].to_numpy(np.float64)[ok]
    by_pop = (items[["popularity", "item_id"]].reset_index(drop=True)  # catalog rows, most popular first
              .sort_values(["popularity", "item_id"], ascending=[False, True]).index.to_numpy(np.int64))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    for column, kind, k, n in (("artist_id", "artist", params.top_artists, params.items_per_artist),
                               ("genre", "genre", params.top_genres, params.items_per_genre),
                               ("mood", "mood", params.top_moods, params.items_per_mood)):
        vocab, key = np.unique(items[column].to_numpy(), return_inverse=True)
        key = key.astype(np.int64)
        ids = [f"{kind}:{v}" for v in vocab]
        codes = _explanation_codes(explanations, ids)
        fallback = _global_top(key[p_row], p_count, len(vocab), k)
        if own_history:
            top_user, top_key = _top_keys(p_user, key[p_row], p_count, len(vocab), k)
        else:
            top_user, top_key = np.zeros(0, np.int64), np.zeros(0, np.int64)
        cold = user_id[~np.isin(user_id, top_user)]
        owner = np.concatenate([top_user, np.repeat(cold, len(fallback))])
        chosen = np.concatenate([top_key, np.tile(fallback, len(cold))]).astype(np.int64)
        _require(codes, ids, chosen)
        start, count, rows = _pools(key, len(vocab), by_pop, n)
        u, item_row = _expand(owner, chosen, start, count, rows)
        parts.append((u, np.repeat(codes[chosen], count[chosen]), item_ids[item_row]))

    region_pop = regional_popularity(items)
    top_region = (
        region_pop.sort_values(["region", "regional_popularity", "item_id"], ascending=[True, False, True])
        .groupby("region", sort=False).head(params.items_per_region)
    )
    rcode = pd.Index(list(REGIONS)).get_indexer(top_region["region"].to_numpy())
    rorder = np.argsort(rcode, kind="stable")
    rstart = np.searchsorted(rcode[rorder], np.arange(len(REGIONS)))
    rcount = np.bincount(rcode, minlength=len(REGIONS))
    user_region = pd.Index(list(REGIONS)).get_indexer(pd.Index(np.asarray(region, dtype=object).astype(str)))
    has = user_region >= 0
    ids = [f"region:{r}" for r in REGIONS]
    codes = _explanation_codes(explanations, ids)
    _require(codes, ids, user_region[has][rcount[user_region[has]] > 0])
    u, item = _expand(user_id[has], user_region[has], rstart, rcount, top_region["item_id"].to_numpy(np.int64)[rorder])
    parts.append((u, np.repeat(codes[user_region[has]], rcount[user_region[has]]), item))

    release = pd.to_datetime(items["release_date"], utc=True)
    fresh = items[(release <= now) & (release > now - pd.Timedelta(days=params.new_release_days))]
    fresh = fresh.sort_values(["popularity", "item_id"], ascending=[False, True]).head(params.items_new)
    new_code = _explanation_codes(explanations, ["new"])
    _require(new_code, ["new"], np.zeros(1, np.int64))
    fresh_ids = fresh["item_id"].to_numpy(np.int64)
    parts.append((np.repeat(user_id, len(fresh_ids)), np.full(len(user_id) * len(fresh_ids), new_code[0]),
                  np.tile(fresh_ids, len(user_id))))

    u, e, i = (np.concatenate([np.asarray(p[j], np.int64) for p in parts]) for j in range(3))
    return _unique_sorted(u, e, i)


def _distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a neighbour comparison)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _unique_sorted(user: np.ndarray, expl: np.ndarray, item: np.ndarray) -> pd.DataFrame:
    """Distinct (user_id, explanation, item_id) rows sorted by all three columns."""
    if len(user) == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in ("user_id", "explanation", "item_id")})
    (uu, ur), (iu, ir) = group_codes(user), group_codes(item)
    ne = int(expl.max()) + 1
    if expl.min() >= 0 and len(uu) * ne * len(iu) < 2 ** 62:  # one integer key per row
        key = _distinct((ur * ne + expl) * len(iu) + ir)
        return pd.DataFrame({"user_id": uu[key // (ne * len(iu))], "explanation": key // len(iu) % ne,
                             "item_id": iu[key % len(iu)]})
    order = np.lexsort((item, expl, user))
    u, e, i = user[order], expl[order], item[order]
    keep = np.r_[True, (u[1:] != u[:-1]) | (e[1:] != e[:-1]) | (i[1:] != i[:-1])]
    return pd.DataFrame({"user_id": u[keep], "explanation": e[keep], "item_id": i[keep]})


def candidate_table(
    users: pd.DataFrame,
    items: pd.DataFrame,
    history: pd.DataFrame,
    explanations: pd.DataFrame,
    now: pd.Timestamp,
    params: CandidateParams = CandidateParams(),
) -> pd.DataFrame:
    """Long table (user_id, explanation, item_id) of every user's candidate pairs, canonical order.

    ``explanation`` is the integer code (row of ``explanations``).  A user gets their most played
    ``top_artists`` artists (``top_genres`` genres, ``top_moods`` moods; ties to the lower key) with
    each key's most popular items, their region's popular items and the new releases; users without
    history get the globally most played artists, genres and moods instead of their own.
    ``history`` has one row per play (user_id, item_id).
    """
    plays = pd.DataFrame({"user_id": history["user_id"].to_numpy(np.int64),
                          "item_id": history["item_id"].to_numpy(np.int64), "plays": 1.0})
    return candidate_pairs(users["user_id"].to_numpy(np.int64), users["region"].to_numpy(), items, plays,
                           explanations, now, params)


def regional_popularity(items: pd.DataFrame) -> pd.DataFrame:
    """(region, item_id, regional_popularity): items are three times as popular in their home region."""
    rows = []
    for r in REGIONS:
        boost = np.where(items["home_region"].to_numpy() == r, 3.0, 1.0)
        rows.append(pd.DataFrame({"region": r, "item_id": items["item_id"].to_numpy(),
                                  "regional_popularity": items["popularity"].to_numpy() * boost}))
    return pd.concat(rows, ignore_index=True)


def candidates_for_requests(table: pd.DataFrame, user_ids: np.ndarray) -> CandidateSet:
    """CandidateSet with one page per requested user (in request order), gathered from the table.

    Users missing from the table get no candidates (an empty page); serving handles cold start by
    asking ``candidate_table`` for them first.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    table_users = table["user_id"].to_numpy()
    uniq, start = np.unique(table_users, return_index=True)
    end = np.append(start[1:], len(table_users))
    pos = np.searchsorted(uniq, user_ids)
    pos_c = np.minimum(pos, max(len(uniq) - 1, 0))
    known = (pos < len(uniq)) & (uniq[pos_c] == user_ids) if len(uniq) else np.zeros(len(user_ids), bool)
    lo = np.where(known, start[pos_c] if len(uniq) else 0, 0)
    n = np.where(known, (end - start)[pos_c] if len(uniq) else 0, 0)
    page = np.repeat(np.arange(len(user_ids)), n)
    rows = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())
    return CandidateSet(
        page=page,
        item_id=table["item_id"].to_numpy()[rows],
        explanation=table["explanation"].to_numpy()[rows],
        n_pages=len(user_ids),
        choosable=np.ones(len(rows), bool),
    )


def cold_start_table(
    items: pd.DataFrame,
    history: pd.DataFrame,
    explanations: pd.DataFrame,
    now: pd.Timestamp,
    params: CandidateParams = CandidateParams(),
) -> pd.DataFrame:
    """(region, explanation, item_id): the candidates of a user the table does not know, per region.

    The same pairs ``candidate_table`` gives a user without history: the region's popular items,
    new releases, and the globally most played artists, genres and moods.  ``history`` has one row
    per play (user_id, item_id), or a ``plays`` column counting them.
    """
    plays = pd.DataFrame({"user_id": history["user_id"].to_numpy(np.int64),
                          "item_id": history["item_id"].to_numpy(np.int64),
                          "plays": history["plays"].to_numpy(np.float64) if "plays" in history else 1.0})
    return cold_start_pairs(items, plays, explanations, now, params)


def cold_start_pairs(items: pd.DataFrame, plays: pd.DataFrame, explanations: pd.DataFrame, now: pd.Timestamp,
                     params: CandidateParams = CandidateParams()) -> pd.DataFrame:
    """``cold_start_table`` from a play-count table (user_id, item_id, plays)."""
    pseudo = -1 - np.arange(len(REGIONS), dtype=np.int64)
    table = candidate_pairs(pseudo, np.array(REGIONS, dtype=object), items, plays, explanations, now, params,
                            own_history=False)  # the pseudo users only: no user has plays of its own
    return pd.DataFrame({"region": pd.array(np.array(REGIONS, dtype=object)[-1 - table["user_id"].to_numpy()],
                                            dtype="string"),
                         "explanation": table["explanation"].to_numpy(np.int64),
                         "item_id": table["item_id"].to_numpy(np.int64)})
