"""Vocabulary shared by the simulator, features and serving: regions, platforms, local hour, genres and moods."""

from __future__ import annotations

import numpy as np
import pandas as pd

REGIONS: tuple[str, ...] = ("SE", "US", "GB", "DE", "BR", "JP", "IN", "MX")
REGION_UTC_OFFSET_HOURS: dict[str, int] = {
    "SE": 1, "US": -5, "GB": 0, "DE": 1, "BR": -3, "JP": 9, "IN": 5, "MX": -6,
}
PLATFORMS: tuple[str, ...] = ("ios", "android", "desktop", "web")
GENRES: tuple[str, ...] = ("pop", "rock", "hip-hop", "electronic", "jazz", "classical", "indie", "metal", "latin",
                           "r&b", "country", "folk", "k-pop", "reggae", "blues", "soul")
MOODS: tuple[str, ...] = ("chill", "energetic", "happy", "melancholy", "focus", "party", "romantic", "dark")


def region_code(region: pd.Series | np.ndarray) -> np.ndarray:
    """Integer code of each region; raises ValueError naming unknown regions."""
    return _codes(region, REGIONS, "region")


def platform_code(platform: pd.Series | np.ndarray) -> np.ndarray:
    """Integer code of each platform; raises ValueError naming unknown platforms."""
    return _codes(platform, PLATFORMS, "platform")


def _codes(values, vocabulary: tuple[str, ...], name: str) -> np.ndarray:
    inverse, distinct = pd.factorize(pd.Series(values, copy=False), use_na_sentinel=False)  # each distinct value once
    lookup = pd.Index(list(vocabulary)).get_indexer(pd.Index(distinct, dtype=object))
    if (lookup < 0).any():
        bad = sorted({str(v) for v, c in zip(distinct, lookup) if c < 0})[:5]
        raise ValueError(f"unknown {name} value(s) {bad}; expected one of {list(vocabulary)}")
    return lookup.astype(np.int64)[inverse]


def local_hour(timestamp: pd.Series, region: pd.Series | np.ndarray) -> np.ndarray:
    """Local hour of day (0-23) of UTC timestamps in each region."""
    ts = pd.to_datetime(pd.Series(timestamp), utc=True)
    offsets = np.array([REGION_UTC_OFFSET_HOURS[r] for r in REGIONS])[region_code(region)]
    return ((ts.dt.hour.to_numpy() + offsets) % 24).astype(np.int64)
