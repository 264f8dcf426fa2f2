"""In-process page building for the service: a policy bundle → pages with exact propensities.

The page itself is built by ``bartops.policy.page.build_pages`` (the code the simulator and
off-policy evaluation use); this module only makes the inputs cheap per request:

- at load time, every known user's candidate pairs (``Features.candidates_for``) and their
  context-free feature columns (``assemble_rows``) are precomputed as one float32 block, as are the
  cold-start candidates and blocks of each region;
- per request, only the context columns (platform, region, local hour, home region, item age) are
  filled into a copy of the user's block, and the booster scores it with ``inplace_predict``.

At load the fast rows are compared bit for bit with ``assemble_rows`` on sample requests; if they
ever differ (the feature layout changed), the engine falls back to ``assemble_rows`` per request.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bartops.context import PLATFORMS, REGIONS, REGION_UTC_OFFSET_HOURS
from bartops.policy.page import EMPTY, CandidateSet, PagePolicy, Pages, build_pages

log = logging.getLogger("bartops.serving")

PRECOMPUTE_CHUNK_USERS = 512
_REGION_CODE = {r: i for i, r in enumerate(REGIONS)}
_PLATFORM_CODE = {p: i for i, p in enumerate(PLATFORMS)}
_ONE_PAGE = pd.DataFrame(index=pd.RangeIndex(1))  # stands for one context row when scores are given
_DAY_NS = 86_400e9


class BundleLoadError(RuntimeError):
    """A policy bundle is missing, incomplete or corrupt (the message says which and where)."""


def load_bundle(bundle_dir: str | Path):
    """(PagePolicy, Features) of a bundle directory, with a ``BundleLoadError`` naming the problem."""
    from bartops.reward.policy import load_policy_bundle

    d = Path(bundle_dir)
    try:
        return load_policy_bundle(d)
    except BundleLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure mode becomes one clear start-up error
        raise BundleLoadError(f"cannot load policy bundle {d}: {type(exc).__name__}: {exc}") from exc


def verify_bundle_isolated(bundle_dir: str | Path, timeout: float = 300, niceness: int = 0) -> None:
    """Load the bundle in a child process first: a damaged model file can crash XGBoost's loader
    (segfault) rather than raise, and the crash must become a clear error, not a dead server.
    ``niceness`` lowers the child's CPU priority (a check beside live traffic)."""
    import os
    import subprocess
    import sys

    d = Path(bundle_dir)
    proc = subprocess.run([sys.executable, "-m", "bartops.serving.engine", str(d)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
    if proc.returncode == 0:
        return
    if proc.returncode < 0:
        raise BundleLoadError(f"policy bundle {d} is corrupt: loading it crashed the process (signal "
                              f"{-proc.returncode}); check model/model.ubj and features/")
    marked = [ln[len("BundleLoadError: "):] for ln in proc.stderr.splitlines() if ln.startswith("BundleLoadError: ")]
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    raise BundleLoadError(marked[-1] if marked else f"loading policy bundle {d} failed: {tail[0]}")


@dataclass
class ServedPage:
    """One built page: the response body and its impression rows (log schema without reward)."""

    response: dict[str, Any]
    impressions: list[dict[str, Any]]


@dataclass
class _Block:
    """A page's candidates in canonical order with their context-free feature rows."""

    item_id: np.ndarray
    explanation: np.ndarray
    rows: np.ndarray  # float32 (n, F); context columns are overwritten per request
    item_pos: np.ndarray  # catalog row of each candidate
    home_region: np.ndarray  # int64 home-region code of each candidate's item
    release_ns: np.ndarray  # int64 release time of each candidate's item


@dataclass
class PageEngine:
    """Builds pages for single requests from a loaded bundle; thread-safe after ``precompute``."""

    policy: PagePolicy
    features: Any  # bartops.features.store.Features
    bundle_dir: Path
    booster: Any = None  # xgboost.Booster of the policy's reward model (None: use policy.scorer)
    margin: Any = None  # RewardModel.base_margin of a stacked model (None: plain booster)
    fast_path: bool = False
    load_seconds: dict[str, float] = field(default_factory=dict)
    _blocks: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)
    _rows: np.ndarray | None = field(default=None, repr=False)
    _cand_item: np.ndarray | None = field(default=None, repr=False)
    _cand_expl: np.ndarray | None = field(default=None, repr=False)
    _cold: dict[int, _Block] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def load(bundle_dir: str | Path, precompute: bool = True, predict_threads: int = 1) -> "PageEngine":
        """Load a bundle; ``predict_threads`` is XGBoost's thread count for scoring one page."""
        t0 = time.perf_counter()
        policy, features = load_bundle(bundle_dir)
        model = getattr(policy.scorer, "model", None)
        booster = getattr(model, "booster", None)
        if booster is not None:
            booster.set_param({"nthread": int(predict_threads)})  # threads do not change predictions
        eng = PageEngine(policy, features, Path(bundle_dir), booster=booster,
                         margin=getattr(model, "base_margin", None))
        eng.load_seconds["bundle"] = time.perf_counter() - t0
        items = features.items
        eng._item_name = items["name"].astype(str).to_numpy(dtype=object)
        eng._item_artist = items["artist"].astype(str).to_numpy(dtype=object)
        eng._expl_id = features.explanations["explanation_id"].astype(str).to_numpy(dtype=object)
        eng._expl_title = features.explanations["title"].astype(str).to_numpy(dtype=object)
        eng._table_users = np.unique(features.candidates["user_id"].to_numpy(np.int64))
        if precompute:
            eng.precompute()
        return eng

    @property
    def version(self) -> str:
        return self.policy.version

    def precompute(self) -> None:
        """Per-user candidate arrays and context-free feature blocks; then verify the fast path."""
        from bartops.features.assemble import (FEATURE_NAMES, HOUR_AUDIO_NAMES, assemble_rows, hour_audio_columns,
                                               hour_audio_values)

        t0 = time.perf_counter()
        f = self.features
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        self._col = col
        self._hour_audio = hour_audio_values(f)  # catalog rows × audio columns of the hour interactions
        self._hour_audio_fn = hour_audio_columns
        self._hour_audio_cols = slice(col[HOUR_AUDIO_NAMES[0]], col[HOUR_AUDIO_NAMES[0]] + len(HOUR_AUDIO_NAMES))
        self._ctx_cols = {
            "platform": [col[f"platform_{p}"] for p in PLATFORMS],
            "region": [col[f"region_{r}"] for r in REGIONS],
        }
        users = self._table_users
        region_of = dict(zip(f.users["user_id"].to_numpy(np.int64), f.users["region"].astype(str)))
        ts0 = pd.Timestamp(f.params.get("now") or "2026-01-01T00:00:00Z")  # context columns are refilled
        ts0 = ts0.tz_localize("UTC") if ts0.tzinfo is None else ts0.tz_convert("UTC")
        chunks_rows, chunks_item, chunks_expl = [], [], []
        start = 0
        for lo in range(0, len(users), PRECOMPUTE_CHUNK_USERS):
            uid = users[lo: lo + PRECOMPUTE_CHUNK_USERS]
            ctx = pd.DataFrame({"user_id": uid, "platform": PLATFORMS[0],
                                "region": [region_of.get(int(u), REGIONS[0]) for u in uid],
                                "timestamp": ts0})
            cands = f.candidates_for(ctx)
            rows = assemble_rows(f, ctx, cands, 0, 0)
            off = cands.offsets
            for j, u in enumerate(uid):
                self._blocks[int(u)] = (start + int(off[j]), start + int(off[j + 1]))
            start += len(cands)
            chunks_rows.append(rows)
            chunks_item.append(cands.item_id)
            chunks_expl.append(cands.explanation)
        self._rows = np.concatenate(chunks_rows) if chunks_rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        self._cand_item = np.concatenate(chunks_item) if chunks_item else np.zeros(0, np.int64)
        self._cand_expl = np.concatenate(chunks_expl) if chunks_expl else np.zeros(0, np.int64)
        self._cand_pos = f.item_index(self._cand_item)
        home = f.home_region_code()
        release = f.release_ns()
        self._cand_home = home[self._cand_pos]
        self._cand_release = release[self._cand_pos]
        # cold start: one block per region, built for an id the snapshot does not know
        unknown = self._unknown_user_id()
        for r_code, r in enumerate(REGIONS):
            ctx = pd.DataFrame({"user_id": [unknown], "platform": PLATFORMS[0], "region": r, "timestamp": ts0})
            cands = f.candidates_for(ctx)
            pos = f.item_index(cands.item_id)
            self._cold[r_code] = _Block(cands.item_id, cands.explanation, assemble_rows(f, ctx, cands, 0, 0),
                                        pos, home[pos], release[pos])
        self.load_seconds["precompute"] = time.perf_counter() - t0
        self.fast_path = self.booster is not None and self._verify_fast_path()
        if not self.fast_path:
            log.warning("bartops serving: fast feature path disabled, using assemble_rows per request")
        self.build(self._unknown_user_id(), PLATFORMS[0], REGIONS[0], "warm-up", 0)  # loads the compiled page loop

    def _unknown_user_id(self) -> int:
        known = np.union1d(self._table_users, np.asarray(self.features.user_ids, np.int64))
        return int(known.max(initial=-1)) + 1

    def _verify_fast_path(self) -> bool:
        """Fast rows and scores equal ``assemble_rows`` + the policy's scorer on sample requests."""
        from bartops.features.assemble import assemble_rows

        rng = np.random.default_rng(0)
        users = list(self._table_users[rng.permutation(len(self._table_users))[:3]]) + [self._unknown_user_id()]
        stamps = [pd.Timestamp("2026-03-01T07:30:00Z"), pd.Timestamp("2026-10-31T23:59:59Z")]
        for i, u in enumerate(users):
            for j, ts in enumerate(stamps):
                ctx = pd.DataFrame({"user_id": [int(u)], "platform": PLATFORMS[(i + j) % len(PLATFORMS)],
                                    "region": REGIONS[(3 * i + j) % len(REGIONS)], "timestamp": [ts]})
                cands, rows, _ = self._fast_inputs(int(u), ctx["platform"][0], ctx["region"][0], ts)
                ref_c = self.features.candidates_for(ctx)
                if not (np.array_equal(cands.item_id, ref_c.item_id) and np.array_equal(cands.explanation, ref_c.explanation)):
                    log.warning("fast path: candidates differ from Features.candidates_for for user %s", u)
                    return False
                ref = assemble_rows(self.features, ctx, ref_c, 0, 0)
                if not np.array_equal(rows, ref):
                    bad = np.nonzero((rows != ref).any(axis=0))[0]
                    log.warning("fast path: feature columns %s differ from assemble_rows", bad.tolist())
                    return False
                if not np.array_equal(self._predict(rows), np.asarray(self.policy.scorer(ctx, ref_c), np.float64)):
                    log.warning("fast path: scores differ from the policy's scorer")
                    return False
        return True

    # ------------------------------------------------------------------ per request
    def _fast_inputs(self, user_id: int, platform: str, region: str, ts: pd.Timestamp):
        """(candidates, feature rows, known) for one request from the precomputed blocks."""
        span = self._blocks.get(user_id)
        r_code = _REGION_CODE[region]
        if span is not None:
            lo, hi = span
            rows = self._rows[lo:hi].copy()
            item, expl = self._cand_item[lo:hi], self._cand_expl[lo:hi]
            home, release, item_pos = self._cand_home[lo:hi], self._cand_release[lo:hi], self._cand_pos[lo:hi]
        else:
            b = self._cold[r_code]
            rows, item, expl, home, release = b.rows.copy(), b.item_id, b.explanation, b.home_region, b.release_ns
            item_pos = b.item_pos
        c = self._col
        p_code = _PLATFORM_CODE[platform]
        rows[:, self._ctx_cols["platform"]] = 0.0
        rows[:, self._ctx_cols["platform"][p_code]] = 1.0
        rows[:, self._ctx_cols["region"]] = 0.0
        rows[:, self._ctx_cols["region"][r_code]] = 1.0
        hour = np.array([(ts.hour + REGION_UTC_OFFSET_HOURS[region]) % 24], np.int64)
        rows[:, c["local_hour"]] = hour[0]
        rows[:, c["hour_sin"]] = np.sin(2 * np.pi * hour / 24)[0]
        rows[:, c["hour_cos"]] = np.cos(2 * np.pi * hour / 24)[0]
        rows[:, self._hour_audio_cols] = self._hour_audio_fn(self._hour_audio[item_pos], np.repeat(hour, len(item)))
        rows[:, c["shelf"]] = 0.0
        rows[:, c["position"]] = 0.0
        rows[:, c["home_region"]] = home == r_code
        ts_ns = np.int64(ts.tz_convert(None).to_datetime64().astype("datetime64[ns]").astype(np.int64))
        rows[:, c["item_age_days"]] = (ts_ns - release) / _DAY_NS
        cands = CandidateSet(np.zeros(len(item), np.int64), item, expl, 1, np.ones(len(item), bool))
        return cands, rows, span is not None

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0)
        margin = None if self.margin is None else self.margin(rows)
        return self.booster.inplace_predict(rows, validate_features=False, base_margin=margin).astype(np.float64)

    def inputs(self, user_id: int, platform: str, region: str, timestamp: pd.Timestamp):
        """(contexts, candidates, scores, known) of one request."""
        if region not in _REGION_CODE or platform not in _PLATFORM_CODE:
            raise ValueError(f"unknown region {region!r} or platform {platform!r}")
        if self.fast_path:
            cands, rows, known = self._fast_inputs(int(user_id), platform, region, timestamp)
            # scores are given, so build_pages reads only the number of context rows: skip the frame
            return _ONE_PAGE, cands, self._predict(rows), known
        ctx = pd.DataFrame({"user_id": [int(user_id)], "platform": [platform], "region": [region],
                            "timestamp": [timestamp]})
        cands = self.features.candidates_for(ctx)
        known = bool(np.isin(int(user_id), self._table_users))
        return ctx, cands, np.asarray(self.policy.scorer(ctx, cands), np.float64), known

    def build(self, user_id: int, platform: str, region: str, request_id: str, seed: int,
              timestamp: datetime | pd.Timestamp | None = None, shelves: int | None = None,
              cards: int | None = None) -> ServedPage:
        """One page (``build_pages`` with ``np.random.default_rng(seed)``) and its impression rows."""
        ts = pd.Timestamp(datetime.now(timezone.utc) if timestamp is None else timestamp)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        policy = self.policy
        if (shelves and shelves != policy.shelves) or (cards and cards != policy.cards):
            policy = dataclasses.replace(policy, shelves=shelves or policy.shelves, cards=cards or policy.cards)
        ctx, cands, scores, known = self.inputs(user_id, platform, region, ts)
        pages = build_pages(policy, ctx, cands, np.random.default_rng(seed), scores=scores)
        return self._render(policy, pages, cands, scores, request_id, seed, ts, int(user_id), platform, region, known)

    def _render(self, policy: PagePolicy, pages: Pages, cands: CandidateSet, scores: np.ndarray, request_id: str,
                seed: int, ts: pd.Timestamp, user_id: int, platform: str, region: str, known: bool) -> ServedPage:
        ts_text = ts.isoformat()
        item_pos = self.features.item_index(cands.item_id) if len(cands) else np.zeros(0, np.int64)
        shelves_out, rows = [], []
        for s in range(policy.shelves):
            cards = []
            for k in range(policy.cards):
                ci = int(pages.candidate[0, s, k])
                if ci == EMPTY:
                    continue
                pos, e = int(item_pos[ci]), int(cands.explanation[ci])
                prop, explored = float(pages.propensity[0, s, k]), bool(pages.explored[0, s, k])
                cards.append({"item_id": int(cands.item_id[ci]), "name": self._item_name[pos],
                              "artist": self._item_artist[pos], "score": float(scores[ci]),
                              "propensity": prop, "explored": explored})
                rows.append({"impression_id": f"{request_id}-{s}-{k}", "request_id": request_id,
                             "user_id": user_id, "timestamp": ts_text, "platform": platform, "region": region,
                             "shelf": s, "position": k, "item_id": int(cands.item_id[ci]),
                             "explanation_id": self._expl_id[e], "propensity": prop,
                             "epsilon": float(pages.epsilon[0, s, k]), "explored": explored,
                             "policy_version": policy.version})
            if cards:
                e = int(cands.explanation[pages.candidate[0, s, 0]])
                shelves_out.append({"title": self._expl_title[e], "explanation_id": self._expl_id[e], "cards": cards})
        response = {"request_id": request_id, "policy_version": policy.version,
                    "epsilon": {"head": policy.epsilon_head, "fill": policy.epsilon_fill}, "seed": int(seed),
                    "cold_start": not known, "timestamp": ts_text, "shelves": shelves_out}
        return ServedPage(response, rows)


if __name__ == "__main__":  # used by verify_bundle_isolated
    import sys as _sys

    try:
        load_bundle(_sys.argv[1])
    except BundleLoadError as _exc:
        print(f"BundleLoadError: {str(_exc).splitlines()[0]}", file=_sys.stderr)
        _sys.exit(2)
