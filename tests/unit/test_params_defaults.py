"""One source of truth: each typed parameter section's code defaults equal ``params.yaml``.

A section read without ``params.yaml`` (a library call, a test, a notebook) then behaves exactly as the
pipeline does, and a key added to ``params.yaml`` without a typed field (or the reverse) is caught.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from bartops.config import Paths
from bartops.features.store import FeatureParams
from bartops.gate.rules import GateParams
from bartops.ope.pipeline import OPEConfig
from bartops.reward.train import RewardParams
from bartops.serving.config import ServingConfig
from bartops.sim.world import SimParams

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
SECTIONS = {"paths": Paths, "sim": SimParams, "features": FeatureParams, "reward": RewardParams, "ope": OPEConfig,
            "gate": GateParams, "serving": ServingConfig}
NOT_IN_YAML = {("serving", "log_dir")}  # from paths.serving_logs


def _plain(value):
    """A default as YAML would hold it (dataclasses as mappings, tuples as lists)."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_code_defaults_equal_params_yaml(name):
    cls, section = SECTIONS[name], PARAMS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    default = cls()
    differ = {key: (_plain(getattr(default, key)), value) for key, value in section.items()
              if key in fields and _plain(getattr(default, key)) != value}
    assert not differ, f"{name}: code default differs from params.yaml (code, yaml): {differ}"
    missing = sorted(f for f in fields if f not in section and (name, f) not in NOT_IN_YAML)
    assert not missing, f"{name}: typed fields absent from params.yaml: {missing}"


@pytest.mark.parametrize("name", ["features", "reward", "ope", "gate", "paths"])
def test_unknown_keys_are_refused_naming_them(name):
    with pytest.raises(ValueError, match="no_such_key") as err:
        if name == "paths":
            Paths.from_params({"paths": {"no_such_key": "x"}})
        else:
            SECTIONS[name].from_dict({"no_such_key": 1})
    assert name in str(err.value) or "unknown" in str(err.value), f"message does not name the section: {err.value}"
