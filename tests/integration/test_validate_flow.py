"""The `validate-logs` flow under a real Prefect API: accept, reject with a Failed state, artifacts, Data Docs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bartops.config import read_params_file
from bartops.validation.suites import reference_stream_rate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture()
def project(tmp_path, small_data_dir) -> tuple[Path, Path]:
    """A project folder: data copied from the fixture, params.yaml with paths inside tmp_path."""
    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    params = read_params_file(ROOT / "params.yaml")
    good = pd.read_parquet(data / "incoming" / "sim-seed3.parquet")
    params["validation"]["stream_rate"].update(reference_stream_rate(good))
    params["validation"]["row_split"]["enabled"] = False  # a broken row rejects the whole batch here
    params["paths"].update({"data": str(data), "incoming": str(data / "incoming"),
                            "impressions": str(tmp_path / "build" / "impressions"),
                            "build": str(tmp_path / "build"), "quarantine": str(tmp_path / "quarantine")})
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    return tmp_path, pfile


def test_flow_accepts_then_rejects_with_a_failed_state(prefect_api, project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.validate_logs import validate_logs

    root, pfile = project
    batch = root / "data" / "incoming" / "sim-seed3.parquet"
    good = pd.read_parquet(batch)

    state = validate_logs(path=str(batch), params_file=str(pfile), return_state=True)
    assert state.is_completed(), state.message
    reports = state.result()  # one typed ValidationReport per batch
    assert [(r.decision, r.passed, r.rows == len(good)) for r in reports] == [("accepted", True, True)], reports
    accepted = list((root / "build" / "impressions").glob("*.parquet"))
    # the default keeps accepted batches in data/incoming, so the raw data stays as data.dvc versions it
    assert len(accepted) == 1 and batch.exists()
    docs = root / "build" / "validation" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert docs.exists()

    bad = good.copy()
    bad.loc[bad.index[0], "propensity"] = 0.0
    bad.loc[bad.index[1], "platform"] = "fridge"
    bad_path = root / "data" / "incoming" / "bad.parquet"
    bad.to_parquet(bad_path, index=False)
    digest = hashlib.sha256(bad_path.read_bytes()).hexdigest()
    state = validate_logs(path=str(bad_path), params_file=str(pfile), return_state=True)
    assert state.is_failed(), state.message  # the message names each failed expectation (failure_message)
    assert "impressions/propensity_range" in state.message and "impressions/platform_enum" in state.message
    assert "1 of" in state.message and "fridge" in state.message, state.message  # counts and example rows
    assert "allowed one of" in state.message and "allowed (0, 1]" in state.message, state.message  # and what was allowed
    qdirs = [d for d in (root / "quarantine").iterdir() if d.is_dir()]
    assert len(qdirs) == 1
    assert hashlib.sha256((qdirs[0] / "bad.parquet").read_bytes()).hexdigest() == digest
    assert list((root / "build" / "impressions").glob("*.parquet")) == accepted  # earlier data untouched

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validation-report"])))

    import asyncio

    found = asyncio.run(artifacts())
    texts = [a.data for a in found]
    assert any("REJECTED" in t and "propensity_range" in t for t in texts)
    assert any("PASSED" in t for t in texts)


def test_flow_reruns_an_accepted_batch_as_a_no_op_and_rejects_it_under_another_name(prefect_api, project):
    from flows.validate_logs import validate_logs

    root, pfile = project
    batch = root / "data" / "incoming" / "sim-seed3.parquet"
    store = root / "build" / "impressions"
    for _ in range(2):  # `make demo` twice: the second run finds the batch already ingested
        state = validate_logs(path=str(batch), params_file=str(pfile), return_state=True)
        assert state.is_completed(), state.message
    accepted = list(store.glob("*.parquet"))
    assert len(accepted) == 1
    renamed = root / "data" / "incoming" / "renamed.parquet"
    shutil.copy(batch, renamed)
    state = validate_logs(path=str(renamed), params_file=str(pfile), return_state=True)
    assert state.is_failed(), state.message
    assert "impressions/impressions_not_already_accepted" in state.message, state.message
    assert "impressions/pages_not_already_accepted" in state.message, state.message
    assert list(store.glob("*.parquet")) == accepted
    assert len(pd.read_parquet(accepted[0])) == len(pd.read_parquet(batch))  # no impression stored twice
