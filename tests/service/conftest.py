"""Fixtures for the service tests (helpers live in ``servicekit``)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from servicekit import MOSQUITTO, Broker, Pki, Receiver, free_port, make_pki


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
    if not Path(MOSQUITTO).exists() or shutil.which(MOSQUITTO) is None:
        pytest.skip(f"{MOSQUITTO} is not installed: MQTT tests need a real broker")
    port = free_port()
    data = tmp_path / "mosquitto"
    data.mkdir()
    conf = data / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {data}/\n"
        "log_dest none\n"
    )
    b = Broker(port, conf)
    b.start()
    yield b
    b.stop()
