"""Bounded serving logs: sane timestamps at the API, per-row readiness, feedback once, retirement, crash re-runs."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from bartops.config import WindowRules, load_params
from bartops.loop.rounds import served_log_rows
from bartops.serving import join as J
from bartops.serving.join import MANIFEST, join_feedback, join_to_batch
from bartops.serving.logwriter import ARCHIVE, RotatingLogWriter, closed_files
from bartops.serving.schemas import HomeRequest, TimestampWindow

ROOT = Path(__file__).resolve().parents[2]
T0 = pd.Timestamp("2026-11-20T10:00:00Z")
WINDOW = 1800


def _cards(pages: list[str], when: pd.Timestamp = T0, cards: int = 2) -> list[dict]:
    return [{"impression_id": f"{p}-{k}", "request_id": p, "user_id": 1, "timestamp": when.isoformat(),
             "platform": "ios", "region": "SE", "shelf": 0, "position": k, "item_id": k, "explanation_id": "new",
             "propensity": 0.9, "epsilon": 0.1, "explored": False, "policy_version": "v1"}
            for p in pages for k in range(cards)]


def _report(rid: str, item: int, at: pd.Timestamp, streamed: bool = True, seconds: float | None = 60.0) -> dict:
    return {"request_id": rid, "item_id": item, "streamed": streamed, "seconds": seconds if streamed else None,
            "timestamp": at.isoformat()}


def _log(directory: Path, prefix: str, rows: list[dict], closed_at: pd.Timestamp | None = None) -> Path:
    """One closed log file holding ``rows``, its mtime set to ``closed_at`` (default T0 + 1 min)."""
    w = RotatingLogWriter(directory, prefix, background=False)
    w.write(rows)
    w.close()
    path = w.files_closed[-1]
    t = (closed_at or T0 + pd.Timedelta("1min")).timestamp()
    os.utime(path, (t, t))
    return path


def _batches(out: Path) -> pd.DataFrame:
    files = sorted(out.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# ---------------------------------------------------------------- timestamps at the API
def test_home_request_refuses_timestamps_outside_the_window_naming_the_field():
    now = datetime(2026, 12, 4, 12, tzinfo=timezone.utc)
    ctx = {"now": now, "window": TimestampWindow()}
    body = {"user_id": 1, "platform": "ios", "region": "SE"}
    for bad in ["9999-12-31T23:59:59Z", (now + timedelta(seconds=301)).isoformat(),
                (now - timedelta(days=8, seconds=1)).isoformat(), "2019-06-01T00:00:00Z"]:
        with pytest.raises(ValidationError) as exc:
            HomeRequest.model_validate_json(json.dumps({**body, "timestamp": bad}), context=ctx)
        errors = exc.value.errors()
        assert [e["loc"] for e in errors] == [("timestamp",)], f"{bad}: errors {errors}"
        assert "accepted range [2026-11-26T12:00:00+00:00, 2026-12-04T12:05:00+00:00]" in errors[0]["msg"], \
            f"{bad}: message {errors[0]['msg']!r}"
    for ok in [now + timedelta(seconds=300), now - timedelta(days=7), now.replace(tzinfo=None)]:
        got = HomeRequest.model_validate_json(json.dumps({**body, "timestamp": ok.isoformat()}), context=ctx)
        assert got.timestamp.tzinfo is not None and got.timestamp == ok.replace(tzinfo=timezone.utc), \
            f"{ok} accepted as {got.timestamp}"
    assert HomeRequest.model_validate(body).timestamp is None  # omitted: the server's clock, no check
    # without a context the server's clock decides: a page view stamped now is accepted
    live = HomeRequest.model_validate({**body, "timestamp": datetime.now(timezone.utc)})
    assert live.timestamp is not None


def test_timestamp_window_is_the_validation_window_of_params():
    spec = load_params(ROOT / "params.yaml").validation.window
    w = TimestampWindow.from_rules(spec)
    assert (w.future_skew.total_seconds(), w.max_age.days) == (spec.future_skew_seconds, spec.max_span_days), \
        f"window {w} vs params validation.window {spec}"
    assert TimestampWindow.from_rules(WindowRules()) == TimestampWindow(), "defaults differ without params"


# ---------------------------------------------------------------- readiness per row
def test_a_far_future_row_does_not_hold_back_its_file(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    future = _cards(["late"], pd.Timestamp("9999-12-31T23:59:59Z"), cards=1)
    _log(logs, "impressions", _cards(["a", "b"]) + future)  # closed at T0 + 1 min
    early = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("32min"))  # a and b are due, "late" clamps later
    assert early.batch is None and len(early.waiting_files) == 1, f"joined before the clamp: {early}"
    due = T0 + pd.Timedelta("1min") + pd.Timedelta(seconds=300 + WINDOW)  # close + skew + window
    stateless = join_feedback(logs, WINDOW, due)
    assert len(stateless) == 5, f"stateless join kept {len(stateless)} of 5 rows"
    res = join_to_batch(logs, out, WINDOW, due)
    assert res.rows == 5 and res.waiting_files == [], f"far-future row held its file back: {res}"
    assert sorted(_batches(out)["request_id"].unique()) == ["a", "b", "late"]


# ---------------------------------------------------------------- feedback: unknown ids, repeats, carry
def test_unknown_request_ids_are_dropped_and_counted_and_repeats_count_once(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    _log(logs, "impressions", _cards(["a", "b"]))
    at = T0 + pd.Timedelta("5min")
    reports = [_report("a", 0, at, seconds=30.0), _report("a", 0, at, seconds=90.0),  # a repeat: one card
               _report("a", 0, at + pd.Timedelta("1min"), streamed=False),  # any stream in the window counts
               _report("b", 1, at + pd.Timedelta("2h")),  # outside the window: used, no reward
               _report("b", 7, at)]  # item not on page b
    reports += [_report(f"nobody{i}", 0, at) for i in range(50)]  # never served
    _log(logs, "feedback", reports, closed_at=T0 + pd.Timedelta("3h"))
    res = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("4h"))
    got = (res.feedback_read, res.feedback_used, res.feedback_repeats, res.feedback_dropped, res.feedback_carried)
    assert got == (55, 4, 2, 51, 0), f"(read, used, repeats, dropped, carried) = {got}"
    batch = _batches(out).set_index("impression_id")
    assert batch["reward"].to_dict() == {"a-0": 1, "a-1": 0, "b-0": 0, "b-1": 0}, f"rewards {batch['reward']}"
    assert batch.loc["a-0", "stream_seconds"] == 90.0, f"seconds {batch.loc['a-0', 'stream_seconds']}"
    manifest = json.loads((logs / MANIFEST).read_text())
    assert manifest["last_join"]["feedback_dropped"] == 51, f"manifest {manifest['last_join']}"
    again = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("5h"))
    assert (again.feedback_read, again.feedback_dropped, again.batch) == (0, 0, None), f"re-read: {again}"


def test_feedback_for_a_waiting_page_is_carried_until_its_page_is_joined(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    _log(logs, "impressions", _cards(["a"]))
    later = T0 + pd.Timedelta("40min")
    waiting = _log(logs, "impressions", _cards(["w"], later), closed_at=later + pd.Timedelta("1min"))
    # the waiting file's name stamp (its writer's clock) must not be later than its reports
    os.replace(waiting, waiting.with_name("impressions-20261120T103900000000-1-000001.jsonl"))
    _log(logs, "feedback", [_report("a", 1, T0 + pd.Timedelta("2min")),
                            _report("w", 0, later + pd.Timedelta("3min"))], closed_at=later + pd.Timedelta("5min"))
    first = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("50min"))
    assert (first.rows, first.rewards, first.feedback_used, first.feedback_carried) == (2, 1, 1, 1), f"{first}"
    assert not closed_files(logs, "feedback"), "a feedback file read to its end was not retired"
    second = join_to_batch(logs, out, WINDOW, later + pd.Timedelta("2h"))
    assert (second.rows, second.rewards, second.feedback_read, second.feedback_used) == (2, 1, 1, 1), f"{second}"
    total = _batches(out)
    assert total["impression_id"].is_unique and len(total) == 4 and total["reward"].sum() == 2, \
        f"rows {len(total)}, rewards {total['reward'].sum()}"
    assert not list(logs.glob(f"{J.CARRY}-*")), f"carry file left: {list(logs.glob('carried-*'))}"


def test_open_feedback_files_are_read_from_where_the_last_join_stopped(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    _log(logs, "impressions", _cards(["a", "b"]))
    fb = RotatingLogWriter(logs, "feedback", background=False)
    fb.write([_report("a", 0, T0 + pd.Timedelta("1min"))])
    first = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("1h"))
    fb.write([_report("b", 0, T0 + pd.Timedelta("2min"))])  # after the join: too late for page b
    fb.close()
    second = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("2h"))
    assert (first.feedback_read, first.rewards, second.feedback_read, second.feedback_dropped) == (1, 1, 1, 1), \
        f"first {first}, second {second}"
    assert not closed_files(logs, "feedback") and len(closed_files(logs / ARCHIVE, "feedback")) == 1


# ---------------------------------------------------------------- retirement and crash safety
@pytest.mark.parametrize("mode", ["archive", "delete", "keep"])
def test_joined_files_are_retired_and_never_read_again(tmp_path, mode, monkeypatch):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    imp = _log(logs, "impressions", _cards(["a"]))
    fb = _log(logs, "feedback", [_report("a", 0, T0 + pd.Timedelta("1min"))])
    res = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("1h"), retire=mode)
    retired = sorted(res.retired)
    assert retired == ([] if mode == "keep" else sorted([imp.name, fb.name])), f"{mode}: retired {retired}"
    assert (imp.exists(), fb.exists()) == ((mode == "keep"),) * 2, f"{mode}: files left {list(logs.iterdir())}"
    assert (logs / ARCHIVE / imp.name).exists() == (mode == "archive"), f"{mode}: archive {list(logs.rglob('*'))}"
    reads: list[list[Path]] = []
    monkeypatch.setattr(J, "read_rows", lambda files: reads.append(list(files)) or [])
    again = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("2h"), retire=mode)
    read = [f.name for files in reads for f in files]
    assert again.batch is None and again.feedback_read == 0 and read == [], f"{mode}: re-read {read}, {again}"
    assert served_log_rows(logs, {"a"}) == (0 if mode == "delete" else 2), f"{mode}: logged rows miscounted"


def test_rerun_after_a_crash_between_batch_and_manifest_is_exact(tmp_path, monkeypatch):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    _log(logs, "impressions", _cards(["a", "b"]))
    _log(logs, "feedback", [_report("a", 0, T0 + pd.Timedelta("1min")), _report("a", 0, T0 + pd.Timedelta("2min"))])
    write_manifest = J._write_manifest

    def crash_at_commit(log_dir, manifest):
        if manifest.get("pending") is None:  # the commit (the pending intent is written first)
            raise SystemExit("crash after the batch, before the manifest")
        write_manifest(log_dir, manifest)

    monkeypatch.setattr(J, "_write_manifest", crash_at_commit)
    with pytest.raises(SystemExit):
        join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("1h"))
    assert len(list(out.glob("*.parquet"))) == 1 and len(closed_files(logs, "impressions")) == 1
    monkeypatch.setattr(J, "_write_manifest", write_manifest)
    _log(logs, "impressions", _cards(["c"]))  # arrived meanwhile: joins in a later run, not this redo
    redo = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("3h"))
    assert (redo.rows, redo.rewards, redo.feedback_read, redo.feedback_repeats) == (4, 1, 2, 1), f"redo {redo}"
    assert len(list(out.glob("*.parquet"))) == 1, f"batches {sorted(out.glob('*.parquet'))}"
    rest = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("3h"))
    total = _batches(out)
    assert rest.rows == 2 and total["impression_id"].is_unique and len(total) == 6 and total["reward"].sum() == 1, \
        f"rest {rest}; total rows {len(total)}, rewards {total['reward'].sum()}"


def test_rerun_after_a_crash_between_manifest_and_retirement_only_retires(tmp_path, monkeypatch):
    logs, out = tmp_path / "logs", tmp_path / "incoming"
    imp = _log(logs, "impressions", _cards(["a"]))
    _log(logs, "feedback", [_report("a", 0, T0 + pd.Timedelta("1min"))])
    real_retire = J._retire
    calls = {"n": 0}

    def crash_on_second_retire(log_dir, manifest, mode):
        calls["n"] += 1
        if calls["n"] == 2:  # the first call finishes earlier joins; the second retires this one's files
            raise SystemExit("crash after the manifest, before retirement")
        return real_retire(log_dir, manifest, mode)

    monkeypatch.setattr(J, "_retire", crash_on_second_retire)
    with pytest.raises(SystemExit):
        join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("1h"))
    monkeypatch.setattr(J, "_retire", real_retire)
    assert imp.exists(), "nothing should have been retired yet"
    redo = join_to_batch(logs, out, WINDOW, T0 + pd.Timedelta("2h"))
    assert (redo.batch, redo.rows, redo.feedback_read) == (None, 0, 0), f"re-joined after the commit: {redo}"
    assert len(redo.retired) == 2 and not imp.exists(), f"retired {redo.retired}"
    total = _batches(out)
    assert len(total) == 2 and total["reward"].sum() == 1, f"rows {len(total)}, rewards {total['reward'].sum()}"


def test_a_second_join_on_the_same_folder_is_refused_while_one_runs(tmp_path):
    logs = tmp_path / "logs"
    with J._exclusive(logs):
        with pytest.raises(RuntimeError, match="another join is running"):
            join_to_batch(logs, tmp_path / "incoming", WINDOW, T0)
