"""Load the GX suites from ``expectations/*.json``, derive their run-time parameters, run them.

The suites are JSON files; values that depend on params.yaml or on the batch (the batch window,
stream-rate bounds, the ε tolerance, catalog paths) are GX suite parameters (``{"$PARAMETER": …}``)
filled in here.  ``import great_expectations`` is slow (~7 s), so it happens inside functions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bartops.config import Params, StreamRateRules, WindowRules
from bartops.validation.checks import page_reward_sums, store_stream_rates
from bartops.validation.report import ExpectationOutcome

SUITES = ("impressions", "catalog", "history")
EXPECTATIONS_ENV = "BARTOPS_EXPECTATIONS"


def expectations_dir() -> Path:
    """The folder of suite JSON files: $BARTOPS_EXPECTATIONS, else ``expectations/`` of the repo."""
    import os

    env = os.environ.get(EXPECTATIONS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "expectations" / "impressions.json").exists():
            return parent / "expectations"
    return Path("expectations")


def load_suite_json(name: str, directory: Path | None = None) -> dict[str, Any]:
    """A suite's JSON (name, meta, expectations); raises FileNotFoundError/ValueError naming the file."""
    path = Path(directory or expectations_dir()) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"expectation suite {path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise ValueError(f"{path} must hold an object with an 'expectations' list")
    checks = [e.get("meta", {}).get("check") for e in data["expectations"]]
    if None in checks or len(set(checks)) != len(checks):
        raise ValueError(f"{path}: every expectation needs a unique meta.check name")
    return data


# ---------------------------------------------------------------------------- parameters
def normal_quantile(alpha: float) -> float:
    """z with P(|N(0,1)| > z) = alpha (two-sided)."""
    from scipy.stats import norm

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(norm.isf(alpha / 2))


def student_quantile(alpha: float, df: float) -> float:
    """t with P(|T_df| > t) = alpha (two-sided; Student's t with ``df`` degrees of freedom)."""
    from scipy.stats import t

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(t.isf(alpha / 2, df))


def stream_rate_bounds(rows: int, reference: float, reference_rows: int, rel_tolerance: float,
                       alpha: float, design_effect: float = 1.0, pages: int | None = None) -> tuple[float, float]:
    """Accepted stream-rate range for a batch of ``rows`` cards on ``pages`` page views.

    The reference rate r0 (from a known-good batch of ``reference_rows`` cards) may drift by
    ``rel_tolerance``·r0; on top, both rates carry sampling noise, so the band widens by
    q·sqrt(deff·r0(1−r0)(1/n + 1/n0)).  ``design_effect`` (deff, ``checks.design_effect``) is the
    batch's variance inflation from cards of one page being correlated (the reference batch is
    assumed to share it); with ``pages`` given, deff is estimated from those pages and q is the
    two-sided ``alpha`` quantile of Student's t with pages − 1 degrees of freedom, else (deff 1,
    rows independent) of N(0, 1).

    False-alarm rate: a batch of independent page views whose expected stream rate is r0 falls
    outside with probability ``alpha`` (to the normal approximation of its page sums; the t quantile
    keeps it at or below alpha for few pages), and one whose expected rate lies within
    r0·(1 ± rel_tolerance) with less.  Measured on 600 batches of 10 simulated pages (deff 1.85):
    0.097 / 0.042 / 0.002 at alpha 0.1 / 0.05 / 0.01, where the cards-as-independent-rows band
    (deff 1, normal quantile) gave 0.228 / 0.143 / 0.057; at alpha 1e-6 that band's real rate at the
    tolerance's edge is ~4e-4 per side for a served batch (deff 2.1), 800× the stated rate.
    ``tests/unit/test_validation.py`` checks the rate on the simulator.
    """
    if not 0 <= reference <= 1:
        raise ValueError(f"validation.stream_rate.reference must lie in [0, 1], got {reference!r}")
    if pages is None:
        q = normal_quantile(alpha)
    else:
        q = student_quantile(alpha, max(int(pages) - 1, 1))
    deff = max(float(design_effect), 1.0)
    noise = q * math.sqrt(deff * reference * (1 - reference) * (1 / max(rows, 1) + 1 / max(reference_rows, 1)))
    half = rel_tolerance * reference + noise
    return max(0.0, reference - half), min(1.0, reference + half)


@dataclass(frozen=True)
class StreamRateReference:
    """The stream rate a batch is compared with, how many cards measured it, and where it comes from."""

    rate: float
    rows: int
    source: str


def stream_rate_reference(batch_versions: list[str], rates: pd.DataFrame, rules: StreamRateRules
                          ) -> StreamRateReference | None:
    """The drift check's reference, following production: the accepted history of the policy
    version(s) that logged the batch; for a version without enough history (a new production), the
    accepted history of every version; before any history, ``validation.stream_rate.reference`` if set;
    else None (no reference yet: the check passes and says so).  ``rates``: ``checks.store_stream_rates``.
    "Enough" is ``validation.stream_rate.min_reference_pages`` page views."""
    min_pages = rules.min_reference_pages
    own = rates.loc[rates.index.intersection(batch_versions)]
    for chosen, source in ((own, f"accepted history of {', '.join(sorted(batch_versions))}"),
                           (rates, "accepted history of every policy version (none yet for this batch's)")):
        if len(chosen) and chosen["pages"].sum() >= min_pages and chosen["rows"].sum() > 0:
            rows = int(chosen["rows"].sum())
            return StreamRateReference(float(chosen["streams"].sum()) / rows, rows,
                                       f"{source}: {int(chosen['pages'].sum()):,} page views")
    if rules.reference is not None:
        return StreamRateReference(float(rules.reference), rules.reference_rows,
                                   "validation.stream_rate.reference (no accepted history yet)")
    return None


def batch_stream_rate_bounds(sums: dict[str, float], rules: StreamRateRules,
                             reference: StreamRateReference | None) -> dict[str, Any]:
    """Suite parameters of the stream-rate check from a batch's ``checks.page_reward_sums`` and its
    reference (None: no reference yet, bounds [0, 1])."""
    from bartops.validation.checks import design_effect

    deff = design_effect(sums)
    if reference is None:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = stream_rate_bounds(int(sums["rows"]), reference.rate, reference.rows,
                                    rules.rel_tolerance, rules.alpha,
                                    design_effect=deff, pages=int(sums["pages"]) or None)
    return {"stream_rate_min": lo, "stream_rate_max": hi, "stream_rate_design_effect": deff,
            "stream_rate_pages": int(sums["pages"]),
            "stream_rate_reference": None if reference is None else reference.rate,
            "stream_rate_reference_rows": None if reference is None else reference.rows,
            "stream_rate_reference_source": "none: no accepted history and no configured reference"
            if reference is None else reference.source}


def reference_stream_rate(frame: pd.DataFrame) -> dict[str, Any]:
    """The ``validation.stream_rate`` reference entries measured on a known-good batch."""
    return {"reference": round(float(frame["reward"].mean()), 6), "reference_rows": int(len(frame))}


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def batch_window(timestamps: pd.Series, rules: WindowRules, now: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end) of the batch window.

    end = now + future_skew_seconds (nothing may come from the future); start = the batch's latest
    timestamp that is not in the future, minus max_span_days, and never before not_before.
    """
    end = now + pd.Timedelta(seconds=float(rules.future_skew_seconds))
    ts = timestamps[timestamps <= end] if pd.api.types.is_datetime64_any_dtype(timestamps) else timestamps.iloc[:0]
    latest = ts.max() if len(ts) else pd.NaT
    latest = end if (latest is pd.NaT or pd.isna(latest)) else _utc(latest)
    start = max(latest - pd.Timedelta(days=float(rules.max_span_days)), _utc(rules.not_before))
    return start, end


def impression_parameters(frame: pd.DataFrame, data_dir: Path, params: Params,
                          now: pd.Timestamp | None = None, *, store: Path | None = None,
                          store_exclude: str = "") -> dict[str, Any]:
    """Run-time suite parameters for the impressions, catalog and history suites.

    ``store`` is the folder of accepted batches the batch must not repeat (none: no such check);
    ``store_exclude`` the digest key of the batch's own accepted files there (see ``checks.store_files``).
    """
    v, pol = params.validation, params.policy
    now = _utc(now if now is not None else pd.Timestamp.now(tz="UTC"))
    start, end = batch_window(frame["timestamp"], v.window, now)
    sums = page_reward_sums(frame["reward"], frame["request_id"])
    data_dir = Path(data_dir)
    versions = sorted(frame["policy_version"].astype(str).unique()) if "policy_version" in frame.columns else []
    reference = stream_rate_reference(versions, store_stream_rates(store, store_exclude), v.stream_rate)
    return {
        "window_start": start.isoformat(), "window_end": end.isoformat(),
        **batch_stream_rate_bounds(sums, v.stream_rate, reference),
        "explored_z": normal_quantile(v.explored_share_alpha),
        "max_shelf": pol.shelves - 1, "max_position": pol.cards - 1,
        "items_path": str(data_dir / "items.parquet"),
        "explanations_path": str(data_dir / "explanations.parquet"),
        "users_path": str(data_dir / "users.parquet"),
        "store_path": str(store) if store is not None else "", "store_exclude": store_exclude,
    }


# ---------------------------------------------------------------------------- running
@dataclass
class SuiteRun:
    name: str
    rows: int
    outcomes: list[ExpectationOutcome]
    seconds: float


def _import_gx():
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx

    import bartops.validation.expectations  # noqa: F401  (registers the custom expectations)

    return gx


def make_context(docs_root: Path | None = None):
    """A GX context: a file context under ``docs_root`` (Data Docs there), else ephemeral."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if docs_root is not None:
        docs_root = Path(docs_root)
        docs_root.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(docs_root))
    else:
        context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def build_suite(context, name: str, directory: Path | None = None):
    """The named suite from JSON, registered in ``context`` (replacing a previous version)."""
    gx = _import_gx()
    data = load_suite_json(name, directory)
    suite = gx.ExpectationSuite(name=data["name"], expectations=data["expectations"], meta=data.get("meta", {}))
    if len(suite.expectations) != len(data["expectations"]):
        raise ValueError(f"suite {name}: GX accepted {len(suite.expectations)} of {len(data['expectations'])} "
                         "expectations (an invalid or duplicate configuration)")
    return _replace(context.suites, suite)


def _replace(store, obj):
    """Add ``obj`` to a GX store, first deleting an older one of that name (cheaper than add_or_update)."""
    try:
        store.delete(obj.name)
    except Exception:
        pass
    return store.add(obj)


def run_suite(context, name: str, frame: pd.DataFrame, parameters: dict[str, Any], *,
              checkpoint: bool = False, examples: int = 3, directory: Path | None = None,
              result_format: str | dict = "SUMMARY"):
    """Validate ``frame`` with suite ``name``; returns (SuiteRun, GX result).

    With ``checkpoint`` the run goes through a GX Checkpoint that updates Data Docs.
    """
    gx = _import_gx()
    t0 = time.perf_counter()
    suite = build_suite(context, name, directory)
    source = context.data_sources.add_or_update_pandas(f"bartops-{name}")
    asset = source.get_asset(name) if name in [a.name for a in source.assets] else source.add_dataframe_asset(name)
    try:
        bd = asset.get_batch_definition("whole")
    except Exception:
        bd = asset.add_batch_definition_whole_dataframe("whole")
    vd = _replace(context.validation_definitions, gx.ValidationDefinition(name=f"validate-{name}", data=bd, suite=suite))
    if checkpoint:
        from great_expectations.checkpoint import UpdateDataDocsAction

        cp = _replace(context.checkpoints, gx.Checkpoint(
            name=f"checkpoint-{name}", validation_definitions=[vd],
            actions=[UpdateDataDocsAction(name="update-data-docs")], result_format=result_format))
        cres = cp.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
        result = next(iter(cres.run_results.values()))
    else:
        result = vd.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                        result_format=result_format)
    outcomes = [_outcome(name, r, frame, examples) for r in result.results]
    return SuiteRun(name, len(frame), outcomes, time.perf_counter() - t0), result


def _outcome(suite: str, r, frame: pd.DataFrame, examples: int) -> ExpectationOutcome:
    cfg = r.expectation_config
    meta = cfg.meta or {}
    kwargs = cfg.kwargs or {}
    res = dict(r.result or {})
    column = kwargs.get("column") or (",".join(kwargs["column_list"]) if kwargs.get("column_list") else None)
    exc = r.exception_info or {}
    error = None
    if isinstance(exc, dict) and exc.get("raised_exception"):
        error = str(exc.get("exception_message"))[:300]
    elif isinstance(exc, dict):  # GX keys exception info by metric id when several metrics ran
        for v in exc.values():
            if isinstance(v, dict) and v.get("raised_exception"):
                error = str(v.get("exception_message"))[:300]
                break
    rows: list[dict[str, Any]] = []
    if not r.success:
        idx = res.get("partial_unexpected_index_list") or []
        if idx and all(not isinstance(i, dict) for i in idx):
            try:
                rows = frame.loc[list(idx)[:examples]].to_dict("records")
            except KeyError:
                rows = []
        if not rows and res.get("partial_unexpected_list"):
            rows = [v if isinstance(v, dict) else {column or "value": v} for v in res["partial_unexpected_list"][:examples]]
        # the checked columns first (the message cuts a row short), long text clipped
        checked = [c for c in (kwargs.get("column_list") or [kwargs.get("column")]) if c]
        rows = [{k: _clip(row[k]) for k in [*(c for c in checked if c in row), *(k for k in row if k not in checked)]}
                for row in rows]
    details = res.get("details") or {}
    return ExpectationOutcome(
        suite=suite, check=meta.get("check", cfg.type), expectation=cfg.type, level=meta.get("level", "batch"),
        success=bool(r.success), column=column, element_count=res.get("element_count"),
        unexpected_count=res.get("unexpected_count"), unexpected_percent=res.get("unexpected_percent"),
        observed_value=res.get("observed_value"), details=details if isinstance(details, dict) else {"details": details},
        examples=rows, notes=meta.get("notes", ""), error=error,
        allowed={k: kwargs[k] for k in _ALLOWED_KEYS if kwargs.get(k) is not None},
    )


def _clip(value: Any, limit: int = 80) -> Any:
    """An example value as reported: text longer than ``limit`` cut, with its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:40]}… ({len(value):,} characters)"
    return value


# the kwargs (after suite-parameter substitution) that say what an expectation allows
_ALLOWED_KEYS = ("min_value", "max_value", "strict_min", "strict_max", "value_set")


def unexpected_rows(context, name: str, frame: pd.DataFrame, parameters: dict[str, Any], checks: list[str],
                    directory: Path | None = None) -> np.ndarray:
    """Boolean mask of rows failing any of the given (row-level) checks, from GX COMPLETE results."""
    gx = _import_gx()
    data = load_suite_json(name, directory)
    chosen = [e for e in data["expectations"] if e["meta"]["check"] in set(checks)]
    suite = _replace(context.suites, gx.ExpectationSuite(name=f"{name}-rows", expectations=chosen))
    source = context.data_sources.add_or_update_pandas(f"bartops-{name}-rows")
    bd = source.add_dataframe_asset("rows").add_batch_definition_whole_dataframe("whole")
    vd = gx.ValidationDefinition(name=f"validate-{name}-rows", data=bd, suite=suite)
    vd = _replace(context.validation_definitions, vd)
    result = vd.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                    result_format={"result_format": "COMPLETE"})
    mask = np.zeros(len(frame), bool)
    pos = pd.Series(np.arange(len(frame)), index=frame.index)
    for r in result.results:
        idx = (r.result or {}).get("unexpected_index_list") or []
        if idx:
            mask[pos.loc[list(idx)].to_numpy()] = True
    return mask
