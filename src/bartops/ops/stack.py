"""The embedded default's services: Prefect server, deployment runner, BentoML service, dashboard."""

from __future__ import annotations

import sys
from pathlib import Path

from bartops.config import OpsParams
from bartops.ops.processes import Service, python_module

SERVICE_ORDER = ("prefect", "deployments", "service", "dashboard")


def prefect_api_url(ops: OpsParams) -> str:
    return f"http://{ops.host}:{ops.prefect_port}/api"


def services(ops: OpsParams, root: Path) -> dict[str, Service]:
    """Definitions of every local service, from params.yaml ``ops:`` and the project root."""
    host = ops.host
    api = prefect_api_url(ops)
    prefect_env = {"PREFECT_API_URL": api, "PREFECT_HOME": str(root / ".prefect")}
    bin_dir = Path(sys.executable).parent
    return {
        "prefect": Service(
            "prefect",
            [str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(ops.prefect_port)],
            f"{api}/health", f"http://{host}:{ops.prefect_port}",
            env={"PREFECT_HOME": str(root / ".prefect"), "PREFECT_API_URL": ""},
        ),
        "deployments": Service(
            "deployments", python_module("flows.deployments"),
            f"{api}/deployments/name/retrain/nightly", "prefect deployment run 'retrain/nightly'", env=prefect_env,
            # registered deployments outlive their runner in Prefect's database (see processes)
            expect={"status": "READY", "paused": False}, own_process=True,
        ),
        "service": Service(
            "service",
            [str(bin_dir / "bentoml"), "serve", "bartops.serving.service:HomePage", "--host", host,
             "--port", str(ops.service_port)],
            f"http://{host}:{ops.service_port}/readyz", f"http://{host}:{ops.service_port}",
            env=prefect_env,
        ),
        "dashboard": Service(
            "dashboard", python_module("bartops.cli", "dashboard", "--host", host, "--port", str(ops.dashboard_port)),
            f"http://{host}:{ops.dashboard_port}/", f"http://{host}:{ops.dashboard_port}",
            env=prefect_env,
        ),
    }
