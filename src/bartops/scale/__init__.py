"""Scale-out on Dask (optional extra ``bartops[dask]``): the heavy steps on partitioned data.

``scale:`` in params.yaml (or ``BARTOPS_DASK_SCHEDULER``) picks the backend; ``cluster`` gives the
Prefect task runner and the ``distributed.Client``; ``train``, ``ope``, ``validate``, ``features``
and ``evaluate`` (the gate's evaluation) are the partitioned counterparts of the local steps, equal to
them on the same data (``evaluate``: up to Monte-Carlo draws, see its docs).
Dask is imported lazily, so importing this package costs nothing without the extra.
"""

from bartops.scale.cluster import (DaskExecutor, ScaleSettings, dask_client, scale_settings, task_runner,
                                   worker_environment)

__all__ = ["DaskExecutor", "ScaleSettings", "scale_settings", "dask_client", "task_runner", "worker_environment"]
