"""The Dask backend's pure parts: the setting, page-aligned partitions, summed tables (no cluster)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bartops.config import Params
from bartops.scale.cluster import scale_settings, worker_environment


def _params(scale: dict) -> Params:
    return Params.from_mapping({"scale": scale})


def test_setting_env_overrides_params():
    p = _params({"backend": "local", "workers": 3})
    assert not scale_settings(p, environ={}).dask
    s = scale_settings(p, environ={"BARTOPS_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})
    assert s.dask and s.scheduler == "tcp://10.0.0.5:8786" and s.workers == 3, f"override not applied: {s}"
    assert scale_settings(p, environ={"BARTOPS_DASK_SCHEDULER": "dask"}).dask
    assert not scale_settings(_params({"backend": "dask"}), environ={"BARTOPS_DASK_SCHEDULER": "local"}).dask
    assert scale_settings(_params({"scheduler": "tcp://h:1"}), environ={}).dask
    with pytest.raises(ValueError, match="scale.backend"):
        _params({"backend": "spark"})
    with pytest.raises(ValueError, match="unknown key.*'nodes'.*'scale:'"):
        _params({"nodes": 4})
    with pytest.raises(ValueError, match="address"):
        _params({"scheduler": "localhost"})


def test_worker_environment_carries_the_prefect_api():
    env = worker_environment({"PREFECT_API_URL": "http://10.0.0.1:4200/api", "BARTOPS_DASK_SCHEDULER": "dask"})
    assert env["PREFECT_API_URL"] == "http://10.0.0.1:4200/api"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["BARTOPS_DASK_SCHEDULER"] == "dask"


def test_partitions_hold_whole_pages_and_every_row_once(small_data_dir):
    from bartops.features.partitions import page_partitions, read_partition

    parts = page_partitions(small_data_dir / "incoming", 7000)
    frames = [read_partition(p) for p in parts]
    whole = pd.read_parquet(small_data_dir / "incoming" / "sim-seed3.parquet")
    assert len(parts) == int(np.ceil(len(whole) / 7000)) and sum(map(len, frames)) == len(whole)
    ids = np.concatenate([f["impression_id"].astype(str).to_numpy() for f in frames])
    assert len(set(ids)) == len(whole)
    pages = [set(f["request_id"].astype(str)) for f in frames]
    assert sum(map(len, pages)) == len(set().union(*pages))  # no page in two partitions


def test_history_sums_of_user_partitions_concatenate_to_the_whole(small_data_dir):
    from bartops.features.store import add_history_sums, history_sums
    from bartops.features.partitions import read_user_partition, user_partitions

    history = pd.read_parquet(small_data_dir / "history.parquet")
    items = pd.read_parquet(small_data_dir / "items.parquet")["item_id"].to_numpy()
    now = pd.Timestamp("2026-11-01T00:00:00Z")
    parts = user_partitions(small_data_dir / "history.parquet", 5000)
    frames = [read_user_partition(p, ["item_id", "timestamp"]) for p in parts]
    assert len(parts) >= 5 and sum(map(len, frames)) == len(history)
    users = [set(f["user_id"]) for f in frames]
    assert sum(map(len, users)) == len(set().union(*users))  # every user's plays in one partition
    whole = history_sums(history, items, now, 30.0)
    assert whole["plays"].sum() == history["item_id"].isin(items).sum()
    # exact: a user × item sum never spans partitions, and each partition keeps the file's row order
    pd.testing.assert_frame_equal(add_history_sums([history_sums(f, items, now, 30.0) for f in frames]), whole,
                                  check_exact=True)


class _RecordingClient:
    """Stands in for ``distributed.Client``: the scheduler's workers, and what ``submit`` was asked."""

    def __init__(self, workers: dict[str, int]) -> None:
        self.workers, self.submitted = workers, []

    def nthreads(self) -> dict[str, int]:
        return dict(self.workers)

    def submit(self, fn, *args, pure=True, **pin):
        self.submitted.append(pin)
        return fn(*args)


def test_submit_pins_round_robin_and_does_not_fail_without_workers():
    """A task placed by ``where`` goes to worker ``where mod n`` (in address order); while the scheduler
    has no worker (all restarting) it is submitted unpinned instead of dividing by zero (CI, session 14:
    ``ZeroDivisionError`` when the client's cached worker list came back empty)."""
    from bartops.scale.cluster import DaskExecutor

    client = _RecordingClient({"tcp://b:2": 1, "tcp://a:1": 1})
    ex = DaskExecutor(client)
    assert [ex.submit(abs, -k, where=k) for k in range(3)] == [0, 1, 2]
    assert [p["workers"] for p in client.submitted] == [["tcp://a:1"], ["tcp://b:2"], ["tcp://a:1"]], client.submitted
    assert all(p["allow_other_workers"] for p in client.submitted), client.submitted
    client.workers.clear()
    assert ex.submit(abs, -5, where=3) == 5
    assert client.submitted[-1] == {}, f"submitted without workers: {client.submitted[-1]}"
    assert ex.submit(abs, -6) == 6 and client.submitted[-1] == {}, client.submitted[-1]
