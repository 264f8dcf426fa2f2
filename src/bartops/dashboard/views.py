"""Pure view-model functions: registry records and policy bundles → plain dicts the pages render.

Nothing here touches the web layer.  The gate decision (``gate.json``), the model metrics
(``metrics.json``) and the lineage (``lineage.json``) are written by other steps whose formats can
grow; every reader here accepts the documented shapes and a few obvious variants, and answers
``None`` (rendered "not available") for a section that is missing or malformed — never an error.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bartops.loop.record import read_rounds
from bartops.ope.estimators import log_weight_histogram
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
_AWAITING_WORDS = {"awaiting_approval", "awaiting-approval", "awaiting", "waiting_for_approval",
                   "pending_approval", "needs_approval", "paused", "waiting"}
_PROMOTE_WORDS = {"promote", "promoted", "approved", "approve", "accept", "accepted", "pass", "passed"}
_REJECT_WORDS = {"reject", "rejected", "refused", "declined", "fail", "failed", "timeout", "timed_out"}


def _norm(word: Any) -> str:
    return str(word).strip().lower().replace(" ", "_") if word is not None else ""


def approval_section(gate: Mapping | None) -> dict:
    """The approval part of a gate decision (``gate["approval"]`` if it is a dict, else ``{}``)."""
    if isinstance(gate, Mapping) and isinstance(gate.get("approval"), Mapping):
        return dict(gate["approval"])
    return {}


def flow_run_id(gate: Mapping | None) -> str | None:
    """The paused gate flow run waiting for a reviewer (``flow_run_id`` at top level or under approval)."""
    if not isinstance(gate, Mapping):
        return None
    for src in (gate, approval_section(gate)):
        for key in ("flow_run_id", "paused_flow_run_id", "run_id"):
            if src.get(key):
                return str(src[key])
    return None


def decision_status(gate: Mapping | None) -> str:
    """One of ``awaiting_approval``, ``promoted``, ``rejected``, ``pending`` for a gate decision.

    ``status`` wins over ``decision`` (the gate may decide "promote" and still wait for a person);
    an approval answer that is recorded (``approval.approved`` true/false) settles it.
    """
    if not isinstance(gate, Mapping):
        return PENDING
    approval = approval_section(gate)
    explicit = _status_from([_norm(gate.get("status"))], default=None)
    if explicit is not None:
        return explicit
    if isinstance(approval.get("approved"), bool):
        return PROMOTED if approval["approved"] else REJECTED
    return _status_from([_norm(approval.get("status")), _norm(gate.get("decision"))])


def _status_from(words: list[str], default: str | None = PENDING) -> str | None:
    for w in words:
        if w in _AWAITING_WORDS:
            return AWAITING
        if w in _PROMOTE_WORDS:
            return PROMOTED
        if w in _REJECT_WORDS:
            return REJECTED
    return default


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


def evidence(gate: Mapping | None) -> dict:
    """Where the gate's figures live: ``gate["evidence"]`` if a dict, else the gate itself."""
    if not isinstance(gate, Mapping):
        return {}
    ev = gate.get("evidence")
    return {**gate, **ev} if isinstance(ev, Mapping) else dict(gate)


# ---------------------------------------------------------------------- OPE table
@dataclass(frozen=True)
class Estimate:
    """One policy-value estimate as shown in the OPE table (any figure may be missing)."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ess: float | None = None
    max_weight: float | None = None
    coverage: float | None = None
    n: float | None = None


def estimate(d: Any) -> Estimate | None:
    """Normalise an estimate dict (value/estimate, ci [lo, hi] or ci_low/ci_high or lower/upper, ...)."""
    if _num(d) is not None:
        return Estimate(value=_num(d))
    if not isinstance(d, Mapping):
        return None
    value = _num(_get(d, "value", "estimate", "mean", "point"))
    lo = _num(_get(d, "ci_low", "ci_lower", "lower", "low", "lo", "lcb"))
    hi = _num(_get(d, "ci_high", "ci_upper", "upper", "high", "hi", "ucb"))
    ci = _get(d, "ci", "interval", "confidence_interval")
    if isinstance(ci, Mapping):
        lo = lo if lo is not None else _num(_get(ci, "low", "lower", "lo", "ci_low"))
        hi = hi if hi is not None else _num(_get(ci, "high", "upper", "hi", "ci_high"))
    elif isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo = lo if lo is not None else _num(ci[0])
        hi = hi if hi is not None else _num(ci[1])
    est = Estimate(value, lo, hi, _num(_get(d, "ess", "effective_sample_size")),
                   _num(_get(d, "max_weight", "largest_weight", "w_max")),
                   _num(_get(d, "coverage", "support_coverage", "support")), _num(_get(d, "n", "n_rows", "rows")))
    return None if all(v is None for v in est.__dict__.values()) else est


_CAND = ("candidate", "target", "new")
_PROD = ("production", "baseline", "reference", "current", "logging")
_DIFF = ("difference", "diff", "delta", "lift", "candidate_minus_production")


def ope_rows(gate: Mapping | None, metrics: Mapping | None = None) -> list[dict]:
    """Rows ``{"estimator", "candidate", "production", "difference"}`` (each an ``Estimate`` or None).

    Reads the gate's OPE evidence (``ope``/``estimates``), else ``metrics["ope"]``.  Accepted shapes:
    ``{est: {"candidate": …, "production": …, "difference": …}}``, ``{"candidate": {est: …},
    "production": {est: …}, "difference": {est: …}}``, or a list of rows with an ``estimator`` key
    (either nested as above or flat with a ``policy`` column).
    """
    ev = evidence(gate)
    src = _get(ev, "ope", "estimates", "ope_table", "off_policy")
    if src is None and isinstance(metrics, Mapping):
        src = _get(metrics, "ope", "estimates")
    if isinstance(src, Mapping):
        inner = _get(src, "estimators", "estimates", "table", "rows")
        if inner is not None:
            src = inner
    rows: dict[str, dict] = {}

    def put(name: Any, role: str, value: Any) -> None:
        e = estimate(value)
        if e is not None:
            rows.setdefault(str(name), {"estimator": str(name), "candidate": None, "production": None,
                                        "difference": None})[role] = e

    def roles_of(d: Mapping) -> list[tuple[str, Any]]:
        out = []
        for role, names in (("candidate", _CAND), ("production", _PROD), ("difference", _DIFF)):
            v = _get(d, *names)
            if v is not None:
                out.append((role, v))
        return out

    if isinstance(src, Mapping):
        top_roles = roles_of(src)
        if top_roles and all(isinstance(v, list) for _, v in top_roles):
            for role, lst in top_roles:  # {"candidate": [{"estimator": …, …}], …}
                for v in lst:
                    if isinstance(v, Mapping) and _get(v, "estimator", "name") is not None:
                        put(_get(v, "estimator", "name"), role, v)
        elif top_roles and all(isinstance(v, Mapping) and all(isinstance(x, (Mapping, int, float)) for x in v.values())
                             and estimate(v) is None for _, v in top_roles):
            for role, by_est in top_roles:  # {"candidate": {est: …}, …}
                for name, v in by_est.items():
                    put(name, role, v)
        else:
            for name, v in src.items():  # {est: {"candidate": …, …}}
                if isinstance(v, Mapping):
                    for role, val in roles_of(v):
                        put(name, role, val)
    elif isinstance(src, list):
        for r in src:
            if not isinstance(r, Mapping):
                continue
            name = _get(r, "estimator", "name", "method")
            if name is None:
                continue
            nested = roles_of(r)
            if nested and any(isinstance(v, Mapping) or _num(v) is not None for _, v in nested) and \
                    _get(r, "policy", "role") is None:
                for role, val in nested:
                    put(name, role, val)
            else:
                role = _role(_get(r, "policy", "role"))
                if role:
                    put(name, role, r)
    return list(rows.values())


def _role(word: Any) -> str | None:
    """'candidate' / 'production' / 'difference' for a policy label ("candidate - production" is a difference)."""
    w = _norm(word)
    if w in _DIFF or any(sep in w for sep in ("_-_", "−", "_minus_", "_vs_")) or w.startswith("candidate-"):
        return "difference"
    return "candidate" if w in _CAND else "production" if w in _PROD else None


def gate_estimator(gate: Mapping | None) -> str | None:
    """The estimator the gate's difference rule uses (``estimator`` in the gate or its params)."""
    ev = evidence(gate)
    name = _get(ev, "estimator")
    if name is None:
        name = _deep_find(_get(ev, "params", "gate_params", "config"), ["estimator"], 2)
    return None if name is None else str(name)


def headline(gate: Mapping | None) -> dict | None:
    """The gate estimator's candidate − production difference (``{"estimator", "value", "ci_low", "ci_high"}``)."""
    rows = [r for r in ope_rows(gate) if r["difference"] is not None]
    if not rows:
        return None
    want = (gate_estimator(gate) or "").lower()
    row = next((r for r in rows if r["estimator"].lower() == want), rows[0])
    d = row["difference"]
    return {"estimator": row["estimator"], "value": d.value, "ci_low": d.ci_low, "ci_high": d.ci_high}


# ---------------------------------------------------------------------- gate rules
def gate_rules(gate: Mapping | None) -> list[dict]:
    """Rules ``{"name", "value", "threshold", "op", "passed", "detail"}`` from ``rules``/``checks``.

    Accepts a list of dicts or a mapping name → dict (or name → bool).  ``passed`` is True/False or
    None when the rule did not say.
    """
    ev = evidence(gate)
    src = _get(ev, "rules", "checks", "rule_results", "criteria")
    items: list[tuple[str, Any]] = []
    if isinstance(src, Mapping):
        items = [(str(k), v) for k, v in src.items()]
    elif isinstance(src, list):
        items = [(str(_get(r, "name", "rule", "id", "check") or f"rule {i + 1}"), r)
                 for i, r in enumerate(src) if isinstance(r, Mapping)]
    out = []
    for name, r in items:
        if isinstance(r, bool):
            out.append({"name": name, "value": None, "threshold": None, "op": None, "passed": r, "detail": None})
            continue
        if not isinstance(r, Mapping):
            continue
        passed = _get(r, "passed", "pass", "ok", "success", "satisfied")
        if not isinstance(passed, bool):
            status = _norm(_get(r, "status", "result"))
            passed = True if status in {"pass", "passed", "ok"} else False if status in {"fail", "failed"} else None
        out.append({
            "name": name,
            "value": _figure(_get(r, "value", "figure", "observed", "actual", "measured")),
            "threshold": _figure(_get(r, "threshold", "limit", "minimum", "maximum", "min", "max", "margin",
                                      "expected")),
            "op": _get(r, "op", "operator", "comparison", "direction"),
            "passed": passed,
            "detail": _get(r, "detail", "description", "message", "reason", "explanation"),
        })
    return out


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


def failed_rules(gate: Mapping | None) -> list[str]:
    """Names of the rules that failed (the gate's ``failed`` list, else from the rules)."""
    failed = _get(evidence(gate), "failed", "failed_rules")
    if isinstance(failed, list):
        return [str(f) for f in failed]
    return [r["name"] for r in gate_rules(gate) if r["passed"] is False]


def gate_margin(gate: Mapping | None) -> float | None:
    """The margin the difference's lower bound must clear (from the gate's rules or params)."""
    ev = evidence(gate)
    m = _num(_get(ev, "margin"))
    if m is None:
        m = _num(_deep_find(_get(ev, "params", "gate_params", "config"), ["margin", "min_lift", "lift_margin"], 2))
    if m is None:
        for r in gate_rules(gate):
            if any(w in r["name"].lower() for w in ("lower", "lcb", "lift", "difference", "margin")) \
                    and isinstance(r["threshold"], float):
                return r["threshold"]
    return m


# ---------------------------------------------------------------------- calibration and weights
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


def weight_histogram(gate: Mapping | None, metrics: Mapping | None = None, bins: int = 30) -> dict | None:
    """``{"edges", "counts", "log_x"}`` of the candidate's importance weights, or None.

    Uses a stored histogram (``weight_histogram``/``weights_histogram`` with edges + counts) or raw
    ``weights`` (binned here on a log10 scale, which suits heavy-tailed ratios).
    """
    ev = evidence(gate)
    ope = _get(ev, "ope")
    scopes = [_get(_get(ope, "diagnostics"), *_CAND), _get(_get(ev, "diagnostics"), *_CAND), _get(ope, *_CAND),
              ev, metrics]
    for src in (s for s in scopes if isinstance(s, Mapping)):
        h = _deep_find(src, ["weight_histogram", "weights_histogram", "weight_hist", "importance_weights"])
        if isinstance(h, Mapping):
            edges = _get(h, "edges", "bin_edges", "bins")
            counts = _get(h, "counts", "count", "hist", "frequencies")
            if isinstance(edges, list) and isinstance(counts, list) and len(edges) == len(counts) + 1 \
                    and all(_num(e) is not None for e in edges):
                log_x = bool(_get(h, "log_x", "log10", "log"))
                return {"edges": [float(e) for e in edges], "counts": [_num(c) or 0.0 for c in counts],
                        "log_x": log_x}
            raw = _get(h, "weights", "values")
            if isinstance(raw, list):
                return histogram_of(raw, bins)
        elif isinstance(h, list):
            return histogram_of(h, bins)
        raw = _deep_find(src, ["weights"])
        if isinstance(raw, list) and raw and all(_num(w) is not None for w in raw[:50]):
            return histogram_of(raw, bins)
    return None


def histogram_of(weights: Sequence[Any], bins: int = 30) -> dict | None:
    """``log_weight_histogram`` of the finite figures in ``weights`` (other entries skipped)."""
    return log_weight_histogram(np.asarray([v for v in (_num(x) for x in weights) if v is not None], np.float64), bins)


# ---------------------------------------------------------------------- validation and lineage
def validation_summary(record: Mapping) -> dict | None:
    """The data validation report behind a version: ``{"passed", "counts", "results", "source"}`` or None.

    Looked up in the gate evidence (``validation``), then lineage, then metrics.  ``results`` is a
    list of ``{"name", "success", "detail"}`` from the report's per-expectation results.
    """
    for where in ("gate", "lineage", "metrics", "validation"):
        src = record.get(where)
        if not isinstance(src, Mapping):
            continue
        rep = src if where == "validation" else _get(evidence(src) if where == "gate" else src,
                                                     "validation", "validation_report", "data_validation")
        if isinstance(rep, Mapping):
            return _validation_view(rep, where)
        if isinstance(rep, list) and rep and all(isinstance(r, Mapping) for r in rep):
            return _merge_views([_validation_view(r, where) for r in rep])
        if isinstance(rep, bool):
            return {"passed": rep, "counts": {}, "results": [], "source": where, "extra": {}}
    # no stored report: the gate's own validation rule and the size of the evaluated logs
    gate = record.get("gate")
    rule = next((r for r in gate_rules(gate) if r["name"].lower() in ("validation", "validation_passed",
                                                                        "data_validation")), None)
    if rule is None:
        return None
    logs = _get(evidence(gate), "logs")
    counts = {str(k): _figure(v) for k, v in logs.items() if _num(v) is not None} if isinstance(logs, Mapping) else {}
    extra = {str(k): _figure(v) for k, v in logs.items() if _num(v) is None and not isinstance(v, (Mapping, list))} \
        if isinstance(logs, Mapping) else {}
    if rule.get("detail"):
        extra["detail"] = rule["detail"]
    return {"passed": rule["passed"], "counts": counts, "results": [], "source": "gate rule", "extra": extra}


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
            rec = registry.show(v)
        except (RegistryError, ValueError, OSError):
            rec = {}
        gate = rec.get("gate")
        status = decision_status(gate)
        rows.append({
            "version": v,
            "registered_at": r.get("registered_at"),
            "status": status,
            "status_label": STATUS_LABELS[status],
            "decision": gate.get("decision") if isinstance(gate, Mapping) else None,
            "decided_at": _get(gate, "decided_at", "evaluated_at", "recorded_at"),
            "production": v == prod,
            "was_production": v in ever and v != prod,
            "headline": headline(gate),
            "can_review": status == AWAITING and flow_run_id(gate) is not None,
            "failed": failed_rules(gate),
        })
    return list(reversed(rows))


def candidate_detail(registry: Registry, version: str) -> dict:
    """Everything the candidate page shows, except the home-page preview (see ``home_preview``)."""
    rec = registry.show(version)
    gate = rec.get("gate") if isinstance(rec.get("gate"), Mapping) else None
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), Mapping) else None
    status = decision_status(gate)
    model_name = _get(metrics, "model", "name", "candidate_model") if metrics else None
    rows = ope_rows(gate, metrics)
    return {
        "version": version,
        "production": rec.get("production", False),
        "production_version": registry.production(),
        "registered_at": _get(rec.get("registry"), "registered_at"),
        "policy": rec.get("policy"),
        "status": status,
        "status_label": STATUS_LABELS[status],
        "decision": _get(gate, "decision"),
        "reason": _get(evidence(gate), "reason", "summary", "explanation"),
        "baseline": _figure(_get(evidence(gate), "baseline", "production_version", "against", "production")),
        "approval": approval_section(gate),
        "flow_run_id": flow_run_id(gate),
        "can_review": status == AWAITING and flow_run_id(gate) is not None,
        "ope": rows,
        "estimator": gate_estimator(gate),
        "margin": gate_margin(gate),
        "interval_scope": _get(gate, "interval_scope"),
        "rules": gate_rules(gate),
        "calibration": calibration_points(metrics, model_name if isinstance(model_name, str) else None),
        "ece": calibration_error(metrics, model_name if isinstance(model_name, str) else None),
        "weights": weight_histogram(gate, metrics),
        "validation": validation_summary(rec),
        "lineage": lineage_view(rec.get("lineage")),
        "metrics": metrics,
        "gate": gate,
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
    gate = registry.show(version).get("gate")
    status = decision_status(gate)
    if status != AWAITING:
        raise ReviewError(f"version {version!r} is not awaiting approval (status: {STATUS_LABELS[status]})")
    run_id = flow_run_id(gate)
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
            "decision_status": _status_from([_norm(d.get("decision"))]),
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
