"""A seeded music service with known ground truth: catalog, users, listening history, stream model.

The true probability that a user streams a card is

    P(stream) = examination(shelf, position) · sigmoid(logit)
    logit = base + taste·⟨user, item⟩ + popularity·z(log popularity)
            + explanation·response[user, kind] + context·(platform×kind + hour×energy)

so rewards depend on taste, the explanation, the context (platform, local hour) and the slot.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.config import SimParams
from bartops.context import GENRES, MOODS, PLATFORMS, REGIONS, local_hour, platform_code
from bartops.features.candidates import EXPLANATION_KINDS, explanation_table
from bartops.leftovers import write_parquet_atomic
from bartops.policy.page import CandidateSet

_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sa", "li", "nu", "bel", "dro", "fa", "xi", "mon",
              "ter", "qui", "zan", "pe", "ro", "da")
LATENT_DIM = 8




def _names(rng: np.random.Generator, n: int, parts: int, prefix: str = "") -> list[str]:
    idx = rng.integers(0, len(_SYLLABLES), size=(n, parts))
    words = ["".join(_SYLLABLES[j] for j in row).capitalize() for row in idx]
    return [f"{prefix}{w} {i}" if prefix else f"{w}" for i, w in enumerate(words)]


@dataclass
class World:
    """Catalog, users and the hidden stream model of a simulated music service."""

    params: SimParams
    seed: int
    items: pd.DataFrame
    users: pd.DataFrame
    explanations: pd.DataFrame
    item_vec: np.ndarray  # (items, d) latent taste vectors
    user_vec: np.ndarray  # (users, d)
    response: np.ndarray  # (users, kinds) response to each explanation kind
    platform_kind: np.ndarray  # (platforms, kinds) context effect
    user_platform_mix: np.ndarray  # (users, platforms)

    # ------------------------------------------------------------------ generation
    @staticmethod
    def generate(params: SimParams, seed: int) -> "World":
        """Draw a world from the seed; the same (params, seed) gives the same world."""
        rng = np.random.default_rng(seed)
        p = params
        genres = list(GENRES[: p.genres])
        moods = list(MOODS[: p.moods])
        genre_centre = rng.normal(0, 1, (p.genres, LATENT_DIM))
        genre_audio = rng.uniform(0.15, 0.85, (p.genres, 4))

        artist_genre = rng.choice(p.genres, size=p.artists, p=_zipf(p.genres, 0.8))
        artist_pop = rng.pareto(1.5, p.artists) + 0.05
        artist_names = _names(rng, p.artists, 2)
        artist_names = [f"{n} {suffix}" for n, suffix in zip(artist_names, rng.choice(
            ["", "Band", "Collective", "& the Echoes", "Trio", "Project"], p.artists))]
        artist_names = [n.strip() for n in artist_names]

        # every artist gets at least one item; the rest go to popular artists more often
        extra = rng.choice(p.artists, size=p.items - p.artists, p=artist_pop / artist_pop.sum())
        item_artist = np.sort(np.concatenate([np.arange(p.artists), extra]))
        same_genre = rng.random(p.items) < 0.9
        item_genre = np.where(same_genre, artist_genre[item_artist], rng.integers(0, p.genres, p.items))
        item_vec = genre_centre[item_genre] + rng.normal(0, 0.6, (p.items, LATENT_DIM))
        item_vec /= np.sqrt(LATENT_DIM)
        audio = np.clip(genre_audio[item_genre] + rng.normal(0, 0.12, (p.items, 4)), 0, 1)
        item_mood = rng.integers(0, p.moods, p.items)
        popularity = artist_pop[item_artist] * (rng.pareto(2.0, p.items) + 0.1)
        popularity = popularity / popularity.max()
        start, end = p.window
        age_days = rng.exponential(900, p.items)
        recent = rng.random(p.items) < 0.06
        age_days[recent] = rng.uniform(1, 110, recent.sum())
        release = (start - pd.to_timedelta(np.round(age_days), unit="D")).normalize()
        album_of = item_artist * 100 + rng.integers(0, 4, p.items)
        _, album_id = np.unique(album_of, return_inverse=True)
        item_names = _names(rng, p.items, 3)
        home_region = rng.choice(len(REGIONS), size=p.artists)[item_artist]
        items = pd.DataFrame({
            "item_id": np.arange(p.items, dtype=np.int64),
            "name": item_names,
            "artist_id": item_artist.astype(np.int64),
            "artist": np.array(artist_names, dtype=object)[item_artist],
            "album_id": album_id.astype(np.int64),
            "album": [f"Album {a}" for a in album_id],
            "genre": np.array(genres, dtype=object)[item_genre],
            "mood": np.array(moods, dtype=object)[item_mood],
            "release_date": release,
            "popularity": popularity,
            "home_region": np.array(REGIONS, dtype=object)[home_region],
            "danceability": audio[:, 0],
            "energy": audio[:, 1],
            "valence": audio[:, 2],
            "acousticness": audio[:, 3],
            "tempo": 60 + 120 * audio[:, 1] + rng.normal(0, 8, p.items),
            "tags": [f"{g},{m}" for g, m in zip(np.array(genres)[item_genre], np.array(moods)[item_mood])],
        })
        for col in ("name", "artist", "album", "genre", "mood", "home_region", "tags"):
            items[col] = items[col].astype("string")

        taste = rng.dirichlet(np.full(p.genres, 0.3), p.users)
        user_vec = taste @ genre_centre + rng.normal(0, 0.5, (p.users, LATENT_DIM))
        user_vec /= np.sqrt(LATENT_DIM)
        region = rng.choice(len(REGIONS), size=p.users, p=_zipf(len(REGIONS), 0.5))
        mix = rng.dirichlet(np.array([3.0, 3.0, 1.5, 1.0]), p.users)
        kinds = len(EXPLANATION_KINDS)
        kind_mean = np.array([0.6, 0.2, 0.0, -0.2, 0.1])
        response = kind_mean + rng.normal(0, 0.5, (p.users, kinds))
        platform_kind = rng.normal(0, 0.4, (len(PLATFORMS), kinds))
        users = pd.DataFrame({
            "user_id": np.arange(p.users, dtype=np.int64),
            "region": pd.array(np.array(REGIONS, dtype=object)[region], dtype="string"),
            "activity": rng.lognormal(0, 0.6, p.users),
            **{f"share_{pl}": mix[:, j] for j, pl in enumerate(PLATFORMS)},
        })
        world = World(p, seed, items, users, pd.DataFrame(), item_vec, user_vec, response,
                      platform_kind, mix)
        world.explanations = explanation_table(items)
        return world

    # ------------------------------------------------------------------ ground truth
    def taste_logit(self, user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """The part of the true logit that depends on user and item only."""
        p = self.params
        taste = np.einsum("ij,ij->i", self.user_vec[user_id], self.item_vec[item_id])
        logpop = np.log(self.items["popularity"].to_numpy()[item_id])
        z = (logpop - self._logpop_mean) / self._logpop_std
        return p.base_logit + p.taste_weight * taste + p.popularity_weight * z

    def taste_logit_matrix(self, user_id: np.ndarray) -> np.ndarray:
        """``taste_logit`` of the given users against every item, shape (users, items)."""
        p = self.params
        z = (np.log(self.items["popularity"].to_numpy()) - self._logpop_mean) / self._logpop_std
        return p.base_logit + p.taste_weight * (self.user_vec[user_id] @ self.item_vec.T) + p.popularity_weight * z

    @property
    def _logpop_mean(self) -> float:
        return float(np.log(self.items["popularity"].to_numpy()).mean())

    @property
    def _logpop_std(self) -> float:
        return float(np.log(self.items["popularity"].to_numpy()).std())

    def relevance(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        """True P(stream) of each candidate at the top-left slot (examination 1)."""
        p = self.params
        rows = candidates.page
        user = contexts["user_id"].to_numpy()[rows]
        item = candidates.item_id
        kind = self.explanation_kind_code[candidates.explanation]
        platform = platform_code(contexts["platform"])[rows]
        hour = local_hour(contexts["timestamp"], contexts["region"])[rows]
        energy = self.items["energy"].to_numpy()[item]
        ctx = self.platform_kind[platform, kind] + 1.5 * (energy - 0.5) * np.cos(2 * np.pi * (hour - 14) / 24)
        logit = (self.taste_logit(user, item) + p.explanation_weight * self.response[user, kind]
                 + p.context_weight * ctx)
        return 1.0 / (1.0 + np.exp(-logit))

    def examination(self, shelf: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Probability that a card at (shelf, position) is looked at (the position bias)."""
        p = self.params
        return (1.0 + np.asarray(shelf)) ** -p.position_decay_shelf * (1.0 + np.asarray(position)) ** -p.position_decay_card

    @property
    def explanation_kind_code(self) -> np.ndarray:
        kinds = {k: i for i, k in enumerate(EXPLANATION_KINDS)}
        return self.explanations["kind"].map(kinds).to_numpy(np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write the catalog and users as parquet and the hidden truth as ``truth/`` (.npy + JSON)."""
        directory.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(self.items, directory / "items.parquet")
        write_parquet_atomic(self.users, directory / "users.parquet")
        write_parquet_atomic(self.explanations, directory / "explanations.parquet")
        # .npy files and JSON rather than .npz: byte-identical for the same seed (zip stores times)
        truth = directory / "truth"
        tmp = directory / ".truth.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in _TRUTH_ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(self, name), allow_pickle=False)
        (tmp / "world.json").write_text(json.dumps({"seed": self.seed, "params": asdict(self.params)}, indent=2))
        old = directory / ".truth.old"
        shutil.rmtree(old, ignore_errors=True)
        if truth.exists():
            truth.rename(old)
        tmp.rename(truth)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def load(directory: Path) -> "World":
        """Read a world written by ``save``."""
        truth = Path(directory) / "truth"
        if not (truth / "world.json").exists():
            raise FileNotFoundError(f"no simulated world in {directory} (truth/world.json missing)")
        meta = json.loads((truth / "world.json").read_text())
        arrays = {name: np.load(truth / f"{name}.npy", allow_pickle=False) for name in _TRUTH_ARRAYS}
        return World(SimParams.from_dict(meta["params"]), int(meta["seed"]),
                     pd.read_parquet(Path(directory) / "items.parquet"),
                     pd.read_parquet(Path(directory) / "users.parquet"),
                     pd.read_parquet(Path(directory) / "explanations.parquet"), **arrays)


_TRUTH_ARRAYS = ("item_vec", "user_vec", "response", "platform_kind", "user_platform_mix")


def _zipf(n: int, a: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return w / w.sum()

