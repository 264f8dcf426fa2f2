"""Read ``params.yaml`` (one file for DVC stages and Prefect flows)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

PARAMS_ENV = "BARTOPS_PARAMS"


def params_path(path: str | Path | None = None) -> Path:
    """The params file: the argument, else $BARTOPS_PARAMS, else ./params.yaml."""
    return Path(path or os.environ.get(PARAMS_ENV) or "params.yaml")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Parsed params.yaml; raises FileNotFoundError / ValueError naming the file."""
    p = params_path(path)
    if not p.exists():
        raise FileNotFoundError(f"params file {p} not found (set {PARAMS_ENV} or run from the project root)")
    with open(p, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"params file {p} must hold a mapping, got {type(data).__name__}")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One step's parameters; raises KeyError naming the missing section."""
    if name not in params or not isinstance(params[name], dict):
        raise KeyError(f"params.yaml has no '{name}:' section")
    return params[name]


def reject_unknown(cls: type, values: Mapping[str, Any], what: str) -> None:
    """Raise a ``ValueError`` naming the keys of ``values`` that are not fields of the dataclass ``cls``
    (``what``: e.g. "gate parameter", the words the message uses for one key)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class Paths:
    """``params.yaml`` → ``paths:``: where every step reads and writes (relative to the project root)."""

    data: Path = Path("data")  # raw data, versioned by data.dvc
    incoming: Path = Path("data/incoming")  # new batches land here before validation
    impressions: Path = Path("build/impressions")  # validated impression batches (the training data)
    build: Path = Path("build")  # stage outputs (features, models, reports)
    quarantine: Path = Path("quarantine")  # rejected batches, whole and unchanged, beside their reports
    registry: Path = Path("registry")  # the file-based model registry
    serving_logs: Path = Path("serving-logs")  # impression and feedback files written by the service

    @staticmethod
    def from_params(params: dict[str, Any] | None) -> "Paths":
        """The ``paths:`` section (missing keys take the defaults above); unknown keys raise naming them."""
        values = (params or {}).get("paths") or {}
        if not isinstance(values, dict):
            raise ValueError(f"params.yaml 'paths:' must be a mapping of names to folders, got {values!r}")
        reject_unknown(Paths, values, "paths key")
        bad = sorted(k for k, v in values.items() if not isinstance(v, (str, os.PathLike)) or not str(v))
        if bad:
            raise ValueError(f"params.yaml paths {bad} must be non-empty folder names")
        return Paths(**{k: Path(v) for k, v in values.items()})
