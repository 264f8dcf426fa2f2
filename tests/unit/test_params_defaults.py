"""One typed configuration: ``Params`` holds every section of ``params.yaml``, its code defaults equal the
file, and a wrong key or value is refused at load, naming the key and the fix.

A section read without ``params.yaml`` (a library call, a test, a notebook) then behaves exactly as the
pipeline does, and a key added to ``params.yaml`` without a typed field (or the reverse) is caught.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from bartops.config import SECTION_TYPES, Params, load_params, read_params_file

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
NOT_IN_YAML = {("serving", "log_dir")}  # from paths.serving_logs


def _plain(value):
    """A default as YAML would hold it (dataclasses as mappings, tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def test_every_section_of_params_yaml_is_typed():
    assert set(PARAMS) == {f.name for f in dataclasses.fields(Params)}, \
        f"params.yaml sections {sorted(PARAMS)} vs Params fields {[f.name for f in dataclasses.fields(Params)]}"


@pytest.mark.parametrize("name", sorted(SECTION_TYPES))
def test_code_defaults_equal_params_yaml(name):
    default, section = _plain(getattr(Params(), name)), PARAMS[name]

    def differences(code, yaml_value, where):
        if isinstance(code, dict) and isinstance(yaml_value, dict):
            out = [d for k in yaml_value if k in code for d in differences(code[k], yaml_value[k], f"{where}.{k}")]
            out += [f"{where}.{k} has no value in params.yaml" for k in code
                    if k not in yaml_value and (name, k) not in NOT_IN_YAML]
            return out
        return [] if code == yaml_value else [f"{where}: code {code!r} vs params.yaml {yaml_value!r}"]

    differ = differences(default, section, name)
    assert not differ, f"code defaults differ from params.yaml: {differ}"


def test_the_defaults_are_params_yaml_and_load_once():
    assert load_params(ROOT / "params.yaml") == Params(), "Params() differs from load_params(params.yaml)"


@pytest.mark.parametrize("name", sorted(SECTION_TYPES))
def test_unknown_keys_are_refused_naming_the_key_and_the_fix(name):
    key = next(iter(PARAMS[name]))
    raw = read_params_file(ROOT / "params.yaml")
    raw[name][key + "x"] = raw[name][key]
    with pytest.raises(ValueError) as err:
        Params.from_mapping(raw)
    words = (f"unknown key(s) '{key}x' (did you mean '{key}'?) in '{name}:'")
    assert words in str(err.value), f"message does not name the key, the section and the fix: {err.value}"


@pytest.mark.parametrize("path, value, words", [
    (("policy", "epsilon_head"), 1.5, "policy.epsilon_head must lie in [0.0, 1.0], got 1.5"),
    (("ops", "service_port"), 70000, "ops.service_port must be a TCP port"),
    (("validation", "row_split", "max_share"), -0.1, "validation.row_split.max_share must lie in"),
    (("validation", "stream_rate", "min_reference_pages"), 0, "validation.stream_rate.min_reference_pages must be"),
    (("validation", "window", "not_before"), "yesterday", "validation.window.not_before must be an ISO time"),
    (("reward", "clip"), 0.5, "reward.clip must be at least 1"),
    (("scale", "backend"), "spark", "scale.backend must be one of"),
    (("seed",), -1, "seed must be a non-negative integer"),
])
def test_values_out_of_range_are_refused_at_load_naming_the_key(tmp_path, path, value, words):
    raw = read_params_file(ROOT / "params.yaml")
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as err:
        load_params(bad)
    assert words in str(err.value) and str(bad) in str(err.value), \
        f"message does not name the file and {'.'.join(path)}: {err.value}"


def test_an_unknown_section_and_a_section_that_is_not_a_mapping_are_refused():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'rewards' \(did you mean 'reward'\?\) in 'params.yaml:'"):
        Params.from_mapping({"rewards": {}})
    with pytest.raises(ValueError, match=r"'policy:' must be a mapping of keys to values, got 6"):
        Params.from_mapping({"policy": 6})


def test_the_command_line_reports_an_invalid_params_file_in_one_line(tmp_path):
    import subprocess
    import sys

    raw = read_params_file(ROOT / "params.yaml")
    raw["serving"]["wokers"] = 2
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "bartops.cli", "features", "--params", str(bad)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "did you mean 'workers'?" in lines[0] and str(bad) in lines[0], \
        f"exit {res.returncode}, stderr: {res.stderr[-2000:]}"
    assert not (tmp_path / "build").exists(), "the command wrote something before refusing the params"
