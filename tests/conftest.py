"""Shared fixtures: quiet environment, a small simulated world, a real Prefect API."""

from __future__ import annotations

import os

for _k, _v in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_k, _v)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from bartops.sim import World, simulate
from bartops.config import SimParams
from bartops.sim.store import write_simulation  # noqa: E402

SMALL = SimParams(impressions=30_000, users=600, artists=80, items=1200, genres=8, moods=4)
SHAPE = dict(shelves=6, cards=8, epsilon_head=0.1, epsilon_fill=0.1)


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated world with ~30k logged impressions (seed 3); do not mutate."""
    world = World.generate(SMALL, seed=3)
    return simulate(world, SMALL.impressions, seed=3, **SHAPE)


@pytest.fixture(scope="session")
def small_data_dir(small_sim, tmp_path_factory) -> Path:
    """The small simulation written as raw data (data/ layout, batch in incoming/); read-only."""
    out = tmp_path_factory.mktemp("data")
    write_simulation(small_sim, out, batch_name="sim-seed3")
    return out


@pytest.fixture(scope="session")
def prefect_api():
    """A real (temporary) Prefect API for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
