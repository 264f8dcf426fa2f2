"""Pure view-model functions: registry records and policy bundles → what the pages render.

Nothing here touches the web layer.  The gate decision is read as the gate wrote it
(``bartops.gate.GateDecision``, one JSON form); a ``gate.json`` that cannot be read shows as not
gated, with the reason.  The model metrics (``metrics.json``) and the lineage (``lineage.json``) are
shown as far as they go: a missing or malformed section is ``None`` (rendered "not available").
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import numpy as np

from bartops.gate import GateDecision
from bartops.gate.decision import DIFFERENCE
from bartops.loop.record import read_rounds
from bartops.ope.pipeline import EstimateRow
from bartops.registry import Registry, RegistryError

# ---------------------------------------------------------------------- statuses
AWAITING = "awaiting_approval"
PROMOTED = "promoted"
REJECTED = "rejected"
PENDING = "pending"
STATUS_LABELS = {
    AWAITING: "awaiting approval",
    PROMOTED: "promoted",
    REJECTED: "rejected",
    PENDING: "not gated yet",
}
DECISION_STATUS = {"promote": PROMOTED, "reject": REJECTED}  # a loop round's decision → its badge


def read_gate(stored: Any) -> tuple[GateDecision, str | None]:
    """(the version's gate decision, why gate.json could not be read or None); a missing or unreadable
    gate.json reads as not gated yet."""
    if stored is None:
        return GateDecision.pending(), None
    if isinstance(stored, Mapping) and set(stored) == {"error"}:  # Registry.show on invalid JSON
        return GateDecision.pending(), f"gate.json cannot be read: {stored['error']}"
    try:
        return GateDecision.from_dict(stored), None
    except ValueError as exc:
        return GateDecision.pending(), f"gate.json cannot be read: {exc}"


# ---------------------------------------------------------------------- OPE table
@dataclass(frozen=True)
class OPERow:
    """One estimator's line of the OPE table: the candidate, production and their paired difference."""

    estimator: str
    candidate: EstimateRow | None
    production: EstimateRow | None
    difference: EstimateRow | None


def ope_rows(gate: GateDecision) -> list[OPERow]:
    """The decision's OPE table, one row per estimator (in the table's order)."""
    if gate.ope is None:
        return []
    return [OPERow(e, gate.ope.row("candidate", e), gate.ope.row("production", e), gate.ope.row(DIFFERENCE, e))
            for e in gate.ope.estimators()]


# ---------------------------------------------------------------------- small helpers
def _num(x: Any) -> float | None:
    """A finite float or None (bools, strings and NaN are not figures)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _get(d: Any, *keys: str) -> Any:
    """The first present key of a mapping, else None."""
    if not isinstance(d, Mapping):
        return None
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _deep_find(obj: Any, keys: Iterable[str], max_depth: int = 5) -> Any:
    """Breadth-first search for the first value under any of ``keys`` in nested dicts/lists."""
    keys = tuple(keys)
    level = [obj]
    for _ in range(max_depth + 1):
        nxt = []
        for o in level:
            if isinstance(o, Mapping):
                for k in keys:
                    if k in o and o[k] is not None:
                        return o[k]
                nxt.extend(v for v in o.values() if isinstance(v, (Mapping, list)))
            elif isinstance(o, list):
                nxt.extend(v for v in o if isinstance(v, (Mapping, list)))
        level = nxt
        if not level:
            break
    return None



def _figure(x: Any) -> Any:
    """A number stays a number; anything else becomes a short string (or None)."""
    if x is None:
        return None
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float, np.integer, np.floating)):
        return _num(x) if _num(x) is not None else str(x)
    return str(x) if not isinstance(x, (Mapping, list)) else _short(x)


def _short(x: Any, limit: int = 120) -> str:
    import json

    s = json.dumps(x, default=str, sort_keys=True)
    return s if len(s) <= limit else s[: limit - 1] + "…"



# ---------------------------------------------------------------------- calibration
def calibration_points(metrics: Mapping | None, model: str | None = None) -> list[dict] | None:
    """Reliability-diagram points ``{"predicted", "observed", "count"}`` from the metrics, or None.

    Looks for ``calibration`` (preferring the entry of ``model`` when metrics hold several models)
    as a list of bins (dicts with predicted/mean_predicted, observed/fraction_positive/rate, count/n)
    or as parallel lists.
    """
    if not isinstance(metrics, Mapping):
        return None
    scope: Any = metrics
    if model and isinstance(_get(metrics, "models"), Mapping) and model in metrics["models"]:
        scope = metrics["models"][model]
    cal = _deep_find(scope, ["calibration", "calibration_bins", "reliability", "reliability_bins"])
    if isinstance(cal, Mapping):
        bins = _get(cal, "bins", "points", "table")
        if bins is None:
            pred = _get(cal, "mean_predicted", "predicted", "prob_pred", "pred")
            obs = _get(cal, "observed", "fraction_positive", "prob_true", "observed_rate", "rate")
            cnt = _get(cal, "count", "counts", "n")
            if isinstance(pred, list) and isinstance(obs, list) and len(pred) == len(obs):
                cnt = cnt if isinstance(cnt, list) and len(cnt) == len(pred) else [None] * len(pred)
                bins = [{"predicted": p, "observed": o, "count": c} for p, o, c in zip(pred, obs, cnt)]
        cal = bins
    if not isinstance(cal, list):
        return None
    pts = []
    for b in cal:
        if isinstance(b, Mapping):
            p = _num(_get(b, "predicted", "mean_predicted", "prob_pred", "pred", "mean_pred"))
            o = _num(_get(b, "observed", "fraction_positive", "prob_true", "observed_rate", "rate", "actual"))
            c = _num(_get(b, "count", "n", "size", "weight"))
        elif isinstance(b, (list, tuple)) and len(b) >= 2:
            p, o, c = _num(b[0]), _num(b[1]), _num(b[2]) if len(b) > 2 else None
        else:
            continue
        if p is not None and o is not None and (c is None or c > 0):
            pts.append({"predicted": p, "observed": o, "count": c})
    return sorted(pts, key=lambda q: q["predicted"]) or None


def calibration_error(metrics: Mapping | None, model: str | None = None) -> float | None:
    """The expected calibration error recorded in the metrics (``ece``/``calibration_error``), if any."""
    if not isinstance(metrics, Mapping):
        return None
    scope = metrics["models"][model] if model and isinstance(_get(metrics, "models"), Mapping) \
        and model in metrics["models"] else metrics
    return _num(_deep_find(scope, ["ece", "calibration_error", "expected_calibration_error"]))


# ---------------------------------------------------------------------- validation and lineage
def validation_summary(gate: GateDecision) -> dict | None:
    """The validation behind a decision: ``{"passed", "counts", "results", "source", "extra"}`` or None.

    From the evaluated batches' reports (``ValidationReport.to_dict()``) the decision carries, else
    from its ``validation`` rule and the size of the evaluated logs.  ``results`` is a list of
    ``{"name", "success", "detail"}``, one per expectation.
    """
    if gate.validation:
        return _merge_views([_validation_view(r, "gate") for r in gate.validation if isinstance(r, Mapping)])
    rule = next((r for r in gate.rules if r.rule == "validation"), None)
    if rule is None:
        return None
    logs = asdict(gate.logs) if gate.logs else {}
    counts = {k: float(v) for k, v in logs.items() if isinstance(v, int)}
    extra = {k: v for k, v in logs.items() if isinstance(v, str)}
    extra["detail"] = rule.detail
    return {"passed": rule.passed, "counts": counts, "results": [], "source": "gate rule", "extra": extra}


def _merge_views(views: list[dict]) -> dict:
    """One summary of several batch reports: passed if all passed, counts summed, results concatenated."""
    counts: dict[str, Any] = {}
    for v in views:
        for k, x in v["counts"].items():
            if isinstance(x, float):
                counts[k] = counts.get(k, 0.0) + x
    passed = [v["passed"] for v in views]
    return {"passed": all(passed) if all(isinstance(p, bool) for p in passed) else None, "counts": counts,
            "results": [r for v in views for r in v["results"]], "source": views[0]["source"],
            "extra": {"batches": float(len(views))}}


def _validation_view(rep: Mapping, source: str) -> dict:
    passed = _get(rep, "passed", "success", "ok")
    counts = _get(rep, "counts", "statistics", "stats")
    results_src = _get(rep, "results", "expectations", "checks", "expectation_results")
    results = []
    if isinstance(results_src, Mapping):
        results_src = [{"name": k, **(v if isinstance(v, Mapping) else {"success": v})}
                       for k, v in results_src.items()]
    if isinstance(results_src, list):
        for r in results_src:
            if not isinstance(r, Mapping):
                continue
            check = _get(r, "check", "name")
            name = f"{r['suite']}/{check}" if check and r.get("suite") else (
                check or _get(r, "expectation", "expectation_type", "type"))
            kind = _get(r, "expectation", "expectation_type", "type") if check else None
            col = _get(r, "column", "table")
            where = ", ".join(str(x) for x in (kind, col) if x)
            detail = _get(r, "error")
            if detail is None and _num(r.get("unexpected_count")) is not None:
                detail = f"{int(r['unexpected_count']):,} unexpected" + (
                    f" of {int(r['element_count']):,}" if _num(r.get("element_count")) is not None else "")
            if detail is None:
                detail = _get(r, "observed_value", "observed", "detail", "message", "result")
            results.append({"name": f"{name}" + (f" ({where})" if where else ""),
                            "success": _get(r, "success", "passed", "ok"), "detail": _figure(detail)})
    extra = {k: _figure(v) for k, v in rep.items()
             if k not in {"passed", "success", "ok", "counts", "statistics", "stats", "results", "expectations",
                          "checks", "expectation_results", "examples"}
             and not isinstance(v, (Mapping, list))}
    return {"passed": passed if isinstance(passed, bool) else None,
            "counts": {str(k): _figure(v) for k, v in counts.items()} if isinstance(counts, Mapping) else {},
            "results": results, "source": source, "extra": extra}


def lineage_view(lineage: Mapping | None) -> dict | None:
    """``{"data_version", "code_version", "features_version", "facts", "params"}`` or None.

    ``facts`` are the other scalar entries; ``params`` the nested parameter mapping (shown as JSON).
    """
    if not isinstance(lineage, Mapping) or (set(lineage) == {"error"}):
        return None
    data_version = _get(lineage, "data_version", "data", "dataset_version", "data_hash")
    code_version = _get(lineage, "code_version", "git_commit", "commit", "code")
    facts = {str(k): _figure(v) for k, v in lineage.items()
             if not isinstance(v, (Mapping, list)) and k not in {"data_version", "code_version", "params"}}
    nested = {str(k): v for k, v in lineage.items() if isinstance(v, (Mapping, list)) and k != "params"}
    return {
        "data_version": _figure(data_version) if not isinstance(data_version, Mapping) else _short(data_version),
        "code_version": _figure(code_version),
        "features_version": _figure(_get(lineage, "features_version", "feature_version")),
        "facts": facts,
        "params": lineage.get("params"),
        "other": nested,
    }


# ---------------------------------------------------------------------- registry pages
def production_view(registry: Registry) -> dict:
    """``{"version", "history"}``: the production version and promotions/rollbacks, newest first."""
    try:
        history = registry.history()
    except (OSError, ValueError, KeyError):
        history = []
    return {"version": registry.production(), "history": list(reversed(history))}


def candidate_rows(registry: Registry) -> list[dict]:
    """One row per registered version, newest first, with its gate status and headline figures."""
    prod = registry.production()
    ever = {e.get("version") for e in registry.history()}
    rows = []
    for r in registry.list():
        v = r["version"]
        try:
            stored = registry.show(v).get("gate")
        except (RegistryError, ValueError, OSError) as exc:
            stored = {"error": str(exc)}
        gate, problem = read_gate(stored)
        status = gate.review_status
        rows.append({
            "version": v,
            "registered_at": r.get("registered_at"),
            "status": status,
            "status_label": STATUS_LABELS[status],
            "decision": None if gate.decision == "pending" else gate.decision,
            "decided_at": gate.evaluated_at,
            "production": v == prod,
            "was_production": v in ever and v != prod,
            "headline": gate.headline(),
            "can_review": status == AWAITING and gate.flow_run_id is not None,
            "failed": gate.failed,
            "gate_error": problem,
        })
    return list(reversed(rows))


def candidate_detail(registry: Registry, version: str) -> dict:
    """Everything the candidate page shows, except the home-page preview (see ``home_preview``)."""
    rec = registry.show(version)
    gate, problem = read_gate(rec.get("gate"))
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), Mapping) else None
    status = gate.review_status
    model_name = _get(metrics, "model", "name", "candidate_model") if metrics else None
    candidate_weights = gate.ope.diagnostics.get("candidate") if gate.ope else None
    return {
        "version": version,
        "production": rec.get("production", False),
        "production_version": registry.production(),
        "registered_at": _get(rec.get("registry"), "registered_at"),
        "policy": rec.get("policy"),
        "status": status,
        "status_label": STATUS_LABELS[status],
        "decision": None if gate.decision == "pending" else gate.decision,
        "reason": gate.summary or None,
        "gate_error": problem,
        "baseline": gate.production,
        "approval": asdict(gate.approval) if gate.approval else {},
        "flow_run_id": gate.flow_run_id,
        "can_review": status == AWAITING and gate.flow_run_id is not None,
        "ope": ope_rows(gate),
        "estimator": gate.estimator,
        "margin": gate.params.margin if gate.params else None,
        "interval_scope": gate.interval_scope or None,
        "rules": gate.rules,
        "calibration": calibration_points(metrics, model_name if isinstance(model_name, str) else None),
        "ece": calibration_error(metrics, model_name if isinstance(model_name, str) else None),
        "weights": candidate_weights.weight_histogram if candidate_weights else None,
        "validation": validation_summary(gate),
        "lineage": lineage_view(rec.get("lineage")),
        "metrics": metrics,
        "gate": rec.get("gate"),
    }


# ---------------------------------------------------------------------- home-page preview
def sample_contexts(features: Any, n: int = 3, seed: int = 0, timestamp: str | pd.Timestamp | None = None,
                    cold_start: bool = True) -> pd.DataFrame:
    """``n`` known users of the snapshot (seeded choice) plus, if asked, one cold-start user.

    Columns user_id, platform, region, timestamp as the page policy expects.
    """
    from bartops.context import PLATFORMS

    rng = np.random.default_rng(seed)
    users = features.users
    ts = pd.Timestamp(timestamp if timestamp is not None else "2026-11-01T20:00:00Z")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    known = np.unique(features.candidates["user_id"].to_numpy(np.int64))
    pool = users[users["user_id"].isin(known)] if len(known) else users
    take = min(n, len(pool))
    picked = pool.iloc[np.sort(rng.choice(len(pool), size=take, replace=False))] if take else pool.iloc[:0]
    rows = [{"user_id": int(u), "region": str(r), "platform": PLATFORMS[i % len(PLATFORMS)]}
            for i, (u, r) in enumerate(zip(picked["user_id"], picked["region"]))]
    if cold_start:
        regions = sorted(set(features.cold_candidates["region"].astype(str))) if len(features.cold_candidates) else []
        region = regions[int(rng.integers(len(regions)))] if regions else (rows[0]["region"] if rows else "SE")
        new_id = int(users["user_id"].max()) + 1 if len(users) else 0
        rows.append({"user_id": new_id, "region": region, "platform": PLATFORMS[len(rows) % len(PLATFORMS)]})
    out = pd.DataFrame(rows, columns=["user_id", "platform", "region", "timestamp"])
    out["user_id"] = out["user_id"].astype(np.int64)
    out["timestamp"] = pd.Series([ts] * len(out), dtype="datetime64[ns, UTC]")
    return out


def home_preview(policy: Any, features: Any, contexts: pd.DataFrame, seed: int = 0) -> list[dict]:
    """The pages ``policy`` would serve to ``contexts`` (seeded), as shelves with titles and cards.

    Each page is ``{"user_id", "region", "platform", "cold_start", "shelves": [{"title",
    "explanation_id", "cards": [{"item_id", "name", "artist", "propensity", "explored", "greedy"}]}]}``.
    """
    from bartops.policy.page import build_pages

    candidates = features.candidates_for(contexts)
    pages = build_pages(policy, contexts, candidates, np.random.default_rng(seed))
    items = features.items.set_index("item_id")
    expl = features.explanations
    titles = expl["title"].astype(str).to_numpy() if "title" in expl else expl["explanation_id"].astype(str).to_numpy()
    expl_ids = expl["explanation_id"].astype(str).to_numpy()
    known = set(np.unique(features.candidates["user_id"].to_numpy(np.int64)).tolist())
    out = []
    for b, ctx in enumerate(contexts.itertuples(index=False)):
        shelves = []
        for s in range(pages.candidate.shape[1]):
            cards = []
            for k in range(pages.candidate.shape[2]):
                c = int(pages.candidate[b, s, k])
                if c < 0:
                    continue
                item = int(candidates.item_id[c])
                meta = items.loc[item] if item in items.index else None
                cards.append({
                    "item_id": item,
                    "name": str(meta["name"]) if meta is not None and "name" in meta else f"item {item}",
                    "artist": str(meta["artist"]) if meta is not None and "artist" in meta else "",
                    "propensity": float(pages.propensity[b, s, k]),
                    "explored": bool(pages.explored[b, s, k]),
                    "greedy": bool(pages.greedy[b, s, k]),
                })
            if cards:
                code = int(candidates.explanation[int(pages.candidate[b, s, 0])])
                shelves.append({"title": titles[code], "explanation_id": expl_ids[code], "cards": cards})
        out.append({"user_id": int(ctx.user_id), "region": str(ctx.region), "platform": str(ctx.platform),
                    "cold_start": int(ctx.user_id) not in known, "shelves": shelves})
    return out


def preview_for_bundle(bundle_dir: Any, loader: Callable[[Any], tuple[Any, Any]], n_users: int = 3,
                       seed: int = 0, timestamp: str | None = None) -> dict:
    """``{"pages": [...]}`` for a bundle, or ``{"error": "..."}`` when it cannot be built."""
    try:
        policy, features = loader(bundle_dir)
        contexts = sample_contexts(features, n_users, seed, timestamp)
        return {"pages": home_preview(policy, features, contexts, seed), "error": None}
    except Exception as exc:  # noqa: BLE001 - a broken bundle must not break the page
        return {"pages": [], "error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------- the reviewer's answer
class ReviewError(RuntimeError):
    """A review cannot be submitted (not awaiting approval, no flow run, flow no longer paused)."""


def review_input(approved: bool, comment: str, reviewer: str) -> dict:
    """The ``run_input`` the paused gate flow expects: ``{"approved", "comment", "reviewer"}``."""
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ReviewError("a reviewer name is required")
    return {"approved": bool(approved), "comment": (comment or "").strip(), "reviewer": reviewer}


def submit_review(registry: Registry, version: str, approved: bool, comment: str, reviewer: str,
                  resume: Callable[..., Any]) -> dict:
    """Resume the version's paused gate flow run with the reviewer's answer; returns the run input.

    ``resume(flow_run_id, run_input=...)`` is ``prefect.flow_runs.resume_flow_run``; its errors
    (the run is not paused, it timed out) become ``ReviewError`` with the reason.
    """
    gate, problem = read_gate(registry.show(version).get("gate"))
    if gate.review_status != AWAITING:
        raise ReviewError(f"version {version!r} is not awaiting approval (status: "
                          f"{STATUS_LABELS[gate.review_status]})" + (f"; {problem}" if problem else ""))
    run_id = gate.flow_run_id
    if run_id is None:
        raise ReviewError(f"version {version!r} awaits approval but its gate decision records no flow_run_id")
    payload = review_input(approved, comment, reviewer)
    try:
        resume(run_id, run_input=payload)
    except Exception as exc:  # noqa: BLE001 - report Prefect's reason to the reviewer
        raise ReviewError(f"could not resume gate flow run {run_id}: {type(exc).__name__}: {exc}") from exc
    return {"flow_run_id": run_id, **payload}


# ---------------------------------------------------------------------- the Loop page
LOOP_COUNTS = ("served", "logged", "joined", "accepted")


def loop_round_dicts(records: Iterable[Any]) -> list[dict]:
    """Loop rounds (``RoundRecord`` or dicts) as plain dicts, JSON-ready: NaN and infinities become None."""
    out = []
    for rec in records:
        d = asdict(rec) if is_dataclass(rec) else dict(rec)
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()})
    return out


def loop_view(records: Iterable[Any], registered: Iterable[str] = ()) -> dict:
    """What the Loop page shows: one row per round (by round), the reference values and a summary.

    ``rounds`` are the records as JSON-ready dicts (``loop_round_dicts``), in the file's order.

    Each row is the round's fields (NaN as None) plus ``live_registered`` / ``candidate_registered``
    (the version is in ``registered``, so it can be linked), ``decision_status`` (promoted, rejected
    or pending for the badge) and ``counts_match`` (served = logged = joined = accepted).  The
    references ``logging_value`` and ``oracle_value`` are the means over rounds (each round scores
    them on its own contexts).
    """
    known = set(registered)
    rounds = loop_round_dicts(records)
    rows = []
    for d in sorted(rounds, key=lambda d: d.get("round", 0)):
        counts = [d.get(k) for k in LOOP_COUNTS]
        rows.append({
            **d,
            "live_registered": bool(d.get("live_version")) and d.get("live_version") in known,
            "candidate_registered": bool(d.get("candidate_version")) and d.get("candidate_version") in known,
            "decision_status": DECISION_STATUS.get(str(d.get("decision") or ""), PENDING),
            "counts_match": len(set(counts)) == 1,
        })
    return {
        "rounds": rounds,
        "rows": rows,
        "logging_value": _mean_of(r.get("logging_value") for r in rows),
        "oracle_value": _mean_of(r.get("oracle_value") for r in rows),
        "latest": rows[-1] if rows else None,
        "promotions": sum(r["decision_status"] == PROMOTED for r in rows),
        "rejections": sum(r["decision_status"] == REJECTED for r in rows),
        "mismatched_rounds": [r.get("round") for r in rows if not r["counts_match"]],
    }


def read_loop(path: str | Path, registered: Iterable[str] = ()) -> dict:
    """``loop_view`` of the rounds CSV at ``path`` plus ``file``, ``exists`` and ``error``.

    A missing file gives no rows and ``exists`` False; a malformed one gives no rows and ``error``,
    a message naming the file and the problem.
    """
    path = Path(path)
    out = {"file": str(path), "exists": path.exists(), "error": None}
    try:
        records = read_rounds(path)
    except (ValueError, OSError, csv.Error) as exc:
        msg = str(exc)
        out["error"] = msg if str(path) in msg else f"{path}: {type(exc).__name__}: {msg}"
        records = []
    return {**out, **loop_view(records, registered)}


def _mean_of(values: Iterable[Any]) -> float | None:
    xs = [v for v in (_num(x) for x in values) if v is not None]
    return sum(xs) / len(xs) if xs else None
