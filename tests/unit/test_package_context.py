"""Packaging: the Bento's build context holds only what the bentofile selects (no bentoml needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bartops.serving.package import build_bento, context_digest, stage_build_context

ROOT = Path(__file__).resolve().parents[2]


def _files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def test_context_of_the_project_holds_only_sources_params_and_bentofile(tmp_path):
    ctx = stage_build_context(ROOT, tmp_path / "ctx")
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "src" / "bartops").rglob("*.py")
                if "__pycache__" not in p.parts} | {"params.yaml", "bentofile.yaml"}
    assert _files(ctx) == expected
    assert (ctx / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_context_follows_include_exclude_and_named_files(tmp_path):
    proj = tmp_path / "proj"
    files = {
        "src/pkg/__init__.py": "", "src/pkg/a.py": "A = 1\n", "src/pkg/sub/b.py": "B = 2\n",
        "src/pkg/sub/skip_me.py": "", "src/pkg/notes.txt": "not selected",
        "src/pkg/__pycache__/a.cpython-311.pyc": "x", "params.yaml": "a: 1\n", "README.md": "# readme\n",
        "requirements.txt": "numpy\n", "data/big.parquet": "x",
        # a Bento store inside the project: never part of the context
        "build/bentoml/tmp/bentoml_bento_x/src/params.yaml": "a: 1\n",
        "build/bentoml/tmp/bentoml_bento_x/src/pkg/a.py": "",
    }
    for rel, text in files.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    (proj / "bentofile.yaml").write_text(
        "service: pkg.a:Svc\ndescription: 'file: ./README.md'\n"
        "include: ['src/pkg/**/*.py', 'params.yaml']\nexclude: ['**/skip_me.py']\n"
        "python:\n  requirements_txt: requirements.txt\n")
    ctx = stage_build_context(proj, tmp_path / "ctx")
    assert _files(ctx) == {"bentofile.yaml", "params.yaml", "README.md", "requirements.txt",
                           "src/pkg/__init__.py", "src/pkg/a.py", "src/pkg/sub/b.py"}
    digest = context_digest(ctx)
    again = stage_build_context(proj, tmp_path / "ctx2")
    assert context_digest(again) == digest  # the same sources, the same digest
    (proj / "src/pkg/a.py").write_text("A = 2\n")
    assert context_digest(stage_build_context(proj, tmp_path / "ctx3")) != digest
    with pytest.raises(ValueError, match="must be empty"):
        stage_build_context(proj, ctx)


@pytest.mark.parametrize("pattern, message", [("**/*.py", "names no folder"), ("src/missing/*.py", "does not exist")])
def test_context_refuses_patterns_that_need_the_whole_project(tmp_path, pattern, message):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "bentofile.yaml").write_text(f"service: a:B\ninclude: ['{pattern}']\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        stage_build_context(tmp_path / "proj", tmp_path / "ctx")


def test_build_refuses_a_bentoml_home_inside_the_context(tmp_path):
    ctx = stage_build_context(ROOT, tmp_path / "ctx")
    with pytest.raises(ValueError, match="inside the build context"):
        build_bento("bartops-policy:v1", ROOT, bentoml_home=ctx / "bentoml", context_dir=ctx)


def test_registry_bookkeeping_is_not_bundle_content(tmp_path):
    """gate.json is rewritten after registration (a decision, a review): storing again is still a no-op."""
    import json

    from bartops.serving.package import bundle_digest, store_bundle_as_bentoml_model

    b = tmp_path / "bundle"
    (b / "model").mkdir(parents=True)
    (b / "features").mkdir()
    (b / "model" / "model.ubj").write_bytes(b"m")
    (b / "features" / "manifest.json").write_text("{}")
    (b / "policy.json").write_text(json.dumps({"version": "v1"}))
    (b / "registry.json").write_text("{}")
    (b / "gate.json").write_text(json.dumps({"decision": "promote"}))
    digest = bundle_digest(b)
    home = tmp_path / "bentoml"
    tag = store_bundle_as_bentoml_model(b, "v1", bentoml_home=home)
    stored = home / "models" / "bartops-policy" / "v1"
    assert not (stored / "gate.json").exists() and not (stored / "registry.json").exists()
    (b / "gate.json").write_text(json.dumps({"decision": "reject"}))
    assert bundle_digest(b) == digest
    assert store_bundle_as_bentoml_model(b, "v1", bentoml_home=home) == tag
    (b / "features" / "manifest.json").write_text('{"changed": true}')
    with pytest.raises(ValueError, match="different content"):
        store_bundle_as_bentoml_model(b, "v1", bentoml_home=home)
