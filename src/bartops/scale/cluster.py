"""One setting switches the heavy steps to Dask: ``scale:`` in params.yaml or an environment variable.

- ``scale.backend: local`` (default) runs everything in this process; ``dask`` runs the heavy steps
  on a Dask cluster and the Prefect flows' tasks with ``prefect_dask.DaskTaskRunner``.
- ``scale.scheduler: "tcp://host:8786"`` names a running cluster; ``null`` starts a LocalCluster of
  ``workers`` processes × ``threads_per_worker`` threads with ``memory_limit`` each.
- ``BARTOPS_DASK_SCHEDULER=tcp://…`` overrides both (an address means dask); ``local`` forces local.

Workers report task runs to the Prefect API of the driver: without ``PREFECT_API_URL`` each worker
process would start its own temporary Prefect server.  ``worker_environment()`` is what they need
(the API URL and the telemetry switches); a LocalCluster gets it at spawn (nanny ``env``), and a
running cluster gets it through ``client.run`` (workers should also be started with it, see docs/scale-out.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from bartops.config import Params, ScaleSettings, load_params

SCHEDULER_ENV = "BARTOPS_DASK_SCHEDULER"
QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "GX_ANALYTICS_ENABLED": "False",
}


def scale_settings(params: Params, environ: dict[str, str] | None = None) -> ScaleSettings:
    """``params.scale``, overridden by ``BARTOPS_DASK_SCHEDULER`` (an address or ``dask`` ⇒ Dask; ``local``)."""
    settings = params.scale
    env = (os.environ if environ is None else environ).get(SCHEDULER_ENV, "").strip()
    if env.lower() == "local":
        settings = replace(settings, backend="local", scheduler=None)
    elif env.lower() in ("dask", "localcluster"):
        settings = replace(settings, backend="dask", scheduler=None)
    elif env:
        settings = replace(settings, backend="dask", scheduler=env)
    return replace(settings, backend="dask") if settings.scheduler else settings


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment the workers need: the driver's Prefect API URL (so no worker starts its own
    server) and the telemetry switches."""
    environ = os.environ if environ is None else environ
    env = {k: environ.get(k, v) for k, v in QUIET_ENV.items()}
    if environ.get(SCHEDULER_ENV):
        env[SCHEDULER_ENV] = environ[SCHEDULER_ENV]  # steps running on workers choose the same backend
    url = environ.get("PREFECT_API_URL") or _current_prefect_api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return env


def _current_prefect_api_url() -> str | None:
    """The API URL Prefect uses in this process (e.g. set by a test harness), if any."""
    try:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    except Exception:  # prefect not configured: nothing to pass
        return None


def _set_environ(env: dict[str, str]) -> None:
    os.environ.update(env)


def dask_client(settings: ScaleSettings, env: dict[str, str] | None = None):
    """A ``distributed.Client`` on ``settings.scheduler``, or on a new LocalCluster (closed with the
    client).  Workers get ``worker_environment()`` (or ``env``) before any task runs."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the Dask backend needs the optional extra: pip install 'bartops[dask]'") from exc
    env = worker_environment() if env is None else env
    if settings.scheduler:
        client = Client(settings.scheduler)
        client.run(_set_environ, env)  # workers already running; start new ones with the same env
        return client
    cluster = LocalCluster(n_workers=settings.workers, threads_per_worker=settings.threads_per_worker,
                           processes=True, memory_limit=settings.memory_limit, env=env,
                           dashboard_address=":0")
    client = Client(cluster)
    client._bartops_cluster = cluster  # closed by close_client
    return client


@dataclass(frozen=True)
class DaskExecutor:
    """``bartops.features.partitions.Executor`` on a Dask cluster: a task per partition, pinned
    round-robin to the workers by ``where``; shared values are sent once to every worker."""

    client: Any
    name = "dask"

    def map(self, fn, items, **shared):
        if not items:
            return []
        sent = {k: v if isinstance(v, (int, float, str, bool, type(None))) else self.share(v)
                for k, v in shared.items()}
        return self.client.gather(self.client.map(fn, list(items), pure=False, **sent))

    def submit(self, fn, *args, where: int | None = None):
        pin: dict[str, Any] = {}
        # the workers from the scheduler itself: ``scheduler_info()`` returns a cache that the client's
        # periodic refresh can leave without workers (distributed 2026.8), which made this divide by zero
        workers = sorted(self.client.nthreads()) if where is not None else []
        if workers:  # none (all restarting): unpinned, the scheduler places it when one joins
            pin = {"workers": [workers[where % len(workers)]], "allow_other_workers": True}
        return self.client.submit(fn, *args, pure=False, **pin)

    def gather(self, handles):
        return self.client.gather(list(handles))

    def share(self, value):
        return self.client.scatter(value, broadcast=True, hash=False)


def close_client(client) -> None:
    """Close the client and the LocalCluster it started (a remote cluster keeps running)."""
    cluster = getattr(client, "_bartops_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def flow_task_runner(params_file: str | None = None):
    """The task runner for a flow decorator: ``task_runner(scale_settings(params.yaml))``, read at
    import (``BARTOPS_PARAMS`` / ./params.yaml; missing file = local)."""
    try:
        params = load_params(params_file)
    except FileNotFoundError:
        params = Params()
    return task_runner(scale_settings(params))


def task_runner(settings: ScaleSettings, env: dict[str, str] | None = None):
    """The Prefect task runner of the flows: ``DaskTaskRunner`` (scheduler address or a LocalCluster
    whose workers get ``worker_environment()``), or Prefect's default thread pool when local."""
    if not settings.dask:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if settings.scheduler:
        return DaskTaskRunner(address=settings.scheduler)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": settings.workers,
                                          "threads_per_worker": settings.threads_per_worker,
                                          "processes": True, "memory_limit": settings.memory_limit,
                                          "env": worker_environment() if env is None else env,
                                          "dashboard_address": ":0"})
