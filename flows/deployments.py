"""Serve the deployments of the embedded default: `retrain/nightly` and `ingest-served-logs/hourly`.

    python -m flows.deployments        # (what `bartops up deployments` starts)
    prefect deployment run 'retrain/nightly' --watch

`prefect.serve` registers the deployments with the Prefect API in $PREFECT_API_URL and executes
their runs in this process (no work pool or worker needed on one machine).
"""

from __future__ import annotations

import os

from prefect import serve

from flows.retrain import ingest_served_logs, retrain


def main() -> None:
    params_file = os.environ.get("BARTOPS_PARAMS")
    serve(
        retrain.to_deployment(name="nightly", cron="0 3 * * *", parameters={"params_file": params_file},
                              description="Nightly counterfactual retraining round", tags=["bartops"]),
        ingest_served_logs.to_deployment(name="hourly", cron="15 * * * *", parameters={"params_file": params_file},
                                         description="Join served logs with feedback and validate them",
                                         tags=["bartops"]),
        limit=1,
    )


if __name__ == "__main__":
    main()
