"""Test-wide fixtures.

``shared`` is the reference material beside the project (``../shared``). Tests that need it skip
with a clear reason on a fresh clone without it, and fail instead of skipping when ``CI`` is set
(CI always has it, so a skip there would hide a broken conformance run).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DUISGW_SHARED", PROJECT.parent / "shared")).resolve()


def _need_shared() -> Path:
    if not (SHARED / "duis").is_dir():
        reason = f"reference material not found at {SHARED} (set DUISGW_SHARED or place ../shared beside the project)"
        if os.environ.get("CI"):
            pytest.fail("CI run without ../shared: " + reason)
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path to ../shared; skips (or fails under CI) when absent."""
    return _need_shared()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT


# ------------------------------------------------------------------ the figure tables under pytest-xdist
# The security, bad-input and fault suites print figure tables at the end of a run (their conftests'
# ``pytest_terminal_summary``) from what their tests gather in module globals. The suite's command runs the
# tests in pytest-xdist worker processes, where those globals fill and the controller sees none of them: each
# worker sends its figures (JSON) to the controller at its end, which merges them and prints the tables once.

_WORKER_FIGURES: list[dict[str, Any]] = []


def _figures_here() -> dict[str, Any]:
    """The figures this process's tests gathered (JSON-ready)."""
    out: dict[str, Any] = {}
    lab = sys.modules.get("tests.security.lab")
    if lab is not None and lab.ROWS:
        out["security"] = lab.ROWS
    tally = sys.modules.get("tests.badinput.tally")
    if tally is not None and (tally.TRIED or tally.FIGURES):
        out["badinput"] = {
            "reasons": [[suite, reason, n] for (suite, reason), n in tally.REASONS.items()],
            "tried": dict(tally.TRIED),
            "crashes": dict(tally.CRASHES),
            "figures": tally.FIGURES,
        }
    soak = sys.modules.get("soakkit")
    if soak is not None and soak.REPORTS:
        out["reliability"] = soak.REPORTS
    return out


@pytest.hookimpl(tryfirst=True)  # (before xdist's own hook sends the worker's output)
def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["duisgw_figures"] = json.dumps(_figures_here(), default=str)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    text = getattr(node, "workeroutput", {}).get("duisgw_figures")
    if text:
        _WORKER_FIGURES.append(json.loads(text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _WORKER_FIGURES:  # (a run without workers: the suites' conftests print their own)
        return
    rows = [row for got in _WORKER_FIGURES for row in got.get("security", ())]
    if rows:
        from tests.security.lab import figure_table

        terminalreporter.section("security suite: attacks and suppressions")
        for line in figure_table(rows):
            terminalreporter.write_line(line)
    bad = [got["badinput"] for got in _WORKER_FIGURES if "badinput" in got]
    if bad:
        from tests.badinput import tally

        for part in bad:  # (the controller's own counters are empty: it ran no test)
            for suite, reason, n in part["reasons"]:
                tally.REASONS[(suite, reason)] += n
            tally.TRIED.update(part["tried"])
            tally.CRASHES.update(part["crashes"])
            tally.FIGURES.update(part["figures"])
        terminalreporter.section("bad-input suite: inputs, crashes, named rejections")
        for line in tally.table():
            terminalreporter.write_line(line)
    for got in _WORKER_FIGURES:
        for title, table in got.get("reliability", ()):
            terminalreporter.section(title)
            for line in table.splitlines():
                terminalreporter.write_line(line)
