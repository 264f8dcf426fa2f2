"""Every kind of the malformed-batch corpus (``tests/corpus/malformed.py``) gets its verdict and reason.

Each kind is derived from one valid base batch (200 simulated pages, built once per module) and run
through ``bartops.validation.ingest`` — what the Prefect flow and ``bartops validate`` call — with
the real Great Expectations suites, against a copy of a store that already holds 100 other pages.
"""

from __future__ import annotations

from collections import Counter

import pytest

from corpus.malformed import ACCEPTED, KINDS, NO_OP, REJECTED, SPLIT, UNREADABLE, Base, Outcome, build_base, run_kind, summary_table

_OUTCOMES: dict[str, Outcome] = {}


@pytest.fixture(scope="module")
def base(small_data_dir, tmp_path_factory) -> Base:
    return build_base(small_data_dir, tmp_path_factory.mktemp("corpus-base"))


def test_the_corpus_has_at_least_50_distinct_kinds_across_every_group():
    names = Counter(k.name for k in KINDS)
    assert not [n for n, c in names.items() if c > 1], f"duplicate kind names: {[n for n, c in names.items() if c > 1]}"
    malformed = [k for k in KINDS if k.verdict in (REJECTED, UNREADABLE)]
    assert len(malformed) >= 50, f"{len(malformed)} malformed kinds in the corpus, expected at least 50"
    groups = {k.group for k in KINDS}
    want = {"unreadable", "schema", "values", "semantics", "page", "windows", "shares", "duplicates",
            "contradictions", "controls"}
    assert want <= groups, f"groups missing from the corpus: {sorted(want - groups)}"
    verdicts = {k.verdict for k in KINDS}
    assert {ACCEPTED, REJECTED, UNREADABLE, NO_OP, SPLIT} <= verdicts, f"verdicts covered: {sorted(verdicts)}"
    for k in KINDS:
        if k.verdict in (REJECTED, UNREADABLE):
            assert k.checks and k.reason, f"kind {k.name}: a rejection needs its checks and a reason, got {k.checks}, {k.reason}"


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind_gets_its_verdict_and_reason(kind, base, tmp_path):
    out = run_kind(kind, base, tmp_path)
    _OUTCOMES[kind.name] = out
    assert out.ok, (f"kind {kind.name} ({kind.group}): expected {kind.verdict} {sorted(kind.checks)} "
                    f"with {list(kind.reason)}; observed {out.decision} {sorted(out.checks)}: "
                    + "; ".join(out.problems) + "\n" + out.message[:3000])


def test_summary_table_no_duplicate_or_impossible_rows_accepted(capsys):
    """Print the per-group table (kinds tried, rejected by name, no-ops, accepted, bad rows stored)."""
    if len(_OUTCOMES) < len(KINDS):
        pytest.skip(f"only {len(_OUTCOMES)} of {len(KINDS)} kinds ran in this session (a -k selection)")
    outcomes = [_OUTCOMES[k.name] for k in KINDS]
    table = summary_table(outcomes)
    with capsys.disabled():
        print("\n" + table)
    bad = {o.kind.name: (o.added_rows, o.duplicate_ids) for o in outcomes
           if o.duplicate_ids or (o.kind.verdict in (REJECTED, UNREADABLE, NO_OP) and o.added_rows)}
    assert not bad, f"kinds that stored rows they should not have (added rows, duplicate ids): {bad}"
