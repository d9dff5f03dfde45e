"""Source hygiene the linters do not check: the code cites no issue numbers of a tracker that is not in the
repository (an issue number in a docstring tells a reader nothing; the README and commit messages carry the why)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adapters", "pipelines", "training", "benchmarks", "tests")
ISSUE = re.compile(r"\bissue \d+\b", re.IGNORECASE)


def _sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def test_no_issue_numbers_in_sources():
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ISSUE.search(line) and path.name != "test_source_hygiene.py"
    ]
    assert not hits, f"issue numbers in the sources: {hits}"


def test_the_check_can_fail():
    assert ISSUE.search('"""Reliability sweep (issue 12): bad inputs"""')
    assert not ISSUE.search("an issue with 12 views")
