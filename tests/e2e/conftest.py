"""Fixtures for the end-to-end tests: signed traffic (built once), free ports, the DNO receiver,
TLS material and a real mosquitto broker (helpers shared with tests/service/servicekit.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from e2ekit import Traffic, build_traffic
from servicekit import Broker, Pki, Receiver, free_port, make_pki

__all__ = ["Broker", "Pki", "Receiver", "free_port"]


@pytest.fixture(scope="session")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    return build_traffic(tmp_path_factory.mktemp("traffic"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker.in_folder(tmp_path, persistence=False)
    yield b
    b.stop()
