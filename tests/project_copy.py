"""A fresh copy of the tracked project in a temporary folder, with small parameters."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL_SIM = dict(impressions=20_000, users=500, artists=80, items=1000, genres=8, moods=4)


def copy_project(dest: Path, **param_overrides: dict) -> Path:
    """Copy every tracked file except data.dvc (it versions the default-size data) and shrink params."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if f != "data.dvc" and src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sim"].update(SMALL_SIM)
    params["reward"]["num_boost_round"] = 40
    params["ope"]["n_boot"] = 200
    for section, values in param_overrides.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest
