"""Scale-out on Dask (optional extra ``bartops[dask]``): the executor and the engine-specific parts.

``scale:`` in params.yaml (or ``BARTOPS_DASK_SCHEDULER``) picks the backend; ``cluster`` gives the
Prefect task runner, the ``distributed.Client`` and ``DaskExecutor`` (the steps' per-partition work on
the cluster); ``train`` (``xgboost.dask``) and ``evaluate`` (DR's fold models by ``xgboost.dask``) are
the only engine-specific code; ``pipeline`` runs each step on the configured executor.  The steps
themselves are written once, in their own packages.  Dask is imported lazily, so importing this
package costs nothing without the extra.
"""

from bartops.scale.cluster import (DaskExecutor, dask_client, scale_settings, task_runner,
                                   worker_environment)

__all__ = ["DaskExecutor", "scale_settings", "dask_client", "task_runner", "worker_environment"]
