"""Write a simulation to the raw data folder and summarise it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.features.candidates import candidates_for_requests
from bartops.sim.simulate import SimulatedData, logging_policy, oracle_policy, sample_contexts, true_value
from bartops.leftovers import write_parquet_atomic


LOGGING_CANDIDATES = "logging_candidates.parquet"  # (user_id, explanation code, item_id) of the logging policy


def write_simulation(data: SimulatedData, out: Path, batch_name: str) -> dict[str, Path]:
    """Catalog, users, truth and history under ``out``; the impression batch under ``out/incoming``.

    Every file is written to a temporary name and renamed, so a crash leaves no half-written table.
    """
    out = Path(out)
    data.world.save(out)
    write_parquet_atomic(data.history, out / "history.parquet")
    # the candidate sets the logging policy had when it logged: evaluation computes support on these
    write_parquet_atomic(data.candidates[["user_id", "explanation", "item_id"]], out / LOGGING_CANDIDATES)
    incoming = out / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    batch = incoming / f"{batch_name}.parquet"
    write_parquet_atomic(data.impressions, batch)
    return {"world": out, "history": out / "history.parquet", "batch": batch}


def summarise(data: SimulatedData, shelves: int, cards: int, epsilon_head: float, epsilon_fill: float,
              n_contexts: int = 2000, seed: int = 0) -> dict[str, float]:
    """Sizes of the world and logs, and the true values of the logging and oracle policies."""
    world, logs = data.world, data.impressions
    rng = np.random.default_rng(seed)
    ctx = sample_contexts(world, n_contexts, rng)
    cands = candidates_for_requests(data.candidates, ctx["user_id"].to_numpy())
    logging = logging_policy(world, data.history, shelves, cards, epsilon_head, epsilon_fill)
    v_log, se_log = true_value(world, logging, ctx, cands, n_samples=10, seed=seed)
    v_greedy, _ = true_value(world, dataclasses.replace(logging, epsilon_head=0.0, epsilon_fill=0.0), ctx, cands)
    v_oracle, _ = true_value(world, oracle_policy(world, shelves, cards), ctx, cands)
    return {
        "items": len(world.items),
        "artists": int(world.items["artist_id"].nunique()),
        "users": len(world.users),
        "explanations": len(world.explanations),
        "history_plays": len(data.history),
        "candidates_per_user": float(data.candidates.groupby("user_id").size().mean()),
        "impressions": len(logs),
        "page_views": int(logs["request_id"].nunique()),
        "stream_rate": float(logs["reward"].mean()),
        "explored_share": float(logs["explored"].mean()),
        "true_value_logging": v_log,
        "true_value_logging_se": se_log,
        "true_value_logging_greedy": v_greedy,
        "true_value_oracle": v_oracle,
    }


def format_summary(summary: dict[str, float]) -> str:
    """Aligned 'name value' lines."""
    width = max(len(k) for k in summary)
    lines = []
    for k, v in summary.items():
        text = f"{v:,.4f}" if isinstance(v, float) else f"{v:,}"
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)


def read_table(path: Path) -> pd.DataFrame:
    """A parquet table, with an error naming the file when it is missing."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run `bartops simulate` first")
    return pd.read_parquet(path)
