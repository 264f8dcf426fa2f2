"""The measurements of a loop round: truth from the simulator, online rate, and the card accounting.

Pure functions over files and frames; ``flows/loop.py`` wires them with the live stack.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from bartops.policy.page import PagePolicy
from bartops.reward.policy import load_policy_bundle
from bartops.serving.logwriter import ARCHIVE, IMPRESSIONS, archived_files, closed_files, read_rows
from bartops.sim import World, logging_policy, oracle_policy, true_value


@dataclass(frozen=True)
class Truth:
    """True values (expected streams per page view) on one round's page-view contexts."""

    value: float
    se: float


@dataclass(frozen=True)
class References:
    """The simulator's logging policy and the oracle on the same contexts."""

    logging: Truth
    oracle: Truth


def page_contexts(contexts: pd.DataFrame) -> pd.DataFrame:
    """Contexts in the form the policies and the simulator read (UTC timestamps, fresh index)."""
    out = contexts[["user_id", "platform", "region", "timestamp"]].reset_index(drop=True)
    return out.assign(timestamp=pd.to_datetime(out["timestamp"], utc=True),
                      user_id=out["user_id"].astype(np.int64))


def bundle_truth(world: World, bundle_dir: Path, contexts: pd.DataFrame, n_samples: int = 4, seed: int = 0) -> Truth:
    """True value of the policy in a bundle, as served (with its ε), over ``contexts``."""
    policy, features = load_policy_bundle(Path(bundle_dir))
    ctx = page_contexts(contexts)
    return Truth(*true_value(world, policy, ctx, features.candidates_for(ctx), n_samples=n_samples, seed=seed))


def references(world: World, data_dir: Path, bundle_dir: Path, contexts: pd.DataFrame, n_samples: int = 4,
               seed: int = 0) -> References:
    """The simulator's logging policy and the oracle over ``contexts`` (the bundle's candidate sets)."""
    live, features = load_policy_bundle(Path(bundle_dir))
    ctx = page_contexts(contexts)
    cands = features.candidates_for(ctx)
    history = pd.read_parquet(Path(data_dir) / "history.parquet")
    log_policy: PagePolicy = logging_policy(world, history, live.shelves, live.cards, live.epsilon_head,
                                            live.epsilon_fill)
    logging = Truth(*true_value(world, log_policy, ctx, cands, n_samples=n_samples, seed=seed))
    oracle = Truth(*true_value(world, oracle_policy(world, live.shelves, live.cards), ctx, cands))
    return References(logging, oracle)


def mean_interval(per_page: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-page values with its normal-approximation interval (pages are independent)."""
    x = np.asarray(per_page, float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    half = float(norm.ppf(0.5 + level / 2) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return m, m - half, m + half


def served_log_rows(log_dir: Path, request_ids: set[str], since: float = 0.0) -> int:
    """Impression rows that belong to ``request_ids`` in the service's closed log files written at or
    after ``since`` (a POSIX time: files last written before the requests cannot hold them), counting
    files a join has already archived (``<log_dir>/archive/``; a retirement keeps the file's mtime).

    With ``serving.retire_joined: delete`` a join that ran in between leaves fewer rows to count."""
    names = sorted({f.name for f in closed_files(log_dir, IMPRESSIONS) + archived_files(log_dir, IMPRESSIONS)})
    n = 0
    for name in names:  # a file may move to the archive meanwhile: look in both places, count it once
        for f in (Path(log_dir) / name, Path(log_dir) / ARCHIVE / name):
            try:
                if f.stat().st_mtime >= since:
                    n += sum(1 for row in read_rows([f]) if row.get("request_id") in request_ids)
                break
            except FileNotFoundError:
                continue
    return n


def batch_rows(folder: Path, request_ids: set[str]) -> int:
    """Rows of the parquet batches in ``folder`` that belong to ``request_ids``."""
    n = 0
    for f in sorted(glob.glob(str(Path(folder) / "*.parquet"))):
        ids = pd.read_parquet(f, columns=["request_id"])["request_id"].astype(str)
        n += int(ids.isin(request_ids).sum())
    return n
