"""The malformed-batch corpus: each kind of bad impression batch, with its expected verdict and reason.

One record per kind: ``make`` derives the batch from a valid base (deterministic: fixed rows, fixed
seeds) and writes it under a folder; ``verdict`` is the ``ValidationReport.decision`` that
``bartops.validation.ingest`` (what the Prefect flow and ``bartops validate`` call) must reach;
``checks`` the exact set of failed checks (``meta.check`` of the suites) or, for an unreadable
batch, its ``error_kind``; ``reason`` substrings the report's ``failure_message()`` must contain
(the check and, where it matters, the observed value).  Valid controls (verdict ``accepted``) pin
what must still pass, so a check cannot pass the corpus by rejecting everything.

``tests/unit/test_malformed_corpus.py`` runs every kind; ``python tests/corpus/malformed.py``
runs them without pytest and prints the summary table.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SOURCE_BATCH = "incoming/sim-seed3.parquet"
ACCEPTED_NAME = "accepted-batch.parquet"

# verdicts: ValidationReport.decision values
ACCEPTED, REJECTED, UNREADABLE, NO_OP, SPLIT = "accepted", "rejected", "unreadable", "already-ingested", "accepted-partly"


@dataclass(frozen=True)
class Base:
    """What every kind is derived from: a valid new batch, a batch already in the store, the setting."""

    data_dir: Path  # catalog, users, history (read only)
    frame: pd.DataFrame  # a valid batch of new pages (validates as accepted)
    accepted: pd.DataFrame  # the batch already accepted into ``store``
    accepted_file: Path  # the file it was accepted from (same name and bytes = an exact repeat)
    store: Path  # the accepted store (copied per kind)
    params: dict[str, Any]
    now: pd.Timestamp
    items: np.ndarray  # catalog item ids


@dataclass(frozen=True)
class Kind:
    """One malformed (or control) kind: how to make it and what validation must say."""

    name: str
    group: str
    make: Callable[[Base, Path], Path]
    verdict: str
    checks: frozenset[str]  # failed checks (rejected / split), or {error_kind} (unreadable)
    reason: tuple[str, ...] = ()
    params: Callable[[dict], dict] | None = None
    note: str = ""


# ---------------------------------------------------------------------------- writing batches
def _text_ts(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def write(df: pd.DataFrame, path: Path, fmt: str = "parquet") -> Path:
    """Write ``df`` as parquet, CSV or JSON lines (ISO timestamps in the text formats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        _text_ts(df).to_csv(path, index=False)
    else:
        _text_ts(df).to_json(path, orient="records", lines=True)
    return path


def frame_kind(mutate: Callable[[pd.DataFrame, Base], pd.DataFrame], fmt: str = "parquet",
               source: str = "frame") -> Callable[[Base, Path], Path]:
    """A maker that writes ``mutate(copy of the base frame)`` as one file."""
    def make(base: Base, out: Path) -> Path:
        df = getattr(base, source).copy()
        return write(mutate(df, base), out / f"batch.{'jsonl' if fmt == 'jsonl' else fmt}", fmt)
    return make


def _page_rows(df: pd.DataFrame, i: int = 0) -> pd.Index:
    """Index of the rows of the batch's i-th page (in row order)."""
    return df.index[df["request_id"] == df["request_id"].unique()[i]]


def _slot(df: pd.DataFrame, page: int, shelf: int, position: int) -> Any:
    rows = _page_rows(df, page)
    hit = rows[(df.loc[rows, "shelf"] == shelf).to_numpy() & (df.loc[rows, "position"] == position).to_numpy()]
    return hit[0]


def _greedy(df: pd.DataFrame, n: int = 3) -> pd.Index:
    """n greedy cards (explored False, p < 1)."""
    return df.index[~df["explored"] & (df["propensity"] < 1)][:n]


def _explored_others(df: pd.DataFrame, n: int = 3) -> pd.Index:
    """n explored non-greedy cards (p ≤ ε/2)."""
    return df.index[df["explored"] & (df["propensity"] <= df["epsilon"] / 2)][:n]


def setv(column: str, value: Any, rows: Callable[[pd.DataFrame], Any] = lambda df: df.index[3]):
    """Mutation: set ``column`` to ``value`` on the chosen rows (default: one row)."""
    def f(df: pd.DataFrame, base: Base) -> pd.DataFrame:
        df.loc[rows(df), column] = value
        return df
    return f


def _new_items(df: pd.DataFrame, base: Base, rows: pd.Index) -> np.ndarray:
    """Catalog items not on the page of ``rows`` (one per row), for cards added to a page."""
    on_page = set(df.loc[df["request_id"] == df.loc[rows[0], "request_id"], "item_id"])
    free = [i for i in base.items if i not in on_page]
    return np.array(free[: len(rows)], dtype=np.int64)


# ---------------------------------------------------------------------------- unreadable
def raw_file(name: str, data: Callable[[Base, Path], bytes]) -> Callable[[Base, Path], Path]:
    def make(base: Base, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        p = out / name
        p.write_bytes(data(base, out))
        return p
    return make


def _parquet_bytes(base: Base, out: Path) -> bytes:
    tmp = write(base.frame, out / ".whole.parquet")
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def folder(files: Callable[[Base, Path], None]) -> Callable[[Base, Path], Path]:
    def make(base: Base, out: Path) -> Path:
        d = out / "batch"
        d.mkdir(parents=True, exist_ok=True)
        files(base, d)
        return d
    return make


def _two_parts(df: pd.DataFrame, d: Path, fmt: str = "parquet", second: Callable[[pd.DataFrame], pd.DataFrame] = lambda x: x) -> None:
    pages = df["request_id"].unique()
    first = df["request_id"].isin(pages[: len(pages) // 2])
    ext = "jsonl" if fmt == "jsonl" else fmt
    write(df[first], d / f"part-0.{ext}", fmt)
    write(second(df[~first]), d / f"part-1.{ext}", fmt)


def _symlinked_folder(base: Base, out: Path) -> Path:
    real = out.parent / "elsewhere" / "real-batch"
    _two_parts(base.frame, real)
    link = out / "batch"
    out.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real, target_is_directory=True)
    return link


def _symlinked_part(base: Base, out: Path) -> Path:
    real = write(base.frame.iloc[: len(base.frame) // 2], out.parent / "elsewhere" / "part-0.parquet")
    d = out / "batch"
    d.mkdir(parents=True)
    (d / "part-0.parquet").symlink_to(real)
    write(base.frame.iloc[len(base.frame) // 2:], d / "part-1.parquet")
    return d


def _symlinked_file(base: Base, out: Path) -> Path:
    real = write(base.frame, out.parent / "elsewhere" / "batch.parquet")
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.parquet").symlink_to(real)
    return out / "batch.parquet"


def _utf16_csv(base: Base, out: Path) -> bytes:
    return _text_ts(base.frame.head(200)).to_csv(index=False).encode("utf-16")


def _broken_jsonl(base: Base, out: Path) -> bytes:
    text = _text_ts(base.frame.head(50)).to_json(orient="records", lines=True)
    lines = text.splitlines()
    lines[10] = lines[10][: len(lines[10]) // 2]
    return ("\n".join(lines) + "\n").encode()


def _damaged_footer(base: Base, out: Path) -> bytes:
    data = bytearray(_parquet_bytes(base, out))
    data[-40:-4] = b"\xff" * 36  # the footer's metadata, magic kept
    return bytes(data)


UNREADABLE_KINDS = [
    Kind("empty_file", "unreadable", raw_file("batch.parquet", lambda b, o: b""), UNREADABLE, frozenset({"empty"}),
         ("empty file",)),
    Kind("truncated_parquet", "unreadable", raw_file("batch.parquet", lambda b, o: _parquet_bytes(b, o)[:5000]),
         UNREADABLE, frozenset({"corrupt"}), ("not a readable parquet file",)),
    Kind("not_parquet_bytes", "unreadable", raw_file("batch.parquet", lambda b, o: b"PAR1 this is not parquet"),
         UNREADABLE, frozenset({"corrupt"}), ("not a readable parquet file",)),
    Kind("parquet_footer_damaged", "unreadable", raw_file("batch.parquet", _damaged_footer), UNREADABLE,
         frozenset({"corrupt"}), ("not a readable parquet file",)),
    Kind("csv_in_utf16", "unreadable", raw_file("batch.csv", _utf16_csv), UNREADABLE, frozenset({"encoding"}),
         ("not UTF-8 text",)),
    Kind("jsonl_line_cut", "unreadable", raw_file("batch.jsonl", _broken_jsonl), UNREADABLE, frozenset({"corrupt"}),
         ("cannot be parsed as jsonl",)),
    Kind("empty_folder", "unreadable", folder(lambda b, d: None), UNREADABLE, frozenset({"empty"}),
         ("holds no data files",)),
    Kind("folder_of_marker_files_only", "unreadable",
         folder(lambda b, d: ((d / "_SUCCESS").write_text(""), (d / ".part-0.parquet.crc").write_text("x"))),
         UNREADABLE, frozenset({"empty"}), ("holds no data files",), note="a Spark-style folder whose data never came"),
    Kind("folder_with_a_text_file", "unreadable",
         folder(lambda b, d: (write(b.frame, d / "part-0.parquet"), (d / "notes.txt").write_text("hi"))),
         UNREADABLE, frozenset({"format"}), ("notes.txt",)),
    Kind("folder_of_mixed_formats", "unreadable",
         folder(lambda b, d: (write(b.frame.head(96), d / "a.parquet"), write(b.frame.iloc[96:192], d / "b.csv", "csv"))),
         UNREADABLE, frozenset({"mixed_formats"}), ("mixes formats",)),
    Kind("parts_with_different_columns", "unreadable",
         folder(lambda b, d: _two_parts(b.frame, d, second=lambda x: x.drop(columns=["stream_seconds"]))),
         UNREADABLE, frozenset({"schema"}), ("part-1.parquet has columns",)),
    Kind("path_missing", "unreadable", lambda b, o: o / "gone.parquet", UNREADABLE, frozenset({"missing"}),
         ("does not exist",)),
    Kind("symlinked_batch_folder", "unreadable", _symlinked_folder, UNREADABLE, frozenset({"symlink"}),
         ("symbolic link",), note="a link could point anywhere (the store, another batch); moved, never followed"),
    Kind("symlinked_part_in_folder", "unreadable", _symlinked_part, UNREADABLE, frozenset({"symlink"}),
         ("symbolic link", "part-0.parquet")),
    Kind("symlinked_batch_file", "unreadable", _symlinked_file, UNREADABLE, frozenset({"symlink"}),
         ("symbolic link",)),
]


# ---------------------------------------------------------------------------- schema
SCHEMA_KINDS = [
    Kind("missing_column", "schema", frame_kind(lambda df, b: df.drop(columns=["propensity"])), UNREADABLE,
         frozenset({"columns"}), ("missing column(s) ['propensity']",)),
    Kind("missing_two_columns", "schema", frame_kind(lambda df, b: df.drop(columns=["reward", "epsilon"])),
         UNREADABLE, frozenset({"columns"}), ("missing column(s) ['epsilon', 'reward']",)),
    Kind("extra_column", "schema", frame_kind(lambda df, b: df.assign(score=1.0)), UNREADABLE, frozenset({"columns"}),
         ("unexpected column(s) ['score']",)),
    Kind("renamed_column", "schema", frame_kind(lambda df, b: df.rename(columns={"propensity": "Propensity"})),
         UNREADABLE, frozenset({"columns"}), ("missing column(s) ['propensity']", "unexpected column(s) ['Propensity']")),
    Kind("propensity_as_text", "schema", frame_kind(lambda df, b: df.assign(propensity="high")), UNREADABLE,
         frozenset({"types"}), ("'propensity' must be float64",)),
    Kind("user_id_as_text", "schema", frame_kind(lambda df, b: df.assign(user_id="u" + df["user_id"].astype(str))),
         UNREADABLE, frozenset({"types"}), ("'user_id' must be int64",)),
    Kind("timestamp_as_epoch_integers", "schema",
         frame_kind(lambda df, b: df.assign(timestamp=df["timestamp"].astype("int64"))), UNREADABLE,
         frozenset({"types"}), ("'timestamp' must be utc",)),
    Kind("timestamp_not_iso_text", "schema", frame_kind(lambda df, b: df.assign(timestamp="yesterday")), UNREADABLE,
         frozenset({"types"}), ("not ISO-8601", "yesterday")),
    Kind("explored_as_yes_no", "schema",
         frame_kind(lambda df, b: df.assign(explored=np.where(df["explored"], "yes", "no"))), UNREADABLE,
         frozenset({"types"}), ("'explored' must be bool",)),
    Kind("reward_fractional", "schema", frame_kind(lambda df, b: df.assign(reward=df["reward"] * 0.5)), UNREADABLE,
         frozenset({"types"}), ("'reward' must be int64", "fractional")),
    Kind("reward_as_booleans", "schema", frame_kind(lambda df, b: df.assign(reward=df["reward"] == 1)), UNREADABLE,
         frozenset({"types"}), ("'reward' must be int64", "booleans")),
    Kind("shelf_fractional", "schema", frame_kind(lambda df, b: df.assign(shelf=df["shelf"] + 0.5)), UNREADABLE,
         frozenset({"types"}), ("'shelf' must be int64",)),
]


# ---------------------------------------------------------------------------- values (row-level)
def _long(column: str, n: int, page: bool = False):
    def f(df: pd.DataFrame, base: Base) -> pd.DataFrame:
        df[column] = df[column].astype(object)
        rows = _page_rows(df, 2) if page else [df.index[7]]
        df.loc[rows, column] = column[0] * n
        df[column] = df[column].astype("string")
        return df
    return f


VALUE_KINDS = [
    Kind("propensity_zero", "values", frame_kind(setv("propensity", 0.0)), REJECTED, frozenset({"propensity_range"}),
         ("impressions/propensity_range", "allowed (0, 1]")),
    Kind("propensity_negative", "values", frame_kind(setv("propensity", -0.2)), REJECTED,
         frozenset({"propensity_range"}), ("impressions/propensity_range", "-0.2")),
    Kind("propensity_above_one", "values", frame_kind(setv("propensity", 1.5)), REJECTED,
         frozenset({"propensity_range"}), ("impressions/propensity_range", "1.5")),
    Kind("propensity_infinite", "values", frame_kind(setv("propensity", np.inf)), REJECTED,
         frozenset({"propensity_range"}), ("impressions/propensity_range",)),
    Kind("propensity_nan", "values", frame_kind(setv("propensity", np.nan)), REJECTED,
         frozenset({"not_null_propensity"}), ("impressions/not_null_propensity",)),
    Kind("inverse_propensity_logged", "values", frame_kind(lambda df, b: df.assign(propensity=1 / df["propensity"])),
         REJECTED, frozenset({"propensity_range"}), ("impressions/propensity_range",),
         note="the weight 1/p logged in place of p"),
    Kind("propensity_in_percent", "values", frame_kind(lambda df, b: df.assign(propensity=df["propensity"] * 100)),
         REJECTED, frozenset({"propensity_range", "explored_matches_propensity", "propensity_one_only_when_one_choice_left"}),
         ("impressions/propensity_range",), note="small propensities ×100 land inside (0, 1] but break the ε-greedy rules"),
    Kind("epsilon_above_one", "values", frame_kind(setv("epsilon", 1.5)), REJECTED, frozenset({"epsilon_range"}),
         ("impressions/epsilon_range", "1.5")),
    Kind("epsilon_negative", "values", frame_kind(setv("epsilon", -0.1)), REJECTED, frozenset({"epsilon_range"}),
         ("impressions/epsilon_range", "-0.1")),
    Kind("epsilon_nan", "values", frame_kind(setv("epsilon", np.nan)), REJECTED, frozenset({"not_null_epsilon"}),
         ("impressions/not_null_epsilon",)),
    Kind("reward_two", "values", frame_kind(setv("reward", 2)), REJECTED, frozenset({"reward_binary"}),
         ("impressions/reward_binary", "'reward': 2")),
    Kind("reward_negative", "values", frame_kind(setv("reward", -1)), REJECTED, frozenset({"reward_binary"}),
         ("impressions/reward_binary", "'reward': -1")),
    Kind("reward_missing", "values", frame_kind(lambda df, b: setv("reward", pd.NA)(df.astype({"reward": "Int64"}), b)),
         REJECTED, frozenset({"not_null_reward"}), ("impressions/not_null_reward",)),
    Kind("shelf_negative", "values", frame_kind(lambda df, b: setv("shelf", -1, lambda d: _slot(d, 0, 5, 7))(df, b)),
         REJECTED, frozenset({"shelf_range", "page_slots_contiguous"}), ("impressions/shelf_range", "'shelf': -1")),
    Kind("position_negative", "values",
         frame_kind(lambda df, b: setv("position", -1, lambda d: _slot(d, 0, 2, 7))(df, b)),
         REJECTED, frozenset({"position_range", "page_slots_contiguous"}), ("impressions/position_range", "'position': -1")),
    Kind("user_id_negative", "values", frame_kind(setv("user_id", -5, lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"user_id_range"}), ("impressions/user_id_range", "-5")),
    Kind("platform_unknown", "values", frame_kind(setv("platform", "fridge", lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"platform_enum"}), ("impressions/platform_enum", "fridge", "allowed one of [")),
    Kind("region_unknown", "values", frame_kind(setv("region", "XX", lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"region_enum"}), ("impressions/region_enum", "XX")),
    Kind("platform_missing", "values", frame_kind(setv("platform", None, lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"not_null_platform"}), ("impressions/not_null_platform",)),
    Kind("item_unknown", "values", frame_kind(setv("item_id", 10**9)), REJECTED, frozenset({"item_known"}),
         ("impressions/item_known", "1000000000")),
    Kind("explanation_unknown", "values", frame_kind(setv("explanation_id", "artist:999999")), REJECTED,
         frozenset({"explanation_known"}), ("impressions/explanation_known", "artist:999999")),
    Kind("stream_seconds_negative", "values",
         frame_kind(setv("stream_seconds", -30.0, lambda df: df.index[df["reward"] == 1][:1])), REJECTED,
         frozenset({"stream_seconds_range"}), ("impressions/stream_seconds_range", "-30")),
    Kind("impression_id_missing", "values", frame_kind(setv("impression_id", None)), REJECTED,
         frozenset({"not_null_impression_id"}), ("impressions/not_null_impression_id",)),
    Kind("request_id_missing", "values", frame_kind(setv("request_id", None, lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"not_null_request_id"}), ("impressions/not_null_request_id",)),
    Kind("timestamp_missing", "values", frame_kind(setv("timestamp", pd.NaT)), REJECTED,
         frozenset({"not_null_timestamp"}), ("impressions/not_null_timestamp",)),
    Kind("explored_missing", "values",
         frame_kind(lambda df, b: setv("explored", pd.NA)(df.astype({"explored": "boolean"}), b)), REJECTED,
         frozenset({"not_null_explored"}), ("impressions/not_null_explored",)),
    Kind("policy_version_10mb", "values", frame_kind(_long("policy_version", 10_000_000)), REJECTED,
         frozenset({"policy_version_length", "page_context_policy_version"}),
         ("impressions/policy_version_length", "observed 10000000, allowed ≤ 128"),
         note="on one card, so its page also holds two policy versions"),
    Kind("impression_id_1mb", "values", frame_kind(_long("impression_id", 1_000_000)), REJECTED,
         frozenset({"impression_id_length"}), ("impressions/impression_id_length", "observed 1000000, allowed ≤ 128")),
    Kind("request_id_1mb", "values", frame_kind(_long("request_id", 1_000_000, page=True)), REJECTED,
         frozenset({"request_id_length"}), ("impressions/request_id_length", "observed 1000000, allowed ≤ 128")),
    Kind("impression_id_empty", "values", frame_kind(setv("impression_id", "")), REJECTED,
         frozenset({"impression_id_not_empty"}), ("impressions/impression_id_not_empty", "observed 1", "'row': 3")),
    Kind("request_id_empty", "values", frame_kind(setv("request_id", "", lambda df: _page_rows(df, 1))), REJECTED,
         frozenset({"request_id_not_empty"}), ("impressions/request_id_not_empty", "observed 48")),
    Kind("policy_version_empty", "values", frame_kind(setv("policy_version", "")), REJECTED,
         frozenset({"policy_version_not_empty", "page_context_policy_version"}), ("impressions/policy_version_not_empty",)),
    Kind("explanation_id_1kb", "values", frame_kind(_long("explanation_id", 1000)), REJECTED,
         frozenset({"explanation_id_length", "explanation_known"}),
         ("impressions/explanation_id_length", "observed 1000, allowed ≤ 128")),
]


# ---------------------------------------------------------------------------- ε-greedy semantics
def _explored_at_one_minus_eps(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    g = _greedy(df)
    df.loc[g, "propensity"] = 1 - df.loc[g, "epsilon"]
    df.loc[g, "explored"] = True
    return df


def _page_propensity(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    return df.assign(propensity=df.groupby("request_id")["propensity"].transform("prod"))


def _explored_on_a_few_greedy(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    df.loc[_greedy(df), "explored"] = True
    return df


SEMANTIC_KINDS = [
    Kind("explored_greedy_card_at_1_minus_eps", "semantics", frame_kind(_explored_at_one_minus_eps), REJECTED,
         frozenset({"explored_matches_propensity"}), ("impressions/explored_matches_propensity", "'propensity': 0.9"),
         note="explored=True on greedy cards with p = 1−ε exactly (~0.9): no number of choices gives it"),
    Kind("greedy_flag_on_explored_card", "semantics",
         frame_kind(setv("explored", False, _explored_others)), REJECTED, frozenset({"explored_matches_propensity"}),
         ("impressions/explored_matches_propensity", "'explored': false"),
         note="explored=False (the greedy choice) on cards with p ≤ ε/2: a greedy card has p > 1−ε"),
    Kind("explored_propensity_in_the_gap", "semantics",
         frame_kind(setv("propensity", 0.5, _explored_others)), REJECTED, frozenset({"explored_matches_propensity"}),
         ("impressions/explored_matches_propensity", "'propensity': 0.5"), note="ε/2 < p ≤ 1−ε: neither branch gives it"),
    Kind("explored_card_just_above_eps", "semantics",
         frame_kind(lambda df, b: setv("propensity", df["epsilon"] + 0.01, _explored_others)(df, b)), REJECTED,
         frozenset({"explored_matches_propensity"}), ("impressions/explored_matches_propensity", "'propensity': 0.11"),
         note="a non-greedy explored card has p = ε/n ≤ ε/2 (n ≥ 2); 0.11 under ε = 0.1 is neither branch"),
    Kind("greedy_card_just_below_1_minus_eps", "semantics",
         frame_kind(lambda df, b: setv("propensity", 0.89, _greedy)(df, b)), REJECTED,
         frozenset({"explored_matches_propensity"}), ("impressions/explored_matches_propensity", "'propensity': 0.89"),
         note="a greedy card (explored=False) has p = 1−ε+ε/n > 1−ε"),
    Kind("propensity_one_on_every_card", "semantics", frame_kind(lambda df, b: df.assign(propensity=1.0)), REJECTED,
         frozenset({"propensity_one_only_when_one_choice_left"}),
         ("impressions/propensity_one_only_when_one_choice_left", "'propensity': 1.0"),
         note="p = 1 under ε = 0.1 claims one choice left, impossible at a shelf's first cards"),
    Kind("page_propensity_on_every_card", "semantics", frame_kind(_page_propensity), REJECTED,
         frozenset({"explored_matches_propensity"}), ("impressions/explored_matches_propensity",),
         note="the page's product of propensities logged on each card: greedy cards far below 1−ε"),
    Kind("explored_flag_inverted", "semantics", frame_kind(lambda df, b: df.assign(explored=~df["explored"])),
         REJECTED, frozenset({"explored_matches_propensity", "explored_share"}),
         ("impressions/explored_matches_propensity", "impressions/explored_share")),
    Kind("exploring_logged_under_eps_zero", "semantics",
         frame_kind(setv("epsilon", 0.0, lambda df: _page_rows(df, 4))), REJECTED,
         frozenset({"explored_matches_propensity"}), ("impressions/explored_matches_propensity", "'epsilon': 0.0"),
         note="ε = 0 on a page with explored cards and greedy cards below 1"),
    Kind("epsilon_logged_too_low", "semantics", frame_kind(lambda df, b: df.assign(epsilon=0.01)), REJECTED,
         frozenset({"explored_matches_propensity", "explored_share"}),
         ("impressions/explored_matches_propensity", "impressions/explored_share"),
         note="ε = 0.01 logged by a policy exploring at 0.1"),
    Kind("epsilon_logged_too_high", "semantics", frame_kind(lambda df, b: df.assign(epsilon=0.3)), REJECTED,
         frozenset({"explored_share", "propensity_one_only_when_one_choice_left"}), ("impressions/explored_share",),
         note="ε = 0.3 logged by a policy exploring at 0.1: the greedy p ≈ 0.9 then claims one choice left"),
    Kind("explored_on_every_card", "semantics", frame_kind(lambda df, b: df.assign(explored=True)), REJECTED,
         frozenset({"explored_share"}), ("impressions/explored_share", "observed 1"),
         note="each row possible (the draw can hit the greedy card); the share is not"),
    Kind("no_exploration_logged", "semantics", frame_kind(lambda df, b: df.assign(explored=False)), REJECTED,
         frozenset({"explored_share", "explored_matches_propensity"}), ("impressions/explored_share", "observed 0")),
    Kind("explored_on_three_greedy_cards", "semantics", frame_kind(_explored_on_a_few_greedy), ACCEPTED, frozenset(),
         note="undetectable by design: explored=True on a greedy card (p > 1−ε) happens with probability ε/n"),
]


# ---------------------------------------------------------------------------- page structure
def _dup_slot(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    df.loc[_slot(df, 0, 0, 1), "position"] = 0
    return df


def _gap(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    return df.drop(index=_slot(df, 0, 0, 3))


def _add_cards(df: pd.DataFrame, base: Base, shelf: int, position: int | None) -> pd.DataFrame:
    """Copy shelf 5 of page 0 (or its last card) to a new shelf / position, with new items and ids."""
    rows = _page_rows(df, 0)
    src = df.loc[rows]
    src = src[src["shelf"] == 5] if position is None else src[(src["shelf"] == 2) & (src["position"] == 7)]
    new = src.copy()
    new["shelf"] = shelf if position is None else 2
    if position is not None:
        new["position"] = position
    new["item_id"] = _new_items(df, base, new.index)
    new["impression_id"] = new["impression_id"] + "-added"
    return pd.concat([df, new], ignore_index=True)


def _split_page(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    rows = _page_rows(df, 0)
    tail = rows[(df.loc[rows, "shelf"] >= 3).to_numpy()]
    df["request_id"] = df["request_id"].astype(object)
    df.loc[tail, "request_id"] = df.loc[tail, "request_id"] + "-b"
    df["request_id"] = df["request_id"].astype("string")
    return df


def _context_changes_within_page(column: str, value: Any):
    def f(df: pd.DataFrame, base: Base) -> pd.DataFrame:
        df.loc[_slot(df, 3, 4, 2), column] = value(df.loc[_slot(df, 3, 4, 2), column])
        return df
    return f


PAGE_KINDS = [
    Kind("duplicate_slot", "page", frame_kind(_dup_slot), REJECTED, frozenset({"page_slots_unique", "page_slots_contiguous"}),
         ("impressions/page_slots_unique",)),
    Kind("slot_gap", "page", frame_kind(_gap), REJECTED, frozenset({"page_slots_contiguous"}),
         ("impressions/page_slots_contiguous",)),
    Kind("seventh_shelf", "page", frame_kind(lambda df, b: _add_cards(df, b, 6, None)), REJECTED, frozenset({"shelf_range"}),
         ("impressions/shelf_range", "'shelf': 6", "allowed [0, 5]"), note="more shelves than policy.shelves"),
    Kind("ninth_card_on_a_shelf", "page", frame_kind(lambda df, b: _add_cards(df, b, 0, 8)), REJECTED,
         frozenset({"position_range"}), ("impressions/position_range", "'position': 8", "allowed [0, 7]")),
    Kind("shelves_numbered_from_one", "page",
         frame_kind(lambda df, b: setv("shelf", df.loc[_page_rows(df, 0), "shelf"] + 1, lambda d: _page_rows(d, 0))(df, b)),
         REJECTED, frozenset({"shelf_range", "page_slots_contiguous"}), ("impressions/page_slots_contiguous",)),
    Kind("item_twice_on_a_page", "page",
         frame_kind(lambda df, b: setv("item_id", df.loc[_slot(df, 0, 0, 0), "item_id"], lambda d: _slot(d, 0, 3, 3))(df, b)),
         REJECTED, frozenset({"page_items_distinct"}), ("impressions/page_items_distinct",)),
    Kind("impression_id_twice", "page",
         frame_kind(lambda df, b: setv("impression_id", df.loc[df.index[0], "impression_id"], lambda d: d.index[1])(df, b)),
         REJECTED, frozenset({"impression_id_unique"}), ("impressions/impression_id_unique",)),
    Kind("page_split_over_two_request_ids", "page", frame_kind(_split_page), REJECTED,
         frozenset({"page_slots_contiguous"}), ("impressions/page_slots_contiguous",)),
    Kind("card_moved_to_another_page", "page",
         frame_kind(lambda df, b: setv("request_id", df["request_id"].unique()[1], lambda d: _slot(d, 0, 5, 7))(df, b)),
         REJECTED, frozenset({"page_slots_unique", "page_slots_contiguous", "page_items_distinct", "page_context_user_id",
                              "page_context_timestamp", "page_context_platform", "page_context_region"}),
         ("impressions/page_slots_contiguous", "impressions/page_context_user_id"),
         note="the moved card brings its user, time and context onto the other page (and its item is there already)"),
    Kind("user_changes_within_a_page", "page",
         frame_kind(_context_changes_within_page("user_id", lambda u: u + 1)), REJECTED,
         frozenset({"page_context_user_id"}), ("impressions/page_context_user_id",),
         note="a page view is one user's: a second user on it means merged pages"),
    Kind("timestamp_changes_within_a_page", "page",
         frame_kind(_context_changes_within_page("timestamp", lambda t: t + pd.Timedelta(hours=3))), REJECTED,
         frozenset({"page_context_timestamp"}), ("impressions/page_context_timestamp",)),
    Kind("platform_changes_within_a_page", "page",
         frame_kind(_context_changes_within_page("platform", lambda p: "web" if p != "web" else "ios")), REJECTED,
         frozenset({"page_context_platform"}), ("impressions/page_context_platform",)),
    Kind("policy_version_changes_within_a_page", "page",
         frame_kind(_context_changes_within_page("policy_version", lambda p: "other-policy")), REJECTED,
         frozenset({"page_context_policy_version"}), ("impressions/page_context_policy_version",)),
    Kind("whole_batch_twice", "page", frame_kind(lambda df, b: pd.concat([df, df], ignore_index=True)), REJECTED,
         frozenset({"impression_id_unique", "page_items_distinct", "page_slots_unique", "page_slots_contiguous"}),
         ("impressions/impression_id_unique",)),
    Kind("two_identical_files_in_a_folder", "page",
         folder(lambda b, d: (write(b.frame, d / "part-0.parquet"), write(b.frame, d / "part-1.parquet"))), REJECTED,
         frozenset({"impression_id_unique", "page_items_distinct", "page_slots_unique", "page_slots_contiguous"}),
         ("impressions/impression_id_unique",)),
    Kind("card_repeated_with_flipped_reward", "page",
         frame_kind(lambda df, b: pd.concat([df, df.iloc[[5]].assign(reward=1 - df["reward"].iloc[5])], ignore_index=True)),
         REJECTED, frozenset({"impression_id_unique", "page_items_distinct", "page_slots_unique", "page_slots_contiguous"}),
         ("impressions/impression_id_unique",), note="a contradiction inside one batch"),
    Kind("stream_seconds_on_unstreamed_card", "page",
         frame_kind(setv("stream_seconds", 120.0, lambda df: df.index[df["reward"] == 0][:2])), REJECTED,
         frozenset({"stream_seconds_only_when_streamed"}), ("impressions/stream_seconds_only_when_streamed", "120"),
         note="reward 0 with a stream duration: the card was streamed or it was not"),
]


# ---------------------------------------------------------------------------- timestamp windows
def _shift(delta: pd.Timedelta, rows: Callable[[pd.DataFrame], Any] | None = None):
    def f(df: pd.DataFrame, base: Base) -> pd.DataFrame:
        target = df.index if rows is None else rows(df)
        df.loc[target, "timestamp"] = df.loc[target, "timestamp"] + delta
        return df
    return f


def _future_page(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    df.loc[_page_rows(df, 0), "timestamp"] = base.now + pd.Timedelta(days=1)
    return df


WINDOW_KINDS = [
    Kind("one_page_in_the_future", "windows", frame_kind(_future_page),
         REJECTED, frozenset({"timestamp_not_future"}), ("impressions/timestamp_not_future", "allowed ≤")),
    Kind("whole_batch_in_the_future", "windows", frame_kind(_shift(pd.Timedelta(days=30))), REJECTED,
         frozenset({"timestamp_not_future"}), ("impressions/timestamp_not_future",)),
    Kind("before_not_before", "windows",
         frame_kind(lambda df, b: _shift(pd.Timestamp("2019-06-01", tz="UTC") - df["timestamp"].min())(df, b)),
         REJECTED, frozenset({"timestamp_window"}), ("impressions/timestamp_window", "2020-01-01")),
    Kind("span_too_long", "windows", frame_kind(_shift(pd.Timedelta(days=-30), lambda df: _page_rows(df, 0))),
         REJECTED, frozenset({"timestamp_window"}), ("impressions/timestamp_window", "allowed ≥")),
]


# ---------------------------------------------------------------------------- shares
def _more_explored(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    idx = df.index[~df["explored"]]
    df.loc[rng.choice(idx, size=len(df) // 20, replace=False), "explored"] = True
    return df


def _more_streams(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    idx = df.index[df["reward"] == 0]
    hit = rng.choice(idx, size=len(df) // 5, replace=False)
    df.loc[hit, "reward"] = 1
    df.loc[hit, "stream_seconds"] = 60.0
    return df


SHARE_KINDS = [
    Kind("explored_share_5pct_above_eps", "shares", frame_kind(_more_explored), REJECTED, frozenset({"explored_share"}),
         ("impressions/explored_share", "allowed |explored −")),
    Kind("stream_rate_zero", "shares", frame_kind(lambda df, b: df.assign(reward=0, stream_seconds=np.nan)), REJECTED,
         frozenset({"stream_rate_drift"}), ("impressions/stream_rate_drift", "observed 0, allowed [")),
    Kind("stream_rate_all_ones", "shares", frame_kind(lambda df, b: df.assign(reward=1)), REJECTED,
         frozenset({"stream_rate_drift"}), ("impressions/stream_rate_drift", "observed 1, allowed [")),
    Kind("stream_rate_plus_20_points", "shares", frame_kind(_more_streams), REJECTED, frozenset({"stream_rate_drift"}),
         ("impressions/stream_rate_drift",)),
]


# ---------------------------------------------------------------------------- the accepted store
def _same_name_same_bytes(base: Base, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(base.accepted_file, out / ACCEPTED_NAME))


def _flipped(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    pages = df["request_id"].unique()[:20]
    bad = df[df["request_id"].isin(pages)].copy()
    bad["reward"] = 1 - bad["reward"]
    bad["stream_seconds"] = np.where(bad["reward"] == 1, 60.0, np.nan)
    return bad


def _accepted_page_mixed_in(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    return pd.concat([df, base.accepted.loc[_page_rows(base.accepted, 7)]], ignore_index=True)


DUP = frozenset({"impressions_not_already_accepted", "pages_not_already_accepted"})
STORE_KINDS = [
    Kind("exact_repeat_same_file", "duplicates", _same_name_same_bytes, NO_OP, frozenset(), ("passed validation",),
         note="the accepted file again (same name and bytes): a no-op that says 'already-ingested'"),
    Kind("same_batch_under_another_name", "duplicates", frame_kind(lambda df, b: df, source="accepted"), REJECTED, DUP,
         ("impressions/impressions_not_already_accepted", "4,800 of 4,800 rows"),
         note="the content digest covers file names, so a renamed copy is rejected naming the duplicates"),
    Kind("same_batch_as_folder_of_parts", "duplicates", folder(lambda b, d: _two_parts(b.accepted, d)), REJECTED, DUP,
         ("impressions/pages_not_already_accepted",)),
    Kind("same_batch_as_csv", "duplicates", frame_kind(lambda df, b: df, fmt="csv", source="accepted"), REJECTED, DUP,
         ("impressions/impressions_not_already_accepted",)),
    Kind("flipped_rewards_on_accepted_impressions", "contradictions", frame_kind(_flipped, source="accepted"), REJECTED,
         DUP | {"rewards_not_contradicting_accepted", "stream_rate_drift"},
         ("impressions/rewards_not_contradicting_accepted", "960 of 960 rows", "'impression_id': 'sim3-00000000-0-0'"),
         note="the report names the contradicted impression ids; 20 whole pages flipped also move the stream rate"),
    Kind("subset_of_accepted_pages", "duplicates",
         frame_kind(lambda df, b: df[df["request_id"].isin(df["request_id"].unique()[::3])], source="accepted"),
         REJECTED, DUP, ("impressions/pages_not_already_accepted",)),
    Kind("accepted_pages_under_new_impression_ids", "duplicates",
         frame_kind(lambda df, b: df.assign(impression_id=df["impression_id"] + "-new"), source="accepted"), REJECTED,
         frozenset({"pages_not_already_accepted"}), ("impressions/pages_not_already_accepted",)),
    Kind("accepted_impressions_under_new_page_ids", "duplicates",
         frame_kind(lambda df, b: df.assign(request_id=df["request_id"] + "-new"), source="accepted"), REJECTED,
         frozenset({"impressions_not_already_accepted"}), ("impressions/impressions_not_already_accepted",)),
    Kind("one_accepted_page_mixed_into_a_new_batch", "duplicates", frame_kind(_accepted_page_mixed_in), REJECTED, DUP,
         ("impressions/pages_not_already_accepted", "48 of")),
]


# ---------------------------------------------------------------------------- valid controls
def _row_split(params: dict) -> dict:
    p = copy.deepcopy(params)
    p["validation"]["row_split"] = {"enabled": True, "max_share": 0.01}
    return p


def _other_tz(df: pd.DataFrame, base: Base) -> pd.DataFrame:
    return df.assign(timestamp=df["timestamp"].dt.tz_convert("Asia/Tokyo"))


CONTROL_KINDS = [
    Kind("valid_batch", "controls", frame_kind(lambda df, b: df), ACCEPTED, frozenset()),
    Kind("valid_as_csv", "controls", frame_kind(lambda df, b: df, fmt="csv"), ACCEPTED, frozenset()),
    Kind("valid_as_jsonl", "controls", frame_kind(lambda df, b: df, fmt="jsonl"), ACCEPTED, frozenset()),
    Kind("valid_folder_of_parts", "controls", folder(lambda b, d: _two_parts(b.frame, d)), ACCEPTED, frozenset()),
    Kind("valid_rows_shuffled", "controls", frame_kind(lambda df, b: df.sample(frac=1.0, random_state=3)), ACCEPTED,
         frozenset()),
    Kind("valid_without_stream_seconds", "controls", frame_kind(lambda df, b: df.drop(columns=["stream_seconds"])),
         ACCEPTED, frozenset(), note="stream_seconds is optional"),
    Kind("valid_timestamps_in_another_zone", "controls", frame_kind(_other_tz), ACCEPTED, frozenset(),
         note="the same instants written with +09:00; read as UTC"),
    Kind("accepted_cards_as_new_page_views", "controls",
         frame_kind(lambda df, b: df.assign(impression_id=df["impression_id"] + "-n", request_id=df["request_id"] + "-n"),
                    source="accepted"), ACCEPTED, frozenset(), note="new ids throughout: the store check is exact"),
    Kind("one_unknown_item_split_off", "controls", frame_kind(setv("item_id", 10**9, lambda df: df.index[100])), SPLIT,
         frozenset({"item_known"}), ("impressions/item_known",), params=_row_split,
         note="with validation.row_split the failing page goes to quarantine, the rest is accepted"),
]


KINDS: list[Kind] = (UNREADABLE_KINDS + SCHEMA_KINDS + VALUE_KINDS + SEMANTIC_KINDS + PAGE_KINDS + WINDOW_KINDS
                     + SHARE_KINDS + STORE_KINDS + CONTROL_KINDS)


# ---------------------------------------------------------------------------- running
def build_base(source: Path, work: Path, accepted_pages: int = 100, new_pages: int = 200) -> Base:
    """A store holding ``accepted_pages`` pages of the simulated batch and a valid batch of the next ``new_pages``."""
    from bartops.config import Params, read_params_file
    from bartops.validation import ingest
    from bartops.validation.suites import reference_stream_rate

    good = pd.read_parquet(Path(source) / SOURCE_BATCH)
    pages = good["request_id"].unique()
    accepted = good[good["request_id"].isin(pages[:accepted_pages])].reset_index(drop=True)
    frame = good[good["request_id"].isin(pages[accepted_pages: accepted_pages + new_pages])].reset_index(drop=True)
    params = read_params_file(ROOT / "params.yaml")
    params["validation"]["stream_rate"].update(reference_stream_rate(good))
    params["validation"]["row_split"]["enabled"] = False
    params["validation"]["remove_accepted_source"] = False
    now = good["timestamp"].max().ceil("D") + pd.Timedelta(hours=1)
    accepted_file = write(accepted, Path(work) / "accepted-src" / ACCEPTED_NAME)
    store = Path(work) / "store"
    report = ingest(accepted_file, source, Path(work) / "q", Params.from_mapping(params), impressions_dir=store, now=now)
    if report.decision != ACCEPTED:
        raise RuntimeError(f"the corpus base did not validate: {report.failure_message()}")
    items = pd.read_parquet(Path(source) / "items.parquet", columns=["item_id"])["item_id"].to_numpy(np.int64)
    return Base(Path(source), frame, accepted, accepted_file, store, params, now, np.sort(items))


@dataclass
class Outcome:
    """What validation said about one kind, and what the store gained."""

    kind: Kind
    decision: str
    checks: frozenset[str]
    message: str
    added_rows: int  # rows the store gained
    duplicate_ids: int  # impression ids stored more than once afterwards
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def fingerprint(path: Path) -> dict[str, str]:
    """Relative name → sha256 of each file under ``path``, links followed (a symlinked batch is
    quarantined as its link, which still reads as the same bytes)."""
    import hashlib

    path = Path(path)
    if not path.exists():
        return {}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_kind(kind: Kind, base: Base, work: Path) -> Outcome:
    """Make the kind's batch under ``work`` and ingest it against a copy of the store; compare with the record."""
    from bartops.config import Params
    from bartops.validation import ingest

    store = Path(work) / "store"
    shutil.copytree(base.store, store)
    before = sum(len(pd.read_parquet(f, columns=["impression_id"])) for f in store.glob("*.parquet"))
    path = kind.make(base, Path(work) / "incoming")
    before_files, outside = fingerprint(path), fingerprint(Path(work) / "elsewhere")
    params = kind.params(base.params) if kind.params else base.params
    report = ingest(path, base.data_dir, Path(work) / "quarantine", Params.from_mapping(params), impressions_dir=store,
                    now=base.now)
    ids = pd.concat([pd.read_parquet(f, columns=["impression_id"]) for f in store.glob("*.parquet")])["impression_id"]
    observed = frozenset({report.error_kind} if report.error_kind else {e.check for e in report.failed})
    message = report.failure_message()
    out = Outcome(kind, report.decision, observed, message, len(ids) - before, int(ids.duplicated().sum()))
    if report.decision != kind.verdict:
        out.problems.append(f"verdict: expected {kind.verdict!r}, observed {report.decision!r}")
    if observed != kind.checks:
        out.problems.append(f"checks: expected {sorted(kind.checks)}, observed {sorted(observed)}")
    quoted = message.replace('"', "'")  # example rows are JSON: reasons quote with '
    out.problems += [f"reason: {r!r} not in the report" for r in kind.reason if r not in quoted]
    if kind.verdict in (REJECTED, UNREADABLE, NO_OP) and out.added_rows:
        out.problems.append(f"store: {out.added_rows} rows added by a {kind.verdict} batch")
    if kind.verdict == SPLIT and report.split and out.added_rows != report.split.get("kept_rows"):
        out.problems.append(f"store: {out.added_rows} rows added, expected the {report.split.get('kept_rows')} kept")
    if fingerprint(Path(work) / "elsewhere") != outside:  # what a link points to is never moved or changed
        out.problems.append("link targets outside the batch changed")
    if len(message) > 20_000:  # long values are cut in the message, never echoed
        out.problems.append(f"report: failure message of {len(message):,} characters")
    for e in report.failed:  # row and page checks name their counts and a few example rows
        if e.unexpected_count is not None and not (e.unexpected_count >= 1 and e.examples):
            out.problems.append(f"report: {e.check} failed with {e.unexpected_count} rows and {len(e.examples)} examples")
    if kind.verdict in (REJECTED, UNREADABLE, SPLIT):  # the batch moved whole, unchanged, beside its report
        q = Path(report.quarantine_path or "/nonexistent")
        if not (q / "report.json").exists():
            out.problems.append(f"quarantine: no report.json in {q}")
        moved = fingerprint(q / path.name)
        if moved != before_files or os.path.lexists(path):
            out.problems.append(f"quarantine: batch not moved whole and unchanged ({len(before_files)} entries before, "
                                f"{len(moved)} in {q}; source left: {os.path.lexists(path)})")
    if out.duplicate_ids:
        out.problems.append(f"store: {out.duplicate_ids} impression ids stored twice")
    return out


def summary_table(outcomes: list[Outcome]) -> str:
    """Markdown table per group: kinds tried, rejected with the named reason, no-ops, accepted, bad rows stored."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.kind.group, []).append(o)
    head = ("| group | kinds tried | rejected with the named reason | no-op repeat | accepted (valid or split) "
            "| duplicate or impossible rows accepted | mismatches |")
    lines = [head, "|---|---|---|---|---|---|---|"]

    def bad_rows(o: Outcome) -> int:  # rows a rejected / no-op kind added, and ids stored twice
        return (o.added_rows if o.kind.verdict in (REJECTED, UNREADABLE, NO_OP) else 0) + o.duplicate_ids

    for g, os_ in [*groups.items(), ("all", outcomes)]:
        row = [len(os_),
               sum(o.ok and o.kind.verdict in (REJECTED, UNREADABLE) for o in os_),
               sum(o.ok and o.kind.verdict == NO_OP for o in os_),
               sum(o.ok and o.kind.verdict in (ACCEPTED, SPLIT) for o in os_),
               sum(bad_rows(o) for o in os_),
               sum(not o.ok for o in os_)]
        lines.append(f"| {'**all**' if g == 'all' else g} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Simulate the small world, run every kind, print mismatches and the table; exit 1 on a mismatch."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import SHAPE, SMALL  # noqa: E402

    from bartops.sim import World, simulate
    from bartops.sim.store import write_simulation

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    names = set(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim = simulate(World.generate(SMALL, seed=3), SMALL.impressions, seed=3, **SHAPE)
        write_simulation(sim, tmp / "data", batch_name="sim-seed3")
        base = build_base(tmp / "data", tmp / "base")
        outcomes = []
        for i, kind in enumerate(k for k in KINDS if not names or k.name in names):
            o = run_kind(kind, base, tmp / f"k{i}")
            outcomes.append(o)
            status = "ok" if o.ok else "MISMATCH: " + "; ".join(o.problems)
            print(f"{kind.group:14s} {kind.name:45s} {o.decision:17s} {sorted(o.checks)} {status}", flush=True)
            if not o.ok:
                print("    " + o.message[:600].replace("\n", "\n    "))
        print()
        print(summary_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
