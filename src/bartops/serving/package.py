"""Package a policy bundle as a BentoML model and build the Bento that serves it.

BentoML keeps models and Bentos under ``BENTOML_HOME``; bartops uses ``<project>/build/bentoml``
(``default_bentoml_home``) unless ``BENTOML_HOME`` is already set, so nothing lands in ~/bentoml.
A registry version ``v`` is stored as the model ``bartops-policy:<v>`` (lower-cased; a short hash
is appended when the version has characters a BentoML tag cannot hold).  Storing is idempotent:
the same bundle content under the same version returns the existing tag; different content under
an existing tag is an error.

``bentoml build`` walks its whole build context (and copies what ``include`` selects into
``$BENTOML_HOME/tmp``), so the project directory, which holds ``build/bentoml``, .venv and data,
must not be the context: a second build would copy the first one's temporary tree into itself
until "File name too long".  ``build_bento`` therefore stages a minimal context — the bentofile,
the files its ``include``/``exclude`` select under their literal folders (``src/bartops/**/*.py``,
``params.yaml``) and the files it names (requirements, description) — in a fresh temporary
directory outside the project (``bartops-bento-context-<pid>-…``), builds from there and deletes it;
one left by a killed build is removed by the next (``recover_build_contexts``).  ``ensure_bento`` makes packaging
idempotent: a Bento already in the store for the same model tag, bundle digest and context digest
(Bento labels ``policy``, ``bundle_sha256``, ``context_sha256``) is returned without building.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bartops.faults import crash_point
from bartops.serving.config import MODEL_NAME

REQUIRED = ("model", "features", "policy.json")
# registry bookkeeping written into a version's folder after it was registered (the registration
# record, the gate's decision): not bundle content, so neither hashed nor packaged
REGISTRY_FILES = ("registry.json", "gate.json")
_TAG_VERSION = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")


def default_bentoml_home(project_dir: str | Path = ".") -> Path:
    """``$BENTOML_HOME`` if set, else ``<project_dir>/build/bentoml``."""
    env = os.environ.get("BENTOML_HOME")
    return Path(env) if env else Path(project_dir).resolve() / "build" / "bentoml"


def check_bundle(bundle_dir: str | Path) -> Path:
    """The bundle directory, or a FileNotFoundError naming what is missing."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"policy bundle {d} does not exist")
    missing = [name for name in REQUIRED if not (d / name).exists()]
    if missing:
        raise FileNotFoundError(f"policy bundle {d} lacks {missing} (expected model/, features/, policy.json)")
    return d


def bundle_digest(bundle_dir: str | Path, skip: tuple[str, ...] = REGISTRY_FILES) -> str:
    """SHA-256 over the bundle's relative file paths and contents (the files ``skip`` at its top excluded:
    by default ``REGISTRY_FILES``, the registry's bookkeeping)."""
    d = Path(bundle_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in d.rglob("*") if p.is_file()):
        rel = path.relative_to(d).as_posix()
        if rel in skip:
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def model_tag_for(version: str, name: str = MODEL_NAME) -> str:
    """The BentoML model tag of a registry version."""
    v = str(version).lower()
    if not v:
        raise ValueError("version must not be empty")
    if not _TAG_VERSION.match(v) or v != str(version):
        safe = re.sub(r"[^a-z0-9._-]+", "-", v).strip("-._")[:46] or "v"
        v = f"{safe}-{hashlib.sha256(str(version).encode()).hexdigest()[:8]}"
    return f"{name}:{v}"


def _model_store(bentoml_home: str | Path | None):
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    if bentoml_home is None:
        return BentoMLContainer.model_store.get()
    path = Path(bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(path))


def store_bundle_as_bentoml_model(bundle_dir: str | Path, version: str,
                                  bentoml_home: str | Path | None = None) -> str:
    """Copy a policy bundle into the BentoML model store as ``bartops-policy:<version>``; returns the tag.

    ``bentoml_home`` selects the store (default: the process's ``BENTOML_HOME``).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    bundle = check_bundle(bundle_dir)
    digest = bundle_digest(bundle)
    tag = model_tag_for(version)
    store = _model_store(bentoml_home)
    try:
        existing = store.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        # the recorded digest, else the stored files themselves (models stored before gate.json was
        # left out of the digest recorded one that covered it)
        if (existing.info.metadata.get("bundle_sha256") != digest
                and bundle_digest(existing.path, REGISTRY_FILES + ("model.yaml",)) != digest):
            raise ValueError(f"BentoML model {tag} already exists with different content; "
                             f"registry versions are immutable, register the bundle under a new version")
        return str(existing.tag)
    with bentoml.models.create(tag, labels={"project": "bartops", "kind": "policy-bundle"},
                               metadata={"bundle_sha256": digest, "registry_version": str(version)},
                               module="bartops.serving", _model_store=store) as ref:
        shutil.copytree(bundle, ref.path, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if Path(d) == bundle and n in REGISTRY_FILES])
    return str(ref.tag)


def _literal_root(pattern: str) -> str | None:
    """The folder or file a bentofile ``include`` pattern starts from (None for comments/negations)."""
    p = pattern.strip()
    if not p or p.startswith(("#", "!")):
        return None
    parts: list[str] = []
    for part in p.strip("/").split("/"):
        if any(c in part for c in "*?[\\") or part in ("", ".", ".."):
            break
        parts.append(part)
    if not parts or ".." in p.split("/"):
        raise ValueError(f"bentofile include pattern {pattern!r} names no folder or file inside the project; "
                         f"start it with one (e.g. 'src/bartops/**/*.py') so the build context can stay minimal")
    return "/".join(parts)


def _named_files(config: dict) -> list[str]:
    """Files a bentofile refers to besides its include patterns (description, requirements, …)."""
    named: list[str] = []
    desc = config.get("description")
    if isinstance(desc, str) and desc.startswith("file:"):
        named.append(desc[5:].strip())
    for section, key in (("python", "requirements_txt"), ("conda", "environment_yml"),
                         ("docker", "setup_script"), ("docker", "dockerfile_template")):
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value:
            named.append(value)
    return named


def stage_build_context(project_dir: str | Path, dest: str | Path, bentofile: str = "bentofile.yaml") -> Path:
    """Copy into the empty folder ``dest`` only what ``bentoml build`` needs from ``project_dir``.

    That is the bentofile, every file its ``include`` patterns select (and ``exclude`` does not) under
    the literal folder or file each pattern starts from, and the files it names.  No caches
    (``__pycache__``, ``*.pyc``).  Returns ``dest``.
    """
    import pathspec
    import yaml

    project_dir, dest = Path(project_dir).resolve(), Path(dest)
    src_bentofile = project_dir / bentofile
    if not src_bentofile.is_file():
        raise FileNotFoundError(f"bentofile {src_bentofile} does not exist")
    config = yaml.safe_load(src_bentofile.read_text(encoding="utf-8")) or {}
    include = list(config.get("include") or [])
    if not include:
        raise ValueError(f"{src_bentofile} has no include patterns: the Bento would need the whole project")
    exclude = list(config.get("exclude") or []) + ["__pycache__/", "*.pyc"]
    inc = pathspec.PathSpec.from_lines("gitwildmatch", include)
    exc = pathspec.PathSpec.from_lines("gitwildmatch", exclude)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"build context {dest} must be empty")

    def copy(rel: str) -> None:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project_dir / rel, target)

    selected: set[str] = set()
    for pattern in include:
        root = _literal_root(pattern)
        if root is None:
            continue
        start = project_dir / root
        if start.is_file():
            candidates = [root]
        elif start.is_dir():
            candidates = []
            for dirpath, dirnames, filenames in os.walk(start):
                rel_dir = Path(dirpath).relative_to(project_dir).as_posix()
                dirnames[:] = sorted(d for d in dirnames if not exc.match_file(f"{rel_dir}/{d}/"))
                candidates += [f"{rel_dir}/{f}" for f in sorted(filenames)]
        else:
            raise FileNotFoundError(f"bentofile include pattern {pattern!r}: {start} does not exist")
        selected.update(c for c in candidates if inc.match_file(c) and not exc.match_file(c))
    for rel in sorted(selected):
        copy(rel)
    for rel in _named_files(config):
        if not (project_dir / rel).is_file():
            raise FileNotFoundError(f"{src_bentofile} names {rel}, which does not exist")
        copy(rel)
    copy(bentofile)
    return dest


def context_digest(context_dir: str | Path) -> str:
    """SHA-256 over a staged build context's relative file paths and contents."""
    return bundle_digest(context_dir)


def _bento_store(bentoml_home: str | Path):
    from bentoml._internal.bento.bento import BentoStore

    path = Path(bentoml_home) / "bentos"
    path.mkdir(parents=True, exist_ok=True)
    return BentoStore(str(path))


def _labels(model_tag: str, bundle_sha256: str, context_sha256: str) -> dict[str, str]:
    return {"policy": model_tag.split(":", 1)[1], "bundle_sha256": bundle_sha256, "context_sha256": context_sha256}


def find_bento(model_tag: str, bundle_sha256: str, context_sha256: str, bentoml_home: str | Path) -> str | None:
    """Tag of a stored Bento built from this model, bundle content and build context, if any (newest)."""
    wanted = _labels(model_tag, bundle_sha256, context_sha256)
    found = []
    for bento in _bento_store(bentoml_home).list():
        labels = bento.info.labels or {}
        models = {str(m.tag) for m in bento.info.models}
        models |= {str(m.tag) for svc in (bento.info.services or []) for m in (getattr(svc, "models", None) or [])}
        served = (bento.info.args or {}).get("model_tag")
        if all(labels.get(k) == v for k, v in wanted.items()) and served == model_tag and model_tag in models:
            found.append(bento)
    if not found:
        return None
    return str(max(found, key=lambda b: b.info.creation_time).tag)


def stored_bundle_digest(model_tag: str, bentoml_home: str | Path | None = None) -> str:
    """The ``bundle_sha256`` recorded with a stored policy model (KeyError/NotFound if absent)."""
    model = _model_store(bentoml_home).get(model_tag)
    digest = model.info.metadata.get("bundle_sha256")
    if not digest:
        raise KeyError(f"BentoML model {model_tag} records no bundle_sha256; store it with store_bundle_as_bentoml_model")
    return str(digest)


@dataclass(frozen=True)
class BentoResult:
    """What ``ensure_bento`` did: the Bento's tag and whether it was built now (False: already stored)."""

    tag: str
    built: bool
    context_sha256: str


def build_bento(model_tag: str, project_dir: str | Path = ".", bentoml_home: str | Path | None = None,
                bentofile: str = "bentofile.yaml", timeout: float = 600,
                labels: dict[str, str] | None = None, context_dir: str | Path | None = None) -> str:
    """``bentoml build`` with the packaged policy ``model_tag`` from a minimal context; returns the Bento tag.

    The context is ``context_dir`` when given (already staged), else a fresh temporary folder outside
    the project staged by ``stage_build_context`` and deleted afterwards.  The model tag is passed
    as the Bento argument ``model_tag``, which the Bento records and the service reads at start-up,
    so ``bentoml serve <bento>`` serves exactly that policy.
    """
    project_dir = Path(project_dir).resolve()
    home = (Path(bentoml_home) if bentoml_home else default_bentoml_home(project_dir)).resolve()
    if context_dir is None:
        with _context_tmp() as tmp:
            ctx = stage_build_context(project_dir, Path(tmp) / "context", bentofile)
            return build_bento(model_tag, project_dir, home, bentofile, timeout, labels, ctx)
    ctx = Path(context_dir).resolve()
    if home == ctx or ctx in home.parents:
        raise ValueError(f"BENTOML_HOME {home} lies inside the build context {ctx}; bentoml build would copy it into itself")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("BARTOPS_BUNDLE", None)
    all_labels = {"policy": model_tag.split(":", 1)[1], **(labels or {})}
    cmd = [_bentoml_exe(), "build", "-f", str(ctx / bentofile), "--arg", f"model_tag={model_tag}"]
    for key, value in all_labels.items():
        cmd += ["--label", f"{key}={value}"]
    cmd += ["-o", "tag", str(ctx)]
    proc = subprocess.run(cmd, cwd=ctx, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("__tag__:"):
            return line[len("__tag__:"):].strip()
    raise RuntimeError(f"bentoml build printed no tag:\n{proc.stdout[-2000:]}")


def ensure_bento(model_tag: str, project_dir: str | Path = ".", bentoml_home: str | Path | None = None,
                 bentofile: str = "bentofile.yaml", timeout: float = 600) -> BentoResult:
    """The Bento of a stored policy model: the stored one built from the same bundle and context, else a new build.

    Packaging an already packaged version is thus a no-op returning the same tag; a changed source,
    params.yaml or bentofile (another context digest) builds a new Bento.
    """
    project_dir = Path(project_dir).resolve()
    home = (Path(bentoml_home) if bentoml_home else default_bentoml_home(project_dir)).resolve()
    bundle_sha = stored_bundle_digest(model_tag, home)
    with _context_tmp() as tmp:
        ctx = stage_build_context(project_dir, Path(tmp) / "context", bentofile)
        crash_point("package:context-staged")
        ctx_sha = context_digest(ctx)
        existing = find_bento(model_tag, bundle_sha, ctx_sha, home)
        if existing is not None:
            return BentoResult(existing, False, ctx_sha)
        tag = build_bento(model_tag, project_dir, home, bentofile, timeout,
                          labels=_labels(model_tag, bundle_sha, ctx_sha), context_dir=ctx)
    return BentoResult(tag, True, ctx_sha)


@dataclass(frozen=True)
class Packaged:
    """A registry version packaged: its BentoML model tag and (when built) Bento."""

    version: str
    model_tag: str
    bento: str | None
    built: bool
    bentoml_home: str


def package_version(bundle_dir: str | Path, version: str, project_dir: str | Path = ".",
                    bentoml_home: str | Path | None = None, build: bool = True) -> Packaged:
    """Store ``version``'s bundle as a BentoML model and ensure its Bento (both idempotent)."""
    home = (Path(bentoml_home) if bentoml_home else default_bentoml_home(project_dir)).resolve()
    tag = store_bundle_as_bentoml_model(bundle_dir, version, bentoml_home=home)
    crash_point("package:model-stored")
    if not build:
        return Packaged(str(version), tag, None, False, str(home))
    result = ensure_bento(tag, project_dir, home)
    return Packaged(str(version), tag, result.tag, result.built, str(home))


CONTEXT_PREFIX = "bartops-bento-context-"


def recover_build_contexts(tmp_root: str | Path | None = None) -> list[Path]:
    """Remove staged build contexts (``bartops-bento-context-<pid>-…`` in the temp area) of processes
    that are gone, i.e. killed mid-build; returns them.  Contexts of running builds are kept."""
    from bartops.leftovers import owner_gone

    root = Path(tmp_root or tempfile.gettempdir())
    removed = []
    for d in root.glob(f"{CONTEXT_PREFIX}*"):
        pid = d.name[len(CONTEXT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and owner_gone(int(pid)) and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _context_tmp() -> tempfile.TemporaryDirectory:
    """A fresh staging folder named after this process (after removing those of killed builds)."""
    recover_build_contexts()
    return tempfile.TemporaryDirectory(prefix=f"{CONTEXT_PREFIX}{os.getpid()}-")


def _bentoml_exe() -> str:
    exe = Path(sys.executable).with_name("bentoml")
    return str(exe) if exe.exists() else "bentoml"
