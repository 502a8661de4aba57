"""Figures of the bad-input suite: inputs tried, crashes, rejections by named reason, memory.

The tests add to the counters; ``conftest.py`` prints them at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: (suite, reason) -> count, e.g. ("duis-decoder", "malformed_xml")
REASONS: Counter[tuple[str, str]] = Counter()
#: suite -> inputs tried
TRIED: Counter[str] = Counter()
#: suite -> crashes (an exception that is not a named error); the tests fail on any
CRASHES: Counter[str] = Counter()
#: free-form figures (memory, timings) by name
FIGURES: dict[str, Any] = {}


def count(suite: str, reason: str) -> None:
    TRIED[suite] += 1
    REASONS[(suite, reason)] += 1


def table() -> list[str]:
    out = ["| suite | inputs tried | crashes |", "| --- | ---: | ---: |"]
    for suite in sorted(TRIED):
        out.append(f"| {suite} | {TRIED[suite]} | {CRASHES[suite]} |")
    out += ["", "| suite | outcome (named reason) | count |", "| --- | --- | ---: |"]
    for (suite, reason), n in sorted(REASONS.items()):
        out.append(f"| {suite} | {reason} | {n} |")
    if FIGURES:
        out += ["", "| figure | value |", "| --- | --- |"]
        for k, v in FIGURES.items():
            out.append(f"| {k} | {v} |")
    return out
