"""Package a policy bundle as a BentoML model and build the Bento that serves it.

BentoML keeps models and Bentos under ``BENTOML_HOME``; bartops uses ``<project>/build/bentoml``
(``default_bentoml_home``) unless ``BENTOML_HOME`` is already set, so nothing lands in ~/bentoml.
A registry version ``v`` is stored as the model ``bartops-policy:<v>`` (lower-cased; a short hash
is appended when the version has characters a BentoML tag cannot hold).  Storing is idempotent:
the same bundle content under the same version returns the existing tag; different content under
an existing tag is an error.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bartops.serving.config import MODEL_NAME

REQUIRED = ("model", "features", "policy.json")
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


def bundle_digest(bundle_dir: str | Path) -> str:
    """SHA-256 over the bundle's relative file paths and contents (registry.json excluded)."""
    d = Path(bundle_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in d.rglob("*") if p.is_file()):
        rel = path.relative_to(d).as_posix()
        if rel == "registry.json":  # registry bookkeeping, not bundle content
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
        if existing.info.metadata.get("bundle_sha256") != digest:
            raise ValueError(f"BentoML model {tag} already exists with different content; "
                             f"registry versions are immutable, register the bundle under a new version")
        return str(existing.tag)
    with bentoml.models.create(tag, labels={"project": "bartops", "kind": "policy-bundle"},
                               metadata={"bundle_sha256": digest, "registry_version": str(version)},
                               module="bartops.serving", _model_store=store) as ref:
        shutil.copytree(bundle, ref.path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("registry.json"))
    return str(ref.tag)


def build_bento(model_tag: str, project_dir: str | Path = ".", bentoml_home: str | Path | None = None,
                bentofile: str = "bentofile.yaml", timeout: float = 600) -> str:
    """``bentoml build`` of the project with the packaged policy ``model_tag``; returns the Bento tag.

    The model tag is passed as the Bento argument ``model_tag``, which the Bento records and the
    service reads at start-up, so ``bentoml serve <bento>`` serves exactly that policy.
    """
    project_dir = Path(project_dir).resolve()
    home = Path(bentoml_home) if bentoml_home else default_bentoml_home(project_dir)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("BARTOPS_BUNDLE", None)
    cmd = [_bentoml_exe(), "build", "-f", bentofile, "--arg", f"model_tag={model_tag}",
           "--label", f"policy={model_tag.split(':', 1)[1]}", "-o", "tag", str(project_dir)]
    proc = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("__tag__:"):
            return line[len("__tag__:"):].strip()
    raise RuntimeError(f"bentoml build printed no tag:\n{proc.stdout[-2000:]}")


def _bentoml_exe() -> str:
    exe = Path(sys.executable).with_name("bentoml")
    return str(exe) if exe.exists() else "bentoml"
