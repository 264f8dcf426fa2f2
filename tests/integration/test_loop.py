"""The living loop, two rounds on a small world, against the real stack a user starts.

``bench.loop.loop_in_copy`` in a fresh project copy with small parameters: `bartops simulate`, a
Prefect server and the deployment runner (`bartops up`), the first round (`python -m flows.retrain
--auto-approve`, then `bartops registry bootstrap`), the BentoML service following the registry, and
`python -m flows.loop --rounds 2`: simulated listeners over HTTP, the ingest and retrain deployments,
the gate, the swap.
"""

from __future__ import annotations

import math

import pytest

from project_copy import copy_project  # noqa: I001 (puts the project root, home of bench/, on sys.path)
from bartops.registry import Registry
from bench.loop import loop_in_copy, use_free_ports

pytestmark = pytest.mark.integration


def test_two_rounds_of_the_loop_on_a_small_world(tmp_path):
    project = copy_project(tmp_path / "project", serving={"log_rotate_seconds": 2, "workers": 1},
                           reward={"baselines": []})
    use_free_ports(project)
    rounds, _ = loop_in_copy(project, rounds=2, page_views=150, timeout=2400)
    assert [r.round for r in rounds] == [1, 2], f"rounds recorded: {[r.round for r in rounds]}"
    registry = Registry(project / "registry")
    for r in rounds:
        counts = (r.served, r.logged, r.joined, r.accepted)
        assert r.served > 0 and len(set(counts)) == 1, f"round {r.round}: served/logged/joined/accepted {counts}"
        assert r.page_views == 150 and r.failed_requests == 0, \
            f"round {r.round}: {r.page_views} pages, {r.failed_requests} failed requests"
        assert 0 < r.logging_value < r.oracle_value and 0 < r.oracle_share <= 1, \
            f"round {r.round}: truth out of range (logging {r.logging_value}, oracle {r.oracle_value}, " \
            f"share {r.oracle_share})"
        assert r.online_rate_lo <= r.online_rate <= r.online_rate_hi, f"round {r.round}: interval {r}"
        assert r.decision in ("promote", "reject") and r.candidate_version, \
            f"round {r.round}: no gate decision on a candidate ({r.decision!r}, {r.candidate_version!r})"
        gate = registry.show(r.candidate_version)["gate"]
        assert gate["decision"] == r.decision, f"round {r.round}: gate.json says {gate['decision']}, loop {r.decision}"
        assert not math.isnan(r.dr_lift) and r.dr_lift_lo <= r.dr_lift <= r.dr_lift_hi, f"round {r.round}: DR {r}"
    first, second = rounds
    expected_live = first.candidate_version if first.decision == "promote" else first.live_version
    assert second.live_version == expected_live, \
        f"round 2 was served by {second.live_version}, expected {expected_live} after round 1's {first.decision}"
    assert registry.production() == (second.candidate_version if second.decision == "promote" else expected_live)
