"""Read ``params.yaml`` (one file for DVC stages and Prefect flows)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
