"""Fixtures of the fault suite: the helpers of tests/e2e (gateway process, config) and
tests/service (receiver, mosquitto) on the import path, and the ``soak`` marker.

The test modules of tests/e2e import ``Broker, Pki, Receiver, free_port`` from whichever module is
``conftest`` when they are collected; when several test folders are named on one command line that
can be this one, so it re-exports the same servicekit names as tests/e2e/conftest.py does."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent / "e2e", HERE.parent / "service"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from servicekit import Broker, Pki, Receiver, free_port  # noqa: E402

__all__ = ["Broker", "Pki", "Receiver", "free_port"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP receiver standing in for the DNO adaptor (servicekit's), started and stopped around a test."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: the fault-suite soak (real gateway process under kills; runs in the default suite)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from soakkit import REPORTS

    for title, table in REPORTS:
        terminalreporter.section(title)
        for line in table.splitlines():
            terminalreporter.write_line(line)
