"""Validate an impression batch and accept it into the training data or quarantine it.

``validate_batch`` reads the batch and runs the three GX suites (impressions, catalog, history)
without touching any file.  ``ingest`` then acts on the result:

* passed: the batch is written (canonical parquet) into the accepted store (``paths.impressions``)
  through a temp file and a rename, named after its content digest, so a rerun on the same batch adds nothing; a batch
  repeating impressions or pages already accepted there fails (``impressions_not_already_accepted``,
  ``rewards_not_contradicting_accepted``, ``pages_not_already_accepted``), so no impression id is
  stored twice;
* failed only row-level checks on a small share of rows (``validation.row_split``): the pages
  holding those rows are split off to quarantine and the rest is re-validated and accepted;
* otherwise (or unreadable): the batch is moved whole and byte-identical into
  ``quarantine/<name>-<stamp>/`` beside ``report.json`` and ``report.md``.  Links are never
  followed: a symlinked batch (or a link in a batch folder) is quarantined as the link, made
  absolute so that it still names the files it pointed to, which stay where they are.

Crash safety: the quarantine folder is assembled as ``quarantine/.<name>-<stamp>.moving-<pid>-…``:
first the reports, then a move record (``.move.json``), then the batch is moved in with one rename
(or, across file systems or through symlinks, copied and then removed from its place), then the
folder is renamed to its final name.  ``recover_quarantine``, run at the start of every ``ingest``,
finishes what a killed run left once its process is gone: a folder holding the batch is completed
(source cleaned, renamed, report included); one without it is dropped, the batch never having left
its place.  Leftover temporary files of accepted batches are removed the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bartops.config import Params
from bartops.faults import crash_point
from bartops.leftovers import owner_gone, recover_leftovers, temp_path
from bartops.validation.reader import Batch, BatchReadError, read_batch
from bartops.validation.report import ExpectationOutcome, ValidationReport

CATALOG_FILES = ("items.parquet", "explanations.parquet", "users.parquet", "history.parquet")


class ValidationSetupError(FileNotFoundError):
    """The reference data (catalog, users, history) needed to validate a batch is missing."""


@dataclass
class _Run:
    report: ValidationReport
    batch: Batch | None
    context: Any = None
    parameters: dict[str, Any] | None = None
    now: pd.Timestamp | None = None


def _now_iso() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")


def check_reference(data_dir: Path) -> None:
    """Raise ``ValidationSetupError`` naming the catalog files missing under ``data_dir``."""
    missing = [n for n in CATALOG_FILES if not (Path(data_dir) / n).exists()]
    if missing:
        raise ValidationSetupError(f"reference data {missing} missing under {data_dir}: run `bartops simulate` "
                                   "(or point --data at the raw data folder)")


def _validate(path: Path, data_dir: Path, params: Params, now: pd.Timestamp | None,
              docs_dir: Path | None, store: Path | None = None) -> _Run:
    from bartops.validation import suites as S

    t0 = time.perf_counter()
    path = Path(path)
    check_reference(data_dir)
    report = ValidationReport(batch=str(path), passed=False, decision="validated", created_at=_now_iso())
    try:
        batch = read_batch(path)
    except BatchReadError as exc:
        report.decision, report.error_kind, report.error = "unreadable", exc.kind, exc.message
        report.timings["read"] = time.perf_counter() - t0
        return _Run(report, None)
    report.timings["read"] = time.perf_counter() - t0
    frame = batch.frame
    report.rows, report.fmt, report.digest = len(frame), batch.fmt, batch.digest
    report.files = [str(p) for p in batch.files]
    report.pages = int(frame["request_id"].nunique())
    # checked against the accepted store, less this batch's own accepted files (a rerun stays a no-op)
    parameters = S.impression_parameters(frame, data_dir, params, now, store=store, store_exclude=batch.digest[:16])
    report.parameters = parameters
    now = pd.Timestamp(parameters["window_end"]) - pd.Timedelta(
        seconds=float(params.validation.window.future_skew_seconds))
    t1 = time.perf_counter()
    context = S.make_context(docs_dir)
    report.timings["gx_context"] = time.perf_counter() - t1
    examples = params.validation.examples
    tables = {"impressions": frame,
              "catalog": pd.read_parquet(Path(data_dir) / "items.parquet"),
              "history": pd.read_parquet(Path(data_dir) / "history.parquet")}
    for name, table in tables.items():
        run, _ = S.run_suite(context, name, table, parameters, checkpoint=docs_dir is not None, examples=examples)
        report.expectations += run.outcomes
        report.suites[name] = {"rows": run.rows, "evaluated": len(run.outcomes),
                               "failed": sum(not o.success for o in run.outcomes)}
        report.timings[f"suite_{name}"] = run.seconds
    report.passed = not report.failed
    if docs_dir is not None:
        site = Path(docs_dir) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        report.data_docs = str(site) if site.exists() else None
    report.timings["total"] = time.perf_counter() - t0
    return _Run(report, batch, context, parameters, now)


def validate_batch(path: Path, data_dir: Path, params: Params, *, now: pd.Timestamp | None = None,
                   docs_dir: Path | None = None, impressions_dir: Path | None = None) -> ValidationReport:
    """Read the batch at ``path`` and run the GX suites; moves nothing.

    ``data_dir`` holds the catalog (items, explanations, users) and history; ``params`` is the
    parsed params.yaml (``validation:``, ``policy:``); ``docs_dir`` builds GX Data Docs there;
    ``impressions_dir`` is the accepted store the batch must not repeat (None: not checked).
    Unreadable batches give a report with ``decision="unreadable"`` and ``error``; missing
    reference data raises ValidationSetupError.
    """
    return _validate(Path(path), Path(data_dir), params, now, docs_dir,
                     Path(impressions_dir) if impressions_dir is not None else None).report


def ingest(path: Path, data_dir: Path, quarantine_dir: Path, params: Params, *,
           impressions_dir: Path | None = None, docs_dir: Path | None = None,
           now: pd.Timestamp | None = None) -> ValidationReport:
    """Validate the batch and accept it into ``impressions_dir`` (default ``params.paths.impressions``) or quarantine it.

    First finishes what killed runs left (``recover_quarantine``, temporary files in the store); a
    batch that such a run was moving to quarantine is completed there and its report returned.
    """
    path, data_dir, quarantine_dir = Path(path), Path(data_dir), Path(quarantine_dir)
    impressions_dir = Path(impressions_dir or params.paths.impressions)
    recover_leftovers(impressions_dir)
    finished = recover_quarantine(quarantine_dir)
    if not (path.exists() or path.is_symlink()):
        for final, record in finished.items():
            if record.get("source") == os.path.abspath(path):
                return _read_report(final / "report.json")
    run = _validate(path, data_dir, params, now, docs_dir, impressions_dir)
    report, batch = run.report, run.batch
    if report.passed and batch is not None:
        _accept(batch, batch.frame, impressions_dir, report, remove_source=params.validation.remove_accepted_source)
        return report
    if batch is not None and _try_split(run, params, data_dir, quarantine_dir, impressions_dir):
        return report
    report.decision = "unreadable" if report.error else "rejected"
    report.passed = False
    _quarantine(path, batch.files if batch else None, quarantine_dir, report)
    return report


# ---------------------------------------------------------------------------- accept
def _accept(batch: Batch, frame: pd.DataFrame, impressions_dir: Path, report: ValidationReport,
            remove_source: bool, suffix: str = "") -> None:
    from bartops.logs.schema import conform_impressions

    impressions_dir.mkdir(parents=True, exist_ok=True)
    key = batch.digest[:16]
    existing = sorted(impressions_dir.glob(f"*-{key}{suffix}.parquet"))
    if existing:
        report.decision = "already-ingested"
        report.accepted_path = str(existing[0])
    else:
        stem = batch.path.stem if batch.path.is_file() else batch.path.name
        target = impressions_dir / f"{stem}-{key}{suffix}.parquet"
        tmp = temp_path(target)  # hidden, named after this process: recover_leftovers removes it if killed
        plain = frame.reset_index(drop=True)
        plain = plain.astype({c: "string" for c in plain.columns if isinstance(plain[c].dtype, pd.CategoricalDtype)})
        table = conform_impressions(plain)
        table.to_parquet(tmp, index=False)
        crash_point("accept:written")
        os.replace(tmp, target)
        crash_point("accept:renamed")
        report.decision = "accepted" if not suffix else "accepted-partly"
        report.accepted_path = str(target)
    if remove_source:
        for f in batch.files:
            f.unlink(missing_ok=True)
        if batch.path.is_dir() and not any(batch.path.iterdir()):
            batch.path.rmdir()


# ---------------------------------------------------------------------------- quarantine
MOVING = "moving"
MOVE_RECORD = ".move.json"


def _quarantine(path: Path, files: list[Path] | None, quarantine_dir: Path, report: ValidationReport,
                extra: dict[str, pd.DataFrame] | None = None) -> Path:
    """Move the batch (file or folder) whole into a new quarantine folder beside its report.

    The folder is built under a hidden name owned by this process and renamed when complete (see
    the module docs and ``recover_quarantine``).  A link moves as the link (``_repoint_links``).
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%f")
    name = (path.stem if path.suffix else path.name) or "batch"
    final = quarantine_dir / f"{name}-{stamp}"
    tmp = quarantine_dir / f".{final.name}.{MOVING}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    report.quarantine_path = str(final)
    for fname, df in (extra or {}).items():
        df.to_parquet(tmp / fname, index=False)
    (tmp / "report.json").write_text(report.to_json(), encoding="utf-8")
    (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    crash_point("quarantine:reported")
    record = _move_record(path, tmp)
    _write_record(tmp / MOVE_RECORD, record)
    crash_point("quarantine:recorded")
    entry, source = tmp / record["entry"], record["source"]
    if record["mode"] == "rename":
        os.replace(source, entry)  # same file system: a rename, bytes untouched (a link moves as the link)
    elif record["mode"] == "copy":
        part = entry.with_name(entry.name + ".part")
        if os.path.islink(source):
            os.symlink(os.readlink(source), part)
        elif os.path.isdir(source):
            shutil.copytree(source, part, symlinks=True)
        else:
            shutil.copy2(source, part)
        crash_point("quarantine:copied")
        os.replace(part, entry)
    crash_point("quarantine:moved")
    _finish_quarantine(tmp, final, record)
    return final


def _move_record(path: Path, tmp: Path) -> dict[str, Any]:
    """How the batch at ``path`` goes into ``tmp``: by one rename, or copied and then removed (``mode``)."""
    source = os.path.abspath(path)
    record: dict[str, Any] = {"source": source, "entry": path.name, "mode": "none"}
    if os.path.lexists(source):
        record["mode"] = "rename" if os.lstat(source).st_dev == os.stat(tmp).st_dev else "copy"
    return record


def _write_record(path: Path, record: dict[str, Any]) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


def _finish_quarantine(tmp: Path, final: Path, record: dict[str, Any]) -> None:
    """The batch is inside ``tmp``: remove what is left at its source, keep its links pointing where
    they did, then give the folder its name (every step may be repeated after a crash)."""
    source = record["source"]
    if record["mode"] == "copy" and os.path.lexists(source):
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.rmtree(source)
        else:
            os.unlink(source)
    if record["mode"] != "none":
        _repoint_links(tmp / record["entry"], source)
    os.replace(tmp, final)
    crash_point("quarantine:renamed")
    (final / MOVE_RECORD).unlink()  # the record goes last: without it a hidden folder would be taken as unmoved


def _repoint_links(entry: Path, origin: str) -> None:
    """Make the relative links of a batch moved from ``origin`` (the batch itself when it is a link,
    else the links in its folder) absolute: links are quarantined as links, never followed, and
    must not dangle once moved."""
    links = [entry] if entry.is_symlink() else [p for p in entry.iterdir() if p.is_symlink()] if entry.is_dir() else []
    for link in links:
        target = os.readlink(link)
        if os.path.isabs(target):
            continue
        base = os.path.dirname(origin) if link == entry else origin
        fresh = link.with_name(f".{link.name}.relink")
        if os.path.lexists(fresh):
            os.unlink(fresh)
        os.symlink(os.path.normpath(os.path.join(base, target)), fresh)
        os.replace(fresh, link)


def recover_quarantine(quarantine_dir: Path) -> dict[Path, dict[str, Any]]:
    """Finish or undo the quarantine moves of killed runs; returns {completed folder: its move record}.

    A hidden ``.<name>.moving-<pid>-…`` folder whose process is gone either holds the batch (the
    move happened: the source is cleaned and the folder renamed, its report inside) or not (the
    batch never left its place: the folder is removed, and the next run validates the batch again).
    Folders of earlier code (``.<name>.tmp``, no process id) holding a batch are completed too,
    with their report if one was written, else a note saying the report was lost.
    """
    quarantine_dir = Path(quarantine_dir)
    done: dict[Path, dict[str, Any]] = {}
    if not quarantine_dir.is_dir():
        return done
    for stale in quarantine_dir.glob(f"*/{MOVE_RECORD}"):  # killed between the final rename and this
        if not stale.parent.name.startswith("."):
            stale.unlink(missing_ok=True)
    for tmp in sorted(quarantine_dir.glob(".*")):
        if not tmp.is_dir():
            continue
        parts = tmp.name[1:].rsplit(".", 1)
        if len(parts) == 2 and parts[1].startswith(f"{MOVING}-"):
            try:
                pid = int(parts[1].split("-")[1])
            except (IndexError, ValueError):
                continue
            if not owner_gone(pid):
                continue
            final = quarantine_dir / parts[0]
            try:
                record = json.loads((tmp / MOVE_RECORD).read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                shutil.rmtree(tmp, ignore_errors=True)  # killed before the move began
                continue
            if record["mode"] != "none" and not os.path.lexists(tmp / record["entry"]):
                shutil.rmtree(tmp, ignore_errors=True)  # the batch is still at its source
                continue
            _finish_quarantine(tmp, final, record)
            done[final] = record
        elif len(parts) == 2 and parts[1] == "tmp":  # earlier code's name: batch and report, or batch alone
            final = quarantine_dir / parts[0]
            entries = [p for p in tmp.iterdir() if p.name not in ("report.json", "report.md")]
            if not entries:
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            if not (tmp / "report.json").exists():
                note = ValidationReport(batch=entries[0].name, passed=False, decision="rejected",
                                        error_kind="interrupted", created_at=_now_iso(),
                                        error="a run was killed while moving this batch to quarantine; its "
                                              "validation report was lost (validate the files here again)",
                                        quarantine_path=str(final))
                (tmp / "report.json").write_text(note.to_json(), encoding="utf-8")
                (tmp / "report.md").write_text(note.to_markdown(), encoding="utf-8")
            os.replace(tmp, final)
            done[final] = {"source": None, "entry": entries[0].name, "mode": "legacy"}
    return done


def _read_report(path: Path) -> ValidationReport:
    """A ``ValidationReport`` back from its ``report.json``."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    d.pop("counts", None)
    d["expectations"] = [ExpectationOutcome(**e) for e in d.get("expectations") or []]
    known = set(ValidationReport.__dataclass_fields__)
    return ValidationReport(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------- row-level split
def _try_split(run: _Run, params: Params, data_dir: Path, quarantine_dir: Path,
               impressions_dir: Path) -> bool:
    """Split off pages with rows failing only row-level checks, when under the configured share."""
    from bartops.validation import suites as S

    cfg = params.validation.row_split
    report, batch = run.report, run.batch
    if not cfg.enabled or batch is None or run.context is None:
        return False
    failed = report.failed
    if not failed or any(o.suite != "impressions" or o.level != "row" or o.error for o in failed):
        return False
    checks = sorted({o.check for o in failed})
    frame = batch.frame
    bad_rows = S.unexpected_rows(run.context, "impressions", frame, run.parameters, checks)
    bad_pages = frame["request_id"][bad_rows].unique()
    split_mask = frame["request_id"].isin(bad_pages).to_numpy() | bad_rows
    share = float(split_mask.mean())
    max_share = cfg.max_share
    split_info = {"checks": checks, "rows": int(split_mask.sum()), "failing_rows": int(bad_rows.sum()),
                  "pages": int(len(bad_pages)), "share": share, "max_share": max_share}
    if share > max_share or split_mask.all():
        report.split = {**split_info, "applied": False, "reason": f"share {share:.3%} above max_share {max_share:.3%}"}
        return False
    kept = frame[~split_mask]
    params2 = S.impression_parameters(kept, data_dir, params, run.now, store=run.parameters["store_path"] or None,
                                      store_exclude=run.parameters["store_exclude"])
    rerun, _ = S.run_suite(run.context, "impressions", kept, params2,
                           examples=params.validation.examples)
    if any(not o.success for o in rerun.outcomes):
        report.split = {**split_info, "applied": False,
                        "reason": "the remaining rows still fail: " + ", ".join(o.check for o in rerun.outcomes if not o.success)}
        return False
    report.split = {**split_info, "applied": True, "kept_rows": int(len(kept))}
    report.passed = True
    _accept(batch, kept, impressions_dir, report, remove_source=False, suffix="-kept")
    # nothing is lost: the original batch and the split-off rows go to quarantine with the report
    _quarantine(batch.path, batch.files, quarantine_dir, report,
                extra={"split-off-rows.parquet": frame[split_mask].reset_index(drop=True)})
    return True
