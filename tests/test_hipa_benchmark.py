"""The HiPA benchmark runs end to end (slow: the 50-step teacher is timed)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_hipa_runs():
    from benchmarks.bench_hipa import run

    payload = run("tiny", repeats=1, write=False)
    rows = {row["variant"].split()[0]: row for row in payload["rows"]}
    assert set(rows) == {"teacher_50step", "hipa_1step", "lcm_4step"}
    assert rows["hipa_1step"]["speedup_vs_teacher"] > rows["lcm_4step"]["speedup_vs_teacher"] > 1
