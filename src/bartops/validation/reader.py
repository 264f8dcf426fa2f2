"""Read an impression batch (parquet, CSV or JSON lines; one file or a folder) without surprises.

Every way a batch can be unreadable raises ``BatchReadError`` with a ``kind`` and a message that
names the problem: a missing path, a symbolic link, an empty file, corrupt parquet, a wrong text encoding, a folder
of mixed formats, missing or extra columns, or columns of the wrong type.  Nulls are kept (in
nullable dtypes) so that the Great Expectations suites can count them.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bartops.logs.schema import IMPRESSION_COLUMNS, OPTIONAL_COLUMNS

FORMATS: dict[str, str] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
                           ".ndjson": "jsonl", ".json": "jsonl"}


# python-backed strings: Great Expectations copies the frame per expectation, and taking rows of
# object arrays is far cheaper than of Arrow string arrays (about 5x on 1M rows)
_STR = pd.StringDtype(storage="python")
# repetitive text columns are dictionary-encoded (pandas categoricals): GX fingerprints the whole
# frame on every run and filters it per expectation, and codes hash and copy far faster than text
CATEGORICAL = ("request_id", "platform", "region", "explanation_id", "policy_version")


class BatchReadError(ValueError):
    """A batch cannot be read as an impression table; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Batch:
    """A batch as read: its files, format, content digest and the typed table."""

    path: Path
    files: list[Path]
    fmt: str
    digest: str
    frame: pd.DataFrame = field(repr=False)


def batch_files(path: Path) -> tuple[list[Path], str]:
    """The data files of a batch and their one format; raises BatchReadError."""
    path = Path(path)
    if path.is_symlink():
        raise BatchReadError("symlink", f"batch path {path} is a symbolic link (to {os.readlink(path)}): a batch "
                             "must be a plain file or folder (a link is quarantined as the link, never followed)")
    if not path.exists():
        raise BatchReadError("missing", f"batch path {path} does not exist")
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith((".", "_"))]
        links = sorted(p.name for p in entries if p.is_symlink())
        if links:
            raise BatchReadError("symlink", f"batch folder {path} holds symbolic link(s) {links[:5]}: a batch's "
                                 "files must be plain files in it")
        files = sorted(p for p in entries if p.is_file())
        if not files:
            raise BatchReadError("empty", f"batch folder {path} holds no data files")
    else:
        files = [path]
    unknown = [p.name for p in files if p.suffix.lower() not in FORMATS]
    if unknown:
        raise BatchReadError("format", f"unsupported file type(s) {unknown[:5]} in {path}: expected "
                             f"{sorted(set(FORMATS))}")
    formats = sorted({FORMATS[p.suffix.lower()] for p in files})
    if len(formats) > 1:
        raise BatchReadError("mixed_formats", f"batch folder {path} mixes formats {formats}: "
                             "a batch must be all parquet, all CSV or all JSON lines")
    return files, formats[0]


def digest_files(files: list[Path]) -> str:
    """SHA-256 over the files' names and bytes (the batch's identity for idempotent ingestion)."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _read_one(p: Path, fmt: str) -> pd.DataFrame:
    if p.stat().st_size == 0:
        raise BatchReadError("empty", f"{p} is an empty file")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(p).names)
            return pq.read_table(p, read_dictionary=[c for c in CATEGORICAL if c in names]).to_pandas()
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise BatchReadError("corrupt", f"{p} is not a readable parquet file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]})") from None
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchReadError("encoding", f"{p} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                             ) from None
    if not text.strip():
        raise BatchReadError("empty", f"{p} holds no rows")
    try:
        if fmt == "csv":
            str_cols = {c: "string" for c, k in IMPRESSION_COLUMNS.items() if k in ("string", "utc")}
            return pd.read_csv(io.StringIO(text), dtype=str_cols, keep_default_na=True)
        return pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_dates=False)
    except BatchReadError:
        raise
    except Exception as exc:
        raise BatchReadError("corrupt", f"{p} cannot be parsed as {fmt} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def read_batch(path: Path) -> Batch:
    """Read and type a batch; raises BatchReadError naming the problem."""
    files, fmt = batch_files(path)
    frames = []
    for p in files:
        df = _read_one(p, fmt)
        if frames and list(df.columns) != list(frames[0].columns) and set(df.columns) != set(frames[0].columns):
            raise BatchReadError("schema", f"{p.name} has columns {sorted(df.columns)}, unlike {files[0].name}")
        frames.append(df)
    raw = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if len(raw) == 0:
        raise BatchReadError("empty", f"batch {path} has no rows")
    frame = coerce_impressions(raw)
    return Batch(Path(path), files, fmt, digest_files(files), frame)


def coerce_impressions(raw: pd.DataFrame) -> pd.DataFrame:
    """Schema columns with canonical (nullable) dtypes; raises BatchReadError on missing/extra/mistyped."""
    required = [c for c in IMPRESSION_COLUMNS if c not in OPTIONAL_COLUMNS]
    missing = [c for c in required if c not in raw.columns]
    extra = [str(c) for c in raw.columns if c not in IMPRESSION_COLUMNS]
    if missing or extra:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"unexpected column(s) {extra}"] if extra else [])
        raise BatchReadError("columns", "; ".join(parts))
    out: dict[str, pd.Series] = {}
    problems = []
    for col, kind in IMPRESSION_COLUMNS.items():
        if col not in raw.columns:
            continue
        try:
            out[col] = _coerce(raw[col], kind, categorical=col in CATEGORICAL)
        except _TypeProblem as exc:
            problems.append(f"{col!r} must be {kind} ({exc})")
    if problems:
        raise BatchReadError("types", "wrong column type(s): " + "; ".join(problems))
    frame = pd.DataFrame(out)
    if "stream_seconds" not in frame:
        frame["stream_seconds"] = np.nan  # optional column: present (empty) so the suite sees one schema
    return frame


class _TypeProblem(Exception):
    pass


def _examples(s: pd.Series, bad: np.ndarray) -> str:
    return f"e.g. {[v for v in s[bad].head(3).tolist()]!r}"


def _coerce(s: pd.Series, kind: str, categorical: bool = False) -> pd.Series:
    notna = s.notna().to_numpy()
    if kind == "string":
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = s.cat.categories
            if len(cats) and not all(isinstance(c, str) for c in cats):
                raise _TypeProblem(f"found non-text categories, e.g. {list(cats[:3])!r}")
            return s.cat.rename_categories(cats.astype(_STR)) if categorical else s.astype(_STR)
        if pd.api.types.is_object_dtype(s) and notna.any():
            bad = notna & ~s.map(lambda v: isinstance(v, str)).to_numpy(bool)
            if bad.any():
                raise _TypeProblem(f"found non-text values, {_examples(s, bad)}")
        elif not (pd.api.types.is_string_dtype(s) or not notna.any()):
            raise _TypeProblem(f"found dtype {s.dtype}")
        if categorical:
            return s.astype(pd.CategoricalDtype(pd.Index(s.dropna().unique(), dtype=_STR)))
        return s.astype(_STR)
    if kind == "utc":
        if pd.api.types.is_datetime64_any_dtype(s):
            return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        if pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s):
            parsed = pd.to_datetime(s, utc=True, format="ISO8601", errors="coerce")
            bad = notna & parsed.isna().to_numpy()
            if bad.any():
                raise _TypeProblem(f"found values that are not ISO-8601 timestamps, {_examples(s, bad)}")
            return parsed
        raise _TypeProblem(f"found dtype {s.dtype}; expected ISO-8601 strings or a timestamp type")
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s):
            return s.astype("boolean") if not notna.all() else s.astype(bool)
        if pd.api.types.is_numeric_dtype(s):
            bad = notna & ~s.isin([0, 1]).to_numpy()
            if bad.any():
                raise _TypeProblem(f"found values other than 0/1, {_examples(s, bad)}")
            return s.astype("boolean") if not notna.all() else s.astype(bool)
        if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            mapping = {True: True, False: False, "true": True, "false": False, "True": True, "False": False}
            mapped = s.map(lambda v: mapping.get(v, None) if isinstance(v, (bool, str)) else None)
            bad = notna & mapped.isna().to_numpy()
            if bad.any():
                raise _TypeProblem(f"found values that are not true/false, {_examples(s, bad)}")
            return mapped.astype("boolean")
        raise _TypeProblem(f"found dtype {s.dtype}")
    if kind == "int64":
        if pd.api.types.is_bool_dtype(s):
            raise _TypeProblem("found booleans")
        if pd.api.types.is_integer_dtype(s):
            return s.astype(np.int64) if notna.all() else s.astype("Int64")
        if pd.api.types.is_float_dtype(s):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = notna & (v != np.round(v))
            if bad.any():
                raise _TypeProblem(f"found fractional values, {_examples(s, bad)}")
            return s.astype("Int64") if not notna.all() else s.astype(np.int64)
        raise _TypeProblem(f"found dtype {s.dtype}, {_examples(s, notna)}")
    if kind == "float64":
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            return s.astype(np.float64)
        raise _TypeProblem(f"found dtype {s.dtype}, {_examples(s, notna)}")
    raise AssertionError(kind)
