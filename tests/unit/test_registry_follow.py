"""RegistryFollower: the service's swap to a new production version, and its refusals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bartops.registry import Registry
from bartops.serving.engine import BundleLoadError
from bartops.serving.follow import RegistryFollower


@dataclass
class StubEngine:
    """Stands for a loaded PageEngine: only its version matters to the follower."""

    version: str


def loader(path: Path) -> StubEngine:
    policy = json.loads((path / "policy.json").read_text())
    if policy.get("corrupt"):
        raise BundleLoadError(f"cannot load policy bundle {path}: model/model.ubj is truncated")
    return StubEngine(policy["version"])


def bundle(tmp: Path, name: str, corrupt: bool = False) -> Path:
    d = tmp / "bundles" / name
    (d / "model").mkdir(parents=True)
    (d / "features").mkdir()
    (d / "policy.json").write_text(json.dumps({"version": name, "corrupt": corrupt}))
    return d


@pytest.fixture()
def follower(tmp_path):
    reg = Registry(tmp_path / "registry")
    for name in ("v1", "v2"):
        reg.register(bundle(tmp_path, name))
    reg.register(bundle(tmp_path, "v3-bad", corrupt=True))
    reg.promote("v1", "start")
    return RegistryFollower(reg, StubEngine("v1"), loader=loader)


def test_swaps_on_promote_and_rollback(follower):
    assert follower.poll() is None, "nothing changed, yet the follower acted"
    follower.registry.promote("v2", "better")
    event = follower.poll()
    assert event is not None and not event.error and follower.version == "v2", f"no swap to v2: {event}"
    follower.registry.rollback("worse after all")
    follower.poll()
    assert follower.version == "v1", f"rollback not followed: serving {follower.version}"
    assert [e["version"] for e in follower.status()["swaps"]] == ["v2", "v1"], follower.status()


def test_corrupt_version_is_refused_once_and_the_live_one_keeps_serving(follower):
    follower.registry.promote("v3-bad", "a broken bundle reaches production")
    event = follower.poll()
    assert follower.version == "v1", f"a corrupt version went live: {follower.version}"
    assert event is not None and "truncated" in event.error, f"refusal does not say why: {event}"
    assert follower.poll() is None, "a refused version was retried without a new promotion"
    assert [r["version"] for r in follower.status()["refusals"]] == ["v3-bad"], follower.status()
    follower.registry.promote("v2", "fixed")
    follower.poll()
    assert follower.version == "v2", f"a good version after a refusal was not followed: {follower.version}"


@pytest.mark.parametrize("pointer, expected", [
    ('{"version": "v2", "seq": 9, "stack": [', "not valid JSON"),
    ('{"version": "../../outside", "seq": 9, "stack": [], "event": {}}', "names no registered version"),
])
def test_a_broken_pointer_is_refused_naming_the_file(follower, pointer, expected):
    path = follower.registry.root / "production.json"
    path.write_text(pointer)
    event = follower.poll()
    assert follower.version == "v1", f"a broken pointer changed what is served: {follower.version}"
    assert event is not None and expected in event.error and str(path) in event.error, \
        f"refusal should name {path} and say {expected!r}: {event}"
