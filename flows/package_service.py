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
from bartops.serving.package import Packaged, package_version


@task(cache_policy=None)
def package(bundle_dir: str, version: str, project_dir: str, bentoml_home: str | None) -> Packaged:
    """The bundle as BentoML model ``bartops-policy:<version>`` and its Bento: the stored one for the same
    bundle and sources, else ``bentoml build`` from a minimal context (``package_version``; idempotent)."""
    return package_version(bundle_dir, version, project_dir, bentoml_home)


@flow(name="package-service")
def package_service(version: str | None = None, registry: str | None = None, project_dir: str = ".",
                    bentoml_home: str | None = None, params_file: str | None = None) -> Packaged:
    """Package ``version`` (default: the registry's production version) as a servable Bento."""
    params = load_params(params_file or Path(project_dir) / "params.yaml")
    reg = Registry(Path(registry or Path(project_dir) / params.paths.registry))
    version = version or reg.production()
    if version is None:
        raise ValueError(f"registry {reg.root} has no production version to package")
    out = package(str(reg.path(version)), version, str(Path(project_dir).resolve()), bentoml_home)
    create_markdown_artifact(
        key="package-service",
        markdown=(f"### Packaged policy `{version}`\n\n| | |\n|---|---|\n| BentoML model | `{out.model_tag}` |\n"
                  f"| Bento | `{out.bento}` ({'built now' if out.built else 'already built'}) |\n"
                  f"| BENTOML_HOME | `{out.bentoml_home}` |\n\n"
                  f"Serve it: `BENTOML_HOME={out.bentoml_home} bentoml serve {out.bento} --host 127.0.0.1 --port 3000`"),
        description=f"Bento for policy {version}",
    )
    return out


if __name__ == "__main__":  # pragma: no cover
    print(package_service(version=os.environ.get("BARTOPS_VERSION")))
