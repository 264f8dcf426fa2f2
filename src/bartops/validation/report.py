"""The validation report: JSON-serialisable, with a Markdown summary and a failure message."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ExpectationOutcome:
    """One expectation's result, flattened from the GX validation result."""

    suite: str
    check: str  # our short name (meta.check in the suite JSON)
    expectation: str  # the GX expectation type
    level: str  # "row" (a row fails alone), "page" (a page fails) or "batch" (the batch fails)
    success: bool
    column: str | None = None
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed_value: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few offending rows
    notes: str = ""
    error: str | None = None  # GX raised while evaluating
    allowed: dict[str, Any] = field(default_factory=dict)  # the bounds/set it was checked against (min_value, …)

    def allowed_text(self) -> str:
        """The allowed range, set or threshold in words, e.g. 'allowed [0.0427, 0.186]'; '' if none."""
        a, d = self.allowed, self.details
        lo, hi = a.get("min_value"), a.get("max_value")
        if lo is not None and hi is not None:
            return (f"allowed {'(' if a.get('strict_min') else '['}{_num(lo)}, {_num(hi)}"
                    f"{')' if a.get('strict_max') else ']'}")
        if lo is not None:
            return f"allowed {'>' if a.get('strict_min') else '≥'} {_num(lo)}"
        if hi is not None:
            return f"allowed {'<' if a.get('strict_max') else '≤'} {_num(hi)}"
        if a.get("value_set") is not None:
            return f"allowed one of {_short(a['value_set'], 80)}"
        if "tolerance" in d and "expected_explored" in d:  # the explored-share check
            return (f"allowed |explored − {_num(d['expected_explored'])}| ≤ {_num(d['tolerance'])} "
                    f"(z {_num(d.get('z'))} × sd {_num(d.get('sd'))})")
        return ""

    def summary(self) -> str:
        """'suite/check (expectation on column): observed or counts, allowed range; e.g. rows' in one line."""
        where = f"{self.expectation}" + (f" on {self.column}" if self.column else "")
        allowed = self.allowed_text()
        if self.error:
            what = f"could not be evaluated: {self.error}"
        elif self.unexpected_count is not None:
            what = (f"{self.unexpected_count:,} of {self.element_count:,} rows unexpected "
                    f"({self.unexpected_percent or 0:.3g}%)") + (f", {allowed}" if allowed else "")
        else:
            what = f"observed {_num(self.observed_value)}" + (f", {allowed}" if allowed else "")
            if self.details and not allowed:
                what += f" ({_short(self.details)})"
        text = f"{self.suite}/{self.check} ({where}): {what}"
        if self.examples:
            text += "; e.g. " + "; ".join(_short(r, 160) for r in self.examples[:3])
        return text


@dataclass
class ValidationReport:
    """What validation found about one batch and what was done with it."""

    batch: str
    passed: bool
    decision: str  # accepted | accepted-partly | already-ingested | rejected | unreadable | validated
    rows: int = 0
    pages: int = 0
    fmt: str | None = None
    files: list[str] = field(default_factory=list)
    digest: str | None = None
    error_kind: str | None = None  # set when the batch could not be read
    error: str | None = None
    expectations: list[ExpectationOutcome] = field(default_factory=list)
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None  # rows split off under validation.row_split
    accepted_path: str | None = None
    quarantine_path: str | None = None
    data_docs: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    created_at: str = ""

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]

    def counts(self) -> dict[str, int]:
        return {"expectations": len(self.expectations), "failed": len(self.failed),
                "rows": self.rows, "pages": self.pages}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (NaN/inf become None, timestamps strings)."""
        d = asdict(self)
        d["counts"] = self.counts()
        return _jsonable(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def failure_message(self) -> str:
        """One line per failed expectation: its name, observed value (or unexpected rows), allowed range, examples.

        Short enough for an assertion message: ``assert report.passed, report.failure_message()``.
        """
        if self.error:
            return f"batch {self.batch} is unreadable ({self.error_kind}): {self.error}"
        if not self.failed:
            return f"batch {self.batch} passed validation"
        lines = [f"batch {self.batch} rejected: {len(self.failed)} expectation(s) failed"]
        lines += [f"- {e.summary()}" for e in self.failed]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The summary for the Prefect artifact (Data Docs render unstyled offline)."""
        status = "PASSED" if self.passed else "REJECTED"
        out = [f"# Validation of `{self.batch}`: **{status}** ({self.decision})", ""]
        out.append(f"- rows: {self.rows:,}; pages: {self.pages:,}; format: {self.fmt}; files: {len(self.files)}")
        if self.digest:
            out.append(f"- sha256: `{self.digest[:16]}…`")
        if self.accepted_path:
            out.append(f"- accepted into: `{self.accepted_path}`")
        if self.quarantine_path:
            out.append(f"- quarantined at: `{self.quarantine_path}`")
        if self.data_docs:
            out.append(f"- GX Data Docs: `{self.data_docs}`")
        if self.error:
            out += ["", f"**Unreadable batch ({self.error_kind})**: {self.error}"]
        if self.split:
            out += ["", f"**Split off**: {self.split.get('rows', 0):,} rows in {self.split.get('pages', 0):,} pages "
                    f"({self.split.get('share', 0):.3%}) failing row-level checks {self.split.get('checks')}"]
        if self.suites:
            out += ["", "| suite | rows | expectations | failed |", "|---|---|---|---|"]
            for name, s in self.suites.items():
                out.append(f"| {name} | {s.get('rows', 0):,} | {s.get('evaluated', 0)} | {s.get('failed', 0)} |")
        if self.failed:
            out += ["", "## Failed expectations", "",
                    "| suite | check | expectation | column | unexpected | observed | allowed |",
                    "|---|---|---|---|---|---|---|"]
            for e in self.failed:
                unexpected = "" if e.unexpected_count is None else f"{e.unexpected_count:,} ({e.unexpected_percent or 0:.3g}%)"
                allowed = e.allowed_text().removeprefix("allowed ").replace("|", "\\|")
                out.append(f"| {e.suite} | {e.check} | {e.expectation} | {e.column or ''} | {unexpected} | "
                           f"{_short(e.observed_value if e.error is None else e.error, 60)} | {allowed} |")
            out += ["", "### Example rows", ""]
            for e in self.failed:
                if e.examples:
                    out.append(f"- **{e.suite}/{e.check}**: " + "; ".join(f"`{_short(r, 200)}`" for r in e.examples[:3]))
        if self.timings:
            out += ["", "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in self.timings.items())]
        return "\n".join(out) + "\n"


def _num(value: Any) -> str:
    """A number to 4 significant digits, a timestamp in ISO form, anything else as ``_short``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat") and not isinstance(value, str):
        return value.isoformat()
    return _short(value, 60)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(_jsonable(value), default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    """Recursively convert numpy/pandas scalars, timestamps and NaN into JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if (math.isnan(value) or math.isinf(value)) else value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _jsonable(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except Exception:  # pragma: no cover
        pass
    return str(value)
