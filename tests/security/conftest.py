"""Fixtures of the security suite and the figure table it prints at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline import Classifier
from tests.security.lab import ROWS, Lab, figure_table


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab.build(tmp_path_factory.mktemp("security-lab"))


@pytest.fixture(scope="session")
def classifier(lab: Lab) -> Classifier:
    return lab.classifier()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("security suite: attacks and suppressions")
    for line in figure_table(ROWS):
        terminalreporter.write_line(line)
