"""Crash injection: every step killed (like ``kill -9``) at several points leaves a consistent state,
and its re-run completes and leaves no temporary file behind.

Each case copies one prepared small project (data, accepted impressions, features, model, bundle,
registry with production ``v1`` and a registered ``v2``), runs one step through the ``bartops``
command line in a child process with ``BARTOPS_CRASH_AT`` armed (``bartops.faults.crash_point``:
``os._exit(137)``), and checks:

1. the child died at the crash point (exit 137);
2. the state is consistent: the registry pointer names a complete bundle; every artefact visible
   under its final name loads whole; every quarantine folder holds its report; the step's input
   batch is whole somewhere (still at its place, accepted, quarantined, or in a hidden folder the
   next run finishes); where the crash came before the step's commit, its outputs are unchanged;
3. the step run again without the crash completes, the batch ends where it belongs, and no
   temporary file or folder is left (nor a staged build context in the temp area).

Run with ``-s`` to see the summary table (crash points tried, states left inconsistent).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from bartops.config import Params, read_params_file
from bartops.faults import CRASH_EXIT_CODE, ENV as CRASH_ENV
from bartops.leftovers import LEGACY, OWNED, recover_leftovers
from bartops.registry import Registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
         "BENTOML_DO_NOT_TRACK": "True", "GX_ANALYTICS_ENABLED": "False"}
GARBAGE = b"PAR1 this is not a parquet file " * 8
QUARANTINE = "var/quarantine"  # deeper than data/incoming: a relative link moved there as is would dangle


@dataclass(frozen=True)
class Case:
    """One crash: the step, the crash point, the input batch (validation) and whether the crash
    precedes the step's commit (its outputs must then be byte-identical to before)."""

    step: str
    point: str
    batch: str = ""
    unchanged: bool = False

    @property
    def id(self) -> str:
        return f"{self.step}{'[' + self.batch + ']' if self.batch else ''}@{self.point}"


CASES = [
    Case("validate-accept", "accept:written", "good", unchanged=True),
    Case("validate-accept", "accept:renamed", "good"),
    Case("validate-reject", "quarantine:reported", "rejected", unchanged=True),
    Case("validate-reject", "quarantine:moved", "rejected"),
    Case("validate-reject", "quarantine:recorded", "corrupt-folder", unchanged=True),
    Case("validate-reject", "quarantine:moved", "corrupt-folder"),
    Case("validate-reject", "quarantine:renamed", "corrupt-folder"),
    Case("validate-reject", "quarantine:moved", "symlinked-folder"),
    Case("validate-reject", "quarantine:moved", "inner-symlinks"),
    Case("validate-reject", "quarantine:renamed", "inner-symlinks"),
    Case("features", "write-dir:features:partial", unchanged=True),
    Case("features", "replace-dir:features:before", unchanged=True),
    Case("features", "replace-dir:features:swapped"),
    Case("train", "write-dir:model:partial", unchanged=True),
    Case("train", "replace-dir:model:swapped"),
    Case("train", "write-file:reward_metrics.json:before-rename"),
    Case("train", "write-dir:bundle:partial"),
    Case("train", "replace-dir:bundle:before"),
    Case("train", "replace-dir:bundle:swapped"),
    Case("evaluate", "write-file:ope.json:before-rename", unchanged=True),
    Case("evaluate", "write-file:policy_value.csv:before-rename"),
    Case("register", "registry:register:copied", unchanged=True),
    Case("register", "registry:register:renamed"),
    Case("promote", "write-file:production.json:before-rename", unchanged=True),
    Case("promote", "registry:switched"),
    Case("package", "package:model-stored"),
    Case("package", "package:context-staged"),
]
RESULTS: dict[str, dict] = {}


# ---------------------------------------------------------------------------- the prepared project
@pytest.fixture(scope="module")
def base(small_data_dir, tmp_path_factory) -> Path:
    """A small project after one good round: half the logged pages accepted, features, model,
    bundle, and a registry with production ``v1`` and a registered ``v2`` (same bundle)."""
    from bartops.reward.pipeline import default_paths, run_build_features, run_training
    from bartops.validation import ingest
    from bartops.validation.suites import reference_stream_rate

    root = tmp_path_factory.mktemp("crash-base")
    data = root / "data"
    shutil.copytree(small_data_dir, data)
    full = pd.read_parquet(data / "incoming" / "sim-seed3.parquet")
    (data / "incoming" / "sim-seed3.parquet").unlink()
    pages = full["request_id"].drop_duplicates().to_numpy()
    first = full[full["request_id"].isin(pages[: len(pages) // 2])]
    second = full[~full["request_id"].isin(pages[: len(pages) // 2])]
    first.to_parquet(data / "incoming" / "first-half.parquet", index=False)
    (root / "spare").mkdir()
    second.to_parquet(root / "spare" / "second-half.parquet", index=False)

    raw = read_params_file(ROOT / "params.yaml")
    raw["validation"]["stream_rate"].update(reference_stream_rate(full))
    raw["validation"]["row_split"]["enabled"] = False
    raw["validation"]["remove_accepted_source"] = True
    raw["paths"].update({"data": "data", "incoming": "data/incoming", "impressions": "build/impressions",
                         "build": "build", "quarantine": QUARANTINE, "registry": "registry"})
    raw["reward"]["num_boost_round"] = 20
    raw["ope"]["n_boot"] = 50
    raw["scale"]["backend"] = "local"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = Params.from_mapping(raw)
    for name in ("bentofile.yaml",):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "src" / "bartops", root / "src" / "bartops",
                    ignore=shutil.ignore_patterns("__pycache__"))

    cwd = os.getcwd()
    os.chdir(root)
    try:
        report = ingest(Path("data/incoming/first-half.parquet"), Path("data"), Path(QUARANTINE), params,
                        impressions_dir=Path("build/impressions"))
        assert report.decision == "accepted", f"base batch not accepted: {report.failure_message()}"
        paths = default_paths(params)
        run_build_features(paths["data"], paths["features"], params, paths["impressions"])
        run_training(paths["features"], paths["impressions"], paths["model"], params, metrics_path=paths["metrics"],
                     baselines_dir=paths["baselines"], bundle_dir=paths["bundle"])
        reg = Registry(Path("registry"))
        reg.register(paths["bundle"], "v1")
        reg.promote("v1", "base state")
        reg.register(paths["bundle"], "v2")
    finally:
        os.chdir(cwd)
    r = _run(root, ["evaluate", "--params", "params.yaml"], tmp_path_factory.mktemp("base-systmp"))
    assert r.returncode == 0, f"base evaluate failed ({r.returncode}): {r.stderr[-2000:]}"
    return root


def _make_batch(w: Path, kind: str) -> Path:
    """The step's input batch in ``w/data/incoming`` (files outside it under ``w/elsewhere``)."""
    incoming, elsewhere = w / "data" / "incoming", w / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    spare = pd.read_parquet(w / "spare" / "second-half.parquet")
    if kind == "good":
        path = incoming / "second-half.parquet"
        spare.to_parquet(path, index=False)
    elif kind == "rejected":  # readable, fails the batch-level checks (every propensity 0)
        path = incoming / "zero-propensity.parquet"
        spare.assign(propensity=0.0).to_parquet(path, index=False)
    elif kind == "corrupt-folder":
        path = incoming / "corrupt-folder"
        path.mkdir()
        (path / "part-0.parquet").write_bytes(GARBAGE)
        (path / "part-1.parquet").write_bytes(GARBAGE[::-1])
    elif kind == "symlinked-folder":  # a relative link (quarantined as the link: it must not dangle there)
        real = elsewhere / "real-batch"
        real.mkdir()
        (real / "part-0.parquet").write_bytes(GARBAGE)
        path = incoming / "linked-batch"
        path.symlink_to(os.path.relpath(real, incoming))
    elif kind == "inner-symlinks":  # a real folder whose files are relative links
        (elsewhere / "a.parquet").write_bytes(GARBAGE)
        path = incoming / "inner-links"
        path.mkdir()
        (path / "a.parquet").symlink_to(os.path.relpath(elsewhere / "a.parquet", path))
    else:
        raise ValueError(kind)
    return path


# ---------------------------------------------------------------------------- running a step
def _run(w: Path, args: list[str], systmp: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (CRASH_ENV, "BENTOML_HOME", "BARTOPS_REGISTRY", "BARTOPS_PARAMS", "BARTOPS_DASK_SCHEDULER")}
    env.update(QUIET, TMPDIR=str(systmp), PYTHONPATH=str(ROOT))  # ROOT: the flows package
    if crash_at:
        env[CRASH_ENV] = crash_at
    cmd = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "bartops.cli", *args]
    return subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, timeout=600)


def _args(case: Case, batch: Path | None) -> tuple[list[str], int]:
    """The command line of the step and the exit status of a completed run."""
    if case.step.startswith("validate"):
        rel = str(batch.relative_to(batch.parents[2]))
        return ["validate", rel, "--params", "params.yaml", "--no-docs"], (0 if case.step == "validate-accept" else 1)
    return {
        "features": (["features", "--params", "params.yaml"], 0),
        "train": (["train", "--params", "params.yaml"], 0),
        "evaluate": (["evaluate", "--params", "params.yaml"], 0),
        # as the evaluate-and-gate flow registers: a version already registered is reused
        "register": (["-c", "from flows.evaluate_and_gate import register_candidate as r; "
                            "print(r.fn('registry', 'build/bundle', 'v3'))"], 0),
        "promote": (["registry", "promote", "v2", "--reason", "crash test", "--force", "--root", "registry"], 0),
        "package": (["package", "v1", "--params", "params.yaml"], 0),
    }[case.step]


# ---------------------------------------------------------------------------- the checks
OUTPUTS = {"validate-accept": ["build/impressions", "data/incoming"], "validate-reject": [QUARANTINE, "data/incoming"],
           "features": ["build/features"], "train": ["build/model", "build/baselines", "build/bundle", "build/reports"],
           "evaluate": ["build/reports"], "register": ["registry"], "promote": ["registry"], "package": []}


def _tree_digest(w: Path, rels: list[str]) -> str:
    """SHA-256 of the visible (not hidden) files under ``rels`` and their contents."""
    h = hashlib.sha256()
    for rel in rels:
        for p in sorted((w / rel).rglob("*")) if (w / rel).exists() else []:
            if any(part.startswith(".") for part in p.relative_to(w).parts) or not p.is_file():
                continue
            h.update(str(p.relative_to(w)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _leftovers(w: Path, systmp: Path) -> list[str]:
    """Temporary names anywhere in the project, and staged build contexts in the temp area."""
    found = []
    for p in w.rglob("*"):
        rel = p.relative_to(w)
        if rel.parts[0] == "src" or rel.parts[:2] == ("build", "bentoml"):
            continue
        n = p.name
        if (OWNED.match(n) or LEGACY.match(n) or ".moving-" in n or n.endswith(".part") or n == ".move.json"
                or n.startswith(".incoming-")):
            found.append(str(rel))
    found += [p.name for p in systmp.glob("bartops-bento-context-*")]
    return sorted(found)


def _batch_files(path: Path) -> dict[str, bytes]:
    """The batch's bytes by file name (through links)."""
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


def _problems(w: Path, case: Case, batch: Path | None, original: dict[str, bytes] | None, final: bool) -> list[str]:
    """What is inconsistent in project ``w`` (empty: consistent); ``final``: after the re-run."""
    from bartops.features.store import load_features
    from bartops.registry.store import REQUIRED_BUNDLE_ENTRIES
    from bartops.reward.model import load_model

    out: list[str] = []

    def check(what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any failure is an inconsistency to report
            out.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")

    reg = Registry(w / "registry")
    prod = reg.production()
    if prod is None or not all((reg.versions_dir / prod / e).exists() for e in REQUIRED_BUNDLE_ENTRIES):
        out.append(f"production pointer names {prod!r}, not a complete bundle")
    for v in reg.list():
        missing = [e for e in REQUIRED_BUNDLE_ENTRIES if not (reg.versions_dir / v["version"] / e).exists()]
        if missing:
            out.append(f"registered version {v['version']} lacks {missing}")
    check("registry history", reg.history)
    check("build/features", lambda: load_features(w / "build" / "features"))
    check("build/model", lambda: load_model(w / "build" / "model"))
    for d in sorted((w / "build" / "baselines").iterdir()):
        if not d.name.startswith("."):
            check(f"baseline {d.name}", lambda d=d: load_model(d))
    check("build/bundle/features", lambda: load_features(w / "build" / "bundle" / "features"))
    check("build/bundle/model", lambda: load_model(w / "build" / "bundle" / "model"))
    check("build/bundle/policy.json", lambda: json.loads((w / "build" / "bundle" / "policy.json").read_text()))
    for f in sorted((w / "build" / "reports").glob("*.json")):
        check(str(f.relative_to(w)), lambda f=f: json.loads(f.read_text()))
    for f in sorted((w / "build" / "reports").glob("*.csv")):
        check(str(f.relative_to(w)), lambda f=f: list(csv.DictReader(f.open())) or 1 / 0)
    for f in sorted((w / "build" / "impressions").glob("*.parquet")):
        check(str(f.relative_to(w)), lambda f=f: pq.read_table(f))
    quarantined = [d for d in sorted((w / QUARANTINE).iterdir()) if not d.name.startswith(".")] \
        if (w / QUARANTINE).is_dir() else []
    for d in quarantined:
        check(f"{d.relative_to(w)} report", lambda d=d: json.loads((d / "report.json").read_text()))
        if not (d / "report.md").is_file():
            out.append(f"{d.relative_to(w)} lacks report.md")
        dangling = [str(p.relative_to(w)) for p in [*d.iterdir(), *d.glob("*/*")] if p.is_symlink() and not p.exists()]
        if dangling:
            out.append(f"dangling links in quarantine: {dangling}")
    if batch is not None and original is not None:
        out += _batch_problems(w, case, batch, original, quarantined, final)
    return out


def _batch_problems(w: Path, case: Case, batch: Path, original: dict[str, bytes], quarantined: list[Path],
                    final: bool) -> list[str]:
    """The input batch must be whole somewhere: at its place, accepted, or quarantined with its report
    (after a crash also: in a hidden folder the next run finishes); after the re-run, where it belongs."""
    at_source = batch.exists() and _batch_files(batch) == original
    in_quarantine = [d for d in quarantined if (d / batch.name).exists() and _batch_files(d / batch.name) == original]
    accepted = sorted((w / "build" / "impressions").glob(f"{batch.stem}-*.parquet"))
    hidden = [d for d in (w / QUARANTINE).glob(".*.moving-*") if os.path.lexists(d / batch.name)] \
        if (w / QUARANTINE).is_dir() else []  # a moved relative link may dangle until the move is finished
    where = {"source": at_source, "quarantine": len(in_quarantine), "accepted": len(accepted), "hidden": len(hidden)}
    if not final:
        return [] if any(where.values()) else [f"batch {batch.name} lost: {where}"]
    if case.step == "validate-accept":
        ok = where == {"source": False, "quarantine": 0, "accepted": 1, "hidden": 0}
    else:
        ok = where == {"source": False, "quarantine": 1, "accepted": 0, "hidden": 0} and not batch.is_symlink()
    return [] if ok else [f"batch {batch.name} not where it belongs after the re-run: {where}"]


# ---------------------------------------------------------------------------- the test
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_killed_step_leaves_a_consistent_state_and_its_rerun_cleans_up(case: Case, base: Path, tmp_path: Path):
    w, systmp = tmp_path / "project", tmp_path / "systmp"
    shutil.copytree(base, w, symlinks=True)
    systmp.mkdir()
    batch = _make_batch(w, case.batch) if case.batch else None
    original = _batch_files(batch) if batch is not None else None
    args, ok_rc = _args(case, batch)
    before = _tree_digest(w, OUTPUTS[case.step])
    row = RESULTS.setdefault(case.id, {"step": case.step, "point": case.point, "batch": case.batch})

    crashed = _run(w, args, systmp, crash_at=case.point)
    row["died"] = crashed.returncode == CRASH_EXIT_CODE
    assert row["died"], (f"{case.id}: the step did not die at the crash point: exit {crashed.returncode}\n"
                         f"{crashed.stdout[-1500:]}\n{crashed.stderr[-1500:]}")
    problems = _problems(w, case, batch, original, final=False)
    if case.unchanged and _tree_digest(w, OUTPUTS[case.step]) != before:
        problems.append(f"outputs {OUTPUTS[case.step]} changed by a crash before the step's commit")
    row["left_after_crash"] = _leftovers(w, systmp)
    row["inconsistent_after_crash"] = problems
    assert not problems, f"{case.id}: inconsistent state after the crash: {problems}"

    rerun = _run(w, args, systmp)
    assert rerun.returncode == ok_rc, (f"{case.id}: the re-run exited {rerun.returncode}, expected {ok_rc}\n"
                                       f"{rerun.stdout[-1500:]}\n{rerun.stderr[-1500:]}")
    problems = _problems(w, case, batch, original, final=True)
    row["inconsistent_after_rerun"] = problems
    assert not problems, f"{case.id}: inconsistent state after the re-run: {problems}"
    left = _leftovers(w, systmp)
    row["left_after_rerun"] = left
    assert not left, f"{case.id}: temporary files left after the re-run: {left}"
    if case.step == "promote":
        prod = _production(w)
        assert prod == "v2", f"{case.id}: production after the re-run is {prod!r}, expected 'v2'"
    if case.step == "register":
        versions = [v["version"] for v in Registry(w / "registry").list()]
        assert "v3" in versions, f"{case.id}: v3 is not registered after the re-run: {versions}"
    if case.step == "package":
        assert "bento: " in rerun.stdout, f"{case.id}: the re-run built no Bento: {rerun.stdout[-800:]}"


def _production(w: Path) -> str | None:
    return Registry(w / "registry").production()


def test_recovery_moves_an_old_tree_back_when_a_replace_was_cut_between_its_renames(tmp_path: Path):
    """Where no atomic swap exists, a kill between 'old aside' and 'new in' leaves no final name:
    ``recover_leftovers`` restores the old tree and drops the new temporary one of the dead process."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".features.old-{dead.pid}-abcd1234").mkdir()
    (tmp_path / f".features.old-{dead.pid}-abcd1234" / "manifest.json").write_text("{}")
    (tmp_path / f".features.tmp-{dead.pid}-x1y2z3w4").mkdir()
    live = tmp_path / f".model.tmp-{os.getppid()}-q1w2e3r4"  # a running process's temp: kept
    live.mkdir()
    done = recover_leftovers(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["features", live.name]), f"after recovery: {names} (actions: {done})"
    assert (tmp_path / "features" / "manifest.json").read_text() == "{}", "the restored tree lost its content"


def test_zz_crash_summary():
    """Print the table of crash points tried and states left inconsistent (must be 0)."""
    if not RESULTS:
        pytest.skip("no crash case ran")
    lines = ["", "| step | batch | crash point | died | temp left after crash | inconsistent after crash "
             "| inconsistent after re-run | temp left after re-run |", "|---|---|---|---|---|---|---|---|"]
    bad = 0
    for row in RESULTS.values():
        counts = [len(row.get(k, ["not run"])) for k in
                  ("left_after_crash", "inconsistent_after_crash", "inconsistent_after_rerun", "left_after_rerun")]
        bad += bool(sum(counts[1:]) or not row.get("died"))
        died = "yes" if row.get("died") else "NO"
        lines.append(f"| {row['step']} | {row['batch'] or '-'} | {row['point']} | {died} | "
                     + " | ".join(map(str, counts)) + " |")
    lines.append(f"\n{len(RESULTS)} crash points tried, {bad} left an inconsistent state or temporary files")
    print("\n".join(lines))
    assert bad == 0, f"{bad} of {len(RESULTS)} crash points left an inconsistent state: " + "\n".join(lines)


def test_names_left_by_earlier_code_are_cleaned_or_finished(tmp_path: Path):
    """Leftovers of code without process ids in temp names: the registry's (under its lock), old enough
    build temps, and a hidden quarantine folder with a batch but no report (finished, with a note)."""
    from bartops.leftovers import LEGACY_AGE_S
    from bartops.validation.core import recover_quarantine

    reg = Registry(tmp_path / "registry")
    reg.versions_dir.mkdir(parents=True)
    (reg.root / ".production.json.0a1b2c3d.tmp").write_text("{")
    (reg.versions_dir / ".incoming-0123456789abcdef").mkdir()
    reg.recover_leftovers()
    left = sorted(p.name for p in [*reg.root.iterdir(), *reg.versions_dir.iterdir()])
    assert left == ["versions"], f"registry leftovers not cleaned: {left}"

    build = tmp_path / "build"
    (build / ".model.tmp-k3j2_a9x").mkdir(parents=True)
    (build / ".bundle.tmp-ab12cd34").mkdir()
    old = os.stat(build).st_mtime - LEGACY_AGE_S - 60
    os.utime(build / ".model.tmp-k3j2_a9x", (old, old))
    recover_leftovers(build)
    left = sorted(p.name for p in build.iterdir())
    assert left == [".bundle.tmp-ab12cd34"], f"only the recent legacy temp should stay (its writer may run): {left}"

    q = tmp_path / "quarantine"
    (q / ".bad-20261101T000000000000.tmp").mkdir(parents=True)
    (q / ".bad-20261101T000000000000.tmp" / "bad.parquet").write_bytes(GARBAGE)
    done = recover_quarantine(q)
    final = q / "bad-20261101T000000000000"
    assert list(done) == [final], f"the interrupted quarantine was not finished: {done}"
    report = json.loads((final / "report.json").read_text())
    assert (final / "bad.parquet").read_bytes() == GARBAGE and report["error_kind"] == "interrupted", \
        f"finished folder: {sorted(p.name for p in final.iterdir())}, report error_kind {report.get('error_kind')!r}"
