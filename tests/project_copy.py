"""A fresh copy of the tracked project in a temporary folder, with small parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project root holds the bench package
from bench.common import copy_tracked_files  # noqa: E402
SMALL_SIM = dict(impressions=20_000, users=500, artists=80, items=1000, genres=8, moods=4)


def copy_project(dest: Path, **param_overrides: dict) -> Path:
    """Copy every tracked file except data.dvc (it versions the default-size data) and shrink params."""
    copy_tracked_files(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sim"].update(SMALL_SIM)
    params["reward"]["num_boost_round"] = 40
    params["ope"]["n_boot"] = 200
    for section, values in param_overrides.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest
