"""Valid explanations per user and their candidate items: the (item, explanation) pairs of a page.

One implementation, used by the simulator's logging policy, by training, off-policy evaluation and
the service.  Explanations come from the catalog (``explanation_table``); which of them a user gets,
and their items, come from the user's listening history, region and the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bartops.context import REGIONS
from bartops.policy.page import CandidateSet

EXPLANATION_KINDS: tuple[str, ...] = ("artist", "genre", "mood", "region", "new")
REGION_NAMES = {"SE": "Sweden", "US": "the US", "GB": "the UK", "DE": "Germany", "BR": "Brazil",
                "JP": "Japan", "IN": "India", "MX": "Mexico"}


@dataclass(frozen=True)
class CandidateParams:
    """How many explanations of each kind a user gets and how many items each explanation holds."""

    top_artists: int = 3
    top_genres: int = 2
    top_moods: int = 2
    items_per_artist: int = 20
    items_per_genre: int = 45
    items_per_mood: int = 35
    items_per_region: int = 45
    items_new: int = 45
    new_release_days: int = 120


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


def _top_k_per_user(history: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    counts = history.groupby(["user_id", column], observed=True).size().rename("plays").reset_index()
    counts = counts.sort_values(["user_id", "plays", column], ascending=[True, False, True])
    return counts.groupby("user_id", sort=False).head(k)[["user_id", column]]


def candidate_table(
    users: pd.DataFrame,
    items: pd.DataFrame,
    history: pd.DataFrame,
    explanations: pd.DataFrame,
    now: pd.Timestamp,
    params: CandidateParams = CandidateParams(),
) -> pd.DataFrame:
    """Long table (user_id, explanation, item_id) of every user's candidate pairs, canonical order.

    ``explanation`` is the integer code (row of ``explanations``).  Users without history get the
    globally most played artists, genres and moods instead of their own.
    """
    code = pd.Series(np.arange(len(explanations)), index=explanations["explanation_id"].to_numpy())
    h = history.merge(items[["item_id", "artist_id", "genre", "mood"]], on="item_id", how="inner")
    by_pop = items.sort_values(["popularity", "item_id"], ascending=[False, True])
    parts = []

    def per_key(top: pd.DataFrame, column: str, kind: str, n: int, fallback: list) -> None:
        cold = users.loc[~users["user_id"].isin(top["user_id"]), ["user_id"]]
        cold = cold.merge(pd.DataFrame({column: fallback}), how="cross")
        chosen = pd.concat([top, cold], ignore_index=True)
        pool = by_pop.groupby(column, sort=False).head(n)[[column, "item_id"]]
        pairs = chosen.merge(pool, on=column)
        pairs["explanation"] = code.loc[kind + ":" + pairs[column].astype(str)].to_numpy()
        parts.append(pairs[["user_id", "explanation", "item_id"]])

    def global_top(column: str, k: int) -> list:
        return h[column].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:k].tolist()

    per_key(_top_k_per_user(h, "artist_id", params.top_artists), "artist_id", "artist",
            params.items_per_artist, global_top("artist_id", params.top_artists))
    per_key(_top_k_per_user(h, "genre", params.top_genres), "genre", "genre",
            params.items_per_genre, global_top("genre", params.top_genres))
    per_key(_top_k_per_user(h, "mood", params.top_moods), "mood", "mood",
            params.items_per_mood, global_top("mood", params.top_moods))

    region_pop = regional_popularity(items)
    top_region = (
        region_pop.sort_values(["region", "regional_popularity", "item_id"], ascending=[True, False, True])
        .groupby("region", sort=False).head(params.items_per_region)
    )
    pairs = users[["user_id", "region"]].merge(top_region[["region", "item_id"]], on="region")
    pairs["explanation"] = code.loc["region:" + pairs["region"].astype(str)].to_numpy()
    parts.append(pairs[["user_id", "explanation", "item_id"]])

    release = pd.to_datetime(items["release_date"], utc=True)
    fresh = items[(release <= now) & (release > now - pd.Timedelta(days=params.new_release_days))]
    fresh = fresh.sort_values(["popularity", "item_id"], ascending=[False, True]).head(params.items_new)
    pairs = users[["user_id"]].merge(fresh[["item_id"]], how="cross")
    pairs["explanation"] = int(code.loc["new"])
    parts.append(pairs[["user_id", "explanation", "item_id"]])

    out = pd.concat(parts, ignore_index=True).astype(np.int64)
    out = out.drop_duplicates().sort_values(["user_id", "explanation", "item_id"], ignore_index=True)
    return out


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
    new releases, and the globally most played artists, genres and moods.
    """
    pseudo = pd.DataFrame({"user_id": -1 - np.arange(len(REGIONS), dtype=np.int64),
                           "region": pd.array(list(REGIONS), dtype="string")})
    # global top keys come from the whole history; a pseudo user has none of its own
    table = candidate_table(pseudo, items, history, explanations, now, params)
    table = table[table["user_id"] < 0]
    table["region"] = pd.array(np.array(REGIONS, dtype=object)[-1 - table["user_id"].to_numpy()], dtype="string")
    return table[["region", "explanation", "item_id"]].reset_index(drop=True)
