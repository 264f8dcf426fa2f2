"""One row per round of the living loop, as a CSV that DVC plots and the dashboard's Loop page read."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from bartops.leftovers import write_text_atomic

ROUNDS_FILE = "rounds.csv"


@dataclass(frozen=True)
class RoundRecord:
    """What one loop round served, learned and decided, scored against the simulator's truth.

    Values are expected streams per page view; rounds count from 1.
    """

    round: int
    live_version: str  # the production version that served this round's pages
    page_views: int  # pages served (and requested) this round
    true_value: float  # the live policy's true value (simulator) per page view
    true_value_se: float  # Monte-Carlo standard error of true_value
    logging_value: float  # the simulator's logging policy, same contexts
    oracle_value: float  # the oracle (true stream probability as score, ε = 0), same contexts
    oracle_share: float  # true_value / oracle_value
    online_rate: float  # observed streams per page view this round
    online_rate_lo: float  # 95 % interval of online_rate (pages resampled: normal approximation)
    online_rate_hi: float
    candidate_version: str  # the candidate trained after this round's traffic ("" if none)
    decision: str  # promote | reject | "" (no candidate)
    dr_lift: float  # DR estimate of candidate − production (nan when not evaluated)
    dr_lift_lo: float
    dr_lift_hi: float
    true_lift: float  # the candidate's true value − the live policy's (nan when unknown)
    served: int  # cards in the pages the listeners received
    logged: int  # cards in the service's impression logs for these pages
    joined: int  # cards in the joined, reward-labelled batch
    accepted: int  # cards of that batch accepted by validation
    failed_requests: int  # /home and /feedback requests that did not get a 200
    page_p50_ms: float  # /home latency seen by the listeners
    page_p99_ms: float
    swap_seconds: float  # waiting for the service to serve the production version (after a promotion)
    traffic_seconds: float  # page views and stream reports
    truth_seconds: float  # scoring the live policy, the logging policy and the oracle on the simulator
    ingest_seconds: float  # closing the log files, the deployment ingest-served-logs (join + validate)
    retrain_seconds: float  # the deployment retrain/nightly (validate, features, train, evaluate, gate)
    seconds: float  # wall time of the round
    shed_requests: int = 0  # requests the service shed (503 + Retry-After) that the listeners asked again


def write_rounds(records: list[RoundRecord], path: str | Path) -> Path:
    """Write all rounds to ``path`` at once (``leftovers.write_text_atomic``)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(RoundRecord)])
    w.writeheader()
    for r in records:
        w.writerow(asdict(r))
    return write_text_atomic(path, buf.getvalue())


def read_rounds(path: str | Path) -> list[RoundRecord]:
    """The rounds in ``path`` ([] when it does not exist); a malformed file raises naming it."""
    path = Path(path)
    if not path.exists():
        return []
    names = [f.name for f in fields(RoundRecord)]
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            optional = {f.name for f in fields(RoundRecord) if f.default is not MISSING}
            missing = [n for n in names if n not in (reader.fieldnames or []) and n not in optional]
            if missing:
                raise ValueError(f"{path} is not a loop rounds file: it lacks the column(s) {missing}")
            for i, row in enumerate(reader, start=2):
                try:
                    out.append(RoundRecord(**{f.name: _parse(f.type, row[f.name])
                                              for f in fields(RoundRecord) if f.name in row}))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{path}: line {i} is not a loop round ({type(exc).__name__}: {exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({type(exc).__name__}: {exc})") from None
    return out


def _parse(kind: str, text: str):
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text) if text not in ("", "nan") else math.nan
    return text
