"""`bentoml build` from a staged context: twice in one BENTOML_HOME inside the project, and idempotent packaging."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from bartops.serving.package import (
    _bento_store,
    build_bento,
    ensure_bento,
    package_version,
    store_bundle_as_bentoml_model,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def fake_bundle(path: Path, seed: int) -> Path:
    """A bundle with the required layout; `bentoml build` packages it without loading it."""
    (path / "model").mkdir(parents=True)
    (path / "features").mkdir()
    (path / "model" / "model.ubj").write_bytes(bytes([seed]) * 64)
    (path / "features" / "manifest.json").write_text(json.dumps({"seed": seed}))
    (path / "policy.json").write_text(json.dumps({"version": f"v{seed}"}))
    return path


@pytest.fixture()
def project(tmp_path) -> Path:
    """A project with the real sources, params and bentofile, and BENTOML_HOME at its build/bentoml."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "src" / "bartops", proj / "src" / "bartops", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "bentofile.yaml"):
        shutil.copy(ROOT / name, proj / name)
    return proj


def bentos(home: Path) -> list[str]:
    return sorted(str(b.tag) for b in _bento_store(home).list())


def test_builds_twice_in_one_home_inside_the_project_and_repackaging_is_a_no_op(project, tmp_path, monkeypatch):
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    monkeypatch.delenv("BARTOPS_PARAMS", raising=False)
    scratch = tmp_path / "scratch"  # where the staged build contexts go (and must be gone afterwards)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    home = project / "build" / "bentoml"  # the default home: inside the project, as in `make demo`
    first = package_version(fake_bundle(tmp_path / "b1", 1), "v-pack-1", project)
    assert first.built and first.model_tag == "bartops-policy:v-pack-1" and Path(first.bentoml_home) == home
    again = package_version(fake_bundle(tmp_path / "b1-again", 1), "v-pack-1", project)
    assert (again.bento, again.built) == (first.bento, False)  # the same tag, nothing built
    assert bentos(home) == [first.bento]

    # a second build in the same home (what broke: the first build's tree copied into itself)
    second = build_bento(first.model_tag, project, home)
    assert second != first.bento and bentos(home) == sorted([first.bento, second])
    src = Path(_bento_store(home).get(second).path) / "src"
    inside = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert inside and all(p.startswith("bartops/") or p in ("params.yaml", "bentofile.yaml") for p in inside), inside

    # another version and another source: new builds; the first version's Bento stays found
    tag2 = store_bundle_as_bentoml_model(fake_bundle(tmp_path / "b2", 2), "v-pack-2", bentoml_home=home)
    assert ensure_bento(tag2, project, home).built
    with open(project / "src" / "bartops" / "serving" / "package.py", "a") as fh:
        fh.write("\n# a source change\n")
    changed = ensure_bento(first.model_tag, project, home)
    assert changed.built and changed.tag not in (first.bento, second)
    assert ensure_bento(first.model_tag, project, home).tag == changed.tag
    assert not [p for p in scratch.iterdir() if p.name.startswith("bartops-bento-context-")]
