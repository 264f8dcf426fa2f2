"""Registry: register, promote, rollback, history, crash safety, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bartops.cli import app
from bartops.registry import Registry, RegistryError
from bartops.registry import store


def make_bundle(tmp: Path, name: str, version: str | None = None) -> Path:
    b = tmp / name
    (b / "model").mkdir(parents=True)
    (b / "features").mkdir()
    (b / "model" / "model.ubj").write_bytes(b"\x00model-" + name.encode())
    (b / "model" / "schema.json").write_text("{}")
    (b / "features" / "items.parquet").write_bytes(b"x")
    policy = {"shelves": 6, "cards": 8, "epsilon_head": 0.1, "epsilon_fill": 0.1}
    if version:
        policy["version"] = version
    (b / "policy.json").write_text(json.dumps(policy))
    (b / "metrics.json").write_text(json.dumps({"ece": 0.01}))
    return b


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def test_register_copies_bundle_and_sets_version(reg, tmp_path):
    b = make_bundle(tmp_path, "b1", version="cand-1")
    assert reg.register(b) == "cand-1"
    d = reg.path("cand-1")
    assert (d / "model" / "model.ubj").read_bytes() == b"\x00model-b1"
    assert json.loads((d / "policy.json").read_text())["version"] == "cand-1"
    assert reg.register(make_bundle(tmp_path, "b2"), version="named") == "named"
    assert json.loads((reg.path("named") / "policy.json").read_text())["version"] == "named"
    assert [r["version"] for r in reg.list()] == ["cand-1", "named"]
    assert reg.production() is None and reg.production_path() is None
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(b)
    assert not any(p.name.startswith(".incoming") for p in reg.versions_dir.iterdir())


def test_register_rejects_bad_input(reg, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reg.register(tmp_path / "nope")
    b = make_bundle(tmp_path, "b")
    (b / "policy.json").unlink()
    with pytest.raises(ValueError, match=r"missing \['policy.json'\]"):
        reg.register(b)
    with pytest.raises(ValueError, match="invalid version name"):
        reg.register(make_bundle(tmp_path, "c"), version="../evil")
    with pytest.raises(RegistryError, match="not registered"):
        reg.promote("ghost", "x")


def test_promote_rollback_history(reg, tmp_path):
    for i in range(3):
        reg.register(make_bundle(tmp_path, f"b{i}"), version=f"v{i}")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("no production")
    reg.promote("v0", "first")
    with pytest.raises(RegistryError, match="no earlier production"):
        reg.rollback("only one")
    reg.promote("v1", "better")
    reg.promote("v2", "even better")
    assert reg.production() == "v2"
    assert reg.production_path() == reg.versions_dir / "v2"
    assert reg.rollback("v2 broke serving")["version"] == "v1"
    assert reg.rollback("v1 too")["version"] == "v0"
    h = reg.history()
    assert [(e["action"], e["previous"], e["version"]) for e in h] == [
        ("promote", None, "v0"), ("promote", "v0", "v1"), ("promote", "v1", "v2"),
        ("rollback", "v2", "v1"), ("rollback", "v1", "v0")]
    assert [e["seq"] for e in h] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="reason"):
        reg.promote("v1", "  ")
    assert reg.production() == "v0"
    assert [r["production"] for r in reg.list()] == [True, False, False]


def test_record_decision(reg, tmp_path):
    reg.register(make_bundle(tmp_path, "b"), version="v")
    reg.record_decision("v", {"decision": "reject", "rules": []})
    shown = reg.show("v")
    assert shown["gate"]["decision"] == "reject"
    assert shown["metrics"] == {"ece": 0.01}
    assert reg.list()[0]["decision"] == "reject"


def test_crash_between_write_and_switch_keeps_old_production(reg, tmp_path, monkeypatch):
    for i in range(2):
        reg.register(make_bundle(tmp_path, f"b{i}"), version=f"v{i}")
    reg.promote("v0", "first")
    before_pointer = (reg.root / store.POINTER).read_bytes()
    before_history = reg.history()

    def crash(*a, **k):
        raise OSError("simulated crash before the switch")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        reg.promote("v1", "would switch")
    monkeypatch.undo()
    assert reg.production() == "v0"
    assert (reg.root / store.POINTER).read_bytes() == before_pointer
    assert reg.history() == before_history
    assert not [p for p in reg.root.iterdir() if p.name.endswith(".tmp")]
    # the registry keeps working afterwards
    reg.promote("v1", "retry")
    assert reg.production() == "v1" and [e["seq"] for e in reg.history()] == [1, 2]


def test_crash_after_switch_before_history_line(reg, tmp_path, monkeypatch):
    for i in range(3):
        reg.register(make_bundle(tmp_path, f"b{i}"), version=f"v{i}")
    reg.promote("v0", "first")

    def crash(self, event):
        raise OSError("simulated crash after the switch")

    monkeypatch.setattr(Registry, "_append_history", crash)
    with pytest.raises(OSError):
        reg.promote("v1", "switched")
    monkeypatch.undo()
    assert reg.production() == "v1"
    assert [e["version"] for e in reg.history()] == ["v0", "v1"]  # recovered from the pointer
    # a torn half-written line must not corrupt later events
    with open(reg.root / store.HISTORY, "a") as fh:
        fh.write('{"seq": 99, "act')
    reg.promote("v2", "third")
    assert [e["version"] for e in reg.history()] == ["v0", "v1", "v2"]
    lines = (reg.root / store.HISTORY).read_text().splitlines()
    assert sum(1 for line in lines if line.startswith('{"action"')) == 3  # v1's line was repaired


def test_cli(tmp_path):
    root = tmp_path / "reg"
    runner = CliRunner()
    b = make_bundle(tmp_path, "b", version="c1")
    r = runner.invoke(app, ["registry", "register", str(b), "--root", str(root)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["registry", "promote", "c1", "--reason", "try", "--root", str(root)])
    assert r.exit_code == 1 and "gate decision" in r.output
    Registry(root).record_decision("c1", {"decision": "promote"})
    r = runner.invoke(app, ["registry", "promote", "c1", "--reason", "gate passed", "--root", str(root)])
    assert r.exit_code == 0 and "production: c1" in r.output
    r = runner.invoke(app, ["registry", "list", "--root", str(root)])
    assert "* c1" in r.output and "promote" in r.output
    r = runner.invoke(app, ["registry", "show", "c1", "--root", str(root)])
    assert json.loads(r.output)["gate"]["decision"] == "promote"
    r = runner.invoke(app, ["registry", "rollback", "--reason", "x", "--root", str(root)])
    assert r.exit_code == 1 and "no earlier production" in r.output
    r = runner.invoke(app, ["registry", "show", "nope", "--root", str(root)])
    assert r.exit_code == 1 and "not registered" in r.output


def test_bootstrap_promotes_newest_only_when_nothing_is_in_production(tmp_path):
    root = tmp_path / "reg"
    runner = CliRunner()
    res = runner.invoke(app, ["registry", "bootstrap", "--root", str(root)])
    assert res.exit_code != 0 and "no versions" in res.output
    reg = Registry(root)
    reg.register(make_bundle(tmp_path, "a"), "v1")
    reg.register(make_bundle(tmp_path, "b"), "v2")
    res = runner.invoke(app, ["registry", "bootstrap", "--root", str(root)])
    assert res.exit_code == 0, res.output
    assert reg.production() == "v2"
    assert reg.history()[-1]["reason"].startswith("[forced]")
    reg.register(make_bundle(tmp_path, "c"), "v3")
    res = runner.invoke(app, ["registry", "bootstrap", "--root", str(root)])
    assert res.exit_code == 0 and reg.production() == "v2"


@pytest.mark.parametrize("pointer, problem", [
    ('{"version": "v2", "seq": 3, "stack": [', "not valid JSON"),
    ('{"version": "../../outside-bundle", "seq": 3, "stack": [], "event": {}}', "names no registered version"),
])
def test_a_corrupt_pointer_is_named_by_the_cli_and_rebuilt_from_the_history(tmp_path, pointer, problem):
    reg = Registry(tmp_path / "reg")
    for v in ("v1", "v2", "v3"):
        reg.register(make_bundle(tmp_path, v), v)
    reg.promote("v1", "a")
    reg.promote("v2", "b")
    reg.promote("v3", "c")
    reg.rollback("d")  # production v2, stack [v1]
    (reg.root / "production.json").write_text(pointer)
    runner = CliRunner()
    res = runner.invoke(app, ["registry", "list", "--root", str(reg.root)])
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), \
        f"registry list with a corrupt pointer: exit {res.exit_code}, {res.exception!r}"
    assert problem in res.output and "production.json" in res.output and "bartops registry repair" in res.output, \
        f"the error should name the file, the problem and the fix: {res.output!r}"
    res = runner.invoke(app, ["registry", "repair", "--root", str(reg.root)])
    assert res.exit_code == 0, f"repair failed: {res.output}"
    assert reg.production() == "v2" and reg.rollback("e")["version"] == "v1", \
        f"the rebuilt pointer lost production or its stack: {json.loads((reg.root / 'production.json').read_text())}"
