"""`bartops simulate` as a user runs it, with a small params file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]


def small_params(tmp_path: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sim"].update(impressions=5000, users=300, artists=60, items=800, genres=6, moods=4)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bartops.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_simulate_writes_tables_and_prints_a_summary(tmp_path):
    out = tmp_path / "data"
    res = run_cli("simulate", "--params", str(small_params(tmp_path)), "--out", str(out), "--seed", "2",
                  "--summary-json", str(tmp_path / "summary.json"))
    assert res.returncode == 0, res.stderr
    assert "true_value_oracle" in res.stdout
    for name in ("items", "users", "explanations", "history"):
        assert len(pd.read_parquet(out / f"{name}.parquet")) > 0
    logs = pd.read_parquet(out / "incoming" / "sim-seed2.parquet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["impressions"] == len(logs) and len(logs) >= 4900
    assert summary["true_value_oracle"] > summary["true_value_logging"]
    assert not list(out.rglob(".*.tmp"))


def test_simulate_rejects_bad_parameters_by_name(tmp_path):
    path = small_params(tmp_path)
    params = yaml.safe_load(path.read_text())
    params["policy"]["epsilon_head"] = 1.7
    path.write_text(yaml.safe_dump(params))
    res = run_cli("simulate", "--params", str(path), "--out", str(tmp_path / "d"))
    assert res.returncode != 0
    assert "epsilon_head" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
