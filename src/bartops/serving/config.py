"""The ``serving:`` section of params.yaml, with environment overrides for the running service."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bartops.config import Paths, load_params, params_path, reject_unknown

MODEL_NAME = "bartops-policy"  # BentoML model name of packaged policy bundles
ENV_BUNDLE = "BARTOPS_BUNDLE"  # serve this bundle directory
ENV_REGISTRY = "BARTOPS_REGISTRY"  # else the production version of this registry (default registry/)
ENV_MODEL_TAG = "BARTOPS_MODEL_TAG"  # else/or a policy bundle stored in the BentoML model store
ENV_LOG_DIR = "BARTOPS_SERVING_LOGS"  # where served impressions and feedback are written


@dataclass(frozen=True)
class ServingConfig:
    """Limits, log rotation and attribution settings of the service and the join step."""

    log_dir: str = "serving-logs"
    log_rotate_rows: int = 20_000  # rows per log file before it is closed (flushed + fsynced)
    log_rotate_seconds: float = 15.0  # ... or once the file is this old, even when idle
    max_body_bytes: int = 8192  # larger request bodies get a 413
    attribution_window_seconds: float = 1800.0  # a stream counts if reported this soon after the page
    workers: int = 2  # BentoML API worker processes
    registry_poll_seconds: float = 1.0  # how often a service serving the registry looks for a new production
    max_in_flight: int = 4  # at most this many /home + /feedback requests held per worker; more get 503
    shed_target_ms: float = 50.0  # ... fewer while (held + 1) x the time a request costs now exceeds this
    retry_after_seconds: int = 1  # the Retry-After of that 503
    retire_joined: str = "archive"  # joined log files: archive (move to <log_dir>/archive/) | delete | keep

    def __post_init__(self) -> None:
        if self.retire_joined not in ("archive", "delete", "keep"):
            raise ValueError(f"serving.retire_joined must be archive, delete or keep, got {self.retire_joined!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("log_dir", "retire_joined") and not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"serving.{f.name} must be a positive number, got {v!r}")
            if f.name in ("max_in_flight", "retry_after_seconds") and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"serving.{f.name} must be a positive integer, got {v!r}")
        if not str(self.log_dir):
            raise ValueError("serving.log_dir must not be empty")

    @staticmethod
    def from_params(params: dict[str, Any] | None) -> "ServingConfig":
        """Config from a full params dict (``serving:`` plus ``paths.serving_logs``); unknown keys fail."""
        params = params or {}
        section = dict(params.get("serving") or {})
        reject_unknown(ServingConfig, section, "serving parameter")
        if "log_dir" not in section:
            section["log_dir"] = str(Paths.from_params(params).serving_logs)
        return ServingConfig(**section)

    def with_env(self, environ: dict[str, str] | None = None) -> "ServingConfig":
        """Apply ``BARTOPS_SERVING_LOGS`` if set."""
        env = os.environ if environ is None else environ
        return replace(self, log_dir=env[ENV_LOG_DIR]) if env.get(ENV_LOG_DIR) else self


def load_serving_config(params_file: str | Path | None = None) -> ServingConfig:
    """ServingConfig from params.yaml when it exists (else defaults), then environment overrides."""
    path = params_path(params_file)
    params = load_params(path) if path.exists() else {}
    return ServingConfig.from_params(params).with_env()
