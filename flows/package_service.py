"""Prefect flow `package-service`: store a promoted registry version as a BentoML model and build its Bento.

Both steps are idempotent (``bartops.serving.package``): packaging a version that is already
packaged, with the same sources, returns the stored model and Bento without building.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from bartops.config import load_params
from bartops.registry import Registry
from bartops.serving.package import (BentoResult, Packaged, default_bentoml_home, ensure_bento,
                                    store_bundle_as_bentoml_model)


@task(cache_policy=None)
def store_model(bundle_dir: str, version: str, bentoml_home: str) -> str:
    """The bundle as BentoML model ``bartops-policy:<version>`` (idempotent)."""
    return store_bundle_as_bentoml_model(Path(bundle_dir), version, bentoml_home=bentoml_home)


@task(cache_policy=None)
def build(model_tag: str, project_dir: str, bentoml_home: str) -> BentoResult:
    """The model's Bento: the stored one for the same bundle and sources, else ``bentoml build`` from a minimal context."""
    return ensure_bento(model_tag, Path(project_dir), bentoml_home)


@flow(name="package-service")
def package_service(version: str | None = None, registry: str | None = None, project_dir: str = ".",
                    bentoml_home: str | None = None, params_file: str | None = None) -> Packaged:
    """Package ``version`` (default: the registry's production version) as a servable Bento."""
    params = load_params(params_file or Path(project_dir) / "params.yaml")
    reg = Registry(Path(registry or Path(project_dir) / params.paths.registry))
    version = version or reg.production()
    if version is None:
        raise ValueError(f"registry {reg.root} has no production version to package")
    home = str(bentoml_home or default_bentoml_home(project_dir))
    tag = store_model(str(reg.path(version)), version, home)
    bento = build(tag, str(Path(project_dir).resolve()), home)
    create_markdown_artifact(
        key="package-service",
        markdown=(f"### Packaged policy `{version}`\n\n| | |\n|---|---|\n| BentoML model | `{tag}` |\n"
                  f"| Bento | `{bento.tag}` ({'built now' if bento.built else 'already built'}) |\n"
                  f"| BENTOML_HOME | `{home}` |\n\n"
                  f"Serve it: `BENTOML_HOME={home} bentoml serve {bento.tag} --host 127.0.0.1 --port 3000`"),
        description=f"Bento for policy {version}",
    )
    return Packaged(version, tag, bento.tag, bento.built, home)


if __name__ == "__main__":  # pragma: no cover
    print(package_service(version=os.environ.get("BARTOPS_VERSION")))
