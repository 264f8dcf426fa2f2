"""The one feature-assembly function: model input rows for training, off-policy evaluation and serving.

A row describes (context, item, explanation, slot).  Users the snapshot does not know (cold start)
get zero affinities and a zero embedding with ``user_known = 0``, and the prior (lift 1, 0 shows)
for their logged response to explanation kinds; items outside the snapshot's catalog are an error
(they cannot be candidates).  Context columns (platform, region, local hour, the hour × audio
interactions, home region, item age, slot) are the only ones that vary per request for a user.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from bartops.context import PLATFORMS, REGION_UTC_OFFSET_HOURS, REGIONS, platform_code, region_code
from bartops.features.candidates import EXPLANATION_KINDS
from bartops.features.store import Features
from bartops.policy.page import CandidateSet

AUDIO = ("danceability", "energy", "valence", "acousticness", "tempo")
HOUR_AUDIO = ("energy", "valence", "danceability")  # audio × time-of-day interactions
HOUR_AUDIO_NAMES: tuple[str, ...] = tuple(f"{a}_x_hour_{f}" for a in HOUR_AUDIO for f in ("sin", "cos"))
EMB_PRODUCTS = 8  # user_emb[k] · item_emb[k] of the leading components (0 beyond features.embedding_dim)
ROW_BLOCK = 16384  # rows assembled at a time (a block's columns stay in cache)
FEATURE_NAMES: tuple[str, ...] = (
    *(f"platform_{p}" for p in PLATFORMS),
    *(f"region_{r}" for r in REGIONS),
    "local_hour", "hour_sin", "hour_cos",
    "shelf", "position",
    *(f"kind_{k}" for k in EXPLANATION_KINDS),
    "user_known", "user_log_plays",
    "artist_affinity", "genre_affinity", "mood_affinity", "cluster_affinity", "user_item_plays",
    "emb_dot", "emb_cos", *(f"emb_prod_{k}" for k in range(EMB_PRODUCTS)),
    "log_popularity", "home_region", "item_log_plays", "item_age_days",
    *AUDIO,
    "user_kind_lift", "user_kind_log_shows", "user_lift", "user_log_shows",
    *HOUR_AUDIO_NAMES,
)
SLOT_COLUMNS = (FEATURE_NAMES.index("shelf"), FEATURE_NAMES.index("position"))  # the slot's columns
CONTEXT_COLUMNS = ("user_id", "platform", "region", "timestamp")
RESPONSE_NAMES = ("user_kind_lift", "user_kind_log_shows", "user_lift", "user_log_shows")
# the only columns that depend on the snapshot's logged-response table (``Features.user_kind``)
RESPONSE_COLUMNS = slice(FEATURE_NAMES.index(RESPONSE_NAMES[0]), FEATURE_NAMES.index(RESPONSE_NAMES[-1]) + 1)
assert FEATURE_NAMES[RESPONSE_COLUMNS] == RESPONSE_NAMES


def feature_schema_hash(names: tuple[str, ...] = FEATURE_NAMES) -> str:
    """Short hash identifying the feature layout (a model trained on another layout is rejected)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def hour_audio_columns(audio: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """(n, 2·len(HOUR_AUDIO)) float64: each audio value × sin and × cos of the local hour's angle.

    ``audio`` is (n, len(HOUR_AUDIO)) float64, ``hour`` (n,) integer local hours (the serving
    engine calls this too, so both paths compute the same bits).
    """
    angle = 2 * np.pi * np.asarray(hour, np.int64) / 24
    sin, cos = np.sin(angle), np.cos(angle)
    out = np.empty((len(audio), 2 * len(HOUR_AUDIO)))
    out[:, 0::2] = audio * sin[:, None]
    out[:, 1::2] = audio * cos[:, None]
    return out


def _slot(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n, int(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per candidate ({n}), got shape {arr.shape}")
    if n and (arr < 0).any():
        raise ValueError(f"{name} must be non-negative")
    return arr.astype(np.float32)


def assemble_rows(
    features: Features,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    shelf: int | np.ndarray = 0,
    position: int | np.ndarray = 0,
    response: np.ndarray | None = None,
) -> np.ndarray:
    """Model input rows, float32 of shape (len(candidates), len(FEATURE_NAMES)).

    ``contexts`` has columns user_id, platform, region, timestamp (one row per page);
    ``shelf``/``position`` are one slot for all rows or one per candidate.  ``response``: the
    logged-response columns (``RESPONSE_NAMES``, shape (n, 4)) if computed already (training rows
    get them out of fold: ``bartops.reward.train``); by default ``response_columns`` of the snapshot.
    """
    missing = [c for c in CONTEXT_COLUMNS if c not in contexts.columns]
    if missing:
        raise ValueError(f"contexts lack column(s) {missing}")
    if candidates.n_pages != len(contexts):
        raise ValueError(f"candidates describe {candidates.n_pages} pages but contexts has {len(contexts)} rows")
    n = len(candidates)
    page = candidates.page
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    if response is not None and np.shape(response) != (n, len(RESPONSE_NAMES)):
        raise ValueError(f"response must have shape ({n}, {len(RESPONSE_NAMES)}), got {np.shape(response)}")

    # context (computed per page, then spread to candidates)
    plat = platform_code(contexts["platform"])[page]
    reg_ctx = region_code(contexts["region"])
    reg = reg_ctx[page]
    ts = pd.to_datetime(pd.Series(contexts["timestamp"]).reset_index(drop=True), utc=True)
    ts_ns = ts.dt.tz_convert(None).to_numpy("datetime64[ns]").astype(np.int64)
    # local hour (bartops.context.local_hour) from the integer UTC hour and the region's offset
    offset = np.array([REGION_UTC_OFFSET_HOURS[r] for r in REGIONS], np.int64)[reg_ctx]
    hour = ((ts_ns // 3_600_000_000_000 % 24 + offset) % 24)[page]
    shelf = _slot(shelf, n, "shelf")
    position = _slot(position, n, "position")

    # explanation kind
    kinds = {k: i for i, k in enumerate(EXPLANATION_KINDS)}
    expl = candidates.explanation
    if expl.min() < 0 or expl.max() >= len(features.explanations):
        raise ValueError(f"explanation codes outside [0, {len(features.explanations)}) of the feature snapshot")
    kind_of = features.explanations["kind"].map(kinds)
    if kind_of.isna().any():
        raise ValueError(f"unknown explanation kind(s) {sorted(set(features.explanations['kind'][kind_of.isna()]))}")
    kind_code = kind_of.to_numpy(np.int64)[expl]

    # user and item rows (the lookups below run per block of rows)
    user = contexts["user_id"].to_numpy(np.int64)[page]
    upos, known = features.user_index(user)
    ipos = features.item_index(candidates.item_id)
    item_id = np.asarray(candidates.item_id, np.int64)
    items = features.items
    artist_of = items["artist_id"].to_numpy(np.int64)
    genre_code, _ = features.code_of("genre")
    mood_code, _ = features.code_of("mood")
    stats = features.item_stats
    log_popularity = stats["log_popularity"].to_numpy()
    item_plays = stats["plays"].to_numpy()
    home_region = features.home_region_code()
    release_ns = features.release_ns()
    audio = [(col[a], items[a].to_numpy(np.float64)) for a in AUDIO if a in items.columns]
    hour_audio = hour_audio_values(features)
    k = min(EMB_PRODUCTS, features.user_emb.shape[1])
    first = col[HOUR_AUDIO_NAMES[0]]

    # rows are filled a block at a time: each column of a block is contiguous (column-major block),
    # then the block is copied into the row-major result, so no large temporaries or transposes
    out = np.empty((n, len(FEATURE_NAMES)), np.float32)
    # (a row stride of a power of two bytes would alias in cache and slow the block copy several times)
    block = np.empty((len(FEATURE_NAMES), min(n, ROW_BLOCK) + 16), np.float32)
    for lo in range(0, n, ROW_BLOCK):
        b = slice(lo, min(lo + ROW_BLOCK, n))
        m = b.stop - lo
        blk = block[:, :m]
        blk[...] = 0.0
        ones = np.arange(m)
        blk[col["platform_ios"] + plat[b], ones] = 1.0
        blk[col["region_SE"] + reg[b], ones] = 1.0
        h = hour[b]
        blk[col["local_hour"]] = h
        blk[col["hour_sin"]] = np.sin(2 * np.pi * h / 24)
        blk[col["hour_cos"]] = np.cos(2 * np.pi * h / 24)
        blk[col["shelf"]] = shelf[b]
        blk[col["position"]] = position[b]
        blk[col["kind_artist"] + kind_code[b], ones] = 1.0

        u, up, kn, ip = user[b], upos[b], known[b], ipos[b]
        blk[col["user_known"]] = kn
        blk[col["user_log_plays"]] = np.where(kn, np.log1p(features.user_plays[up]), 0.0)
        blk[col["artist_affinity"]] = features.pair_value("user_artist", u, artist_of[ip])
        blk[col["genre_affinity"]] = features.pair_value("user_genre", u, genre_code[ip])
        blk[col["mood_affinity"]] = features.pair_value("user_mood", u, mood_code[ip])
        blk[col["cluster_affinity"]] = features.pair_value("user_cluster", u, features.cluster[ip])
        blk[col["user_item_plays"]] = features.pair_value("user_item", u, item_id[b])
        ue = np.where(kn[:, None], features.user_emb[up], 0.0).astype(np.float32)
        ie = features.item_emb[ip]
        dot = np.einsum("ij,ij->i", ue, ie)
        norm = np.linalg.norm(ue, axis=1) * np.linalg.norm(ie, axis=1)
        blk[col["emb_dot"]] = dot
        blk[col["emb_cos"]] = np.where(norm > 0, dot / np.where(norm > 0, norm, 1), 0.0)
        blk[col["emb_prod_0"]:col["emb_prod_0"] + k] = (ue[:, :k] * ie[:, :k]).T

        # item
        blk[col["log_popularity"]] = log_popularity[ip]
        blk[col["home_region"]] = home_region[ip] == reg[b]
        blk[col["item_log_plays"]] = np.log1p(item_plays[ip])
        blk[col["item_age_days"]] = (ts_ns[page[b]] - release_ns[ip]) / 86_400e9
        for c, values in audio:
            blk[c] = values[ip]

        # logged response of the user to the explanation kind (bartops.features.logstats)
        blk[RESPONSE_COLUMNS] = (response_columns(features, u, kind_code[b]) if response is None
                                 else response[b]).T
        # time of day × audio
        blk[first:first + len(HOUR_AUDIO_NAMES)] = hour_audio_columns(hour_audio[ip], h).T
        out[b] = blk.T
    return out


def response_columns(features: Features, user_id: np.ndarray, kind_code: np.ndarray) -> np.ndarray:
    """(n, 4) float32 columns ``RESPONSE_NAMES`` (``FEATURE_NAMES[RESPONSE_COLUMNS]``) of (user, kind code) pairs:
    the lift and log1p(shows) of the user's logged response to the kind and to all kinds."""
    resp = features.response_stats(user_id, kind_code)
    out = np.empty((len(resp["user_kind_lift"]), len(RESPONSE_NAMES)), np.float32)
    out[:, 0] = resp["user_kind_lift"]
    out[:, 1] = np.log1p(resp["user_kind_shows"])
    out[:, 2] = resp["user_lift"]
    out[:, 3] = np.log1p(resp["user_shows"])
    return out


def hour_audio_values(features: Features) -> np.ndarray:
    """(catalog rows, len(HOUR_AUDIO)) float64 audio values (0 where the catalog lacks a column)."""
    key = "hour_audio"
    if key not in features._cache:
        items = features.items
        features._cache[key] = np.column_stack([
            items[a].to_numpy(np.float64) if a in items.columns else np.zeros(len(items)) for a in HOUR_AUDIO])
    return features._cache[key]


def impression_inputs(features: Features, impressions: pd.DataFrame, explanation: np.ndarray | None = None,
                      ) -> tuple[pd.DataFrame, CandidateSet, np.ndarray, np.ndarray]:
    """(contexts, candidates, shelf, position) of logged impressions: one page per logged row.

    ``explanation``: the rows' explanation codes if already encoded (``features.explanation_codes``).
    """
    n = len(impressions)
    contexts = impressions[list(CONTEXT_COLUMNS)].reset_index(drop=True)
    cands = CandidateSet(
        page=np.arange(n, dtype=np.int64),
        item_id=impressions["item_id"].to_numpy(np.int64),
        explanation=features.explanation_codes(impressions["explanation_id"]) if explanation is None
        else np.asarray(explanation, np.int64),
        n_pages=n,
        choosable=np.ones(n, bool),
    )
    return contexts, cands, impressions["shelf"].to_numpy(np.int64), impressions["position"].to_numpy(np.int64)


def assemble_impressions(features: Features, impressions: pd.DataFrame) -> np.ndarray:
    """Model input rows of logged impressions (at their logged slots), through ``assemble_rows``."""
    contexts, cands, shelf, position = impression_inputs(features, impressions)
    return assemble_rows(features, contexts, cands, shelf, position)
