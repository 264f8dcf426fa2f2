"""The service's settings: ``params.serving`` with the environment overrides of the running service."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from bartops.config import ServingConfig, load_params_or_defaults

MODEL_NAME = "bartops-policy"  # BentoML model name of packaged policy bundles
ENV_BUNDLE = "BARTOPS_BUNDLE"  # serve this bundle directory
ENV_REGISTRY = "BARTOPS_REGISTRY"  # else the production version of this registry (default registry/)
ENV_MODEL_TAG = "BARTOPS_MODEL_TAG"  # else/or a policy bundle stored in the BentoML model store
ENV_LOG_DIR = "BARTOPS_SERVING_LOGS"  # where served impressions and feedback are written


def with_environment(config: ServingConfig, environ: dict[str, str] | None = None) -> ServingConfig:
    """``config`` with ``BARTOPS_SERVING_LOGS`` applied if set."""
    env = os.environ if environ is None else environ
    return replace(config, log_dir=env[ENV_LOG_DIR]) if env.get(ENV_LOG_DIR) else config


def load_serving_config(params_file: str | Path | None = None) -> ServingConfig:
    """``serving:`` of the params file (defaults without one), then the environment overrides."""
    return with_environment(load_params_or_defaults(params_file).serving)
