"""Prefect flow ``living-loop``: simulated listeners against the live stack, round after round.

    make demo && make loop          # or: python -m flows.loop --rounds 5 --page-views 4000

Each round: wait until the service serves the registry's production version → simulated listeners
request pages over HTTP and stream with the world's true probabilities (``bartops.loop.listeners``)
→ the deployment ``ingest-served-logs/hourly`` joins the served logs into a batch and validates it →
the deployment ``retrain/nightly`` trains, evaluates and gates a candidate on production's own
exploration logs and promotes or not → the service swaps.  Each round is scored against the
simulator's truth and appended to ``<paths.build>/loop/rounds.csv`` (DVC plots it; the dashboard's
Loop page shows it) and published as the Prefect table artifact ``loop-rounds``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment

from bartops.config import load_params, section
from bartops.loop.listeners import play_listeners
from bartops.loop.record import ROUNDS_FILE, RoundRecord, read_rounds, write_rounds
from bartops.loop.rounds import (batch_rows, bundle_truth, mean_interval, open_log_files, references,
                                 served_log_rows)
from bartops.registry import Registry
from bartops.serving.config import ServingConfig
from bartops.sim import World

INGEST = "ingest-served-logs/hourly"
RETRAIN = "retrain/nightly"


def wait_for_version(url: str, version: str, timeout: float, agree: int = 10) -> float:
    """Seconds until ``agree`` consecutive ``GET /version`` answers (any worker) name ``version``."""
    t0, streak, last = time.monotonic(), 0, None
    while time.monotonic() - t0 < timeout:
        try:
            last = httpx.get(f"{url}/version", timeout=5).json()
            streak = streak + 1 if last.get("version") == version and last.get("ready") else 0
        except (httpx.HTTPError, ValueError):
            streak = 0
        if streak >= agree:
            return time.monotonic() - t0
        time.sleep(0.1 if streak else 0.5)
    raise TimeoutError(f"the service at {url} did not serve {version} within {timeout:.0f} s; last /version: {last}")


def wait_for_closed_logs(log_dir: Path, request_ids: set[str], expected: int, timeout: float) -> int:
    """Wait until the service has closed the log files holding ``expected`` rows of ``request_ids``."""
    deadline, logged = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        logged = served_log_rows(log_dir, request_ids)
        if logged >= expected:
            return logged
        time.sleep(1.0)
    return logged


def run_and_check(name: str, parameters: dict, timeout: float):
    """Run a deployment (as ``prefect deployment run`` does) and wait; a run that fails raises."""
    run = run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=2)
    if run.state is None or not run.state.is_final():
        raise TimeoutError(f"deployment {name} run {run.id} did not finish within {timeout:.0f} s")
    return run


@flow(name="living-loop")
def living_loop(rounds: int = 5, page_views: int = 4000, seed: int = 0, params_file: str | None = None,
                threads: int = 4, round_timeout_s: float = 3600.0) -> list[dict]:
    """Play ``rounds`` rounds of ``page_views`` simulated page views each; returns the new round records."""
    logger = get_run_logger()
    params = load_params(params_file)
    paths, ops = section(params, "paths"), section(params, "ops")
    url = f"http://{ops['host']}:{ops['service_port']}"
    registry = Registry(Path(paths["registry"]))
    log_dir = Path(ServingConfig.from_params(params).with_env().log_dir)
    window = ServingConfig.from_params(params).attribution_window_seconds
    data_dir = Path(paths["data"])
    out = Path(paths["build"]) / "loop" / ROUNDS_FILE
    world = World.load(data_dir)
    records = read_rounds(out)
    first = records[-1].round + 1 if records else 1
    new: list[RoundRecord] = []
    for r in range(first, first + rounds):
        t0 = time.monotonic()
        live = registry.production()
        if live is None:
            raise RuntimeError(f"registry {registry.root} has no production version: run `make demo` first")
        swap_s = wait_for_version(url, live, timeout=300)
        rng = np.random.default_rng([seed, r])
        traffic = play_listeners(url, world, page_views, rng, threads=threads)
        if traffic.failed:
            logger.error("round %d: %d requests failed, e.g. %s", r, len(traffic.failed), traffic.failed[:3])
        versions = sorted(set(traffic.cards["policy_version"]))
        ids = set(traffic.cards["request_id"])
        served = len(traffic.cards)
        rate, rate_lo, rate_hi = mean_interval(traffic.streams_per_page().to_numpy())
        t_traffic = time.monotonic() - t0
        contexts = traffic.contexts()
        truth = bundle_truth(world, registry.path(live), contexts, seed=r)
        refs = references(world, data_dir, registry.path(live), contexts, seed=r)
        logged = wait_for_closed_logs(log_dir, ids, served, timeout=ServingConfig.from_params(params).log_rotate_seconds + 60)
        # every listener has reported: close their attribution windows now rather than in 30 minutes
        now = (datetime.now(timezone.utc) + timedelta(seconds=window + 1)).isoformat()
        t1 = time.monotonic()
        run_and_check(INGEST, {"now": now}, round_timeout_s)
        joined = batch_rows(Path(paths["incoming"]), ids)
        accepted = batch_rows(Path(paths["impressions"]), ids)
        t_ingest = time.monotonic() - t1
        registered_before = {v["version"] for v in registry.list()}
        t2 = time.monotonic()
        run_and_check(RETRAIN, {}, round_timeout_s)
        t_retrain = time.monotonic() - t2
        candidates = [v["version"] for v in registry.list() if v["version"] not in registered_before]
        cand, decision, lift, true_lift = "", "", (math.nan, math.nan, math.nan), math.nan
        if candidates:
            cand = candidates[-1]
            gate = registry.show(cand).get("gate") or {}
            decision = str(gate.get("decision", ""))
            est = gate.get("estimator", "dr")
            row = next((x for x in (gate.get("ope") or {}).get("table", [])
                        if x.get("policy") == "candidate - production" and x.get("estimator") == est), None)
            if row is not None:
                lift = (row["value"], row["ci_low"], row["ci_high"])
            true_lift = bundle_truth(world, registry.path(cand), contexts, seed=r).value - truth.value
        record = RoundRecord(
            round=r, live_version=",".join(versions), page_views=traffic.pages, true_value=truth.value,
            true_value_se=truth.se, logging_value=refs.logging.value, oracle_value=refs.oracle.value,
            oracle_share=truth.value / refs.oracle.value, online_rate=rate, online_rate_lo=rate_lo,
            online_rate_hi=rate_hi, candidate_version=cand, decision=decision, dr_lift=lift[0],
            dr_lift_lo=lift[1], dr_lift_hi=lift[2], true_lift=true_lift, served=served, logged=logged,
            joined=joined, accepted=accepted, seconds=round(time.monotonic() - t0, 1))
        records.append(record)
        new.append(record)
        write_rounds(records, out)
        logger.info("round %d: live %s true %.3f (%.3f of oracle), online %.3f [%.3f, %.3f]; %s %s (DR %+.3f, true "
                    "%+.3f); cards %d/%d/%d/%d; swap wait %.1f s, traffic %.0f s, ingest %.0f s, retrain %.0f s, "
                    "failed requests %d", r, record.live_version, truth.value, record.oracle_share, rate, rate_lo,
                    rate_hi, decision or "no candidate", cand, lift[0], true_lift, served, logged, joined, accepted,
                    swap_s, t_traffic, t_ingest, t_retrain, len(traffic.failed))
        create_table_artifact(key="loop-rounds", table=[_rounded(asdict(x)) for x in records],
                              description=f"living loop: {len(records)} rounds ({out})")
    return [asdict(x) for x in new]


def _rounded(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4) if isinstance(v, float) else v)
            for k, v in row.items()}


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(description="Play the living loop against the stack `make demo` started.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--page-views", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default=None)
    args = ap.parse_args()
    state = living_loop(rounds=args.rounds, page_views=args.page_views, seed=args.seed, params_file=args.params,
                        return_state=True)
    print(state.message)
    raise SystemExit(0 if state.is_completed() else 1)
