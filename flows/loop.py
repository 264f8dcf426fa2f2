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

from bartops.config import load_params
from bartops.gate import GateDecision
from bartops.loop.listeners import play_listeners
from bartops.loop.record import ROUNDS_FILE, RoundRecord, read_rounds, write_rounds
from bartops.loop.rounds import batch_rows, bundle_truth, mean_interval, references, served_log_rows
from bartops.registry import Registry
from bartops.serving.config import with_environment
from bartops.sim import World

INGEST = "ingest-served-logs/hourly"
RETRAIN = "retrain/nightly"


def wait_for_version(url: str, version: str, workers: int, timeout: float) -> float:
    """Seconds until each of the service's ``workers`` has answered ``GET /version`` with ``version``."""
    t0, seen, last = time.monotonic(), {}, None
    while time.monotonic() - t0 < timeout:
        try:
            last = httpx.get(f"{url}/version", timeout=5).json()
            seen[last["worker"]] = last["version"] if last.get("ready") else None
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if len(seen) >= workers and all(v == version for v in seen.values()):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"the service at {url} did not serve {version} on all {workers} workers within "
                       f"{timeout:.0f} s; workers: {seen}; last /version: {last}")


def wait_for_closed_logs(log_dir: Path, request_ids: set[str], expected: int, since: float, timeout: float) -> int:
    """Wait until the service has closed the log files holding ``expected`` rows of ``request_ids``."""
    deadline, logged = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        logged = served_log_rows(log_dir, request_ids, since)
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
                threads: int = 4, round_timeout_s: float = 3600.0) -> list[RoundRecord]:
    """Play ``rounds`` rounds of ``page_views`` simulated page views each; returns the new round records."""
    logger = get_run_logger()
    params = load_params(params_file)
    paths, ops = params.paths, params.ops
    url = f"http://{ops.host}:{ops.service_port}"
    registry = Registry(paths.registry)
    serving = with_environment(params.serving)
    log_dir, window = Path(serving.log_dir), serving.attribution_window_seconds
    data_dir = paths.data
    out = paths.build / "loop" / ROUNDS_FILE
    world = World.load(data_dir)
    records = read_rounds(out)
    first = records[-1].round + 1 if records else 1
    new: list[RoundRecord] = []
    for r in range(first, first + rounds):
        t0, started = time.monotonic(), time.time() - 1.0  # (file times have coarse resolution on some systems)
        live = registry.production()
        if live is None:
            raise RuntimeError(f"registry {registry.root} has no production version: run `make demo` first")
        swap_s = wait_for_version(url, live, serving.workers, timeout=300)
        rng = np.random.default_rng([seed, r])
        traffic = play_listeners(url, world, page_views, rng, threads=threads)
        if traffic.failed:
            logger.error("round %d: %d requests failed, e.g. %s", r, len(traffic.failed), traffic.failed[:3])
        versions = sorted(set(traffic.cards["policy_version"]))
        ids = set(traffic.cards["request_id"])
        served = len(traffic.cards)
        rate, rate_lo, rate_hi = mean_interval(traffic.streams_per_page().to_numpy())
        t_traffic = time.monotonic() - t0 - swap_s
        t1 = time.monotonic()
        contexts = traffic.contexts()
        truth = bundle_truth(world, registry.path(live), contexts, seed=r)
        refs = references(world, data_dir, registry.path(live), contexts, seed=r)
        t_truth = time.monotonic() - t1
        t1 = time.monotonic()
        logged = wait_for_closed_logs(log_dir, ids, served, since=started, timeout=serving.log_rotate_seconds + 60)
        # every listener has reported: close their attribution windows now rather than in 30 minutes
        now = (datetime.now(timezone.utc) + timedelta(seconds=window + 1)).isoformat()
        run_and_check(INGEST, {"now": now}, round_timeout_s)
        joined = batch_rows(paths.incoming, ids)
        accepted = batch_rows(paths.impressions, ids)
        t_ingest = time.monotonic() - t1
        registered_before = {v["version"] for v in registry.list()}
        t2 = time.monotonic()
        run_and_check(RETRAIN, {}, round_timeout_s)
        t_retrain = time.monotonic() - t2
        candidates = [v["version"] for v in registry.list() if v["version"] not in registered_before]
        cand, decision, lift, true_lift = "", "", (math.nan, math.nan, math.nan), math.nan
        if candidates:
            cand = candidates[-1]
            gate = GateDecision.from_dict(registry.show(cand).get("gate") or GateDecision.pending().to_dict())
            decision = "" if gate.decision == "pending" else gate.decision
            row = gate.headline()
            if row is not None:
                lift = (row.value, row.ci_low, row.ci_high)
            true_lift = bundle_truth(world, registry.path(cand), contexts, seed=r).value - truth.value
        record = RoundRecord(
            round=r, live_version=",".join(versions), page_views=traffic.pages, true_value=truth.value,
            true_value_se=truth.se, logging_value=refs.logging.value, oracle_value=refs.oracle.value,
            oracle_share=truth.value / refs.oracle.value, online_rate=rate, online_rate_lo=rate_lo,
            online_rate_hi=rate_hi, candidate_version=cand, decision=decision, dr_lift=lift[0],
            dr_lift_lo=lift[1], dr_lift_hi=lift[2], true_lift=true_lift, served=served, logged=logged,
            joined=joined, accepted=accepted, failed_requests=len(traffic.failed), shed_requests=traffic.shed,
            page_p50_ms=_percentile(traffic.page_ms, 50), page_p99_ms=_percentile(traffic.page_ms, 99),
            swap_seconds=round(swap_s, 1), traffic_seconds=round(t_traffic, 1), truth_seconds=round(t_truth, 1),
            ingest_seconds=round(t_ingest, 1), retrain_seconds=round(t_retrain, 1),
            seconds=round(time.monotonic() - t0, 1))
        records.append(record)
        new.append(record)
        write_rounds(records, out)
        logger.info("round %s", _rounded(asdict(record)))
        create_table_artifact(key="loop-rounds", table=[_rounded(asdict(x)) for x in records],
                              description=f"living loop: {len(records)} rounds ({out})")
    return new


def _percentile(ms: np.ndarray, q: float) -> float:
    return round(float(np.percentile(ms, q)), 1) if len(ms) else math.nan


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
