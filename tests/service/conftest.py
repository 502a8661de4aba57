"""Fixtures for the service tests (helpers live in ``servicekit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from servicekit import Broker, Pki, Receiver, free_port, make_pki

# re-exported: tests/e2e imports these from whichever top-level ``conftest`` pytest loaded first
__all__ = ["Broker", "Pki", "Receiver", "free_port"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker.in_folder(tmp_path, persistence=True)
    yield b
    b.stop()
