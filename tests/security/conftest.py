"""Fixtures of the security suite and the figure table it prints at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline import Classifier
from tests.security.lab import ROWS, Lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab.build(tmp_path_factory.mktemp("security-lab"))


@pytest.fixture(scope="session")
def classifier(lab: Lab) -> Classifier:
    return lab.classifier()


def figure_table(rows: list[dict[str, Any]]) -> list[str]:
    """Attempts and suppressions by category (markdown), then one line per attack."""
    cats: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    out = [
        "| category | attempts | suppressions caused | known bugs (xfail) |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = supp = bugs = 0
    for cat, rs in cats.items():
        if cat == "control":
            continue
        n = len(rs)
        s = sum(r["suppressed"] for r in rs if not r["known_bug"])
        b = sum(1 for r in rs if r["known_bug"] and r["suppressed"])
        total, supp, bugs = total + n, supp + s, bugs + b
        out.append(f"| {cat} | {n} | {s} | {b} |")
    out.append(f"| **total** | **{total}** | **{supp}** | **{bugs}** |")
    ctl = [r for r in rows if r["category"] == "control"]
    if ctl:
        out.append(
            f"\ncontrols (genuine evidence): {sum(r['suppressed'] for r in ctl)}/{len(ctl)} suppressed"
        )
    out.append("")
    out.append("| category | attack | stopped by | AD1 decision (reason) |")
    out.append("| --- | --- | --- | --- |")
    for r in rows:
        out.append(f"| {r['category']} | {r['name']} | {r['stopped_by']} | {r['decision']} |")
    return out


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("security suite: attacks and suppressions")
    for line in figure_table(ROWS):
        terminalreporter.write_line(line)
